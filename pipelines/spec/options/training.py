"""Options of the training commands: `train`, `config` (the same options, printed) and `sweep`."""

from __future__ import annotations

import argparse
from typing import Any

from pipelines.spec.argtypes import non_negative_float, non_negative_int, positive_int
from pipelines.spec.options.common import add_store_args, add_tracking_arg

SWEEP_EPILOG = """\
search spaces (--space): `default` is the family's entry in pipelines/spec/sweep_space.py (the paper's λs):
  pix2pix   model.lambda_l1 log-uniform [1, 300)              (paper: 100)
  cyclegan  lambda_cycle log-uniform [1, 30) -> model.lambda_a and model.lambda_b (paper: 10),
            model.lambda_identity uniform [0, 1)                (paper: 0.5)
  stargan   model.lambda_cls, model.lambda_rec, model.lambda_gp  (paper: 1, 10, 10)
  text2img  model.wrong_weight, model.int_beta (GAN-CLS / GAN-INT; paper: 0.5, 0.5)
  dcgan     model.lr_g, model.lr_d log-uniform [5e-5, 2e-3)   (paper: 2e-4)
  vanilla   model.lr_g, model.lr_d                              (repo: 0.1, 0.05)
or a YAML file, one entry per searched key (ranges are half-open, as Tune draws them):
  model.lambda_l1: {loguniform: [1, 300]}
  model.lambda_identity: {uniform: [0, 1]}
  data.batch_size: {choice: [16, 32, 64]}
  model.ngf: {randint: [16, 65]}
  model.lr: {grid: [1.0e-4, 2.0e-4, 4.0e-4]}
  lambda_cycle: {loguniform: [1, 30], sets: [model.lambda_a, model.lambda_b]}   # one value, several keys

schedulers: asha stops trials whose metric is in the worse half at each rung (report_every x 2^k steps);
  pbt replaces the worst quarter of trials by copies of the best quarter's checkpoints every report_every
  steps and perturbs their λs and learning rates (x0.8/x1.2 or redrawn): a changed λ applies from the copied
  checkpoint's step on, a changed learning rate replaces the optimizer's; none runs every trial to the end.
A trial whose losses become NaN/inf stops itself and is recorded as diverged; the sweep goes on.

examples:
  ganpipe sweep --family dcgan --dataset digits --num-samples 8 --metric eval/fd --mode min --steps 400
  ganpipe sweep --family dcgan --dataset digits --space lr.yaml --search grid --num-samples 5 \\
                --metric eval/fd --mode min
  ganpipe sweep --family dcgan --dataset digits --name lr1 ...     # run again with --name lr1 to resume
"""


def add_parsers(sub: Any) -> None:
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
    add_train_args(p)

    p = sub.add_parser("config", help="print the resolved configuration of a recipe with overrides",
                       description="Shows every key you can override and its value after overrides.")
    add_train_args(p, for_config=True)


    p = sub.add_parser(
        "sweep", help="search a family's λs / learning rates with Ray Tune (ASHA, PBT), tracked in MLflow",
        description="Train --num-samples configurations drawn from a search space as Ray Tune trials; each trial "
                    "evaluates, checkpoints and reports every --report-every steps. MLflow: one parent run per "
                    "sweep (trials.csv, params_vs_metric.png, the best trial), one child run per trial. The best "
                    "trial's generator is registered with alias `candidate`. The same --name again resumes.",
        epilog=SWEEP_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--family", required=True, help="GAN family (its paper recipe is the base configuration)")
    p.add_argument("--recipe", help="base recipe instead of the family's paper recipe (e.g. dcgan-mnist5k-demo)")
    p.add_argument("--dataset", help="dataset name in the store, or a dataset URL")
    p.add_argument("--space", default="default", help="`default` (the family's λs) or a YAML file (see below)")
    p.add_argument("--num-samples", type=positive_int, default=8,
                   help="configurations to draw (random, optuna); grid points per range (grid). Default 8")
    p.add_argument("--metric", required=True, help="what to optimise: eval/fd, eval/cls_score, "
                                                   "eval/confident_share (labelled images), loss/*, d/*")
    p.add_argument("--mode", required=True, choices=("min", "max"), help="min: lower is better")
    p.add_argument("--scheduler", default="asha", choices=("asha", "pbt", "none"), help="default asha")
    p.add_argument("--search", default="random", choices=("random", "grid", "optuna"),
                   help="random draws; grid: every range as --num-samples evenly (log-)spaced points, all "
                        "combinations; optuna: TPE (pip install 'ganpipe[optuna]')")
    p.add_argument("--max-concurrent", type=non_negative_int, default=0,
                   help="trials at once (default: as many as fit)")
    p.add_argument("--workers-per-trial", type=positive_int, default=1,
                   help="1 (default): the trial trains in its own process; >1: a Ray Train TorchTrainer per trial")
    p.add_argument("--gpus-per-worker", type=non_negative_float, default=0.0, help="GPUs per worker (default 0: CPU)")
    p.add_argument("--steps", type=positive_int, help="training steps per trial (loop.steps)")
    p.add_argument("--report-every", type=non_negative_int, default=0,
                   help="steps between a trial's evaluations, checkpoints and Tune reports (default steps/4)")
    p.add_argument("--name", help="sweep name (default FAMILY-DATASET-sweep-TIME); the same name resumes")
    add_tracking_arg(p, default=None)
    p.add_argument("--register-as", help="registered model name (default FAMILY-DATASET)")
    p.add_argument("--no-progress", action="store_true", help="no Tune progress table")
    add_store_args(p)
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="base config overrides, e.g. model.ngf=32 data.batch_size=32 (see `ganpipe config`)")


def add_train_args(p: argparse.ArgumentParser, *, for_config: bool = False) -> None:
    p.add_argument("--recipe", help="named recipe (a family's name for its paper defaults, or dcgan-mnist5k-demo); "
                   "default: --family's")
    p.add_argument("--family", help="GAN family: vanilla, dcgan, pix2pix, cyclegan, stargan, text2img")
    p.add_argument("--dataset", help="dataset name in the store, or a dataset URL")
    p.add_argument("--workers", type=non_negative_int, help="Ray Train workers; 0 trains in this process without Ray")
    p.add_argument("--gpus", action="store_true", help="one GPU per worker (AMP, channels_last, DDP over NCCL)")
    p.add_argument("--steps", type=positive_int, help="training steps (loop.steps)")
    p.add_argument("--run-name", help="run name; the same name again resumes from its last checkpoint")
    add_tracking_arg(p, default=None)
    p.add_argument("--register-as", help="registered model name (default FAMILY-DATASET)")
    p.add_argument("--alias", help="alias for the new model version (default candidate)")
    add_store_args(p)
    if not for_config:
        p.add_argument("--no-progress", action="store_true",
                       help="no bars: a plain progress line every loop.log_every steps, as in a log file")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="config overrides, e.g. loop.steps=500 model.ngf=32 (see `ganpipe config`)")
