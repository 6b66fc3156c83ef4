"""The states of the other callbacks of a ``fit``, saved with a resume checkpoint and given back
to the same callbacks when the script reruns.

A callback takes part when it has ``state_dict()`` and ``load_state_dict()``. Its state is
stored under its key: the class name and the configuration that tells callbacks of one class
apart (``IDENTIFYING_ATTRIBUTES``), e.g. ``EarlyStopping(monitor='val_loss', mode='auto')``. The
key does not depend on where the callback stands in the list, so a rerun with the callbacks in
another order, or with one more or one fewer, gives each state back to its own callback.

NumPy arrays in a state (a running average of the weights) are not put into the JSON manifest:
``split_arrays`` replaces each by a reference, and ResumeFromLatest writes the arrays into the
checkpoint's ``.weights.h5`` (``snapshot.append_arrays``); ``join_arrays`` puts them back.

Callbacks that share a key are told apart by their order among themselves (``key#0``,
``key#1``, ...); restoring them warns, since a changed order would swap their states.
Checkpoints written before keys named the configuration store ``ClassName#index`` (the
callback's order among those of its class) and are read that way.
"""

from __future__ import annotations

import copy
import os
import re
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from keras_ckpt.snapshot import read_arrays

# What a callback watches and where it writes: stable across reruns of the same script, and
# different between two callbacks of one class that are meant to differ. Settings such as
# ``patience`` are left out, so that a state still comes back after one was changed.
IDENTIFYING_ATTRIBUTES = ("monitor", "mode", "directory", "filepath")

# How keys looked before: class name and occurrence among the callbacks of that class.
_CLASS_AND_INDEX = re.compile(r"\w+#\d+")


def callback_key(callback: Any) -> str:
    """The class name and the ``IDENTIFYING_ATTRIBUTES`` the callback has (plain values only:
    the repr of an object may change from one process to the next).

    Example:
        >>> class EarlyStopping:
        ...     monitor, mode, patience = "val_loss", "auto", 3
        >>> callback_key(EarlyStopping())
        "EarlyStopping(monitor='val_loss', mode='auto')"
    """
    fields = []
    for name in IDENTIFYING_ATTRIBUTES:
        value = getattr(callback, name, None)
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
        if isinstance(value, (str, int, float)):
            fields.append(f"{name}={value!r}")
    return f"{type(callback).__name__}({', '.join(fields)})"


def callback_states(callbacks: list[Any]) -> dict[str, Any]:
    """The ``state_dict()`` of each callback that has one, by its key."""
    return {
        stored: callback.state_dict()
        for key, members in _by_key(callbacks).items()
        for stored, callback in zip(_stored_keys(key, len(members)), members, strict=True)
    }


def load_callback_states(callbacks: list[Any], states: dict[str, Any], path: str) -> None:
    """Gives each callback the state saved for it in ``states`` (read from ``path``).

    A callback with no state under its key starts afresh (it is new, or its configuration
    changed). Where callbacks share a key, one warning names it: states saved for as many
    callbacks are restored in list order; otherwise none of them is restored.

    Raises:
        ValueError: If a callback refuses its state, naming the key and ``path``.
    """
    if states and all(_CLASS_AND_INDEX.fullmatch(key) for key in states):
        matches = [(key, c) for key, c in _class_and_index_keys(callbacks) if key in states]
    else:
        matches, ambiguous = _matches(callbacks, states)
        if ambiguous:
            warnings.warn(
                f"ResumeFromLatest: callbacks of one class and configuration (class name and "
                f"{', '.join(IDENTIFYING_ATTRIBUTES)}) cannot be told apart by the states in "
                f"{path}: {'; '.join(ambiguous)}. Give each a different configuration (another "
                "monitor, say) so that it finds its own state.",
                stacklevel=3,
            )
    for key, callback in matches:
        try:
            # A copy: manifest records are shared read-only between reads of the manifest.
            callback.load_state_dict(copy.deepcopy(states[key]))
        except (TypeError, ValueError, KeyError, AttributeError) as error:
            raise ValueError(
                f"ResumeFromLatest: the state of {key} in {path} cannot be loaded "
                f"({type(error).__name__}: {error}); keras_ckpt did not write it so."
            ) from None


# A NumPy array of a callback state, in the JSON state: its index among the checkpoint's arrays.
ARRAY_KEY = "keras_ckpt_array"


def split_arrays(state: Any, arrays: list[np.ndarray]) -> Any:
    """``state`` with each NumPy array replaced by ``{ARRAY_KEY: index}``, the array appended to
    ``arrays`` (a state may hold arrays too large for the JSON manifest: ResumeFromLatest writes
    them into the checkpoint's ``.weights.h5``).

    Example:
        >>> arrays = []
        >>> split_arrays({"count": 2, "average": [np.zeros(2)]}, arrays), len(arrays)
        ({'count': 2, 'average': [{'keras_ckpt_array': 0}]}, 1)
    """
    if isinstance(state, np.ndarray):
        arrays.append(state)
        return {ARRAY_KEY: len(arrays) - 1}
    if isinstance(state, dict):
        return {key: split_arrays(value, arrays) for key, value in state.items()}
    if isinstance(state, (list, tuple)):
        return [split_arrays(value, arrays) for value in state]
    return state


def has_arrays(state: Any) -> bool:
    """Whether ``split_arrays`` put any array reference into ``state``."""
    if isinstance(state, dict):
        return set(state) == {ARRAY_KEY} or any(has_arrays(v) for v in state.values())
    return isinstance(state, list) and any(has_arrays(value) for value in state)


def states_with_arrays(states: Any, path: str, caller: str, checkpoint: str) -> Any:
    """``states`` (read from a manifest) with their array references replaced by the arrays
    stored in the checkpoint file at ``path`` (``snapshot.append_arrays``); ``states`` as they
    are when they hold none.

    Raises:
        ValueError: Naming ``caller`` and ``checkpoint``, if a reference or the arrays' group
            is damaged.
    """
    if not has_arrays(states):
        return states
    try:
        return join_arrays(states, lambda: read_arrays(path))
    except (ValueError, OSError, KeyError) as error:
        raise ValueError(
            f"{caller} could not read the callback states' arrays of {checkpoint}: {error}"
        ) from error


def join_arrays(state: Any, arrays: Callable[[], list[np.ndarray]]) -> Any:
    """``state`` with the references of ``split_arrays`` replaced by the arrays, which
    ``arrays()`` gives (called once, only if there is a reference).

    Raises:
        ValueError: If a reference is not an index of the arrays.
    """
    loaded: list[list[np.ndarray]] = []

    def join(value: Any) -> Any:
        if isinstance(value, dict) and set(value) == {ARRAY_KEY}:
            if not loaded:
                loaded.append(arrays())
            index = value[ARRAY_KEY]
            if isinstance(index, bool) or not isinstance(index, int):
                raise ValueError(f"an array reference is {index!r}, not an index")
            if not 0 <= index < len(loaded[0]):
                raise ValueError(f"array {index} is not in the checkpoint ({len(loaded[0])})")
            return loaded[0][index]
        if isinstance(value, dict):
            return {key: join(item) for key, item in value.items()}
        if isinstance(value, list):
            return [join(item) for item in value]
        return value

    return join(state)


def _by_key(callbacks: list[Any]) -> dict[str, list[Any]]:
    """The callbacks that have a state, grouped by key, in list order."""
    groups: dict[str, list[Any]] = {}
    for callback in callbacks:
        if hasattr(callback, "state_dict") and hasattr(callback, "load_state_dict"):
            groups.setdefault(callback_key(callback), []).append(callback)
    return groups


def _stored_keys(key: str, count: int) -> list[str]:
    """Where the states of ``count`` callbacks sharing ``key`` are stored, in list order."""
    return [key] if count == 1 else [f"{key}#{index}" for index in range(count)]


def _matches(
    callbacks: list[Any], states: dict[str, Any]
) -> tuple[list[tuple[str, Any]], list[str]]:
    """(stored key, callback) pairs to restore, and what could not be matched unambiguously."""
    matches: list[tuple[str, Any]] = []
    ambiguous: list[str] = []
    for key, members in _by_key(callbacks).items():
        expected = _stored_keys(key, len(members))
        saved = [stored for stored in states if stored == key or _numbered(stored, key)]
        if not saved:
            continue
        if len(members) == 1 and saved == expected:
            matches.append((key, members[0]))
        elif sorted(saved) == sorted(expected):
            matches.extend(zip(expected, members, strict=True))
            ambiguous.append(
                f"the {len(members)} callbacks {key} got their states by their order in the "
                "list, right only if that order did not change"
            )
        else:
            ambiguous.append(
                f"{len(saved)} state(s) saved for {key}, {len(members)} such callback(s) now: "
                "none restored, they start afresh"
            )
    return matches, ambiguous


def _numbered(stored: str, key: str) -> bool:
    """Whether ``stored`` is ``key#<index>``, the key of one of several alike callbacks."""
    index = stored[len(key) + 1 :]
    return stored.startswith(f"{key}#") and index.isascii() and index.isdigit()


def _class_and_index_keys(callbacks: list[Any]) -> list[tuple[str, Any]]:
    """The keys of older checkpoints: class name and occurrence (``EarlyStopping#0``)."""
    seen: dict[str, int] = {}
    keyed = []
    for callback in callbacks:
        if not (hasattr(callback, "state_dict") and hasattr(callback, "load_state_dict")):
            continue
        name = type(callback).__name__
        index = seen.get(name, 0)
        seen[name] = index + 1
        keyed.append((f"{name}#{index}", callback))
    return keyed
