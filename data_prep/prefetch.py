"""Work off the training thread, in order: a decode pool (processes or threads), an ordered map over it with a
bounded window, and a background thread that runs an iterator ahead of its consumer through a bounded queue.

Order is the point: results come back in the order their inputs went in, whatever the number of workers and
however long each item takes, so a stream built on these is the same stream with 0, 1 or N workers. Errors
travel in order too: an exception raised while producing item i reaches the consumer after items 0..i-1, as the
same exception object (its one-line message unchanged). Closing the consumer's side stops the producer thread
and shuts the pool down (its processes exit), so an early end or an error leaks neither threads nor processes.

Why processes by default: docs/ARCHITECTURE.md ("Decode workers") and BENCHMARKS.md.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import logging
import math
import multiprocessing
import os
import pickle
import queue
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")

POOL_KINDS = ("process", "thread")
MAX_DECODE_WORKERS = 256
_END = object()
_JOIN_TIMEOUT_S = 60.0
_PR_SET_PDEATHSIG = 1  # linux/prctl.h
_log = logging.getLogger(__name__)


def default_decode_workers(*, cpus: float | None = None) -> int:
    """Decode workers for a training worker with `cpus` CPUs (default: the CPUs this process may run on): one
    per CPU less one for the training thread, at least 1."""
    if cpus is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(MAX_DECODE_WORKERS, math.floor(cpus) - 1))


def make_pool(*, kind: str, workers: int) -> Executor:
    """A pool of `workers` processes or threads. Processes are forked where the OS can (as torch's DataLoader
    does): no interpreter start and no torch import per worker, nothing to pickle but each task, and no
    `if __name__ == "__main__"` guard asked of the caller's script (spawn re-runs it), and what a stream
    registers before its pool forks (data_prep/shard_work.py) is inherited. A worker only runs its tasks (the
    store client, hashlib, tarfile, PIL, numpy, json), none of the parent's threads' work, so the locks a fork
    copies are not its concern; torch and CUDA are never used in a worker."""
    if kind not in POOL_KINDS:
        raise ValueError(f"decode pool kind must be one of {', '.join(POOL_KINDS)}; got {kind!r}")
    if workers < 1:
        raise ValueError(f"a decode pool needs at least 1 worker; got {workers}")
    if kind == "thread":
        return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ganpipe-decode")
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context(method),
                               initializer=_worker_start, initargs=(os.getpid(),))  # fmt: skip


def _worker_start(parent: int) -> None:
    """In each decode process: Ctrl-C is the parent's to handle (it shuts the pool down; a worker would print a
    traceback of its own), and on Linux the worker dies with the thread that started it. A forked worker holds
    both ends of its task pipe, so it would never see end-of-file from a parent that was killed (SIGKILL, OOM, a
    Ray worker's end) and would wait forever."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent was already gone before the line above could take effect
        os._exit(1)


def shut(pool: Executor) -> None:
    """Stop the pool now: queued work is cancelled, running work finishes, processes exit and are joined."""
    pool.shutdown(wait=True, cancel_futures=True)


def ordered_map(fn: Callable[[T], R], items: Iterator[T], *, pool: Executor, ahead: int) -> Iterator[R]:
    """fn(item) for each item, computed on `pool`, yielded in the items' order; at most `ahead` items are
    submitted and not yet yielded (memory stays bounded however far the pool could run ahead). An error of
    `items` itself (a shard that fails verification) is raised after the results of the items before it."""
    pending: collections.deque[Future[R]] = collections.deque()
    items = iter(items)
    failure: BaseException | None = None
    try:
        while True:
            try:
                item = next(items)
            except StopIteration:
                break
            except Exception as exn:  # noqa: BLE001 - held until the items before it are handed on
                failure = exn
                break
            pending.append(pool.submit(fn, item))
            if len(pending) >= max(1, ahead):
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
        if failure is not None:
            raise failure
    finally:
        for future in pending:
            future.cancel()


def picklable(error: Exception) -> Exception:
    """`error` if it survives a trip between processes, else a ValueError with its type name and message."""
    try:
        pickle.loads(pickle.dumps(error))
    except Exception:  # noqa: BLE001 - any failure to round-trip means: send a plain copy instead
        return ValueError(f"{type(error).__name__}: {error}")
    return error


class Prefetcher:
    """Runs `make()`'s iterator in a background thread, at most `depth` items ahead of the consumer.

    Iterate it like the iterator itself; `close()` (also on `with` exit) stops the thread, which closes the
    iterator in its own thread (so the iterator's `finally` blocks run: pools shut down, futures cancelled)."""

    def __init__(self, make: Callable[[], Iterator[Any]], *, depth: int, name: str = "ganpipe-prefetch") -> None:
        self._queue: queue.Queue[tuple[Any, Any]] = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._done = False
        self._thread = threading.Thread(target=self._run, args=(make,), name=name, daemon=True)
        self._thread.start()

    def _run(self, make: Callable[[], Iterator[Any]]) -> None:
        iterator = None
        try:
            iterator = make()
            for item in iterator:
                if not self._put(("item", item)):
                    return
            self._put(("end", _END))
        except BaseException as exn:  # noqa: BLE001 - every error goes to the consumer, in order
            self._put(("error", exn))
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()  # here, in the thread that ran it: a generator cannot be closed from another thread

    def _put(self, entry: tuple[str, Any]) -> bool:
        """Queue `entry`, waiting for room; False once the consumer has closed."""
        while not self._stop.is_set():
            try:
                self._queue.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Prefetcher:
        return self

    def __next__(self) -> Any:
        if self._done:
            raise StopIteration
        kind, value = self._queue.get()
        if kind == "item":
            return value
        self._done = True
        self.close()
        if kind == "error":
            raise value
        raise StopIteration

    def close(self) -> None:
        """Stop the producer and wait for it (it finishes the item it is making first)."""
        self._done = True
        self._stop.set()
        while True:  # room for a producer blocked on a full queue; it sees the stop on its next try
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=_JOIN_TIMEOUT_S)
            if self._thread.is_alive():
                _log.warning("the prefetch thread did not stop within %.0f s; it is a daemon and ends with "
                             "the process", _JOIN_TIMEOUT_S)  # fmt: skip

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
