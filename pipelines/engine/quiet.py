"""Third-party noise silenced at its source, so a job's log (`ganpipe jobs logs`) shows what a person reads.

Each entry names what it silences. Logger levels apply in the process that calls `quiet_logs` (the driver, a
Ray Train worker, a Tune trial, a pipeline stage task: Ray Train sets the root logger of its workers to INFO,
so every library's INFO line reaches the job's log). Ray settings are environment variables read by Ray
when the driver builds a trainer; `ray_settings` sets them unless the user already has.
"""

from __future__ import annotations

import logging
import os

QUIET_LOGGERS = (
    "botocore.credentials",  # "Found credentials in environment variables.", once per S3 client
    "ray.train.v2._internal.execution.storage",  # "Checkpoint successfully created at: ..." per rank and report
    "ray.train._internal.storage",  # the same line from a Tune trial
)

RAY_SETTINGS = {
    # Ray Train's preemption watcher (an actor per worker group) makes core_worker log an error-level line
    # ("has constructor arguments in the object store and max_restarts > 0") on every start; drains are
    # not used by ganpipe, and a lost node is handled by FailureConfig.
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
}


def quiet_logs() -> None:
    """Raise the level of the chatty third-party loggers in this process to WARNING."""
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def ray_settings() -> None:
    """Ray's settings of `RAY_SETTINGS` in this process's environment (a value already set wins); Ray Train
    passes them on to its controller and workers."""
    for name, value in RAY_SETTINGS.items():
        os.environ.setdefault(name, value)
