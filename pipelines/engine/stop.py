"""SIGTERM as an exception: a stopped job (`ganpipe jobs stop`, Kubernetes, `kill`) ends its MLflow run as KILLED.

Ray's job supervisor stops a job by sending SIGTERM to its driver and SIGKILL a few seconds later. Python's
default is to die at once (the run stays RUNNING); `ray.init` installs a handler that exits (the run would
end FAILED), and Ray's core worker then installs a native handler that prints a stack dump first. `on_sigterm`
puts ours in place of both: it raises `Stopped` in the main thread, which the code that owns a run catches.
"""

from __future__ import annotations

import signal
import threading
from typing import Any


class Stopped(BaseException):
    """The process was asked to stop (SIGTERM). A BaseException, like KeyboardInterrupt: no `except
    Exception` swallows it."""


def _raise_stopped(signum: int, frame: Any) -> None:
    raise Stopped(f"stopped by signal {signal.Signals(signum).name}")


def on_sigterm() -> None:
    """SIGTERM raises `Stopped` from now on. Call it again after `ray.init`, which replaces it."""
    if threading.current_thread() is threading.main_thread():  # Python sets handlers only there
        signal.signal(signal.SIGTERM, _raise_stopped)
