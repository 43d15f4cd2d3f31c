"""The MLflow UI in the foreground for `ganpipe ui`, stopped as a whole when ganpipe is; or, when the tracking
URI is already a server (`ganpipe services up`, a team server), that server's own UI.

`mlflow ui` forks a uvicorn server and its workers. It runs in a session (and process group) of its own, so a
SIGTERM/SIGINT/SIGHUP that reaches only ganpipe (a supervisor, `kill PID`, a closed terminal) would otherwise
leave the server holding the port. ganpipe catches those signals, stops the whole group (SIGTERM, then
SIGKILL after a grace period, as `ganpipe services down` does) and exits 128 + the signal number.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
GRACE_S = 15.0  # uvicorn finishes open requests on SIGTERM; after this the rest gets SIGKILL


def is_server(uri: str) -> bool:
    """Whether the tracking URI names a running MLflow server (which serves its own UI) rather than a store."""
    return urlsplit(uri).scheme in ("http", "https")


def server_answers(uri: str, *, timeout_s: float = 5.0) -> str:
    """'' when the MLflow server at `uri` answers its health check, else why not (one line)."""
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s) as resp:
            return "" if resp.status == 200 else f"/health answered HTTP {resp.status}"
    except OSError as exc:  # URLError, HTTPError, refused, timed out
        return str(getattr(exc, "reason", None) or exc)


def run_in_own_group(cmd: Sequence[str], *, env: dict[str, str] | None = None, grace_s: float = GRACE_S) -> int:
    """Run `cmd` in a new session until it exits or ganpipe gets a stop signal; either way no process of its
    group outlives this call. Returns its exit status, or 128 + the signal that stopped ganpipe."""
    proc = subprocess.Popen(list(cmd), env=env, start_new_session=True)
    received: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, _frame: received.append(signum)) for sig in STOP_SIGNALS}
    try:
        while not received and proc.poll() is None:
            time.sleep(0.2)  # a signal handler runs within the sleep; its flag is seen at most 0.2 s later
    finally:
        for sig in STOP_SIGNALS:  # a second Ctrl-C must not cut the clean-up short
            signal.signal(sig, signal.SIG_IGN)
        try:
            stop_group(proc, grace_s=grace_s)  # also after an exit of its own: workers may be left behind
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    return 128 + received[0] if received else proc.returncode


def stop_group(proc: subprocess.Popen, *, grace_s: float) -> None:
    """SIGTERM the process group `proc` leads, wait until no live member is left, SIGKILL after `grace_s`."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
        if not group_members(proc.pid, leader=proc):
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        deadline = time.monotonic() + wait_s
        while group_members(proc.pid, leader=proc) and time.monotonic() < deadline:
            time.sleep(0.1)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


def group_members(pgid: int, *, leader: subprocess.Popen | None = None) -> list[int]:
    """Live (non-zombie) processes of process group `pgid`. Orphaned workers count until they are gone even
    where nothing reaps them (a container's init may not): zombies are left out."""
    if leader is not None:
        leader.poll()  # reap our own child, so it does not linger as a zombie member
    proc_root = Path("/proc")
    if not proc_root.is_dir():  # no procfs (macOS): ask the kernel whether the group has any process
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return []
        except PermissionError:
            pass
        return [pgid]
    members = []
    for entry in proc_root.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            state, _ppid, group = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, IndexError, ValueError):
            continue  # exited while we looked
        if int(group) == pgid and state != "Z":
            members.append(int(entry.name))
    return members
