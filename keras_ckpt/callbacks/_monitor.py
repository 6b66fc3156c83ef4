"""Reading monitored metrics the way Keras's callbacks do: scalars from logs, mode from metrics."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import keras
import numpy as np

from keras_ckpt import keras_adapter, ranking

# Checkpoint events go into ``logs`` under this prefix (and from there into TensorBoard's event
# files and History); they are never taken for metrics.
EVENT_PREFIX = "ckpt/"


def plain_metrics(logs: Mapping[str, Any] | None) -> dict[str, float]:
    """The scalar entries of ``logs`` as Python floats (tensors and arrays converted), without
    the checkpoint events keras_ckpt's callbacks add (``ckpt/...``)."""
    metrics = {}
    for name, value in (logs or {}).items():
        if name.startswith(EVENT_PREFIX):
            continue
        try:
            array = np.asarray(keras.ops.convert_to_numpy(value))
        except Exception:  # A non-numeric log entry is not a metric.
            continue
        if array.size == 1 and np.issubdtype(array.dtype, np.number):
            metrics[name] = float(array.reshape(()))
    return metrics


def training_loss(model: keras.Model | None, metrics: Mapping[str, float]) -> float | None:
    """The training loss a save at this point would record: ``metrics["loss"]`` at an epoch end,
    else the model's loss tracker (the mean of the epoch so far, NaN once a batch of it was),
    read now, once per save, so no batch pays for it. ``None`` if the model tracks no loss."""
    if "loss" in metrics:
        return float(metrics["loss"])
    for metric in getattr(model, "metrics", None) or []:
        if getattr(metric, "name", None) == "loss":
            try:
                return float(np.asarray(keras.ops.convert_to_numpy(metric.result())).reshape(()))
            except Exception:  # a tracker without a scalar result is not the loss we look for
                return None
    return None


def metric_direction(model: keras.Model | None, monitor: str) -> str | None:
    """``"up"`` or ``"down"`` if one of the model's compiled metrics named like ``monitor`` says."""
    name = monitor.removeprefix("val_")
    for metric in _flat_metrics(getattr(model, "metrics", None) or []):
        if metric.name == name:
            direction = keras_adapter.metric_direction(metric)
            if direction is not None:
                return direction
    return None


def _flat_metrics(metrics: list[Any]) -> list[Any]:
    flat = []
    for metric in metrics:
        inner = getattr(metric, "metrics", None)
        if isinstance(inner, list) and inner and inner is not metrics:
            flat.extend(_flat_metrics(inner))
        else:
            flat.append(metric)
    return flat


def resolve_mode_or_raise(
    callback_name: str, model: keras.Model | None, monitor: str, mode: str
) -> str:
    resolved = ranking.resolve_mode(monitor, mode, metric_direction(model, monitor))
    if resolved is None:
        raise ValueError(
            f"{callback_name} callback received monitor={monitor}, but Keras isn't able to "
            "automatically determine whether that metric should be maximized or minimized. "
            "Pass `mode='max'` in order to monitor based on the highest metric value, or pass "
            "`mode='min'` in order to use the lowest value."
        )
    return resolved


class LazyMode:
    """Mixin for a callback with ``monitor``, ``mode`` and ``model``: ``_mode()`` is ``mode``
    settled to ``"min"`` or ``"max"`` on first use, then kept until ``_forget_mode()``.

    Settled late, as Keras does at the first epoch end: with ``mode="auto"`` the direction may
    come from one of the model's compiled metrics, which exist only once training runs.
    """

    _resolved_mode: str | None = None

    def _mode(self) -> str:
        """``"min"`` or ``"max"``; a ``ValueError`` (Keras's) if ``"auto"`` cannot tell."""
        if self._resolved_mode is None:
            callback: Any = self
            self._resolved_mode = resolve_mode_or_raise(
                type(self).__name__, callback.model, callback.monitor, callback.mode
            )
        return self._resolved_mode

    def _mode_if_known(self) -> str | None:
        try:
            return self._mode()
        except ValueError:
            return None

    def _forget_mode(self) -> None:
        """For ``on_train_begin``: the next ``fit`` may train a model with other metrics."""
        self._resolved_mode = None


def set_keras_monitor_attributes(callback: Any, mode: str) -> None:
    """Gives a drop-in callback whose mode is settled to ``mode`` the public attributes Keras's
    ``MonitorCallback`` has then: ``monitor_op`` is ``keras.ops.less`` or ``keras.ops.greater``,
    and ``min_delta`` is negative when lower is better (Keras subtracts it from the value before
    comparing). The callback's own decisions use ``abs(min_delta)``."""
    callback.monitor_op = keras.ops.less if mode == "min" else keras.ops.greater
    callback.min_delta = -abs(callback.min_delta) if mode == "min" else abs(callback.min_delta)


def batches_trained(model: keras.Model | None) -> int:
    """Training batches the model's optimizer has seen (not updates: with gradient
    accumulation these differ)."""
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None:
        return 0
    # A mixed-precision LossScaleOptimizer counts nothing itself; its inner optimizer does.
    optimizer = getattr(optimizer, "inner_optimizer", optimizer)
    return keras_adapter.optimizer_batch_count(optimizer)


# Set on the model by ResumeFromLatest while fit replays (reads without training) the batches of
# the resumed epoch that the interrupted run had trained.
_REPLAYED = "_keras_ckpt_replayed_batches"


def replayed_batches(model: keras.Model | None) -> int:
    """How many of the current epoch's first batches ``fit`` reads again without training (an
    epoch resumed midway; 0 otherwise). Read in ``on_epoch_begin``; hooks of those batches
    should neither save nor count them."""
    return int(getattr(model, _REPLAYED, 0))


def set_replayed_batches(model: keras.Model, batches: int) -> None:
    setattr(model, _REPLAYED, batches)


def epoch_start_batches(model: keras.Model | None) -> int:
    """``batches_trained`` as the current epoch began, for ``on_epoch_begin``; batch ``b`` of
    the epoch is then step ``epoch_start_batches + b``, also in an epoch resumed midway."""
    return batches_trained(model) - replayed_batches(model)


def learning_rate_optimizers(model: keras.Model) -> list[Any]:
    """The optimizers a model trains with (several for a multi-optimizer), unwrapped from a
    mixed-precision ``LossScaleOptimizer``, which keeps the schedule on its inner optimizer."""
    optimizer = model.optimizer
    optimizers = getattr(optimizer, "optimizers", None) or [optimizer]
    return [getattr(o, "inner_optimizer", o) for o in optimizers]


def current_learning_rate(optimizer: Any) -> float:
    return float(keras.ops.convert_to_numpy(optimizer.learning_rate))


def log_learning_rates(model: keras.Model, logs: dict[str, Any] | None) -> None:
    """Puts the current learning rate(s) into ``logs`` as Keras's callbacks do."""
    if logs is None:
        return
    optimizers = learning_rate_optimizers(model)
    if len(optimizers) == 1:
        logs["learning_rate"] = current_learning_rate(optimizers[0])
    else:
        for optimizer in optimizers:
            logs[f"learning_rate_{optimizer.name}"] = current_learning_rate(optimizer)
