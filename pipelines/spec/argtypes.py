"""Argument checks shared by every `ganpipe` command: number types that refuse out-of-range values, and a parser
whose errors are one line.

A bad option value fails while the command line is parsed, so nothing starts (no Ray, no MLflow run, no
checkpoint lookup) before the user hears which option was wrong. Kept free of heavy imports: cli.py loads it
at startup.
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import NoReturn


def _int(text: str, *, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None


def positive_int(text: str) -> int:
    """An integer >= 1 (steps, sample counts, batch sizes, ports of a fixed service...)."""
    value = _int(text, what="a positive integer")
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer (1 or more)")
    return value


def non_negative_int(text: str) -> int:
    """An integer >= 0, where 0 has a meaning of its own (no Ray, a free port, no limit...)."""
    value = _int(text, what="a non-negative integer")
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is not a non-negative integer (0 or more)")
    return value


def finite_float(text: str) -> float:
    """A float that is neither nan nor inf (float() accepts both, and they would flow into arithmetic)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text} is not a finite number")
    return value


def non_negative_float(text: str) -> float:
    """A finite float >= 0 (fractions, timeouts, GPU shares)."""
    value = finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative (give 0 or more)")
    return value


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are a single stderr line naming the command and the option, then exit 2.

    argparse prints the whole usage block first; for a command with thirty options that buries the one line
    that says what was wrong. `--help` still shows the usage.
    """

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")
        sys.exit(2)
