"""`ganpipe sample`, `eval`, `translate`, `generate`, `models ls` and `promote`: parsed options in, printed results
out. The work is in pipelines.inference, pipelines.evaluation and pipelines.tracking."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipelines.tracking.registry import missing_is_user_error


def cmd_sample(args: argparse.Namespace) -> int:
    from pipelines.inference.sample import sample_to_png

    with missing_is_user_error():
        grid, *strip = sample_to_png(model=args.model, out=args.out, n=args.n, seed=args.seed,
                                     interpolate=args.interpolate, scale=args.scale, tracking_uri=args.tracking_uri)
    print(f"wrote {grid} ({args.n} samples from {args.model})")
    for path in strip:
        print(f"wrote {path}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from pipelines.evaluation.evaluate import evaluate_model

    with missing_is_user_error():
        out = evaluate_model(
            model=args.model, tracking_uri=args.tracking_uri, n=args.n, seed=args.seed,
            inception_weights=args.inception_weights, dataset=args.dataset, store=args.store, split=args.split,
            n_real=args.n_real, kid_subsets=args.kid_subsets, kid_subset_size=args.kid_subset_size,
            progress=not args.no_progress,
        )
    for key, value in sorted(out.metrics.items()):
        print(f"  {key:<22} {value:.6g}")
    print(f"logged to MLflow run {out.run_id} (nested under {out.model.run_id}); compare versions with "
          f"`ganpipe models ls {out.model.name or ''}`".rstrip())
    return 0


def cmd_translate(args: argparse.Namespace) -> int:
    from pipelines.inference.translate import translate_files

    with missing_is_user_error():
        if _family(args.model, args.tracking_uri) == "stargan":
            return _translate_attributes(args)
        if args.set or args.source:
            raise ValueError("--set and --source are for a StarGAN model's inputs; "
                             f"{args.model} is not a StarGAN model")
        outcome = translate_files(model=args.model, input_path=args.input, out=args.out, direction=args.direction,
                                  tracking_uri=args.tracking_uri, batch=args.batch, progress=not args.no_progress)
    for path, reason in outcome.skipped:
        print(f"ganpipe translate: skipped {path}: {reason}", file=sys.stderr)
    total = len(outcome.written) + len(outcome.skipped)
    print(f"translated {len(outcome.written)} of {total} files to {args.out} ({outcome.model}, {outcome.direction})"
          + (f"; {len(outcome.skipped)} skipped (listed above)" if outcome.skipped else ""))
    return 1 if outcome.skipped else 0



def _family(model: str, tracking_uri: str) -> str:
    from pipelines.tracking.loading import describe, training_config

    card = describe(model, tracking_uri=tracking_uri)  # refuses anything but the torch.export archive
    return training_config(card, tracking_uri=tracking_uri).get("family", "")



def _translate_attributes(args: argparse.Namespace) -> int:
    from pipelines.inference.conditional import parse_settings, translate_attributes
    from pipelines.tracking.loading import model_info

    names = list(model_info(args.model, args.tracking_uri).data["attributes"])
    settings = parse_settings(args.set, names) if args.set else None
    source = parse_settings(args.source, names) if args.source else None
    report = translate_attributes(args.model, [Path(args.input)], Path(args.out), settings,
                                  tracking_uri=args.tracking_uri, source=source, scale=1)
    for path, reason in report.skipped:
        print(f"ganpipe translate: skipped {path}: {reason}", file=sys.stderr)
    if settings:
        print(f"translated {len(report.outputs)} files to {args.out} with {args.set} (inputs' other attributes: "
              f"{report.source_from})")
    print(f"wrote {report.grid} (rows: inputs; columns: {', '.join(report.grid_columns)})")
    return 1 if report.skipped else 0


def cmd_generate(args: argparse.Namespace) -> int:
    from pipelines.evaluation.figures import save_png, upscale
    from pipelines.inference.conditional import generate_from_prompts

    with missing_is_user_error():
        grid = generate_from_prompts(args.model, prompt=args.prompt, interpolate=args.interpolate, n=args.n,
                                     steps=args.steps, seed=args.seed, tracking_uri=args.tracking_uri,
                                     text_encoder=args.text_encoder)
    out = save_png(upscale(grid, args.scale), args.out)
    what = f"{args.n or 16} samples of {args.prompt!r}" if args.prompt else (
        f"{args.n or 4} rows from {args.interpolate[0]!r} to {args.interpolate[1]!r}")
    print(f"wrote {out} ({what}, {args.model})")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from pipelines.tracking.registry import list_models
    from pipelines.tracking.runs import client, resolve_tracking_uri

    with missing_is_user_error():
        return list_models(mlf=client(resolve_tracking_uri(args.tracking_uri)), name=args.name)



def cmd_promote(args: argparse.Namespace) -> int:
    from pipelines.tracking.registry import CHAMPION, promote
    from pipelines.tracking.runs import client, resolve_tracking_uri

    mlf = client(resolve_tracking_uri(args.tracking_uri))
    with missing_is_user_error():
        d = promote(mlf=mlf, name=args.name, metric=args.metric, mode=args.mode, version=args.version,
                    force=args.force)
    if d.candidate == d.previous:
        print(f"unchanged: {args.name} v{d.candidate} already is {CHAMPION}")
        return 0
    if d.promoted:
        print(f"promoted {args.name} v{d.candidate} to {CHAMPION}"
              f"{f' (was v{d.previous})' if d.previous else ''}: {d.reason}")
        return 0
    print(f"not promoted: {args.name} v{d.candidate}: {d.reason}")
    return 1
