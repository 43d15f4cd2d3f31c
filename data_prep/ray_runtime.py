"""Which Ray a command runs on: the cluster in $RAY_ADDRESS on purpose, else a runtime of its own.

Left to itself, `ray.init()` joins the cluster a `ray start` left on this machine (its address file under
Ray's temp dir), and then refuses the `num_cpus` a local run asks for ("When connecting to an existing
cluster, num_cpus and num_gpus must not be provided"). A command joins a cluster only when told to
(RAY_ADDRESS, or an address given by the caller); otherwise it starts its own runtime (`address="local"`),
whatever else runs on the machine. Either way it prints one line on stderr saying which.

Shared by `prep --workers` (data_prep.stages) and every Ray Train/Tune/pipeline command (pipelines.training).
"""

from __future__ import annotations

import os
import sys
from typing import Any


def started_cluster() -> str | None:
    """The GCS address of the cluster `ray start` last started on this machine, if Ray recorded one."""
    try:
        from ray._private.utils import read_ray_address  # private: another Ray version may not have it
    except ImportError:
        return None
    try:
        return read_ray_address() or None
    except OSError:
        return None


def init_ray(*, address: str | None = None, num_cpus: int, **local: Any) -> str:
    """Connect to `address` / $RAY_ADDRESS, else start a local runtime of `num_cpus` CPUs with the `local`
    keyword arguments of ray.init. Does nothing when Ray is already initialised. Returns the line it printed."""
    import ray

    if ray.is_initialized():
        return ""
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address and address != "local":
        line = f"ray: joining the Ray cluster at {address} (RAY_ADDRESS)"
        _say(line)
        ray.init(address=address, log_to_driver=True)
        return line
    running = started_cluster()
    line = f"ray: a local Ray runtime of {num_cpus} CPU(s) for this command"
    if running:
        line += f"; the cluster started with `ray start` at {running} is left alone (RAY_ADDRESS={running} joins it)"
    _say(line)
    ray.init(address="local", num_cpus=num_cpus, log_to_driver=True, **local)
    return line


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
