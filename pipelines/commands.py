"""The `ganpipe` subcommands; each takes the parsed arguments and returns an exit status."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from pipelines.cli import CliError, spec_from_args


def is_user_error(exc: BaseException) -> bool:
    """Errors caused by input the user can fix: shown as one line instead of a traceback."""
    from data_prep.reader import DatasetNotFound
    from data_prep.sources import SourceError
    from data_prep.storage import StoreError
    from pipelines.tracking import TrackingUnavailable

    return isinstance(exc, (CliError, StoreError, SourceError, DatasetNotFound, ValueError, FileNotFoundError,
                            TrackingUnavailable))


def cmd_prep(args: argparse.Namespace) -> int:
    from data_prep.kinds import prep_dataset
    from data_prep.prep import format_summary

    result = prep_dataset(prep_config(args), progress=not args.no_progress)
    print(format_summary(result))
    return 0


def prep_config(args: argparse.Namespace):
    """The PrepConfig of `ganpipe prep`'s parsed options (also what a pipeline's prep stage runs)."""
    from data_prep.options import AttributeOptions, CaptionOptions, PairedOptions, SourceOptions
    from data_prep.prep import PrepConfig

    if len(args.sources) > 2 or (len(args.sources) == 2 and args.kind != "unpaired"):
        raise CliError(f"give one SOURCE (two only with --format unpaired), got {' '.join(args.sources)}")
    holdout = int(args.holdout) if args.holdout >= 1 else args.holdout
    attrs = tuple(a.strip() for a in args.attrs.split(",") if a.strip()) if args.attrs else None
    cfg = PrepConfig(
        source=args.sources[0], kind=args.kind, name=args.name, store=args.store or ".ganpipe/store",
        image_size=args.image_size, channels=args.channels, holdout=holdout, shard_size=args.shard_size,
        image_format=args.image_format, seed=args.seed, s3_endpoint=args.s3_endpoint, min_size=args.min_size,
        max_aspect=args.max_aspect, max_bad_frac=args.max_bad_frac, workers=args.workers, overwrite=args.overwrite,
        inputs=SourceOptions(
            source_b=args.sources[1] if len(args.sources) == 2 else None, images=args.images,
            file_column=args.file_column, image_column=args.image_column, caption_column=args.caption_column,
            crops=args.crops, limit=args.limit,
        ),
        paired=PairedOptions(derive=args.derive, direction=args.direction, superres_factor=args.superres_factor,
                             canny_sigma=args.canny_sigma),
        attributes=AttributeOptions(attrs=attrs, center_crop=args.center_crop),
        captioned=CaptionOptions(text_encoder=args.text_encoder, embed_batch=args.embed_batch,
                                 captions_per_image=args.captions_per_image),
    )
    return cfg


def cmd_config(args: argparse.Namespace) -> int:
    spec = spec_from_args(args)
    width = max(len(k) for k in spec.flat())
    for key, value in spec.flat().items():
        print(f"{key:<{width}}  {value!r}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from pipelines.train import train

    outcome = train(spec_from_args(args), progress=not args.no_progress)
    print(f"\nrun {outcome.run_name}: {outcome.steps} steps, MLflow run {outcome.run_id}")
    for key, value in sorted(outcome.metrics.items()):
        print(f"  {key:<22} {value:.4f}")
    print(f"registered {outcome.model_uri} (alias {outcome.spec.track.alias})")
    print(f"use it:    {usage_hint(outcome.spec.family, f'models:/{outcome.model_name}@{outcome.spec.track.alias}')}")
    return 0


def usage_hint(family: str, model: str) -> str:
    """The command that puts a freshly registered generator of `family` to use."""
    from gan_models import get_family

    kind = get_family(family).dataset_kind
    if kind == "captioned":
        return f'ganpipe generate --model {model} --prompt "a caption" --out generated.png'
    if kind == "attributes":
        return f"ganpipe translate --model {model} --input IMAGES --out OUT --set NAME=1"
    if kind in ("paired", "unpaired"):
        return f"ganpipe translate --model {model} --input IMAGES --out OUT"
    return f"ganpipe sample --model {model}"


def cmd_sample(args: argparse.Namespace) -> int:
    import torch

    from pipelines.figures import interpolation_figure, save_png, upscale
    from pipelines.loop import sample_grid
    from pipelines.model_loading import load_generator

    generator, latent_shape = load_generator(args.model, tracking_uri=args.tracking_uri)
    g = torch.Generator().manual_seed(args.seed)
    z = torch.randn((args.n, *latent_shape), generator=g)
    out = save_png(upscale(sample_grid(generator, z), args.scale), args.out)
    print(f"wrote {out} ({args.n} samples from {args.model})")
    if args.interpolate:
        ends = torch.randn((args.interpolate + 1, *latent_shape), generator=g)
        strip = Path(args.out).with_name(Path(args.out).stem + "-interpolation.png")
        save_png(upscale(interpolation_figure(generator, ends), args.scale), strip)
        print(f"wrote {strip}")
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    from pipelines.tracking import resolve_tracking_uri

    uri = resolve_tracking_uri(args.tracking_uri)
    print(f"MLflow UI for {uri} at http://{args.host}:{args.port} (Ctrl-C stops it)")
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", args.host,
           "--port", str(args.port)]
    return subprocess.call(cmd)


def cmd_demo(args: argparse.Namespace) -> int:
    if args.family in ("pix2pix", "cyclegan"):
        from pipelines.i2i_demo import run_i2i_demo

        out = Path(args.out or f".ganpipe/demo-{args.family}")
        return run_i2i_demo(family=args.family, steps=args.steps, workers=args.workers, out=out)
    from pipelines.demo import run_demo

    if args.family in ("stargan", "text2img"):
        from pipelines.conditional_demo import run_conditional_demo

        out = Path(args.out or f".ganpipe/demo-{args.family}")
        return run_conditional_demo(family=args.family, steps=args.steps, workers=args.workers, out=out)
    return run_demo(steps=args.steps, workers=args.workers, out=Path(args.out or ".ganpipe/demo"))


def cmd_translate(args: argparse.Namespace) -> int:
    from pipelines.translate_cmd import cmd_translate as run

    return run(args)


def cmd_bench(args: argparse.Namespace) -> int:
    from pipelines.bench import bench, format_table, write_json

    overrides = dict(item.split("=", 1) for item in args.overrides)
    results = [
        bench(family=args.family, image_size=size, channels=args.channels, batch=batch, device=args.device,
              steps=args.steps, warmup=args.warmup, repeats=args.repeats, amp=args.amp, overrides=overrides)
        for size in args.image_size for batch in args.batch
    ]
    print(format_table(results))
    print(f"wrote {write_json(results, args.out)}")
    return 0


def cmd_services(args: argparse.Namespace) -> int:
    from pipelines.services import cmd_services

    return cmd_services(args)


def cmd_submit(args: argparse.Namespace) -> int:
    from pipelines.jobs import cmd_submit

    return cmd_submit(args)


def cmd_jobs(args: argparse.Namespace) -> int:
    from pipelines.jobs import cmd_jobs

    return cmd_jobs(args)


def cmd_eval(args: argparse.Namespace) -> int:
    from pipelines.eval_cmd import cmd_eval as run

    return run(args)


def cmd_models(args: argparse.Namespace) -> int:
    from pipelines.registry import cmd_models as run

    return run(args)


def cmd_promote(args: argparse.Namespace) -> int:
    from pipelines.registry import cmd_promote as run

    return run(args)


def cmd_generate(args: argparse.Namespace) -> int:
    from pipelines.conditional_cmd import cmd_generate as run

    return run(args)


def cmd_run(args: argparse.Namespace) -> int:
    from pipelines.orchestrate import cmd_run as run

    return run(args)


def cmd_runs(args: argparse.Namespace) -> int:
    from pipelines.lineage import cmd_runs as run

    return run(args)


def cmd_lineage(args: argparse.Namespace) -> int:
    from pipelines.lineage import cmd_lineage as run

    return run(args)


def cmd_sweep(args: argparse.Namespace) -> int:
    from pipelines.sweep import cmd_sweep as run

    return run(args)
