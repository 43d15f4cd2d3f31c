"""Defaults that several layers and the command line's help read: one definition each, no project imports."""

from __future__ import annotations

import os

# loop.compile and `ganpipe bench --compile`: torch.compile's mode for every network; "off" runs eagerly.
COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune")
# loop.layout and `ganpipe bench --layout`: the memory layout of weights and activations ("auto": what
# pipelines.engine.precision.wants_channels_last picks for the device, precision and optimizer).
LAYOUTS = ("auto", "channels_last", "contiguous")
# scale.cpus_per_worker's default with a GPU: the training process and 3 decode processes. One decode process
# left DCGAN's 64 px step on an H200 waiting 45% of the time, two fed it (BENCHMARKS.md, "... one H200"); the
# third is for the official rate's 6,762 img/s, which two decode processes alone fell short of there.
GPU_WORKER_CPUS = 4
DEFAULT_HOME = ".ganpipe"  # local state: store, MLflow database, services, caches
DEFAULT_STORE = f"{DEFAULT_HOME}/store"  # datasets, checkpoints and caches when no --store is given
STORE_ENV = "GANPIPE_STORE"  # the store of every command without --store (`ganpipe services up` writes it)
DEFAULT_EXPERIMENT = "ganpipe-pipelines"  # MLflow experiment of `ganpipe run` pipeline runs

DEFAULT_EVAL_N = 10_000  # generated samples of `ganpipe eval`
KID_SUBSETS, KID_SUBSET_SIZE = 100, 1000  # the KID paper's 100 subsets of 1,000
TRANSLATE_BATCH = 64  # images per forward pass of `ganpipe translate`

DEMO_FAMILIES = ("dcgan", "pix2pix", "cyclegan", "stargan", "text2img")  # each has a `ganpipe demo --family`

# Non-secret settings a job or a training worker on a cluster needs from the submitting shell: where the store,
# the tracking server and the bucket's region are. Credentials never travel this way (see ops.jobs).
FORWARDED_ENV = ("GANPIPE_STORE", "GANPIPE_S3_ENDPOINT", "AWS_ENDPOINT_URL", "MLFLOW_TRACKING_URI",
                 "MLFLOW_S3_ENDPOINT_URL", "AWS_DEFAULT_REGION", "AWS_REGION")


def default_store() -> str:
    """The store without --store: $GANPIPE_STORE, else DEFAULT_STORE (read at each call: the CLI may load the
    services' env file after import)."""
    return os.environ.get(STORE_ENV) or DEFAULT_STORE
