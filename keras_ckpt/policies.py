"""Retention policies: which committed checkpoints to keep. Pure: no Keras import.

A policy looks at the records of the checkpoints a callback owns (oldest first) and returns one
keep-flag per record. Policies never delete anything themselves; the store does, after the new
checkpoint has committed, and only once no callback keeps a file.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from keras_ckpt.ranking import ranked


class Record(Protocol):
    """What a policy may read of a checkpoint record."""

    epoch: int
    step: int
    metrics: Mapping[str, float]
    time: float


class RetentionPolicy(Protocol):
    def keep(self, records: Sequence[Record]) -> list[bool]:
        """One flag per record, in order: ``True`` keeps it."""
        ...


@dataclass(frozen=True)
class KeepAll:
    """Keeps every checkpoint (Keras's ModelCheckpoint never deletes)."""

    def keep(self, records: Sequence[Record]) -> list[bool]:
        return [True] * len(records)


@dataclass(frozen=True)
class KeepBest:
    """Keeps the ``n`` checkpoints with the best value of ``monitor``.

    A record without the metric, or with a NaN, is never among the best. Ties keep the older one.

    Example:
        >>> from types import SimpleNamespace as R
        >>> records = [R(metrics={"val_loss": v}) for v in (0.5, 0.3, 0.4)]
        >>> KeepBest(2, "val_loss", "min").keep(records)
        [False, True, True]
    """

    n: int
    monitor: str
    mode: str

    def keep(self, records: Sequence[Record]) -> list[bool]:
        values = [record.metrics.get(self.monitor, math.nan) for record in records]
        best = {i for i in ranked(values, self.mode)[: self.n] if not math.isnan(values[i])}
        return [i in best for i in range(len(records))]
