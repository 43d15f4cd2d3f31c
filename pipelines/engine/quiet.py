"""Third-party noise silenced at its source, so a job's log (`ganpipe jobs logs`) shows what a person reads.

Each entry names what it silences. Logger levels apply in the process that calls `quiet_logs` (the driver, a
Ray Train worker, a Tune trial, a pipeline stage task: Ray Train sets the root logger of its workers to INFO,
so every library's INFO line reaches the job's log). Ray settings are environment variables read by Ray
when the driver builds a trainer or a tuner; `ray_settings` and `tune_settings` set them unless the user
already has.
"""

from __future__ import annotations

import logging
import os
from typing import Any

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


def tune_settings(*, tune_output: bool) -> None:
    """Tune prints a TensorBoard hint into Ray's temp dir and "View detailed results here: PATH" (the store's
    path without its s3://) even at verbose=0; its legacy output engine at verbose=0 prints nothing. With
    `tune_output` (a terminal that asked for progress) Tune's tables stay. Tune's TensorBoard logger goes
    (see `tune_result_files`)."""
    if not tune_output:
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")


def tune_result_files() -> list[Any]:
    """Tune's callbacks for each trial's progress.csv and result.json, which TUNE_DISABLE_AUTO_CALLBACK_LOGGERS
    would drop with the TensorBoard logger."""
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    return [CSVLoggerCallback(), JsonLoggerCallback()]
