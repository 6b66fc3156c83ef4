"""Argument checks shared by every class. Pure: no Keras import.

Each message names the argument, the value received and what is allowed, in Keras's
"Received:" idiom. Every check raises ``ValueError``; a value of the wrong type raises
``ArgumentTypeError``, which is also a ``TypeError``.
"""

from __future__ import annotations

import math
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from numbers import Integral, Real
from typing import Any, TypeVar

from keras_ckpt import ranking

T = TypeVar("T")


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
    if int(value) < 1:
        raise ValueError(
            f"Argument `{name}` must be a positive integer. Received: {name}={value!r}"
        )
    return int(value)


def non_negative_int(name: str, value: Any) -> int:
    """``value`` if it is an int >= 0 (``bool`` is refused).

    Example:
        >>> non_negative_int("start_epoch", -1)
        Traceback (most recent call last):
        ...
        ValueError: Argument `start_epoch` must be a non-negative integer. Received: start_epoch=-1
    """
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise ArgumentTypeError(
            f"Argument `{name}` must be a non-negative integer. Received: {name}={value!r}"
        )
    if int(value) < 0:
        raise ValueError(
            f"Argument `{name}` must be a non-negative integer. Received: {name}={value!r}"
        )
    return int(value)


def optional(check: Callable[[str, Any], T], name: str, value: Any) -> T | None:
    """``None`` if ``value`` is ``None``, else ``check(name, value)``.

    Example:
        >>> optional(positive_int, "keep_last", None) is None
        True
        >>> optional(positive_int, "keep_last", 3)
        3
    """
    return None if value is None else check(name, value)


def positive_seconds(name: str, value: Any) -> float:
    """``value`` as a ``float`` if it is a finite number > 0 (a duration in seconds).

    Example:
        >>> positive_seconds("every_seconds", 0)
        Traceback (most recent call last):
        ...
        ValueError: Argument `every_seconds` must be a number > 0. Received: every_seconds=0
    """
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ArgumentTypeError(
            f"Argument `{name}` must be a number > 0. Received: {name}={value!r}"
        )
    seconds = float(value)
    if not seconds > 0:
        raise ValueError(f"Argument `{name}` must be a number > 0. Received: {name}={value!r}")
    if math.isinf(seconds):
        raise ValueError(f"Argument `{name}` must be finite. Received: {name}={value!r}")
    return seconds


def non_negative_float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ArgumentTypeError(
            f"Argument `{name}` must be a finite number >= 0. Received: {name}={value!r}"
        )
    number = float(value)
    if not number >= 0 or math.isinf(number):
        raise ValueError(
            f"Argument `{name}` must be a finite number >= 0. Received: {name}={value!r}"
        )
    return number


def max_shard_size(value: Any) -> float | None:
    """The ``max_shard_size`` of Keras's sharded weights: ``None`` or a finite number of GB > 0.

    Example:
        >>> max_shard_size(0.5)
        0.5
    """
    if value is None:
        return None
    message = (
        "Argument `max_shard_size` must be a finite number of GB > 0 (the largest shard file "
        f"of sharded weights, as `model.save_weights` takes it). Received: max_shard_size={value!r}"
    )
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ArgumentTypeError(message)
    number = float(value)
    if not number > 0 or math.isinf(number):
        raise ValueError(message)
    return number


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


def fraction(name: str, value: Any) -> float:
    """``value`` as a ``float`` if it is a number in (0, 1] (a factor that lowers something).

    Example:
        >>> fraction("lr_factor", 1.5)
        Traceback (most recent call last):
        ...
        ValueError: Argument `lr_factor` must be a number in (0, 1]. Received: lr_factor=1.5
    """
    message = f"Argument `{name}` must be a number in (0, 1]. Received: {name}={value!r}"
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ArgumentTypeError(message)
    if not 0 < float(value) <= 1:
        raise ValueError(message)
    return float(value)


def one_of(name: str, value: Any, allowed: Sequence[Any]) -> Any:
    """``value`` if it is one of ``allowed``; ``True``/``False`` pass only if listed themselves
    (``True == 1``, but ``verbose=True`` is not the ``1`` that was meant)."""
    listed_bool = any(isinstance(choice, bool) for choice in allowed)
    if (isinstance(value, bool) and not listed_bool) or value not in allowed:
        choices = ", ".join(repr(choice) for choice in allowed)
        raise ValueError(f"Argument `{name}` must be one of {choices}. Received: {name}={value!r}")
    return value


WEIGHTS = ("raw", "ema")
"""Which weights of a ``use_ema=True`` run: the trained ones, or their moving averages."""


def weights(value: Any) -> str:
    """The ``weights`` argument: ``"raw"`` or ``"ema"``.

    Example:
        >>> weights("ema")
        'ema'
    """
    return str(one_of("weights", value, WEIGHTS))


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


def keras_mode(callback_name: str, mode: Any) -> str:
    """``mode`` if it is ``"auto"``, ``"min"`` or ``"max"``; otherwise ``"auto"``, with the
    warning Keras gives. Only for the drop-in classes, which keep Keras's reaction to an
    argument Keras defines; native classes refuse an unknown mode (``one_of``).

    Example:
        >>> keras_mode("EarlyStopping", "max")
        'max'
    """
    if mode in ranking.MODES:
        return str(mode)
    # stacklevel 3: the warning points at the line that constructed the callback.
    warnings.warn(f"{callback_name} mode '{mode}' is unknown, fallback to auto mode.", stacklevel=3)
    return "auto"


_KERAS_SAVE_FREQ_ERRORS = {
    # Keras's opening words, then the value as the other messages of this package show it.
    "ModelCheckpoint": "Unrecognized save_freq: {value!r}. Argument `save_freq` must be 'epoch' "
    "or a positive integer number of batches. Received: save_freq={value!r}",
    # Keras's message, with False (which Keras's class also takes) and "positive" added.
    "BackupAndRestore": "Invalid value for argument `save_freq`. Received: save_freq={value}. "
    "Expected either 'epoch', a positive integer or False.",
}


def save_freq(value: Any, keras_class: str | None = None) -> Any:
    """``value`` if it is ``"epoch"`` or a positive integer number of batches.

    The one check of every class's ``save_freq``. ``True``, 0 and negative numbers are refused
    (Keras 3.15 takes them and then saves every batch, or never).

    Args:
        value: The ``save_freq`` argument.
        keras_class: For a drop-in class, the Keras class whose message (and exception class,
            plain ``ValueError``) the error keeps: ``"ModelCheckpoint"``, or
            ``"BackupAndRestore"``, which also takes ``False``. ``None`` for a native class:
            keras_ckpt's message, and ``ArgumentTypeError`` for a value of the wrong type.

    Returns:
        ``value``, unchanged.

    Raises:
        ValueError: On any other value.

    Example:
        >>> save_freq(500)
        500
        >>> save_freq(0, keras_class="BackupAndRestore")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: Invalid value for argument `save_freq`. Received: save_freq=0. Expected ...
    """
    if value == "epoch":
        return value
    if keras_class is None:
        positive_int("save_freq", value)
        return value
    if keras_class == "BackupAndRestore" and value is False:
        return value
    # Keras accepts a Python int only (an isinstance check), so a NumPy integer is refused too.
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(_KERAS_SAVE_FREQ_ERRORS[keras_class].format(value=value))
    return value


def restore_best_weights(value: Any) -> str | None:
    """The ``BestCheckpoint`` directory named by ``EarlyStopping``'s ``restore_best_weights``,
    or ``None`` when it is a flag (``True``, ``False``, an int, a NumPy bool), as in Keras.

    ``value`` may be a ``BestCheckpoint`` (anything with a ``directory`` attribute) or a
    directory path. A string is a directory here, so an empty one is an error (Keras would take
    ``""`` as ``False``).

    Example:
        >>> restore_best_weights(True) is None
        True
        >>> restore_best_weights("runs/best")
        'runs/best'
    """
    if isinstance(value, (bool, int)) or _is_numpy_bool(value):
        return None
    named = getattr(value, "directory", value)
    if isinstance(named, (str, os.PathLike)):
        return directory("restore_best_weights", named)
    raise ValueError(
        "Argument `restore_best_weights` must be True, False, a BestCheckpoint or its "
        f"directory. Received: restore_best_weights={value!r}"
    )


def _is_numpy_bool(value: Any) -> bool:
    # A NumPy bool exists only if NumPy is imported; this module does not import it itself.
    numpy = sys.modules.get("numpy")
    return numpy is not None and isinstance(value, numpy.bool_)


def plateau_factor(factor: Any) -> Any:
    """``ReduceLROnPlateau``'s ``factor`` if it is below 1.0, with Keras's check and message.

    Example:
        >>> plateau_factor(0.5)
        0.5
    """
    if factor >= 1.0:
        raise ValueError(
            f"ReduceLROnPlateau does not support a factor >= 1.0. Received factor={factor}"
        )
    return factor


LEGACY_HDF5_EXTENSIONS = (".h5", ".hdf5")
"""The extensions of Keras 2's HDF5 files, which Keras 3 still reads."""


def keras_filepath_extension(filepath: str, save_weights_only: bool) -> str:
    """``ModelCheckpoint``'s ``filepath`` if its extension fits ``save_weights_only``:
    ``.weights.h5`` for weights, ``.keras`` for models, or for either the legacy ``.h5`` /
    ``.hdf5`` of Keras 2 code (Keras 3 refuses ``.hdf5``, and ``.h5`` with weights only).

    Example:
        >>> keras_filepath_extension("ckpt/{epoch}.weights.h5", save_weights_only=True)
        'ckpt/{epoch}.weights.h5'
        >>> keras_filepath_extension("weights.{epoch:02d}.hdf5", save_weights_only=True)
        'weights.{epoch:02d}.hdf5'
    """
    if filepath.endswith(LEGACY_HDF5_EXTENSIONS):  # .weights.h5 included
        return filepath
    if save_weights_only:
        raise ValueError(
            "When using `save_weights_only=True` in `ModelCheckpoint`, the filepath "
            "provided must end in `.weights.h5` (Keras weights format), or in `.h5` or "
            f"`.hdf5` (legacy HDF5). Received: filepath={filepath}"
        )
    if not filepath.endswith(".keras"):
        raise ValueError(
            "The filepath provided must end in `.keras` (Keras model format), or in `.h5` or "
            f"`.hdf5` (legacy HDF5). Received: filepath={filepath}"
        )
    return filepath


def legacy_hdf5(filepath: str, save_weights_only: bool) -> bool:
    """Whether ``ModelCheckpoint`` writes ``filepath`` in Keras 2's legacy HDF5 format: a
    whole model to ``.h5`` / ``.hdf5``, or weights to such a name other than ``.weights.h5``.

    Example:
        >>> legacy_hdf5("weights.{epoch:02d}.hdf5", save_weights_only=False)
        True
        >>> legacy_hdf5("ckpt.weights.h5", save_weights_only=True)
        False
    """
    if save_weights_only and filepath.endswith(".weights.h5"):
        return False
    return filepath.endswith(LEGACY_HDF5_EXTENSIONS)
