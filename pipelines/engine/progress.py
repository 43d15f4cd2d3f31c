"""What rank 0 shows while it trains: a bar on a terminal, else one plain line every `loop.log_every` steps.

Both show step / total, img/s, the time left, the last logged losses and the latest evaluation metric. The bar is
any object with tqdm's `update`, `set_description` and `close` (tqdm's own here; Ray's distributed
`ray.experimental.tqdm_ray.tqdm` from a Ray Train worker, built in pipelines/training/ray_train.py), so this
module needs neither torch nor Ray. A line looks like

    [ganpipe] step 20/30 (67%)  1,234 img/s  elapsed 0:00:05  ETA 0:00:02  loss/D 0.6931  loss/G 0.7120  eval/fd 3.214
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, Protocol, TextIO

LINE_PREFIX = "[ganpipe] step"  # what log readers (and tests) look for
MODES = ("", "lines", "bar")  # "": nothing; "lines": plain lines; "bar": a live bar (a terminal)
MAX_LOSSES = 4  # a line stays readable: CycleGAN logs more losses than fit on it
PREFERRED_EVAL = ("eval/fd", "eval/cls_score")  # shown when present; else the first eval/* reported


class Bar(Protocol):
    def update(self, n: int = 1) -> Any: ...

    def set_description(self, desc: str) -> Any: ...

    def close(self) -> Any: ...


# (total steps, start step) -> a bar already at the start step
BarFactory = Callable[[int, int], Bar]


def progress_mode(*, enabled: bool, out: TextIO | None = None, err: TextIO | None = None) -> str:
    """"bar" when both console streams are a terminal and progress is wanted, else "lines": a log file, a pipe,
    a Ray job's log and `--no-progress` all get plain lines."""
    out, err = out or sys.stdout, err or sys.stderr
    return "bar" if enabled and _isatty(out) and _isatty(err) else "lines"


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # a replaced or closed stream
        return False


def tqdm_bar(total: int, start: int) -> Bar:
    """A local tqdm bar on stderr, counting steps."""
    from tqdm import tqdm

    return tqdm(total=total, initial=start, unit="step", dynamic_ncols=True, desc="train")


def clock_text(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def shown_metrics(losses: dict[str, float], evaluation: tuple[str, float] | None) -> str:
    """`loss/D 0.6931  loss/G 0.7120  eval/fd 3.214`: the first MAX_LOSSES losses and the latest evaluation."""
    parts = [f"{k} {v:.4g}" for k, v in list(losses.items())[:MAX_LOSSES]]
    if evaluation is not None:
        parts.append(f"{evaluation[0]} {evaluation[1]:.4g}")
    return "  ".join(parts)


def latest_evaluation(metrics: dict[str, float]) -> tuple[str, float] | None:
    keys = [k for k in metrics if k.startswith("eval/")]
    if not keys:
        return None
    key = next((k for k in PREFERRED_EVAL if k in keys), keys[0])
    return key, metrics[key]


class TrainProgress:
    """Rank 0's progress: `step` after every step (moves a bar), `report` with every report's metrics.

    Without a bar, a line goes to `out` (stdout at the time of writing, as stages redirect it) at every
    `log_every`-th step and at the last one; the time left comes from the pace since the previous line.
    """

    def __init__(self, *, total: int, log_every: int, start_step: int = 0, bar: BarFactory | None = None,
                 out: TextIO | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.total = total
        self.log_every = max(1, log_every)
        self.out = out
        self.clock = clock
        self.started = clock()
        self.step_no = start_step
        self.losses: dict[str, float] = {}
        self.img_per_s = 0.0
        self.evaluation: tuple[str, float] | None = None
        self._pace_from = (start_step, self.started)
        self._steps_per_s = 0.0
        self.bar = bar(total, start_step) if bar is not None else None

    def step(self, step: int) -> None:
        if self.bar is not None and step > self.step_no:
            self.bar.update(step - self.step_no)
        self.step_no = step

    def report(self, step: int, metrics: dict[str, float]) -> None:
        self.step(step)
        losses = {k: v for k, v in metrics.items() if k.startswith("loss/")}
        if losses:
            self.losses = losses
        self.img_per_s = metrics.get("perf/img_per_s", self.img_per_s)
        self.evaluation = latest_evaluation(metrics) or self.evaluation
        if self.bar is not None:
            self.bar.set_description(self.description())
        elif step % self.log_every == 0 or step == self.total:
            self._measure_pace(step)
            # A write, not print: Ray Train patches print in its workers to log it too, which doubles each line.
            out = self.out or sys.stdout
            out.write(self.line() + "\n")
            out.flush()

    def _measure_pace(self, step: int) -> None:
        now = self.clock()
        first, since = self._pace_from
        if step > first and now > since:
            self._steps_per_s = (step - first) / (now - since)
        self._pace_from = (step, now)

    def description(self) -> str:
        head = f"{self.img_per_s:,.0f} img/s" if self.img_per_s else ""
        return "  ".join(p for p in (head, shown_metrics(self.losses, self.evaluation)) if p)

    def line(self) -> str:
        percent = 100 * self.step_no / self.total if self.total else 100
        eta = (self.total - self.step_no) / self._steps_per_s if self._steps_per_s else 0.0
        parts = [f"{LINE_PREFIX} {self.step_no}/{self.total} ({percent:.0f}%)",
                 f"{self.img_per_s:,.0f} img/s" if self.img_per_s else "",
                 f"elapsed {clock_text(self.clock() - self.started)}",
                 f"ETA {clock_text(eta)}" if self._steps_per_s and self.step_no < self.total else "",
                 shown_metrics(self.losses, self.evaluation)]
        return "  ".join(p for p in parts if p)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.set_description(self.description())
            self.bar.close()
            self.bar = None
