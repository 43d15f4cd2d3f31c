"""Options of the operations commands: `ui`, `demo`, `bench`, `services`, `submit`, `jobs`."""

from __future__ import annotations

import argparse
from typing import Any

from pipelines.spec.argtypes import non_negative_float, non_negative_int, positive_int
from pipelines.spec.defaults import COMPILE_MODES, DEMO_FAMILIES, FORWARDED_ENV, LAYOUTS
from pipelines.spec.options.common import add_tracking_arg


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("ui", help="start the MLflow UI on the configured tracking store (127.0.0.1)")
    p.add_argument("--port", type=positive_int, default=5000)
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    add_tracking_arg(p)

    p = sub.add_parser("demo", help="the main job: prep mnist5k, train DCGAN on 2 Ray workers, register, "
                                    "draw pictures, check the digits are recognisable (--family: the other demos)")
    p.add_argument("--family", choices=DEMO_FAMILIES, default="dcgan",
                   help="dcgan (default); pix2pix: edges -> digits on mnist5k; cyclegan: digits <-> mnist5k; "
                        "stargan: digit and colour as attributes; text2img: captioned coloured digits")
    p.add_argument("--steps", type=positive_int, default=None, help="training steps (default: the demo recipe's)")
    p.add_argument("--workers", type=non_negative_int, default=None, help="Ray Train workers (default 2)")
    p.add_argument("--seed", type=non_negative_int, default=None,
                   help="loop.seed: weights, latents and data order (default: the demo recipe's, 0)")
    p.add_argument("--out", default=None, help="folder for the pictures (default .ganpipe/demo, or "
                                               ".ganpipe/demo-FAMILY with --family pix2pix|cyclegan)")

    p = sub.add_parser("bench", help="training-step throughput on synthetic data (img/s); writes JSON",
                       description="Median images/s of train_step over repeats after warm-up, on synthetic "
                                   "in-memory data. Several --compile/--precision/--layout values are timed in "
                                   "one process, interleaved (each repeat is one round over all settings, "
                                   "its order rotated), with each setting's ratio to the first one. "
                                   "Needs only torch (no Ray, no MLflow).")
    p.add_argument("--family", default="dcgan")
    p.add_argument("--image-size", type=positive_int, nargs="+", default=[64])
    p.add_argument("--channels", type=positive_int, default=3)
    p.add_argument("--batch", type=positive_int, nargs="+", default=[64])
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--amp", action="store_true",
                   help="bf16 autocast and channels_last, as loop.precision=bf16 trains (fast on AVX512-BF16 CPUs)")
    p.add_argument("--compile", nargs="+", choices=COMPILE_MODES, default=["off"], metavar="MODE",
                   help=f"torch.compile mode of every network, as loop.compile ({', '.join(COMPILE_MODES)}); "
                        "several: each is timed, interleaved (default off)")
    p.add_argument("--precision", nargs="+", choices=("fp32", "bf16"), default=None,
                   help="fp32 and/or bf16 autocast, interleaved (default fp32; --amp is --precision bf16)")
    p.add_argument("--layout", nargs="+", choices=LAYOUTS, default=["auto"],
                   help="memory layout of weights and activations (auto: channels_last on GPUs, and with bf16 on "
                        "CPUs unless the family's Adam is fused, as training picks with loop.layout=auto)")
    p.add_argument("--explain", action="store_true",
                   help="time nothing: list each network's graphs and graph breaks under torch.compile "
                        "(torch._dynamo.explain on its inputs in one train step)")
    p.add_argument("--steps", type=positive_int, default=10, help="steps per timed repeat")
    p.add_argument("--repeats", type=positive_int, default=5, help="timed rounds (each times every setting once)")
    p.add_argument("--warmup", type=non_negative_int, default=3)
    p.add_argument("--out", default=".ganpipe/bench.json")
    p.add_argument("overrides", nargs="*", help="model config key=value (e.g. ngf=32)")

    p = sub.add_parser(
        "services", help="start/stop/check a local SeaweedFS S3 store and MLflow server (127.0.0.1)",
        description="Background SeaweedFS (S3 API, with an identity file and a bucket) and `mlflow server` "
                    "(sqlite, artifacts in the bucket), files under .ganpipe/services/. While they run, "
                    "ganpipe commands started in this folder use them through .ganpipe/services/env.",
    )
    p.add_argument("action", choices=("up", "down", "status"))
    p.add_argument("--s3-port", type=non_negative_int, default=8333, help="S3 API port (default 8333; 0: a free port)")
    p.add_argument("--mlflow-port", type=non_negative_int, default=5000,
                   help="MLflow port (default 5000; 0: a free port)")
    p.add_argument("--bucket", default="ganpipe", help="bucket created on the store (default ganpipe)")
    p.add_argument("--timeout", type=non_negative_float, default=120.0,
                   help="seconds to wait for each service to be healthy")

    p = sub.add_parser(
        "submit", help="run a ganpipe command on a Ray cluster as a Ray job (Jobs API)",
        description="Submit `ganpipe COMMAND ...` as a Ray job. The project goes along as the job's working_dir "
                    "(or use --pip/--image on clusters that install ganpipe). Only non-secret settings are "
                    f"forwarded ({', '.join(FORWARDED_ENV)}); credentials must be in the cluster's environment.",
        epilog="examples:\n  ganpipe submit --address http://HEAD:8265 --gpus 4 -- train --recipe dcgan "
               "--store s3://bucket/team\n  ganpipe submit -- prep mnist5k --store s3://bucket/team",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_address(p)
    p.add_argument("--workers", type=non_negative_int, help="Ray Train workers of a training command (scale.workers=N)")
    p.add_argument("--gpus", type=positive_int, help="N GPU workers, one GPU each (scale.workers=N scale.use_gpu=true)")
    p.add_argument("--working-dir", help="folder shipped as the job's working_dir (default: this project)")
    p.add_argument("--no-working-dir", action="store_true", help="ship no code: the nodes have ganpipe installed")
    p.add_argument("--pip", action="append", metavar="SPEC", help="pip requirement for the job (repeatable)")
    p.add_argument("--image", help="container image for the job (runtime_env image_uri)")
    p.add_argument("--env", action="append", metavar="NAME",
                   help="also forward this (non-secret) environment variable (repeatable)")
    p.add_argument("--submission-id", help="job id to use (default: Ray picks one)")
    p.add_argument("--follow", action="store_true",
                   help="stream the logs until the job ends; exit status 1 unless it succeeded")
    p.add_argument("inner", nargs=argparse.REMAINDER, metavar="-- COMMAND ...", help="the ganpipe command to run")

    p = sub.add_parser("jobs", help="list Ray jobs, show one's status or logs, stop one",
                       description="Ray Jobs API: ls, status ID, logs ID [--follow], stop ID.")
    p.add_argument("action", choices=("ls", "status", "logs", "stop"))
    p.add_argument("job_id", nargs="?", help="submission id (from `ganpipe submit` or `ganpipe jobs ls`)")
    p.add_argument("--follow", action="store_true", help="logs: stream until the job ends")
    add_address(p)


def add_address(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", help="Ray dashboard / Jobs API, e.g. http://HEAD:8265 "
                                     "(default: $RAY_API_SERVER_ADDRESS, $RAY_ADDRESS, then a local cluster)")
