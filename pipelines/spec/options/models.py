"""Options of the commands that use a registered model: `sample`, `eval`, `translate`, `generate`, `models ls`,
`promote`."""

from __future__ import annotations

import argparse
from typing import Any

from pipelines.spec.argtypes import non_negative_int, positive_int
from pipelines.spec.defaults import DEFAULT_EVAL_N as DEFAULT_N
from pipelines.spec.defaults import KID_SUBSET_SIZE, KID_SUBSETS
from pipelines.spec.defaults import TRANSLATE_BATCH as DEFAULT_BATCH
from pipelines.spec.options.common import add_tracking_arg


def add_parsers(sub: Any) -> None:
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
    add_tracking_arg(p)


    p = sub.add_parser(
        "eval", help="FID/KID (with local Inception weights), offline evaluator and task metrics of a model",
        description="Generate --n samples from a registered generator (or a run's), compare them with the "
                    "dataset's held-out split (its train split if it has none) and log eval/* to a new MLflow "
                    "run nested under the model's training run. Real-data statistics are cached per dataset "
                    "manifest in <store>/cache/stats/. Nothing is downloaded: FID/KID need --inception-weights.",
        epilog="examples:\n  ganpipe eval --model models:/dcgan-mnist5k@candidate --n 1000\n"
               "  ganpipe eval --model models:/dcgan-mnist5k/3 --inception-weights pt_inception-2015-12-05.pth",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, help="models:/NAME@ALIAS, models:/NAME/VERSION or a run id")
    p.add_argument("--n", type=int, default=DEFAULT_N, help=f"generated samples (default {DEFAULT_N})")
    p.add_argument("--seed", type=int, default=0, help="seed of the latents and of KID's subsets")
    p.add_argument("--inception-weights", metavar="PATH",
                   help="local Inception-v3 state dict (pytorch-fid's pt_inception-2015-12-05 or torchvision's "
                        "inception_v3_google); without it FID/KID are skipped")
    p.add_argument("--dataset", help="dataset name in --store or a dataset URL (default: the model's training set)")
    p.add_argument("--split", help="real split to compare with (default: test if the dataset has one, else train)")
    p.add_argument("--n-real", type=int, help="use only the first N real images of the split (default: all)")
    p.add_argument("--kid-subsets", type=int, default=KID_SUBSETS, help=f"KID subsets (default {KID_SUBSETS})")
    p.add_argument("--kid-subset-size", type=int, default=KID_SUBSET_SIZE,
                   help=f"KID subset size, capped at the smaller set (default {KID_SUBSET_SIZE})")
    add_tracking_arg(p)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--store", default=None, help="store for the dataset and the caches (default: the model's)")
    p.add_argument("--s3-endpoint", default=None, help="S3 API endpoint (default: $GANPIPE_S3_ENDPOINT, then AWS)")

    p = sub.add_parser(
        "translate", help="run a registered image-to-image model (pix2pix, cyclegan, stargan) over a folder of images",
        description="Translate every image of --input (a folder, not recursive, or one file) with a registered "
                    "Pix2Pix, CycleGAN or StarGAN generator and write OUT/<input stem>.png at the model's image "
                    "size. Inputs are converted to the model's channels and fitted as `ganpipe prep` fits images "
                    "(shorter side resized, centre crop). Files that are not images or are corrupt are listed "
                    "with the reason and skipped; the exit status is then 1. StarGAN: --set names the attributes "
                    "to change (the others keep the input's own, estimated by the dataset's attribute evaluator), "
                    "and OUT/attribute-grid.png shows every single-attribute change of each input.",
        epilog="examples:\n  ganpipe translate --model models:/pix2pix-mnist5k-edges@champion --input edges/ "
               "--out digits/\n  ganpipe translate --model models:/cyclegan-digits-mnist5k@champion --input mnist/ "
               "--out as-digits/ --direction BtoA\n  ganpipe translate --model "
               "models:/stargan-mnist5k-attributes@candidate --input digits/ --out blue/ --set blue=1,thick=1",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, help="models:/NAME@ALIAS, models:/NAME/VERSION or a run id")
    p.add_argument("--input", required=True, help="a folder of images (not recursive) or one image file")
    p.add_argument("--out", required=True, help="output folder (created); files keep the input stem, as .png")
    p.add_argument("--direction", choices=("AtoB", "BtoA"),
                   help="dataset a -> b or b -> a (default: the model's own; CycleGAN models have both)")
    p.add_argument("--set", metavar="NAME=0|1,...",
                   help="StarGAN: attributes to set (names from the model's dataset); without it only the grid")
    p.add_argument("--source", metavar="NAME=0|1,...",
                   help="StarGAN: the inputs' own attributes (unnamed ones 0), instead of the attribute evaluator's "
                        "estimate (which needs the model's dataset)")
    p.add_argument("--batch", type=int, default=DEFAULT_BATCH,
                   help=f"images per forward pass (default {DEFAULT_BATCH})")
    add_tracking_arg(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = sub.add_parser(
        "generate", help="images from a text prompt with a registered text-to-image (GAN-CLS) generator",
        description="Encode the prompt with the text encoder the model was trained with and write a grid of "
                    "samples, or with --interpolate a strip between two prompts (one z per row).",
        epilog='examples:\n  ganpipe generate --model models:/text2img-mnist5k-captioned@champion '
               '--prompt "a thick red seven" --n 16 --out red7.png\n'
               '  ganpipe generate --model models:/text2img-mnist5k-captioned@champion '
               '--interpolate "a red one" "a blue eight" --out strip.png',
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, help="models:/NAME@ALIAS, models:/NAME/VERSION or a run id")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--prompt", help="the caption to draw")
    what.add_argument("--interpolate", nargs=2, metavar=("PROMPT_A", "PROMPT_B"),
                      help="write a strip from PROMPT_A to PROMPT_B instead")
    p.add_argument("--n", type=int, help="samples in the grid (default 16); rows of the strip (default 4)")
    p.add_argument("--steps", type=int, default=8, help="columns of the interpolation strip (default 8)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=".ganpipe/generated.png", help="output PNG (default .ganpipe/generated.png)")
    p.add_argument("--scale", type=int, default=2, help="pixel enlargement of the PNG (default 2)")
    p.add_argument("--text-encoder", metavar="minilm|PATH",
                   help="sentence encoder for the prompt (default: the packaged MiniLM, if the model was trained "
                        "with it); must be the model's")
    add_tracking_arg(p)

    p = sub.add_parser("models", help="list registered models and their versions (aliases, metrics, dataset)")
    models_sub = p.add_subparsers(dest="models_command", metavar="SUBCOMMAND", required=True)
    ls = models_sub.add_parser("ls", help="registered models, or the versions of one",
                               description="Without NAME: every registered model with its aliases. With NAME: "
                                           "every version, its aliases, creation time, dataset digest, run and "
                                           "key metrics (of its latest `ganpipe eval`, else of training).")
    ls.add_argument("name", nargs="?", help="registered model name")
    add_tracking_arg(ls)

    p = sub.add_parser(
        "promote", help="move the champion alias to a version that beats the champion on an eval metric",
        description="Compare the candidate with the current champion on one metric over the same evaluation "
                    "set (dataset digest, split, n, seed and feature network, from `ganpipe eval` runs); move "
                    "`champion` only if the candidate is strictly better, or with --force. The reason is stored "
                    "on the candidate as the model-version tag ganpipe.promotion. Exit status 1 if not promoted.",
        epilog="example:\n  ganpipe eval --model models:/dcgan-mnist5k@candidate\n"
               "  ganpipe promote dcgan-mnist5k --metric eval/fd --mode min",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("name", help="registered model name")
    p.add_argument("--version", help="candidate version (default: the `candidate` alias, else the newest)")
    p.add_argument("--metric", required=True, help="an eval metric, e.g. eval/fid, eval/kid, eval/fd, eval/cls_score")
    p.add_argument("--mode", required=True, choices=("min", "max"), help="min: lower is better; max: higher is better")
    p.add_argument("--force", action="store_true", help="promote even if the candidate does not win (recorded)")
    add_tracking_arg(p)
