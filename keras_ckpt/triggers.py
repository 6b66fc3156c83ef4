"""When to save: one tested counter for every callback. Pure: no Keras import."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class EveryNBatches:
    """Fires once ``n`` training batches have passed since the last firing.

    Fed the 0-based batch index that Keras passes to ``on_train_batch_end``. With
    ``steps_per_execution=S`` Keras reports only every S-th batch, so the count advances by the
    gap between reported indices, and a smaller index means a new epoch began. This matches
    Keras's ``ModelCheckpoint(save_freq=n)`` exactly.

    Example:
        >>> trigger = EveryNBatches(3)
        >>> [trigger.observe(batch) for batch in range(5)]
        [False, False, True, False, False]
    """

    n: int
    _since_last: int = field(default=0, init=False)
    _last_batch: int | None = field(default=None, init=False)

    def reset(self) -> None:
        self._since_last = 0
        self._last_batch = None

    def observe(self, batch: int) -> bool:
        if self._last_batch is None or batch <= self._last_batch:
            self._since_last += batch + 1
        else:
            self._since_last += batch - self._last_batch
        self._last_batch = batch
        if self._since_last >= self.n:
            self._since_last = 0
            return True
        return False


@dataclass
class IntervalTrigger:
    """Every N epochs, every N steps and/or every T seconds, combined: any one due means save.

    Steps are training batches completed in the run. A save by any trigger restarts the clock of
    the time trigger. Checks come at batch boundaries (``due_mid_epoch``) and at epoch ends
    (``due_at_epoch_end``, which also covers the epoch trigger); ``saved`` records a save.
    Time comes from the caller, so tests inject a clock.

    Example:
        >>> trigger = IntervalTrigger(every_steps=4)
        >>> trigger.start(now=0.0)
        >>> [step for step in range(1, 10) if trigger.due_mid_epoch(step, now=0.0)]
        [4, 8]
    """

    every_epochs: int | None = None
    every_steps: int | None = None
    every_seconds: float | None = None
    _checked_step: int = field(default=0, init=False)
    _last_save_time: float = field(default=0.0, init=False)

    def start(self, now: float, step: int = 0) -> None:
        self._checked_step = step
        self._last_save_time = now

    def due_mid_epoch(self, step: int, now: float) -> bool:
        return self._steps_due(step) | self._time_due(now)

    def due_at_epoch_end(self, epoch: int, step: int, now: float) -> bool:
        """``epoch`` is 1-based, as in file names."""
        epoch_due = self.every_epochs is not None and epoch % self.every_epochs == 0
        return epoch_due | self._steps_due(step) | self._time_due(now)

    def saved(self, now: float) -> None:
        self._last_save_time = now

    def _steps_due(self, step: int) -> bool:
        # A multiple of every_steps was reached since the last check (steps_per_execution > 1
        # reports every few steps, so the multiple itself may be skipped over).
        previous, self._checked_step = self._checked_step, step
        if self.every_steps is None:
            return False
        return step // self.every_steps > previous // self.every_steps

    def _time_due(self, now: float) -> bool:
        return self.every_seconds is not None and now - self._last_save_time >= self.every_seconds
