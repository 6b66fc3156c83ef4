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
