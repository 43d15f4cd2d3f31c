"""`ganpipe datasets ls|show|verify` and `ganpipe bench-data`: parsers and handlers, kept out of cli.py.

Each handler takes the parsed arguments and returns an exit status; heavy imports happen inside them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipelines.argtypes import positive_int

DEFAULT_STORE = ".ganpipe/store"


def _store_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", default=None, help=f"object store URL: a folder or s3://bucket/prefix ({DEFAULT_STORE})")
    p.add_argument("--s3-endpoint", default=None,
                   help="S3 API endpoint, e.g. http://127.0.0.1:8333 (default: $GANPIPE_S3_ENDPOINT, then AWS)")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register `datasets` and `bench-data` on the `ganpipe` sub-command parser."""
    p = sub.add_parser("datasets", help="list, inspect and verify prepared datasets",
                       description="Datasets in a store: `ls` lists them, `show NAME` summarises one and writes a "
                                   "sample grid PNG, `verify NAME` re-hashes every shard against the manifest.")
    dsub = p.add_subparsers(dest="datasets_command", metavar="ACTION", required=True)
    q = dsub.add_parser("ls", help="name, kind, counts, image size, version, digest, bytes of each dataset; "
                                   "exit status 1 when a manifest is broken (the others are still listed)")
    _store_args(q)
    q.set_defaults(handler=cmd_ls)
    q = dsub.add_parser("show", help="manifest summary, and a sample grid PNG of the dataset's kind")
    q.add_argument("name", help="dataset name in the store")
    q.add_argument("--n", type=positive_int, default=16, help="samples to show (default 16; 8 per domain for unpaired)")
    q.add_argument("--split", default="train")
    q.add_argument("--out", help="PNG to write (default .ganpipe/show-NAME.png)")
    _store_args(q)
    q.set_defaults(handler=cmd_show)
    q = dsub.add_parser("verify", help="re-hash every shard and count its samples; exit status 1 on any mismatch")
    q.add_argument("name", help="dataset name in the store")
    _store_args(q)
    q.set_defaults(handler=cmd_verify)

    p = sub.add_parser("bench-data", help="data throughput: prep (1 and 2 Ray workers vs a bare loop) and reading",
                       description="Makes JPEG inputs from scikit-image's photos, then measures prep images/s "
                                   "(256x256 JPEG -> PNG shards) against a bare decode-resize-encode-tar loop, and "
                                   "read images/s into batches from local disk and from a SeaweedFS started on "
                                   "127.0.0.1. Prints a table and writes JSON.")
    p.add_argument("--images", type=positive_int, default=400, help="JPEG inputs to make (default 400)")
    p.add_argument("--size", type=positive_int, default=256, help="prep output side (default 256)")
    p.add_argument("--workers", type=positive_int, nargs="+", default=[1, 2], help="Ray worker counts (default 1 2)")
    p.add_argument("--shard-size", type=positive_int, default=50, help="samples per shard (default 50)")
    p.add_argument("--read-sizes", type=positive_int, nargs="+", default=[64, 256],
                   help="read benchmark sides (64 256)")
    p.add_argument("--read-images", type=positive_int, default=3000,
                   help="images in each read benchmark dataset (3000)")
    p.add_argument("--batch", type=positive_int, default=64, help="read batch size (default 64)")
    p.add_argument("--repeats", type=positive_int, default=3,
                   help="interleaved prep rounds; medians reported (default 3)")
    p.add_argument("--read-passes", type=positive_int, default=4,
                   help="interleaved epochs with and without shard verification per read (default 4; best img/s "
                        "shown, verification cost = median over the passes)")
    p.add_argument("--reads-only", action="store_true", help="skip the prep benchmark, measure reads only")
    p.add_argument("--no-s3", action="store_true", help="skip the SeaweedFS read benchmark")
    p.add_argument("--out", default=".ganpipe/bench-data.json")
    p.set_defaults(handler=cmd_bench_data)


def _dataset(args: argparse.Namespace):
    from data_prep.reader import open_dataset
    from data_prep.storage import open_store

    root = open_store(args.store or DEFAULT_STORE, s3_endpoint=args.s3_endpoint)
    store, manifest = open_dataset(f"{root.url.rstrip('/')}/datasets/{args.name}", s3_endpoint=args.s3_endpoint)
    return store, manifest


def cmd_ls(args: argparse.Namespace) -> int:
    from data_prep.catalog import list_datasets
    from data_prep.storage import open_store

    store = open_store(args.store or DEFAULT_STORE, s3_endpoint=args.s3_endpoint)
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
    from pipelines.bench_data import format_table, run_all, write_json

    results = run_all(images=args.images, size=args.size, workers=args.workers, shard_size=args.shard_size,
                      read_sizes=args.read_sizes, batch=args.batch, s3=not args.no_s3,
                      repeats=args.repeats, read_images=args.read_images, read_passes=args.read_passes,
                      prep=not args.reads_only)  # fmt: skip
    print(format_table(results))
    print(f"wrote {write_json(results, args.out)}")
    return 0
