"""What a resume checkpoint holds besides the variables, captured and restored without ``fit``.

The variables file is a standard Keras ``.weights.h5``; everything else a run needs to continue
exactly goes into the manifest record's ``state``, as plain JSON data: the architecture's
signature, the random generators (``_random_state``), the History, and the states of the other
callbacks (``_callback_states``). Each piece has a capture and a restore function;
``state_problem`` checks a state read from disk before any of it is applied.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import keras

from keras_ckpt.callbacks._callback_states import callback_states
from keras_ckpt.callbacks._random_state import random_state
from keras_ckpt.loading import load_weights
from keras_ckpt.records import CheckpointRecord
from keras_ckpt.store import CheckpointCorruptedError, verify

STATE_VERSION = 1


def capture_state(
    model: keras.Model,
    callbacks: list[Any],
    *,
    epoch: int,
    batch: int,
    finished: int | None,
    start_batches: int,
    host: dict[str, Any],
) -> dict[str, Any]:
    """The resume state of ``model`` after ``batch`` batches of 0-based ``epoch``.

    Args:
        model: The model being trained.
        callbacks: The other callbacks of the ``fit``: their states, and the History's.
        epoch: The epoch (0-based).
        batch: Batches of it done (0: its start).
        finished: At the end of training, how many epochs ``fit`` was asked for; else ``None``.
        start_batches: The optimizer's batch count when the run began.
        host: ``host_generators()`` as of where a rerun restarts the data pipeline: the epoch's
            start for a save within it.

    Returns:
        Plain JSON data, as ``state_problem`` accepts it.
    """
    return {
        "version": STATE_VERSION,
        "epoch": epoch,
        "batch": batch,
        "finished": finished,
        "start_batches": start_batches,
        "variables": variable_signature(model),
        "random": random_state(model, host),
        "callbacks": callback_states(callbacks),
        "history": history_state(callbacks),
    }


# Architecture --------------------------------------------------------------------------------


def variable_signature(model: keras.Model) -> list[list[Any]]:
    """Each variable's path and shape, in the order ``model.weights`` lists them."""
    return [[variable.path, list(variable.shape)] for variable in model.weights]


def check_architecture(model: keras.Model, saved: list[list[Any]], path: str) -> None:
    """Refuses a checkpoint whose variables do not fit ``model``, before anything is loaded.

    Args:
        model: The model to restore into.
        saved: The checkpoint's ``variable_signature`` (empty: nothing to check).
        path: The checkpoint's file, named in the error.

    Raises:
        ValueError: Naming ``path`` and the first variable whose shape differs.
    """
    current = variable_signature(model)
    if not saved or [shape for _, shape in current] == [shape for _, shape in saved]:
        return
    for index, (mine, theirs) in enumerate(zip(current, saved, strict=False)):
        if list(mine[1]) != list(theirs[1]):
            detail = f"variable {index} is {mine[0]} {mine[1]} here but {theirs[0]} {theirs[1]}"
            break
    else:
        detail = f"the model has {len(current)} variables, the checkpoint {len(saved)}"
    raise ValueError(
        f"ResumeFromLatest: {path} was saved from a different architecture ({detail}). "
        "Nothing was loaded or overwritten; use a new directory for a new model."
    )


def load_variables(model: keras.Model, path: str, signature: list[list[Any]]) -> None:
    """Loads the checkpoint file at ``path`` into ``model``, its optimizer included, once
    ``check_architecture`` accepted its ``signature``.

    Raises:
        ValueError: If the architecture differs or the file cannot be loaded, naming ``path``.
    """
    check_architecture(model, signature, path)
    try:
        load_weights(model, path)
    except Exception as error:  # an unreadable file that still matched its checksum
        raise ValueError(f"ResumeFromLatest could not load {path}: {error}") from error


# History -------------------------------------------------------------------------------------


def history_state(callbacks: list[Any]) -> dict[str, Any] | None:
    """The epochs and metrics the ``History`` among ``callbacks`` recorded, or ``None``."""
    for callback in callbacks:
        if isinstance(callback, keras.callbacks.History):
            history = {
                name: [float(v) for v in values] for name, values in callback.history.items()
            }
            return {"epoch": list(callback.epoch), "history": history}
    return None


def restore_history(callbacks: list[Any], state: dict[str, Any]) -> None:
    """Refills the ``History`` among ``callbacks`` with ``state``, unless it recorded already."""
    for callback in callbacks:
        if isinstance(callback, keras.callbacks.History) and not callback.epoch:
            callback.epoch = list(state.get("epoch", []))
            # float(): the manifest stores a NaN or infinite loss as the text "nan", "inf".
            callback.history = {
                k: [float(value) for value in v] for k, v in state.get("history", {}).items()
            }


# Validation ----------------------------------------------------------------------------------


def newest_resumable(records: list[CheckpointRecord]) -> CheckpointRecord | None:
    """The newest of ``records`` (oldest first) whose training loss is finite, whose file
    matches its checksum and whose state passes ``state_problem``; each newer one is skipped
    with a warning naming it."""
    for record in reversed(records):
        loss = record.metrics.get("loss")
        if loss is not None and not math.isfinite(loss):
            # Written before saving callbacks refused non-finite losses: its weights are NaN.
            warnings.warn(
                f"ResumeFromLatest: skipping {record.path}: its training loss is {loss}.",
                stacklevel=3,
            )
            continue
        try:
            verify(record)
        except CheckpointCorruptedError as error:
            warnings.warn(f"ResumeFromLatest: skipping {record.path}: {error}", stacklevel=3)
            continue
        problem = state_problem(record.state)
        if problem is not None:  # the manifest is data from the directory, like the file
            warnings.warn(
                f"ResumeFromLatest: skipping {record.path}: its resume state {problem}.",
                stacklevel=3,
            )
            continue
        return record
    return None


def state_problem(state: Any) -> str | None:
    """What is wrong with a resume ``state`` read from a manifest, or ``None``: its fields are
    checked before anything of it is applied. Keras-free.

    Example:
        >>> state_problem({"epoch": 2, "batch": 3})
        >>> state_problem({"epoch": -1})
        'has epoch=-1, expected an integer >= 0'
    """

    def count(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= 0

    def number(value: Any) -> bool:
        return (isinstance(value, (int, float)) and not isinstance(value, bool)) or value in (
            "nan",
            "inf",
            "-inf",
        )

    def list_of(value: Any, check: Callable[[Any], bool]) -> bool:
        return isinstance(value, list) and all(check(item) for item in value)

    if not isinstance(state, dict):
        return "is not an object"
    if count(state.get("version")) and state["version"] > STATE_VERSION:
        return f"has version {state['version']} (a newer keras_ckpt wrote it)"
    checks: dict[str, tuple[bool, Callable[[Any], bool], str]] = {
        "epoch": (True, count, "an integer >= 0"),
        "batch": (False, count, "an integer >= 0"),
        "start_batches": (False, count, "an integer >= 0"),
        "finished": (False, lambda v: v is None or count(v), "null or an integer >= 0"),
        "variables": (
            False,
            lambda v: list_of(
                v,
                lambda x: (
                    isinstance(x, list)
                    and len(x) == 2
                    and isinstance(x[0], str)
                    and list_of(x[1], count)
                ),
            ),
            "a list of [path, shape]",
        ),
        "random": (
            False,
            lambda v: isinstance(v, dict) and _random_state_fits(v),
            "generator states",
        ),
        "callbacks": (
            False,
            lambda v: isinstance(v, dict) and all(isinstance(s, dict) for s in v.values()),
            "an object of callback states (objects)",
        ),
        "history": (
            False,
            lambda v: (
                v is None
                or (
                    isinstance(v, dict)
                    and list_of(v.get("epoch", []), count)
                    and isinstance(v.get("history", {}), dict)
                    and all(list_of(values, number) for values in v.get("history", {}).values())
                )
            ),
            "null or a History (epochs, lists of numbers)",
        ),
    }
    for key, (required, fits, expected) in checks.items():
        if key not in state:
            if required:
                return f"has no {key!r}"
            continue
        if not fits(state[key]):
            shown = repr(state[key])
            shown = shown if len(shown) <= 60 else shown[:57] + "..."
            return f"has {key}={shown}, expected {expected}"
    return None


def _random_state_fits(random_state: dict[str, Any]) -> bool:
    """Whether the generator states have the shapes ``set_random_state`` takes."""
    python = random_state.get("python", [3, [0], None])
    numpy = random_state.get("numpy", ["MT19937", [0], 0, 0, 0.0])
    generators = random_state.get("seed_generators", [])
    return (
        isinstance(python, list)
        and len(python) == 3
        and isinstance(python[1], list)
        and all(isinstance(n, int) for n in python[1])
        and isinstance(numpy, list)
        and len(numpy) == 5
        and isinstance(numpy[1], list)
        and all(isinstance(n, int) for n in numpy[1])
        and isinstance(generators, list)
        and all(isinstance(g, list) for g in generators)
    )
