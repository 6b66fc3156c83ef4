"""``keras_ckpt.StochasticWeightAveraging``: the average of the weights along the end of
training, the replacement for tensorflow-addons' ``SWA``."""

from __future__ import annotations

import warnings
from typing import Any

import keras
import numpy as np

from keras_ckpt import validation
from keras_ckpt.averaging import batch_norm_layers, recompute_batch_norm
from keras_ckpt.callbacks._batches import EpochPosition, enable_batch_hook
from keras_ckpt.callbacks._monitor import batches_trained, learning_rate_optimizers
from keras_ckpt.callbacks._state import Resumable
from keras_ckpt.keras_adapter import (
    fit_callbacks,
    optimizer_schedule,
    print_message,
    uses_ema,
)
from keras_ckpt.swa import SwaSchedule

Schedule = keras.optimizers.schedules.LearningRateSchedule


class StochasticWeightAveraging(Resumable, keras.callbacks.Callback):
    """Averages the model's weights over the last part of training (SWA, Izmailov et al. 2018)
    and leaves the average in the model when training ends.

    Training runs normally for ``start_epoch`` epochs (or ``start_step`` batches); then, with the
    learning rate optionally held at ``swa_lr`` (or cycled from ``swa_lr_max`` down to
    ``swa_lr``), the weights after every ``average_every``-th epoch (or batch) of that phase go
    into a running average. When ``fit`` returns, the model holds the average: its trainable
    variables are the average, and its ``BatchNormalization`` moving statistics are recomputed
    for the averaged weights from ``bn_data`` (without it, they stay those of the last trained
    weights, with a warning). The weights as trained stay in ``raw_weights``.

    Counting: ``start_epoch`` epochs train before the phase (``start_epoch=0``: average from the
    first epoch's end; ``start_epoch=10`` of ``epochs=20``: the epochs the logs number 11 to 20
    are averaged). Steps count the optimizer's batches, so a resumed run counts on.

    The average is incremental in the variables' dtype (float32 for float16 or bfloat16
    variables): ``average += (weights - average) / (n + 1)``, as PyTorch's ``AveragedModel``.
    Only trainable variables are averaged.

    Exact resume: the average and its count are this callback's ``state_dict()``, which
    ``ResumeFromLatest`` stores with each checkpoint, so a resumed run averages exactly the same
    weights. The count goes into the manifest; the average's arrays go into the checkpoint's
    ``.weights.h5`` itself, in a group of its own (``keras_ckpt_callback_arrays``) beside the
    trained weights, from which training continues. Plain ``model.load_weights`` passes that
    group by, so the file stays one plain Keras loads; it grows by the trainable weights' size.
    Put this callback before ``ResumeFromLatest`` in ``callbacks`` (it refuses otherwise), so
    that the final checkpoint holds the averaged model and a rerun of the finished script gives
    it back (asking that rerun for more epochs trains on from the averaged weights).

    With ``start_step`` and ``steps_per_execution > 1``, the batch hooks come once per execution:
    an averaging point inside one is taken at its end, once.

    Args:
        start_epoch: Epochs trained before averaging begins (0-based index of the first
            averaged epoch). Give this or ``start_step``; neither means ``start_epoch=0``.
        start_step: Batches trained before averaging begins; then ``average_every`` and
            ``cycle_length`` count batches and the rate is set before every batch.
        average_every: Epochs (or batches) between two averaging points; by default 1, or
            ``cycle_length`` with a cycle (the average is taken at each cycle's lowest rate).
        swa_lr: The learning rate of the averaging phase; ``None`` leaves the rate alone.
        swa_lr_max: With ``cycle_length``: each cycle starts near this rate and falls linearly
            to ``swa_lr`` (``keras_ckpt.swa.SwaSchedule`` gives the formula).
        cycle_length: Epochs (or batches) per cycle of the cyclical rate.
        bn_data: Inputs to recompute the BatchNormalization statistics on at the end: an array,
            or an iterable of batches (``x`` or ``(x, y)``, a ``tf.data.Dataset``...).
        bn_batch_size: The batch size to cut an array ``bn_data`` into.
        verbose: 0 is silent; 1 prints when the average is taken and put in the model.

    Raises:
        ValueError: On any invalid argument, naming it; at the start of training, if ``swa_lr``
            is set and the optimizer's learning rate is a ``LearningRateSchedule``, or if this
            callback comes after ``ResumeFromLatest``.

    Example:
        >>> import keras_ckpt
        >>> swa = keras_ckpt.StochasticWeightAveraging(start_epoch=10, swa_lr=0.01)
    """

    def __init__(
        self,
        start_epoch: int | None = None,
        *,
        start_step: int | None = None,
        average_every: int | None = None,
        swa_lr: float | None = None,
        swa_lr_max: float | None = None,
        cycle_length: int | None = None,
        bn_data: Any = None,
        bn_batch_size: int = 32,
        verbose: int = 0,
    ):
        super().__init__()
        if start_epoch is not None and start_step is not None:
            raise ValueError(
                "Give one of the arguments `start_epoch` and `start_step`. Received: "
                f"start_epoch={start_epoch!r}, start_step={start_step!r}"
            )
        self.start_epoch = validation.optional(
            validation.non_negative_int, "start_epoch", start_epoch
        )
        self.start_step = validation.optional(validation.non_negative_int, "start_step", start_step)
        self.per = "step" if self.start_step is not None else "epoch"
        self.cycle_length = validation.optional(
            validation.positive_int, "cycle_length", cycle_length
        )
        self.average_every = (
            validation.positive_int("average_every", average_every)
            if average_every is not None
            else (self.cycle_length or 1)
        )
        self.swa_lr = _optional_rate("swa_lr", swa_lr)
        self.swa_lr_max = _optional_rate("swa_lr_max", swa_lr_max)
        if (self.swa_lr_max is None) != (self.cycle_length is None):
            raise ValueError(
                "A cyclical learning rate needs both `swa_lr_max` and `cycle_length`. Received: "
                f"swa_lr_max={swa_lr_max!r}, cycle_length={cycle_length!r}"
            )
        if self.swa_lr_max is not None and (self.swa_lr is None or self.swa_lr_max < self.swa_lr):
            raise ValueError(
                "Argument `swa_lr_max` must be at least `swa_lr` (a cycle falls from "
                f"`swa_lr_max` to `swa_lr`). Received: swa_lr_max={swa_lr_max!r}, "
                f"swa_lr={swa_lr!r}"
            )
        self.bn_data = bn_data
        self.bn_batch_size = validation.positive_int("bn_batch_size", bn_batch_size)
        self.verbose = validation.one_of("verbose", verbose, (0, 1))
        start = self.start_step if self.start_step is not None else (self.start_epoch or 0)
        self.schedule = SwaSchedule(
            start=start,
            average_every=self.average_every,
            swa_lr=self.swa_lr,
            swa_lr_max=self.swa_lr_max,
            cycle_length=self.cycle_length,
        )
        if self.per == "step":
            enable_batch_hook(self, "on_train_batch_begin", self._on_batch_begin)
        self._position = EpochPosition()
        self._reset()
        self.raw_weights: list[np.ndarray] | None = None

    def _reset(self) -> None:
        self.averaged_count = 0
        self._averaged_at = 0  # units (epochs or steps) done when the average was last taken
        self._average: list[np.ndarray] | None = None
        self._trained_this_fit = False

    @property
    def average(self) -> list[np.ndarray] | None:
        """The running average of the trainable variables (copies), or ``None`` before the
        first averaging point."""
        return None if self._average is None else [value.copy() for value in self._average]

    # Hooks -------------------------------------------------------------------------------

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self._check_order()
        if uses_ema(self.model):
            raise ValueError(
                "StochasticWeightAveraging does not combine with an optimizer's use_ema=True: "
                "at the end of fit both would replace the model's weights, and the checkpoints "
                "would keep only one of them. Use one kind of averaging per run."
            )
        if self.swa_lr is not None:
            for optimizer in learning_rate_optimizers(self.model):
                if isinstance(optimizer_schedule(optimizer), Schedule):
                    raise ValueError(
                        "StochasticWeightAveraging cannot set `swa_lr` on an optimizer whose "
                        "learning rate is a LearningRateSchedule; give the optimizer a float "
                        "rate, or leave swa_lr=None to keep the schedule. Received: "
                        f"learning_rate={optimizer_schedule(optimizer)!r}"
                    )
        self._reset()
        self.raw_weights = None
        self._begin_training()

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if self.per == "step":
            self._position = EpochPosition.current(self.model)
            return
        self._set_rate(self.schedule.learning_rate(epoch))

    def _on_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if self._position.is_replayed(batch):
            return  # read again without training, in an epoch resumed midway
        step = self._position.step(batch)
        self._maybe_average(step)
        self._set_rate(self.schedule.learning_rate(step))

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._trained_this_fit = True
        self._maybe_average(batches_trained(self.model) if self.per == "step" else epoch + 1)

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        self._end_training()
        if self._average is None:
            if self._trained_this_fit:
                warnings.warn(
                    "StochasticWeightAveraging: training ended before the first averaging point "
                    f"({self.per} {self.schedule.start + self.average_every}); the model keeps "
                    "its trained weights.",
                    stacklevel=2,
                )
            return
        self.raw_weights = self.model.get_weights()
        for variable, value in zip(self.model.trainable_variables, self._average, strict=True):
            variable.assign(value.astype(keras.backend.standardize_dtype(variable.dtype)))
        if self.bn_data is not None:
            recompute_batch_norm(self.model, self.bn_data, self.bn_batch_size)
        elif batch_norm_layers(self.model):
            warnings.warn(
                "StochasticWeightAveraging: the model has BatchNormalization layers, whose moving "
                "statistics belong to the last trained weights, not to their average. Pass "
                "bn_data= (training inputs) to recompute them.",
                stacklevel=2,
            )
        if self.verbose > 0:
            print_message(
                f"StochasticWeightAveraging: the model holds the average of "
                f"{self.averaged_count} snapshot(s) of its weights."
            )

    # Internals ---------------------------------------------------------------------------

    def _maybe_average(self, done: int) -> None:
        if not self.schedule.averaging_due(self._averaged_at, done):
            return
        weights = [
            keras.ops.convert_to_numpy(variable.value)
            for variable in self.model.trainable_variables
        ]
        if self._average is None:
            self._average = [_averaging_dtype(value).copy() for value in weights]
        else:
            count = self.averaged_count
            for average, value in zip(self._average, weights, strict=True):
                average += (value.astype(average.dtype) - average) / (count + 1)
        self.averaged_count += 1
        self._averaged_at = done
        if self.verbose > 0:
            print_message(
                f"\nStochasticWeightAveraging: {self.averaged_count} snapshot(s) of the weights "
                f"averaged ({self.per} {done})."
            )

    def _set_rate(self, rate: float | None) -> None:
        if rate is None:
            return
        for optimizer in learning_rate_optimizers(self.model):
            optimizer.learning_rate = rate

    def _check_order(self) -> None:
        from keras_ckpt.callbacks.resume import ResumeFromLatest

        for callback in fit_callbacks(self):
            if callback is self:
                return
            if isinstance(callback, ResumeFromLatest):
                raise ValueError(
                    "StochasticWeightAveraging must come before ResumeFromLatest in `callbacks`, "
                    "so that the final checkpoint holds the averaged weights. Received: "
                    f"callbacks with {type(callback).__name__} first"
                )

    # State -------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The running average (copies of NumPy arrays: ResumeFromLatest writes them into the
        checkpoint's weights file) and its count."""
        return {
            "count": self.averaged_count,
            "averaged_at": self._averaged_at,
            "average": self.average,
        }

    def _apply_state(self, state: dict[str, Any]) -> None:
        average = state.get("average")
        self._average = None if average is None else [np.array(value) for value in average]
        self.averaged_count = int(state.get("count", 0))
        self._averaged_at = int(state.get("averaged_at", 0))
        model = self.model
        if self._average is not None and model is not None:
            expected = [tuple(variable.shape) for variable in model.trainable_variables]
            found = [value.shape for value in self._average]
            if found != expected:
                raise ValueError(
                    "the averaged weights have the shapes "
                    f"{found}, the model's trainable variables {expected}"
                )


def _optional_rate(name: str, value: Any) -> float | None:
    return validation.optional(validation.positive_seconds, name, value)


def _averaging_dtype(value: np.ndarray) -> np.ndarray:
    """``value`` in the dtype the average is kept in: its own, at least float32."""
    return value.astype(np.float32) if value.dtype.itemsize < 4 else value
