"""SIGTERM ends a process quickly and cleanly: a stopped job (`ganpipe jobs stop`, Kubernetes, `kill`) marks the
MLflow runs it owns KILLED, says so in one line, and exits with status 143.

Ray's job supervisor stops a job by sending SIGTERM to its driver and SIGKILL 3 s later
(RAY_JOB_STOP_WAIT_TIME_S). Python's default is to die at once (a run stays RUNNING); `ray.init` installs a
handler that raises SystemExit (a run would end FAILED), and Ray's core worker then installs a native one that
prints a stack dump first. An exception is no way out either: raised while the driver waits in `ray.get`, it
surfaces only when the wait ends. So the handler does the work itself: it runs the cleanups registered with
`when_stopped` (the owners of runs register one), prints its line and exits.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

_CLEANUPS: list[Callable[[], Any]] = []


def _stop(signum: int, frame: Any) -> None:
    for cleanup in reversed(_CLEANUPS):
        with contextlib.suppress(Exception):  # the tracking server may be what is gone; stop anyway
            cleanup()
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        print(f"ganpipe: stopped by signal {signal.Signals(signum).name}", file=sys.stderr, flush=True)
    os._exit(128 + signum)


def on_sigterm() -> None:
    """SIGTERM stops this process as described above from now on. Call it again after `ray.init`, which
    replaces it."""
    if threading.current_thread() is threading.main_thread():  # Python sets handlers only there
        signal.signal(signal.SIGTERM, _stop)


def add_cleanup(cleanup: Callable[[], Any]) -> None:
    """A SIGTERM runs `cleanup` (keep it quick: the process is killed a few seconds later) before exiting."""
    _CLEANUPS.append(cleanup)


def remove_cleanup(cleanup: Callable[[], Any]) -> None:
    _CLEANUPS.remove(cleanup)


@contextlib.contextmanager
def when_stopped(cleanup: Callable[[], Any]) -> Iterator[None]:
    """Within: a SIGTERM runs `cleanup` before exiting (`add_cleanup`)."""
    add_cleanup(cleanup)
    try:
        yield
    finally:
        remove_cleanup(cleanup)
