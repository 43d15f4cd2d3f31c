"""Concise config checks for the families' `Config.__post_init__`: a bad value fails at construction."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any


def one_of(name: str, value: Any, allowed: Collection[Any]) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not supported; valid: {', '.join(map(repr, allowed))}")


def positive(**values: float) -> None:
    for name, value in values.items():
        if not value > 0:
            raise ValueError(f"{name} must be > 0, got {value!r}")


def in_unit_interval(**values: float) -> None:
    """0 <= value < 1, e.g. a dropout rate or an Adam beta."""
    for name, value in values.items():
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {value!r}")
