"""Argument checks shared by every class. Pure: no Keras import.

Each message names the argument, the value received and what is allowed, in Keras's
"Received:" idiom. Every check raises ``ValueError``; a value of the wrong type raises
``ArgumentTypeError``, which is also a ``TypeError``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from numbers import Integral, Real
from typing import Any


class ArgumentTypeError(ValueError, TypeError):
    """An argument of the wrong type.

    A ``ValueError`` like every other argument error of this package, and a ``TypeError`` because
    that is what Python, and Keras for the drop-in classes' arguments (``BackupAndRestore(
    backup_dir=123)``, a ``schedule`` that cannot be called), raise for it: code written against
    Keras that catches ``TypeError`` still catches it.
    """


def positive_int(name: str, value: Any) -> int:
    """``value`` if it is an int >= 1 (``bool`` is refused: ``True`` is not a count)."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise ArgumentTypeError(
            f"Argument `{name}` must be a positive integer. Received: {name}={value!r}"
        )
    if value < 1:
        raise ValueError(
            f"Argument `{name}` must be a positive integer. Received: {name}={value!r}"
        )
    return int(value)


def non_negative_float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ArgumentTypeError(
            f"Argument `{name}` must be a finite number >= 0. Received: {name}={value!r}"
        )
    if not value >= 0 or math.isinf(value):
        raise ValueError(
            f"Argument `{name}` must be a finite number >= 0. Received: {name}={value!r}"
        )
    return float(value)


def optional_float(name: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ArgumentTypeError(
            f"Argument `{name}` must be a number or None. Received: {name}={value!r}"
        )
    if math.isnan(value):
        raise ValueError(f"Argument `{name}` must be a number or None. Received: {name}={value!r}")
    return float(value)


def one_of(name: str, value: Any, allowed: Sequence[Any]) -> Any:
    """``value`` if it is one of ``allowed``; ``True``/``False`` pass only if listed themselves
    (``True == 1``, but ``verbose=True`` is not the ``1`` that was meant)."""
    listed_bool = any(isinstance(choice, bool) for choice in allowed)
    if (isinstance(value, bool) and not listed_bool) or value not in allowed:
        choices = ", ".join(repr(choice) for choice in allowed)
        raise ValueError(f"Argument `{name}` must be one of {choices}. Received: {name}={value!r}")
    return value


def non_empty_str(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ArgumentTypeError(
            f"Argument `{name}` must be a non-empty string. Received: {name}={value!r}"
        )
    if not value:
        raise ValueError(
            f"Argument `{name}` must be a non-empty string. Received: {name}={value!r}"
        )
    return value


def boolean(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ArgumentTypeError(
            f"Argument `{name}` must be True or False. Received: {name}={value!r}"
        )
    return value


def path(
    name: str,
    value: Any,
    what: str = "a path",
    type_error: type[ArgumentTypeError] = ArgumentTypeError,
    empty_hint: str = "",
) -> str:
    """``value`` as a ``str`` if it is a non-empty ``str`` or ``os.PathLike`` without NUL.

    ``bytes`` paths are refused: every path this package writes into a manifest is text.
    ``type_error`` is the class raised for a value of the wrong type (a drop-in class passes a
    subclass that is also the exception Keras raises there).

    Example:
        >>> import pathlib
        >>> path("directory", pathlib.PurePosixPath("runs/a"))
        'runs/a'
    """
    text = os.fspath(value) if isinstance(value, os.PathLike) else value
    if not isinstance(text, str):
        raise type_error(
            f"Argument `{name}` must be {what} (a str or os.PathLike). Received: {name}={value!r}"
        )
    if not text:
        raise ValueError(
            f"Argument `{name}` must be {what}, not empty{empty_hint}. Received: {name}={value!r}"
        )
    if "\0" in text:
        raise ValueError(
            f"Argument `{name}` must be {what} without NUL characters. Received: {name}={value!r}"
        )
    return text


def directory(name: str, value: Any) -> str:
    """``value`` as a ``str`` if it can name a directory (see ``path``); nothing is created."""
    return path(
        name, value, what="a directory path", empty_hint=" (pass '.' for the current directory)"
    )


def function(name: str, value: Any, what: str = "") -> Any:
    """``value`` if it can be called. A class is refused: ``clock=time.monotonic`` is meant, not
    a class whose call would build an instance.

    Example:
        >>> function("clock", int)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        keras_ckpt.validation.ArgumentTypeError: Argument `clock` must be ..., not a class. ...
    """
    described = f" ({what})" if what else ""
    if isinstance(value, type):
        raise ArgumentTypeError(
            f"Argument `{name}` must be a function or callable object{described}, not a class. "
            f"Received: {name}={value!r}"
        )
    if not callable(value):
        raise ArgumentTypeError(
            f"Argument `{name}` must be callable{described}. Received: {name}={value!r}"
        )
    return value


def retention_policy(name: str, value: Any) -> Any:
    """``value`` if it is a retention policy: an instance with a callable ``keep(records)``."""
    if isinstance(value, type) or not callable(getattr(value, "keep", None)):
        hint = ""
        if isinstance(value, type):
            hint = f"; an instance such as {value.__name__}(...), not the class"
        raise ArgumentTypeError(
            f"Argument `{name}` must have a `keep(records)` method returning one flag per record"
            f"{hint}. Received: {name}={value!r}"
        )
    return value
