"""`ganpipe prep`, `datasets ls|show|verify` and `bench-data`: parsed options in, printed results out.

Each handler takes the parsed arguments and returns an exit status; heavy imports happen inside them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipelines.spec.defaults import default_store
from pipelines.spec.errors import UserError


def cmd_prep(args: argparse.Namespace) -> int:
    from data_prep.kinds import prep_dataset
    from data_prep.prep import format_summary
    from pipelines.spec.from_options import prep_config

    result = prep_dataset(prep_config(vars(args)), progress=not args.no_progress)
    print(format_summary(result))
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    return {"ls": cmd_ls, "show": cmd_show, "verify": cmd_verify}[args.datasets_command](args)


def _dataset(args: argparse.Namespace):
    from data_prep.reader import open_dataset
    from pipelines.spec.datasets import dataset_url

    return open_dataset(dataset_url(args.name, args.store), s3_endpoint=args.s3_endpoint)


def cmd_ls(args: argparse.Namespace) -> int:
    from data_prep.catalog import list_datasets
    from data_prep.storage import open_store

    store = open_store(args.store or default_store(), s3_endpoint=args.s3_endpoint)
    found = list_datasets(store)
    if not found:
        print(f"no datasets in {store.url} — run `ganpipe prep`")
        return 0
    print(f"{'name':<24} {'kind':<10} {'train':>8} {'val':>6} {'test':>7} {'size':>9} {'ver':>4} "
          f"{'digest':<14} {'bytes':>14}")  # fmt: skip
    broken = [item for item in found if item.error]
    for item in found:
        m = item.manifest
        if item.error:
            print(f"{item.name:<24} (broken manifest.json: the reason is on stderr)")
            continue
        if m is None:
            print(f"{item.name:<24} (unfinished prep: {item.done} shards done; run prep again to finish)")
            continue
        c = m.counts
        size = f"{m.image_size}x{m.image_size}x{m.channels}"
        print(f"{m.name:<24} {m.kind:<10} {c.get('train', 0):>8,} {c.get('val', 0):>6,} {c.get('test', 0):>7,} "
              f"{size:>9} {m.version:>4} {m.digest[:12]:<14} {sum(s.bytes for s in m.shards):>14,}")  # fmt: skip
    print(f"store: {store.url}")
    for item in broken:  # stderr, one line each; exit status 1 so a script notices (as `datasets verify` does)
        print(f"ganpipe datasets ls: error: {item.error}", file=sys.stderr)
    return 1 if broken else 0


def cmd_show(args: argparse.Namespace) -> int:
    from data_prep.catalog import describe, preview

    store, manifest = _dataset(args)
    for line in describe(manifest, store.url):
        print(line)
    n = args.n // 2 if manifest.kind == "unpaired" else args.n
    grid, lines = preview(store, manifest, n=max(1, n), split=args.split)
    out = Path(args.out or f".ganpipe/show-{manifest.name}.png")
    out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(out)
    print(f"samples ({args.split}):")
    for line in lines:
        print(f"  {line}")
    print(f"wrote {out} ({grid.width}x{grid.height})")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from data_prep.catalog import verify_dataset

    store, manifest = _dataset(args)
    problems = verify_dataset(store, manifest)
    total = sum(s.samples for s in manifest.shards)
    if problems:
        for line in problems:
            print(f"MISMATCH {line}")
        print(f"{manifest.name} v{manifest.version}: {len(problems)} problem(s) in {len(manifest.shards)} shards")
        return 1
    print(f"{manifest.name} v{manifest.version}: OK — {len(manifest.shards)} shards, {total:,} samples match the "
          f"manifest (sha256, bytes, sample counts, index.parquet)")  # fmt: skip
    return 0


def cmd_bench_data(args: argparse.Namespace) -> int:
    import json

    from pipelines.ops.bench_data import format_table, run_all, write_json
    from pipelines.ops.feed_table import format_feed_table, scaling

    if args.from_json:
        try:
            results = json.loads(Path(args.from_json).read_text())
        except (OSError, ValueError) as exn:
            raise UserError(f"--from-json {args.from_json}: {exn} — give the JSON a bench-data run wrote "
                            "(--out)") from None
    else:
        results = run_all(images=args.images, size=args.size, workers=args.workers, shard_size=args.shard_size,
                          read_sizes=args.read_sizes, batch=args.batch, s3=not args.no_s3,
                          repeats=args.repeats, read_images=args.read_images, read_passes=args.read_passes,
                          prep=not (args.reads_only or args.decode_only), verify_reads=not args.decode_only,
                          decode_workers=args.decode_workers, decode_pools=args.decode_pools,
                          decode_sizes=args.decode_sizes)  # fmt: skip
    print(format_table(results))
    if not args.from_json:
        print(f"wrote {write_json(results, args.out)}")
    if args.feed_table:
        for pool in dict.fromkeys(r["pool"] for r in results if r.get("kind") == "decode"):
            ratios = "; ".join(f"{size} px: " + ", ".join(f"{w} workers {x:.2f}" for w, x in by.items())
                               for size, by in sorted(scaling(results, pool=pool).items()))  # fmt: skip
            print(f"\n{pool} pool, rate / (workers x rate of 1 worker): {ratios}")
            print(format_feed_table(results, pool=pool))
    return 0
