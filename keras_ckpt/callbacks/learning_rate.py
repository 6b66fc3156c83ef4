"""``keras_ckpt.ReduceLROnPlateau`` and ``keras_ckpt.LearningRateScheduler``: Keras's classes,
working with schedule-driven optimizers and keeping their state across a resume."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import keras
import numpy as np

from keras_ckpt import decisions, validation
from keras_ckpt.callbacks._batches import EpochPosition, enable_batch_hook
from keras_ckpt.callbacks._monitor import (
    LazyMode,
    current_learning_rate,
    learning_rate_optimizers,
    log_learning_rates,
    plain_metrics,
    set_keras_monitor_attributes,
)
from keras_ckpt.callbacks._state import Resumable
from keras_ckpt.keras_adapter import (
    optimizer_schedule,
    print_message,
    rebuild_train_function,
    set_optimizer_schedule,
)
from keras_ckpt.schedules import Scaled

Schedule = keras.optimizers.schedules.LearningRateSchedule


class ReduceLROnPlateau(LazyMode, Resumable, keras.callbacks.Callback):
    """Lowers the learning rate when a metric has stopped improving; a drop-in for Keras's class.

    Takes every argument of ``keras.callbacks.ReduceLROnPlateau`` with the same defaults and
    behaviour, and adds:

    - It works when the optimizer's learning rate is a ``LearningRateSchedule`` (Keras raises
      ``TypeError``): the schedule is multiplied by ``factor`` (wrapped in
      ``keras_ckpt.schedules.Scaled``, which saves with the model) and the train step is rebuilt
      so every backend sees the new scale. ``min_lr`` bounds the rate at the moment of reduction.
    - ``state_dict()`` / ``load_state_dict()``: ``wait``, ``cooldown_counter`` and ``best``
      continue across a resume (Keras resets them in every ``fit``).

    Args:
        monitor, factor, patience, verbose, mode, min_delta, cooldown, min_lr: As in Keras.

    Raises:
        ValueError: If ``factor >= 1.0`` (Keras's check and message).

    Example:
        >>> import keras_ckpt
        >>> reduce = keras_ckpt.ReduceLROnPlateau(patience=2, factor=0.5)
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        factor: float = 0.1,
        patience: int = 10,
        verbose: int = 0,
        mode: str = "auto",
        min_delta: float = 1e-4,
        cooldown: int = 0,
        min_lr: float = 0.0,
        **kwargs: Any,
    ):
        super().__init__()
        self.factor = validation.plateau_factor(factor)
        mode = validation.keras_mode(type(self).__name__, mode)  # Keras warns, falls back
        self.monitor = monitor
        self.patience = patience
        self.verbose = verbose
        self.mode = mode
        self.min_delta = abs(min_delta)  # negative once the mode is "min", as in Keras
        # Keras's comparison (keras.ops.less or greater), set once the mode is settled.
        self.monitor_op: Any = None
        self.cooldown = cooldown
        self.min_lr = min_lr
        self._reset()

    def _reset(self) -> None:
        self._set_state(decisions.PlateauState())

    def in_cooldown(self) -> bool:
        return self.cooldown_counter > 0

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self._reset()
        self._begin_training()

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        self._end_training()

    def _apply_state(self, state: dict[str, Any]) -> None:
        self._set_state(decisions.PlateauState.from_state_dict(state))

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        mode = self._mode()  # settled first, raising as Keras does if it cannot
        set_keras_monitor_attributes(self, mode)
        rule = decisions.PlateauRule(
            mode=mode,
            min_delta=abs(self.min_delta),
            patience=self.patience,
            cooldown=self.cooldown,
        )
        log_learning_rates(self.model, logs)
        current = plain_metrics(logs).get(self.monitor)
        if current is None:
            warnings.warn(
                f"Learning rate reduction is conditioned on metric `{self.monitor}` which is not "
                f"available. Available metrics are: {','.join(list((logs or {}).keys()))}.",
                stacklevel=2,
            )
            return
        state, reason = decisions.decide_plateau(self._state(), current, rule)
        if reason is not None:
            reduced = [
                self._reduce(optimizer, epoch) for optimizer in learning_rate_optimizers(self.model)
            ]
            # At min_lr nothing is reduced: no cooldown, and the next epoch tries again.
            if any(reduced):
                state = decisions.after_reduction(state, rule)
        self._set_state(state)

    def _state(self) -> decisions.PlateauState:
        return decisions.PlateauState(
            wait=self.wait, cooldown_counter=self.cooldown_counter, best=self.best
        )

    def _set_state(self, state: decisions.PlateauState) -> None:
        # Kept as plain attributes: Keras's ReduceLROnPlateau has them, and code reads them.
        self.wait = state.wait
        self.cooldown_counter = state.cooldown_counter
        self.best = state.best

    def _reduce(self, optimizer: Any, epoch: int) -> bool:
        old = current_learning_rate(optimizer)
        if not old > np.float32(self.min_lr):
            return False
        new = max(old * self.factor, self.min_lr)
        schedule = optimizer_schedule(optimizer)
        if isinstance(schedule, Schedule):
            if isinstance(schedule, Scaled):
                schedule = Scaled(schedule.schedule, schedule.scale * new / old)
            else:
                schedule = Scaled(schedule, new / old)
            set_optimizer_schedule(optimizer, schedule)
            # The compiled train step captured the old schedule; rebuild it on every backend.
            rebuild_train_function(self.model)
        else:
            optimizer.learning_rate = new
        if self.verbose > 0:
            name = "" if len(learning_rate_optimizers(self.model)) == 1 else f" {optimizer.name}"
            print_message(
                f"\nEpoch {epoch + 1}: ReduceLROnPlateau reducing{name} learning rate to {new}."
            )
        return True

    def state_dict(self) -> dict[str, Any]:
        """Counters a resumed run needs; the rate itself is in the optimizer's saved state."""
        return self._state().state_dict()


class LearningRateScheduler(keras.callbacks.Callback):
    """Sets the learning rate from a schedule; a drop-in for Keras's class.

    Takes Keras's arguments (``schedule(epoch)`` or ``schedule(epoch, lr)`` called at each
    epoch start, ``verbose``) with the same behaviour, and adds:

    - ``per="step"``: call ``schedule(step)`` before every training batch (every execution,
      with ``steps_per_execution > 1``) instead, ``step``
      being the batches the optimizer has trained (so a resumed model continues the curve), from
      ``on_train_batch_begin``, which does not turn off asynchronous dispatch.
    - ``schedule`` may be a ``keras.optimizers.schedules.LearningRateSchedule``.
    - A schedule may return a 0-d array or tensor (Keras insists on a Python or NumPy float).
    - The learning rate is written into the epoch's ``logs`` (``learning_rate``), so History,
      CSVLogger and TensorBoard show it.
    - An optimizer whose learning rate is itself a schedule is a clear error at the start of
      training, instead of Keras's ``TypeError`` mid-way (it is still a ``TypeError``).

    Args:
        schedule: ``epoch -> rate``, ``(epoch, rate) -> rate``, or with ``per="step"``
            ``step -> rate``; or a ``LearningRateSchedule``.
        verbose: 0 is silent; 1 prints the rate at each epoch start.
        per: ``"epoch"`` (Keras's behaviour) or ``"step"``.

    Raises:
        ValueError: If ``schedule`` is not callable (or is a class; the error is also the
            ``TypeError`` Keras raises when it calls it) or ``per`` is unknown; at the start of
            training, if the optimizer's learning rate is a ``LearningRateSchedule`` (also the
            ``TypeError`` Keras raises).

    Example:
        >>> import keras_ckpt
        >>> from keras_ckpt.schedules import WarmupCosine
        >>> scheduler = keras_ckpt.LearningRateScheduler(WarmupCosine(1e-3, 10_000), per="step")
    """

    def __init__(self, schedule: Callable[..., Any], verbose: int = 0, *, per: str = "epoch"):
        super().__init__()
        # Refused now, not at the first epoch as in Keras; the error is also the TypeError
        # Keras raises there.
        self.schedule = validation.function("schedule", schedule)
        self.verbose = verbose
        self.per = validation.one_of("per", per, ("epoch", "step"))
        if self.per == "step":
            enable_batch_hook(self, "on_train_batch_begin", self._set_for_step)
        self._position = EpochPosition()
        self.last_learning_rate: float | None = None

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        for optimizer in learning_rate_optimizers(self.model):
            if not hasattr(optimizer, "learning_rate"):
                raise ValueError('Optimizer must have a "learning_rate" attribute.')
            schedule = optimizer_schedule(optimizer)
            if isinstance(schedule, Schedule):
                # Keras raises TypeError here (when it sets the rate); this is one too, and
                # quotes Keras's sentence, which code may match.
                raise validation.ArgumentTypeError(
                    "LearningRateScheduler cannot set the learning rate of an optimizer created "
                    "with a LearningRateSchedule: This optimizer was created with a "
                    "`LearningRateSchedule` object as its `learning_rate` constructor argument, "
                    "hence its learning rate is not settable. Pass the schedule to "
                    "LearningRateScheduler and a float learning rate to the optimizer. "
                    f"Received: learning_rate={schedule!r}"
                )

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if self.per == "step":
            # The optimizer's own batch count: a resumed model continues the curve.
            self._position = EpochPosition.current(self.model)
            return
        for optimizer in learning_rate_optimizers(self.model):
            rate = self._rate_for_epoch(optimizer, epoch)
            if self.verbose > 0:
                name = (
                    "" if len(learning_rate_optimizers(self.model)) == 1 else f" {optimizer.name}"
                )
                print_message(
                    f"\nEpoch {epoch + 1}: LearningRateScheduler setting{name} learning rate "
                    f"to {rate}."
                )

    def _set_for_step(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        rate = _as_float(self.schedule(self._position.step(batch)))
        for optimizer in learning_rate_optimizers(self.model):
            optimizer.learning_rate = rate
        self.last_learning_rate = rate

    def _rate_for_epoch(self, optimizer: Any, epoch: int) -> float:
        if isinstance(self.schedule, Schedule):
            rate = self.schedule(epoch)
        else:
            try:
                rate = self.schedule(epoch, current_learning_rate(optimizer))
            except TypeError:  # A schedule of the epoch alone, as Keras allows.
                rate = self.schedule(epoch)
        rate = _as_float(rate)
        optimizer.learning_rate = rate
        self.last_learning_rate = rate
        return rate

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        log_learning_rates(self.model, logs)

    def state_dict(self) -> dict[str, Any]:
        """The schedule is a function of the epoch or step, so only the last rate is kept."""
        return {"last_learning_rate": self.last_learning_rate}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        rate = state.get("last_learning_rate")
        self.last_learning_rate = None if rate is None else float(rate)  # "nan" in the manifest


def _as_float(rate: Any) -> float:
    array = np.asarray(keras.ops.convert_to_numpy(rate))
    if array.size != 1 or array.dtype.kind not in "fiu":
        raise ValueError(f"The output of the `schedule` function should be a float. Got: {rate}")
    return float(array.reshape(()))
