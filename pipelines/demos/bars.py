"""A demo's bar as a list of checks, each printed with its number beside its threshold and whether it is about
what the model must CHANGE or what it must KEEP; the bar passes when every check does."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

OPS = {">=": lambda v, t: v >= t, ">": lambda v, t: v > t, "<": lambda v, t: v < t}


@dataclass(frozen=True, kw_only=True)
class Check:
    """One term of a bar: `value OP threshold`; `threshold_text` says where the threshold comes from."""

    aim: str  # "change" (what the model must do to its input) or "keep" (what it must leave as it was)
    label: str
    value: float
    op: str
    threshold: float
    threshold_text: str = ""

    def __post_init__(self) -> None:
        if self.aim not in ("change", "keep") or self.op not in OPS:
            raise ValueError(f"check {self.label!r}: aim must be change|keep and op one of {', '.join(OPS)}")

    @property
    def passed(self) -> bool:
        # A missing metric is NaN: it fails rather than passing unseen.
        return not math.isnan(self.value) and not math.isnan(self.threshold) and OPS[self.op](
            self.value, self.threshold)


def floor_check(*, aim: str, label: str, value: float, floor: float, floor_name: str, ratio: float = 2.0,
                margin: float = 0.25) -> Check:
    """score >= ratio x floor and >= floor + margin, as one check against the larger of the two."""
    return Check(aim=aim, label=label, value=value, op=">=", threshold=max(ratio * floor, floor + margin),
                 threshold_text=f"max({ratio:g} x {floor_name} {floor:.3f}, {floor_name} + {margin:g})")


def print_bar(checks: Sequence[Check]) -> bool:
    """Print one line per check and a verdict; True when every check passes."""
    print(f"{'bar':<7}{'term':<44}{'value':>9}  {'':<2}{'threshold':>9}")
    for c in checks:
        source = f"  ({c.threshold_text})" if c.threshold_text else ""
        print(f"{c.aim.upper():<7}{c.label:<44}{c.value:>9.3f}  {c.op:<2}{c.threshold:>9.3f}  "
              f"{'PASS' if c.passed else 'FAIL'}{source}")
    passed = all(c.passed for c in checks)
    print(f"bar: {sum(c.passed for c in checks)}/{len(checks)} terms met -> {'PASS' if passed else 'FAIL'}")
    return passed
