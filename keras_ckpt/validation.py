"""Argument checks shared by every class. Pure: no Keras import.

Each message names the argument, the value received and what is allowed, in Keras's
"Received:" idiom.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Integral, Real
from typing import Any


def positive_int(name: str, value: Any) -> int:
    """``value`` if it is an int >= 1 (``bool`` is refused: ``True`` is not a count)."""
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
        raise ValueError(
            f"Argument `{name}` must be a positive integer. Received: {name}={value!r}"
        )
    return int(value)


def non_negative_float(name: str, value: Any) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, Real)
        or not value >= 0
        or math.isinf(value)
    ):
        raise ValueError(
            f"Argument `{name}` must be a finite number >= 0. Received: {name}={value!r}"
        )
    return float(value)


def optional_float(name: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, Real) or math.isnan(value):
        raise ValueError(f"Argument `{name}` must be a number or None. Received: {name}={value!r}")
    return float(value)


def one_of(name: str, value: Any, allowed: Sequence[Any]) -> Any:
    if value not in allowed:
        choices = ", ".join(repr(choice) for choice in allowed)
        raise ValueError(f"Argument `{name}` must be one of {choices}. Received: {name}={value!r}")
    return value


def non_empty_str(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(
            f"Argument `{name}` must be a non-empty string. Received: {name}={value!r}"
        )
    return value


def boolean(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"Argument `{name}` must be True or False. Received: {name}={value!r}")
    return value
