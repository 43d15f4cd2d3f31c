"""Per-stage progress of `ganpipe run`: a live table on a terminal, one plain line per change otherwise."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterable
from typing import TextIO

STATUSES = ("pending", "cached", "running", "done", "failed", "skipped")


class Progress:
    """Tracks each stage's status and duration and shows them on `out`.

    On a TTY the table is redrawn in place (ANSI cursor moves) every second while a stage runs; elsewhere
    (CI logs, `ganpipe submit` logs, files) every change is one line: `[  12.3s] train  done  4.1s`.
    """

    def __init__(self, stages: Iterable[tuple[str, str]], *, out: TextIO | None = None, live: bool | None = None):
        self.out = out or sys.stdout  # bound now: stages redirect sys.stdout into their own logs
        self.live = self.out.isatty() if live is None else live
        self.kinds = dict(stages)
        self.status = dict.fromkeys(self.kinds, "pending")
        self.detail = dict.fromkeys(self.kinds, "")
        self.started: dict[str, float] = {}
        self.ended: dict[str, float] = {}
        self.t0 = time.monotonic()
        self._lock = threading.Lock()
        self._drawn = 0
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        if self.live:
            self._draw()
            self._ticker = threading.Thread(target=self._tick, daemon=True)
            self._ticker.start()

    def update(self, stage: str, status: str, detail: str = "") -> None:
        assert status in STATUSES, status
        with self._lock:
            now = time.monotonic()
            if status == "running":
                self.started[stage] = now
            elif status in ("done", "failed", "cached", "skipped"):
                self.ended[stage] = now
                self.started.setdefault(stage, now)
            self.status[stage], self.detail[stage] = status, detail
            if self.live:
                self._draw()
            else:
                took = f"  {self.duration(stage):.1f}s" if status in ("done", "failed") else ""
                note = f"  {detail}" if detail else ""
                self.out.write(f"[{now - self.t0:7.1f}s] {stage:<{self._width()}} {status}{took}{note}\n")
                self.out.flush()

    def duration(self, stage: str) -> float:
        if stage not in self.started:
            return 0.0
        return self.ended.get(stage, time.monotonic()) - self.started[stage]

    def close(self) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join(timeout=2)
        with self._lock:
            if self.live:
                self._draw()

    def _width(self) -> int:
        return max(len(s) for s in self.kinds)

    def _tick(self) -> None:
        while not self._stop.wait(1.0):
            with self._lock:
                if "running" in self.status.values():
                    self._draw()

    def _draw(self) -> None:
        w = max(self._width(), 5)
        lines = [f"{'STAGE':<{w}}  {'KIND':<7}  {'STATUS':<8}  {'TIME':>7}  DETAIL"]
        for stage, kind in self.kinds.items():
            status = self.status[stage]
            took = f"{self.duration(stage):6.1f}s" if status in ("running", "done", "failed") else ""
            lines.append(f"{stage:<{w}}  {kind:<7}  {status:<8}  {took:>7}  {self.detail[stage]}"[:160])
        up = f"\x1b[{self._drawn}F" if self._drawn else ""
        self.out.write(up + "".join(f"\x1b[2K{line}\n" for line in lines))
        self.out.flush()
        self._drawn = len(lines)
