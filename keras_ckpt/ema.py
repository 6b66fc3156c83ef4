"""Where a model's raw weights and its moving averages are, so that checkpoints get them right.

With ``optimizer(use_ema=True)`` the optimizer keeps an exponential moving average of every
trainable variable. A keras_ckpt checkpoint always holds the raw weights as the model's weights
and the averages in the optimizer's slots, which is what training continues from. During
``fit`` the two can be elsewhere:

- a ``SwapEMAWeights`` callback (keras_ckpt's or Keras's) has exchanged them: the model holds the
  averages and the slots the raw weights (from an epoch's end to the next epoch's start with
  ``swap_on_epoch=True``, and while validating);
- the end of ``fit`` has copied the averages over the model's weights (Keras's
  ``optimizer.finalize_variable_values``, and Keras's ``SwapEMAWeights`` at the last epoch): the
  raw weights are then gone from the model; this module copies them aside first.

``saved_sources`` tells a snapshot where to read each variable from; ``swap`` is the exact
exchange (values assigned, never added and subtracted) that ``keras_ckpt.SwapEMAWeights`` uses.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator
from typing import Any

import keras
import numpy as np

from keras_ckpt import keras_adapter

# Per model: the raw weights copied aside when the end of fit overwrote them with the averages.
_kept_raw: weakref.WeakKeyDictionary[Any, list[np.ndarray]] = weakref.WeakKeyDictionary()
# Per model: whether keras_ckpt.SwapEMAWeights has put the averages into the model.
_swapped: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()
# Per model: Keras's own SwapEMAWeights callbacks of the running fit (weak references).
_keras_swaps: weakref.WeakKeyDictionary[Any, list[Any]] = weakref.WeakKeyDictionary()


def _copy(variable: Any) -> np.ndarray:
    return np.array(keras.ops.convert_to_numpy(getattr(variable, "value", variable)), copy=True)


def watch(model: keras.Model, callbacks: list[Any]) -> None:
    """Called as ``fit`` begins: forgets the previous fit's end, notes Keras's own
    ``SwapEMAWeights`` among ``callbacks``, and has the raw weights copied aside before anything
    overwrites them with the averages at the end of this fit."""
    if model is None:  # hooks called without a model (a test driving them)
        return
    _kept_raw.pop(model, None)
    keras_swaps = [c for c in callbacks if isinstance(c, keras.callbacks.SwapEMAWeights)]
    _keras_swaps[model] = [weakref.ref(c) for c in keras_swaps]
    if not keras_adapter.uses_ema(model):
        return
    reference = weakref.ref(model)

    def keep() -> None:
        found = reference()
        if found is not None:
            _keep_raw(found)

    for owner in [*keras_adapter.ema_optimizers(model), *keras_swaps]:
        keras_adapter.run_before_ema_finalize(owner, keep)


def is_swap_callback(callback: Any) -> bool:
    """Whether ``callback`` puts the averages into the model for validation: Keras's
    ``SwapEMAWeights`` or keras_ckpt's."""
    return isinstance(callback, keras.callbacks.SwapEMAWeights) or bool(
        getattr(type(callback), "swaps_ema_weights", False)
    )


def holds_averages(model: keras.Model) -> bool:
    """Whether a ``SwapEMAWeights`` has put the averages into the model (the raw weights are
    in the optimizer's slots)."""
    if _swapped.get(model, False):
        return True
    for reference in _keras_swaps.get(model, []):
        callback = reference()
        if callback is not None and keras_adapter.keras_swap_holds_ema(callback):
            return True
    return False


def _keep_raw(model: keras.Model) -> None:
    """Copies the raw weights aside, and puts the averages in the slots if they are not there:
    the end of ``fit`` then leaves the averages in the model, as in Keras, and the final
    checkpoint still gets the raw weights."""
    if model in _kept_raw:
        return  # Keras's SwapEMAWeights finalized first; the optimizer finalizes after it
    pairs = keras_adapter.ema_variable_pairs(model)
    if holds_averages(model):
        raw = [_copy(average) for _, average in pairs]
        for variable, average in pairs:
            average.assign(variable.value)
        _swapped[model] = False  # both now hold the averages: nothing to swap back
    else:
        raw = [_copy(variable) for variable, _ in pairs]
    _kept_raw[model] = raw
    for reference in _keras_swaps.get(model, []):
        callback = reference()
        if callback is not None:
            keras_adapter.forget_keras_swap(callback)


def loaded(model: keras.Model) -> None:
    """The model's variables were just loaded from a checkpoint: the raw weights are in the
    model and the averages in the slots, whatever a swap had done before (a fit that crashed
    while the model held the averages, then a resume into the same model)."""
    _kept_raw.pop(model, None)
    _swapped.pop(model, None)
    for reference in _keras_swaps.get(model, []):
        callback = reference()
        if callback is not None:
            keras_adapter.forget_keras_swap(callback)


def swap(model: keras.Model) -> None:
    """Exchanges the model's weights and their moving averages, bit for bit (a copy and two
    assignments per variable; Keras's TensorFlow swap adds and subtracts, which rounds).

    Raises:
        ValueError: If the optimizer does not use EMA (Keras's message).
    """
    if not keras_adapter.uses_ema(model):
        optimizer = getattr(model, "optimizer", None)
        raise ValueError(
            "SwapEMAWeights must be used when `use_ema=True` is set on the optimizer. "
            f"Received: use_ema={getattr(optimizer, 'use_ema', None)}"
        )
    for variable, average in keras_adapter.ema_variable_pairs(model):
        value = _copy(variable)
        variable.assign(average.value)
        average.assign(value)
    _swapped[model] = not _swapped.get(model, False)


def swapped_by_keras_ckpt(model: keras.Model) -> bool:
    """Whether ``keras_ckpt.SwapEMAWeights`` has put the averages into the model."""
    return _swapped.get(model, False)


def saved_sources(model: keras.Model) -> dict[int, Any]:
    """What a checkpoint saves instead of a variable's current value, by ``id(variable)``: the
    raw weights (a variable or a NumPy copy) for the model's variables and the averages for the
    optimizer's slots, where they are not in place now. Empty when everything is in place."""
    raw = _kept_raw.get(model)
    if raw is not None:
        pairs = keras_adapter.ema_variable_pairs(model)
        return {id(variable): value for (variable, _), value in zip(pairs, raw, strict=True)}
    if not holds_averages(model):
        return {}
    sources: dict[int, Any] = {}
    for variable, average in keras_adapter.ema_variable_pairs(model):
        sources[id(variable)] = average
        sources[id(average)] = variable
    return sources


@contextlib.contextmanager
def raw_weights_in_model(model: keras.Model) -> Iterator[None]:
    """For Keras's own synchronous saves: the raw weights in the model and the averages in the
    slots for a while, then everything back as it was (exactly)."""
    sources = saved_sources(model)
    if not sources:
        yield
        return
    variables = [v for v in _all_variables(model) if id(v) in sources]
    before = [_copy(v) for v in variables]
    wanted = [_copy(sources[id(v)]) for v in variables]
    for variable, value in zip(variables, wanted, strict=True):
        variable.assign(value)
    try:
        yield
    finally:
        for variable, value in zip(variables, before, strict=True):
            variable.assign(value)


def _all_variables(model: keras.Model) -> list[Any]:
    optimizer = getattr(model, "optimizer", None)
    return list(model.variables) + list(getattr(optimizer, "variables", []) or [])


def averages_into_model(model: keras.Model, what: str) -> None:
    """Copies the optimizer's moving averages over the model's weights (``weights="ema"``).

    Raises:
        ValueError: If the model's optimizer keeps no averages, naming ``what`` was loaded.
    """
    pairs = keras_adapter.ema_variable_pairs(model)
    if not pairs:
        raise ValueError(
            f"weights='ema' needs moving averages, but {what} has none: its optimizer was not "
            "built with `use_ema=True` (or it holds weights only and the model given has no such "
            "optimizer). Use weights='raw'."
        )
    for variable, average in pairs:
        variable.assign(average.value)


__all__ = [
    "averages_into_model",
    "holds_averages",
    "is_swap_callback",
    "loaded",
    "raw_weights_in_model",
    "saved_sources",
    "swap",
    "swapped_by_keras_ckpt",
    "watch",
]
