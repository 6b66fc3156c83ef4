"""The states of the other callbacks of a ``fit``, saved with a resume checkpoint and given back
to the same callbacks when the script reruns.

A callback takes part when it has ``state_dict()`` and ``load_state_dict()``. Its state is
stored under its class name and its occurrence among the callbacks of that class
(``EarlyStopping#0``).
"""

from __future__ import annotations

import copy
from typing import Any


def callback_states(callbacks: list[Any]) -> dict[str, Any]:
    """The ``state_dict()`` of each callback that has one, by its key."""
    return {key: callback.state_dict() for key, callback in _callback_keys(callbacks)}


def load_callback_states(callbacks: list[Any], states: dict[str, Any], path: str) -> None:
    """Gives each callback the state saved for it in ``states`` (read from ``path``).

    Raises:
        ValueError: If a callback refuses its state, naming the key and ``path``.
    """
    for key, callback in _callback_keys(callbacks):
        if key in states:
            try:
                # A copy: manifest records are shared read-only between reads of the manifest.
                callback.load_state_dict(copy.deepcopy(states[key]))
            except (TypeError, ValueError, KeyError, AttributeError) as error:
                raise ValueError(
                    f"ResumeFromLatest: the state of {key} in {path} cannot be loaded "
                    f"({type(error).__name__}: {error}); keras_ckpt did not write it so."
                ) from None


def _callback_keys(callbacks: list[Any]) -> list[tuple[str, Any]]:
    """Stable names for callbacks with state: class name and occurrence (``EarlyStopping#0``)."""
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
