"""When to save: one tested counter for every callback. Pure: no Keras import."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from keras_ckpt import validation

StepCounting = Literal["multiples", "since_last"]
STEP_COUNTINGS: tuple[StepCounting, ...] = ("multiples", "since_last")


@dataclass
class IntervalTrigger:
    """Every N epochs, every N steps and/or every T seconds, combined: any one due means save.

    Steps are training batches completed since ``start``. How they are counted depends on
    ``step_counting``:

    - ``"multiples"`` (default): due whenever the count reaches a multiple of ``every_steps``
      (steps 500, 1000, ...), so checkpoint steps do not depend on what else was saved.
    - ``"since_last"``: due once ``every_steps`` steps have passed since the step trigger was
      last due, which is how Keras's ``ModelCheckpoint(save_freq=N)`` counts. The two differ
      when the reported steps skip over multiples (``steps_per_execution`` not dividing N).

    A save by any trigger restarts the clock of the time trigger. Checks come at batch
    boundaries (``due_mid_epoch`` with the step count, or ``due_after_batch`` with the batch
    index Keras passes to ``on_train_batch_end``) and at epoch ends (``due_at_epoch_end``, which
    also covers the epoch trigger); ``saved`` records a save. Time comes from the caller, so
    tests inject a clock.

    A new trigger counts from step 0 and time 0.0; ``start`` restarts it.

    Raises:
        ValueError: On an unknown ``step_counting``.

    Example:
        >>> trigger = IntervalTrigger(every_steps=4)
        >>> trigger.start(now=0.0)
        >>> [step for step in range(1, 10) if trigger.due_mid_epoch(step, now=0.0)]
        [4, 8]
        >>> keras_like = IntervalTrigger(every_steps=3, step_counting="since_last")
        >>> [keras_like.due_after_batch(batch) for batch in range(5)]
        [False, False, True, False, False]
    """

    every_epochs: int | None = None
    every_steps: int | None = None
    every_seconds: float | None = None
    step_counting: StepCounting = "multiples"
    # The step of the last check ("multiples") or of the last time the steps were due
    # ("since_last").
    _reference_step: int = field(default=0, init=False)
    _last_save_time: float = field(default=0.0, init=False)
    # For due_after_batch: steps counted from batch indices, and the last index seen.
    _batches_seen: int = field(default=0, init=False)
    _last_batch: int | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        validation.one_of("step_counting", self.step_counting, STEP_COUNTINGS)

    def start(self, now: float, step: int = 0) -> None:
        self._reference_step = step
        self._last_save_time = now
        self._batches_seen = step
        self._last_batch = None

    def due_mid_epoch(self, step: int, now: float) -> bool:
        return self._steps_due(step) | self._time_due(now)

    def due_after_batch(self, batch: int, now: float | None = None) -> bool:
        """Like ``due_mid_epoch``, fed the 0-based batch index of ``on_train_batch_end``.

        With ``steps_per_execution=S`` Keras reports only every S-th batch, so the count
        advances by the gap between reported indices, and an index not above the last one
        means a new epoch began (Keras's ``ModelCheckpoint._should_save_on_batch``).

        Raises:
            ValueError: If the trigger has ``every_seconds`` and ``now`` is not given.
        """
        if self._last_batch is None or batch <= self._last_batch:
            self._batches_seen += batch + 1
        else:
            self._batches_seen += batch - self._last_batch
        self._last_batch = batch
        if now is None:
            if self.every_seconds is not None:
                raise ValueError("IntervalTrigger with `every_seconds` needs `now`.")
            return self._steps_due(self._batches_seen)
        return self._steps_due(self._batches_seen) | self._time_due(now)

    def due_at_epoch_end(self, epoch: int, step: int, now: float) -> bool:
        """``epoch`` is 1-based, as in file names."""
        epoch_due = self.every_epochs is not None and epoch % self.every_epochs == 0
        return epoch_due | self._steps_due(step) | self._time_due(now)

    def saved(self, now: float) -> None:
        self._last_save_time = now

    def _steps_due(self, step: int) -> bool:
        previous = self._reference_step
        if self.step_counting == "since_last":
            due = self.every_steps is not None and step - previous >= self.every_steps
            if due:
                self._reference_step = step
            return due
        # A multiple of every_steps was reached since the last check (steps_per_execution > 1
        # reports every few steps, so the multiple itself may be skipped over).
        self._reference_step = step
        if self.every_steps is None:
            return False
        return step // self.every_steps > previous // self.every_steps

    def _time_due(self, now: float) -> bool:
        return self.every_seconds is not None and now - self._last_save_time >= self.every_seconds
