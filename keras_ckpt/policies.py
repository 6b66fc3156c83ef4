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

from keras_ckpt import validation
from keras_ckpt.ranking import MODES, ranked, resolve_mode


class Record(Protocol):
    """What a policy may read of a checkpoint record.

    Read-only properties, so the frozen ``CheckpointRecord`` that ``list_checkpoints`` returns
    (and any object with these attributes, frozen or not) satisfies it.
    """

    @property
    def epoch(self) -> int: ...

    @property
    def step(self) -> int: ...

    @property
    def metrics(self) -> Mapping[str, float]: ...

    @property
    def time(self) -> float: ...


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

    Args:
        n: How many to keep, at least 1.
        monitor: The metric to rank by.
        mode: ``"min"``, ``"max"``, or ``"auto"``, which the callbacks' inference resolves from
            the name (``loss`` and ``val_loss`` are minimized); the resolved ``"min"`` or
            ``"max"`` is what ``mode`` holds afterwards.

    Raises:
        ValueError: On a bad argument, or ``mode="auto"`` for a metric whose name does not
            tell whether higher or lower is better.

    Example:
        >>> from types import SimpleNamespace as R
        >>> records = [R(metrics={"val_loss": v}) for v in (0.5, 0.3, 0.4)]
        >>> KeepBest(2, "val_loss").keep(records)
        [False, True, True]
        >>> KeepBest(2, "val_loss")
        KeepBest(n=2, monitor='val_loss', mode='min')
    """

    n: int
    monitor: str
    mode: str = "auto"

    def __post_init__(self) -> None:
        validation.positive_int("n", self.n)
        validation.non_empty_str("monitor", self.monitor)
        validation.one_of("mode", self.mode, MODES)
        resolved = resolve_mode(self.monitor, self.mode)
        if resolved is None:
            raise ValueError(
                "Argument `mode` is 'auto', but the name of `monitor` does not tell whether a "
                "lower or a higher value is better; pass mode='min' or mode='max'. "
                f"Received: monitor={self.monitor!r}, mode={self.mode!r}"
            )
        object.__setattr__(self, "mode", resolved)  # frozen: set once, here

    def keep(self, records: Sequence[Record]) -> list[bool]:
        values = [record.metrics.get(self.monitor, math.nan) for record in records]
        best = {i for i in ranked(values, self.mode)[: self.n] if not math.isnan(values[i])}
        return [i in best for i in range(len(records))]


@dataclass(frozen=True)
class KeepLatest:
    """Keeps the ``n`` newest checkpoints (records are oldest first).

    Example:
        >>> KeepLatest(2).keep([object()] * 3)
        [False, True, True]
    """

    n: int

    def __post_init__(self) -> None:
        validation.positive_int("n", self.n)

    def keep(self, records: Sequence[Record]) -> list[bool]:
        first_kept = max(len(records) - self.n, 0)
        return [i >= first_kept for i in range(len(records))]


@dataclass(frozen=True)
class KeepEvery:
    """Keeps, permanently, the first checkpoint at or after each multiple of ``k``.

    Counted by ``epoch`` or ``step``. A checkpoint exactly at a multiple is the one kept; when
    saves skip over a multiple (``steps_per_execution``, time triggers), the first one past it
    stands in, so every span of ``k`` still leaves one checkpoint.

    Example:
        >>> from types import SimpleNamespace as R
        >>> KeepEvery(2, by="epoch").keep([R(epoch=e) for e in (1, 2, 3, 4)])
        [False, True, False, True]
        >>> KeepEvery(100).keep([R(step=s) for s in (96, 128, 160, 192, 224)])
        [False, True, False, False, True]
    """

    k: int
    by: str = "step"

    def __post_init__(self) -> None:
        validation.positive_int("k", self.k)
        validation.one_of("by", self.by, ("epoch", "step"))

    def keep(self, records: Sequence[Record]) -> list[bool]:
        flags = []
        last_span = 0  # span 0 (before the first multiple) keeps nothing
        for record in records:
            span = getattr(record, self.by) // self.k
            flags.append(span > last_span)
            last_span = max(last_span, span)
        return flags


@dataclass(frozen=True)
class AnyOf:
    """Keeps a checkpoint that any of ``policies`` keeps.

    Example:
        >>> from types import SimpleNamespace as R
        >>> records = [R(epoch=e) for e in (1, 2, 3, 4)]
        >>> AnyOf(KeepLatest(1), KeepEvery(2, by="epoch")).keep(records)
        [False, True, False, True]
    """

    policies: tuple[RetentionPolicy, ...]

    def __init__(self, *policies: RetentionPolicy):
        if not policies:
            raise ValueError(
                "Argument `policies` must hold at least one retention policy (with none, AnyOf "
                "would keep nothing). Received: policies=()"
            )
        for index, policy in enumerate(policies):
            validation.retention_policy(f"policies[{index}]", policy)
        object.__setattr__(self, "policies", tuple(policies))

    def keep(self, records: Sequence[Record]) -> list[bool]:
        flags = [False] * len(records)
        for policy in self.policies:
            flags = [a or b for a, b in zip(flags, policy.keep(records), strict=True)]
        return flags
