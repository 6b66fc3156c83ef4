"""Is a monitored value an improvement, and which values are the best k. Pure: no Keras import."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from keras_ckpt.records import CheckpointRecord

MODES = ("auto", "min", "max")


def resolve_mode(monitor: str, mode: str, direction: str | None = None) -> str | None:
    """Turns ``mode`` into ``"min"`` or ``"max"``, as Keras's callbacks do for ``"auto"``.

    Args:
        monitor: The monitored metric, e.g. ``"val_loss"``.
        mode: ``"auto"``, ``"min"`` or ``"max"``.
        direction: The metric's own direction (``"up"`` or ``"down"``, Keras metrics carry it as
            ``_direction``), when known.

    Returns:
        ``"min"`` or ``"max"``; ``None`` when ``mode="auto"`` and nothing tells the direction.

    Example:
        >>> resolve_mode("val_loss", "auto")
        'min'
        >>> resolve_mode("val_accuracy", "auto", direction="up")
        'max'
    """
    if mode in ("min", "max"):
        return mode
    if monitor.removeprefix("val_") == "loss":
        return "min"
    if direction == "up":
        return "max"
    if direction == "down":
        return "min"
    return None


def is_improvement(
    current: float, reference: float | None, mode: str, min_delta: float = 0.0
) -> bool:
    """Whether ``current`` beats ``reference`` by more than ``min_delta`` in direction ``mode``.

    NaN is never an improvement and never a reference worth keeping; ``reference=None`` means
    nothing has been seen yet.

    Example:
        >>> is_improvement(0.5, 0.6, "min")
        True
        >>> is_improvement(0.59, 0.6, "min", min_delta=0.05)
        False
        >>> is_improvement(float("nan"), None, "min")
        False
    """
    if math.isnan(current):
        return False
    if reference is None or math.isnan(reference):
        return True
    if mode == "min":
        return current < reference - abs(min_delta)
    return current > reference + abs(min_delta)


def ranked(values: Sequence[float], mode: str) -> list[int]:
    """Indices of ``values`` from best to worst; NaN last, ties broken by position (older first)."""
    sign = 1.0 if mode == "min" else -1.0
    return sorted(
        range(len(values)),
        key=lambda i: (
            math.isnan(values[i]),
            sign * values[i] if not math.isnan(values[i]) else 0.0,
            i,
        ),
    )


def enters_top_k(
    kept: Sequence[float], candidate: float, k: int, mode: str, min_delta: float = 0.0
) -> bool:
    """Whether ``candidate`` earns a place among the ``k`` best, given the values kept so far.

    With fewer than ``k`` kept, any finite value enters; otherwise it must improve on the worst
    kept value by more than ``min_delta``. With ``k=1`` this is the classic "new best" test.

    Example:
        >>> enters_top_k([0.3, 0.5], 0.4, k=2, mode="min")
        True
        >>> enters_top_k([0.3, 0.5], 0.6, k=2, mode="min")
        False
    """
    if not math.isfinite(candidate):
        return False
    if len(kept) < k:
        return True
    order = ranked(kept, mode)
    worst_kept = kept[order[k - 1]]
    return is_improvement(candidate, worst_kept, mode, min_delta)


def keras_is_improvement(
    current: float, reference: float | None, mode: str, min_delta: float = 0.0
) -> bool:
    """Keras's own test (``MonitorCallback._is_improvement``), NaN quirks included.

    Anything beats no reference, even NaN, which then becomes a reference nothing beats. The
    drop-in callbacks use this where they promise Keras's behaviour.

    Example:
        >>> keras_is_improvement(float("nan"), None, "min")
        True
        >>> keras_is_improvement(0.1, float("nan"), "min")
        False
    """
    if reference is None:
        return True
    if mode == "min":
        return current + abs(min_delta) < reference
    return current - abs(min_delta) > reference


AVERAGE_WHICH = ("best", "latest")


def checkpoints_to_average(
    records: Sequence[CheckpointRecord], which: str, k: int, monitor: str, mode: str | None
) -> list[CheckpointRecord]:
    """The (up to) ``k`` checkpoints to average, best first: ``which="best"`` takes the ``k``
    with the best ``monitor`` value, ``which="latest"`` the ``k`` newest.

    ``records`` are in commit order (oldest first), as a manifest lists them. For ``"best"``,
    records without ``monitor`` or with a NaN are never chosen, and ties go to the older (as
    ``best_checkpoint`` ranks); ``mode`` must then be ``"min"`` or ``"max"``. For ``"latest"``
    the newest comes first and ``monitor``/``mode`` are not used. Fewer than ``k`` candidates
    give fewer records; the caller decides whether that is an error.

    Args:
        records: The committed checkpoints, oldest first.
        which: ``"best"`` or ``"latest"``.
        k: How many to choose (``>= 1``).
        monitor: The metric ``"best"`` ranks by.
        mode: ``"min"`` or ``"max"`` for ``"best"``; ignored (may be ``None``) for ``"latest"``.

    Returns:
        The chosen records, best (or newest) first.

    Example:
        >>> from keras_ckpt.records import CheckpointRecord
        >>> def record(epoch, loss):
        ...     metrics = {"val_loss": loss}
        ...     return CheckpointRecord(f"/r/{epoch}", epoch, epoch, metrics, 0, 1, "", "", "", "")
        >>> runs = [record(1, 0.5), record(2, 0.3), record(3, 0.4)]
        >>> [r.epoch for r in checkpoints_to_average(runs, "best", 2, "val_loss", "min")]
        [2, 3]
        >>> [r.epoch for r in checkpoints_to_average(runs, "latest", 2, "val_loss", None)]
        [3, 2]
    """
    if which == "latest":
        return list(reversed(records))[:k]
    if mode not in ("min", "max"):
        raise ValueError(f"Argument `mode` must be 'min' or 'max'. Received: mode={mode!r}")
    candidates = [
        record
        for record in records
        if monitor in record.metrics and not math.isnan(record.metrics[monitor])
    ]
    order = ranked([record.metrics[monitor] for record in candidates], mode)
    return [candidates[i] for i in order[:k]]
