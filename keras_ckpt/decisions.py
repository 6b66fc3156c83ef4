"""When to stop training, when to lower the learning rate and when a batch diverged. Pure: no
Keras import.

Each decision is a function of the state so far and one epoch's monitored value. It returns the
new state and a reason: ``None`` while there is nothing to do, else why the callback should act,
as Lightning's ``EarlyStopping._evaluate_stopping_criteria`` returns ``(should_stop, reason)``.
``keras_ckpt.EarlyStopping`` and ``keras_ckpt.ReduceLROnPlateau`` only read the value from
``logs``, call the decision and apply the result, so every rule below is tested without Keras.

Improvements are judged as Keras's ``MonitorCallback._is_improvement`` judges them
(``ranking.keras_is_improvement``), NaN quirks included: the drop-in callbacks promise Keras's
behaviour.
"""

from __future__ import annotations

import math
import numbers
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from keras_ckpt import ranking, validation

# Why training stops: the values of ``StoppingState.stopping_reason``.
PATIENCE = "patience"
STOPPING_THRESHOLD = "stopping_threshold"
DIVERGENCE_THRESHOLD = "divergence_threshold"
NON_FINITE = "non_finite"

# Why the learning rate should be lowered.
PLATEAU = "plateau"

_RESOLVED_MODES = ("min", "max")


# Early stopping -------------------------------------------------------------------------


@dataclass(frozen=True)
class StoppingRule:
    """The arguments of ``EarlyStopping`` that the decision reads.

    Args:
        mode: ``"min"`` or ``"max"``, already resolved (the callback settles ``"auto"``).
        min_delta: How much a value must beat ``best`` (and ``baseline``) to count.
        patience: Epochs without improvement after which training stops.
        baseline: While the metric has not beaten this, improvements do not reset ``wait``.
        start_from_epoch: Epochs (0-based indices below this) that are not judged at all.
        stopping_threshold: Stop as soon as a value is better than this.
        divergence_threshold: Stop as soon as a value is worse than this.
        check_finite: Stop as soon as a value is NaN or infinite.

    Raises:
        ValueError: If ``mode`` is not ``"min"`` or ``"max"``.
    """

    mode: str
    min_delta: float = 0.0
    patience: int = 0
    baseline: float | None = None
    start_from_epoch: int = 0
    stopping_threshold: float | None = None
    divergence_threshold: float | None = None
    check_finite: bool = True

    def __post_init__(self) -> None:
        validation.one_of("mode", self.mode, _RESOLVED_MODES)


@dataclass(frozen=True)
class StoppingState:
    """What ``EarlyStopping`` remembers between epochs (and across a resume).

    Args:
        wait: Epochs since the last improvement (see ``StoppingRule.baseline``).
        best: The best value so far; ``None`` before the first judged epoch.
        best_epoch: The 0-based epoch of ``best``.
        stopped_epoch: The 0-based epoch at which training stopped; 0 while it goes on.
        stopping_reason: ``None`` while training goes on, else one of ``PATIENCE``,
            ``STOPPING_THRESHOLD``, ``DIVERGENCE_THRESHOLD``, ``NON_FINITE``.
        new_best: Whether the value just decided on became ``best`` (the callback then keeps
            the weights in memory). Not part of ``state_dict``: it describes one decision.
    """

    wait: int = 0
    best: float | None = None
    best_epoch: int = 0
    stopped_epoch: int = 0
    stopping_reason: str | None = None
    new_best: bool = False

    def state_dict(self) -> dict[str, Any]:
        """Plain data for a checkpoint's manifest (``EarlyStopping.state_dict``'s format).

        Example:
            >>> StoppingState(wait=2, best=0.5).state_dict()
            {'wait': 2, 'best': 0.5, 'best_epoch': 0, 'stopped_epoch': 0, 'stopping_reason': None}
        """
        return {
            "wait": self.wait,
            "best": self.best,
            "best_epoch": self.best_epoch,
            "stopped_epoch": self.stopped_epoch,
            "stopping_reason": self.stopping_reason,
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> StoppingState:
        """The inverse of ``state_dict``. Missing keys take their defaults, so a checkpoint
        written before a field existed still loads; the manifest stores a non-finite ``best``
        as text (``"nan"``, ``"inf"``), which ``float`` reads back.

        Example:
            >>> state = StoppingState.from_state_dict({"wait": 1, "best": "nan"})
            >>> (state.wait, state.best, state.best_epoch, state.stopping_reason)
            (1, nan, 0, None)
        """
        best = state.get("best")
        return cls(
            wait=int(state.get("wait", 0)),
            best=None if best is None else float(best),
            best_epoch=int(state.get("best_epoch", 0)),
            stopped_epoch=int(state.get("stopped_epoch", 0)),
            stopping_reason=state.get("stopping_reason"),
        )


def decide_stop(
    state: StoppingState, epoch: int, value: float, rule: StoppingRule
) -> tuple[StoppingState, str | None]:
    """Judges one epoch's monitored value: Keras's ``EarlyStopping.on_epoch_end`` plus the
    thresholds and the finiteness check of ``keras_ckpt.EarlyStopping``.

    In order: an epoch before ``start_from_epoch`` changes nothing; a non-finite value (with
    ``check_finite``), a value past ``stopping_threshold`` or past ``divergence_threshold`` stops
    at once, leaving ``wait`` and ``best`` as they were; a value that improves on ``best`` by
    more than ``min_delta`` becomes ``best`` (and resets ``wait`` if it also beats ``baseline``);
    otherwise ``wait`` grows, and training stops once it reaches ``patience``, though never at
    epoch 0 (as in Keras).

    Args:
        state: The state after the previous epoch.
        epoch: The 0-based epoch that just ended.
        value: Its monitored value.
        rule: The callback's arguments.

    Returns:
        The new state and ``None`` to go on, or the reason to stop (also in the new state's
        ``stopping_reason``, with ``stopped_epoch=epoch``).

    Example:
        >>> rule = StoppingRule(mode="min", patience=2)
        >>> state, reasons = StoppingState(), []
        >>> for epoch, loss in enumerate([0.5, 0.4, 0.45, 0.41]):
        ...     state, reason = decide_stop(state, epoch, loss, rule)
        ...     reasons.append(reason)
        >>> reasons
        [None, None, None, 'patience']
        >>> (state.best, state.best_epoch, state.stopped_epoch)
        (0.4, 1, 3)
        >>> decide_stop(StoppingState(), 0, float("nan"), rule)[1]
        'non_finite'
    """
    if epoch < rule.start_from_epoch:
        return replace(state, new_best=False), None
    reason = _threshold_reason(value, rule)
    if reason is not None:
        return _stopped(state, epoch, reason, wait=state.wait), reason
    wait = state.wait + 1
    if ranking.keras_is_improvement(value, state.best, rule.mode, rule.min_delta):
        beats_baseline = rule.baseline is None or ranking.keras_is_improvement(
            value, rule.baseline, rule.mode, rule.min_delta
        )
        improved = replace(state, best=value, best_epoch=epoch, new_best=True)
        return replace(improved, wait=0 if beats_baseline else wait), None
    if wait >= rule.patience and epoch > 0:
        return _stopped(state, epoch, PATIENCE, wait=wait), PATIENCE
    return replace(state, wait=wait, new_best=False), None


def _threshold_reason(value: float, rule: StoppingRule) -> str | None:
    if rule.check_finite and not math.isfinite(value):
        return NON_FINITE
    # The thresholds use the strict test (no min_delta; NaN never passes one), not Keras's.
    if rule.stopping_threshold is not None and ranking.is_improvement(
        value, rule.stopping_threshold, rule.mode
    ):
        return STOPPING_THRESHOLD
    opposite = "max" if rule.mode == "min" else "min"
    if rule.divergence_threshold is not None and ranking.is_improvement(
        value, rule.divergence_threshold, opposite
    ):
        return DIVERGENCE_THRESHOLD
    return None


def _stopped(state: StoppingState, epoch: int, reason: str, wait: int) -> StoppingState:
    return replace(state, wait=wait, stopped_epoch=epoch, stopping_reason=reason, new_best=False)


# Learning-rate plateau ------------------------------------------------------------------


@dataclass(frozen=True)
class PlateauRule:
    """The arguments of ``ReduceLROnPlateau`` that the decision reads (Keras's defaults).

    Args:
        mode: ``"min"`` or ``"max"``, already resolved (the callback settles ``"auto"``).
        min_delta: How much a value must beat ``best`` to count as an improvement.
        patience: Epochs without improvement after which the rate should be lowered.
        cooldown: Epochs after a reduction during which nothing is counted.

    Raises:
        ValueError: If ``mode`` is not ``"min"`` or ``"max"``.
    """

    mode: str
    min_delta: float = 1e-4
    patience: int = 10
    cooldown: int = 0

    def __post_init__(self) -> None:
        validation.one_of("mode", self.mode, _RESOLVED_MODES)


@dataclass(frozen=True)
class PlateauState:
    """What ``ReduceLROnPlateau`` remembers between epochs (and across a resume).

    Args:
        wait: Epochs without improvement, outside cooldown, since the last reduction.
        cooldown_counter: Epochs of cooldown left.
        best: The best value so far; ``None`` before the first epoch.
    """

    wait: int = 0
    cooldown_counter: int = 0
    best: float | None = None

    @property
    def in_cooldown(self) -> bool:
        return self.cooldown_counter > 0

    def state_dict(self) -> dict[str, Any]:
        """Plain data for a checkpoint's manifest (``ReduceLROnPlateau.state_dict``'s format).

        Example:
            >>> PlateauState(wait=1, best=0.5).state_dict()
            {'wait': 1, 'cooldown_counter': 0, 'best': 0.5}
        """
        return {"wait": self.wait, "cooldown_counter": self.cooldown_counter, "best": self.best}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> PlateauState:
        """The inverse of ``state_dict``; missing keys take their defaults.

        Example:
            >>> PlateauState.from_state_dict({"best": "inf"})
            PlateauState(wait=0, cooldown_counter=0, best=inf)
        """
        best = state.get("best")
        return cls(
            wait=int(state.get("wait", 0)),
            cooldown_counter=int(state.get("cooldown_counter", 0)),
            best=None if best is None else float(best),
        )


def decide_plateau(
    state: PlateauState, value: float, rule: PlateauRule
) -> tuple[PlateauState, str | None]:
    """Judges one epoch's monitored value as Keras's ``ReduceLROnPlateau.on_epoch_end`` does.

    An epoch in cooldown counts one cooldown epoch down and resets ``wait``. A value that
    improves on ``best`` by more than ``min_delta`` becomes ``best`` and resets ``wait``.
    Otherwise, outside cooldown, ``wait`` grows; once it reaches ``patience`` the reason is
    ``PLATEAU``, and stays so every epoch until the callback reports a reduction with
    ``after_reduction`` (Keras tries again each epoch while the rate is at ``min_lr``).

    Args:
        state: The state after the previous epoch.
        value: The epoch's monitored value.
        rule: The callback's arguments.

    Returns:
        The new state and ``None``, or ``PLATEAU`` when the rate should be lowered.

    Example:
        >>> rule = PlateauRule(mode="min", patience=2, cooldown=1)
        >>> state, reasons = PlateauState(), []
        >>> for loss in [0.9, 0.8, 0.8, 0.8, 0.8, 0.8]:
        ...     state, reason = decide_plateau(state, loss, rule)
        ...     if reason is not None:
        ...         state = after_reduction(state, rule)
        ...     reasons.append(reason)
        >>> reasons
        [None, None, None, 'plateau', None, 'plateau']
    """
    wait, cooldown_counter = state.wait, state.cooldown_counter
    if cooldown_counter > 0:
        cooldown_counter -= 1
        wait = 0
    if ranking.keras_is_improvement(value, state.best, rule.mode, rule.min_delta):
        return PlateauState(wait=0, cooldown_counter=cooldown_counter, best=value), None
    if cooldown_counter > 0:
        return PlateauState(wait=wait, cooldown_counter=cooldown_counter, best=state.best), None
    wait += 1
    new_state = PlateauState(wait=wait, cooldown_counter=cooldown_counter, best=state.best)
    return new_state, PLATEAU if wait >= rule.patience else None


def after_reduction(state: PlateauState, rule: PlateauRule) -> PlateauState:
    """The state once the learning rate was lowered: cooldown starts and ``wait`` restarts.

    Example:
        >>> after_reduction(PlateauState(wait=3, best=0.8), PlateauRule("min", cooldown=2))
        PlateauState(wait=0, cooldown_counter=2, best=0.8)
    """
    return replace(state, wait=0, cooldown_counter=rule.cooldown)


# Divergence and rollback ----------------------------------------------------------------

# Why a batch counts as diverged: the values ``divergence_reason`` returns.
SPIKE = "spike"
# Why ``RollbackOnDivergence`` stops training (``StoppingState``'s ``NON_FINITE`` is reused for
# a NaN or infinite loss).
ROLLBACK_LIMIT = "rollback_limit"
# What to do about a diverged batch.
ROLLBACK = "rollback"


@dataclass(frozen=True)
class DivergenceRule:
    """The arguments of ``RollbackOnDivergence`` that the decisions read.

    Args:
        spike_threshold: A batch loss larger than this many times the median of the last
            ``window`` batch losses is a spike; ``None`` detects only NaN and infinite losses.
        window: How many recent batch losses the median is taken over; no spike is called
            before that many were seen.
        max_rollbacks: Rollbacks allowed; the next divergence stops training.

    Raises:
        ValueError: On an invalid argument, naming it.
    """

    spike_threshold: float | None = None
    window: int = 20
    max_rollbacks: int = 3

    def __post_init__(self) -> None:
        spike_threshold(self.spike_threshold)
        validation.positive_int("window", self.window)
        validation.positive_int("max_rollbacks", self.max_rollbacks)


def spike_threshold(value: Any) -> float | None:
    """``value`` as a float if it is ``None`` or a finite number > 1.

    Example:
        >>> spike_threshold(1)
        Traceback (most recent call last):
        ...
        ValueError: Argument `spike_threshold` must be a finite number > 1 or None. Received: spike_threshold=1
    """  # noqa: E501
    if value is None:
        return None
    message = (
        f"Argument `spike_threshold` must be a finite number > 1 or None. "
        f"Received: spike_threshold={value!r}"
    )
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise validation.ArgumentTypeError(message)
    threshold = float(value)
    if not (math.isfinite(threshold) and threshold > 1):
        raise ValueError(message)
    return threshold


def batch_loss(mean_now: float, mean_before: float, batches_now: int, batches_before: int) -> float:
    """One step's loss, recovered from the running means Keras logs per batch.

    Keras logs the mean loss of the epoch so far; the loss of the batches between two reports
    is the difference of the sums, over their count (batches of equal size assumed: the smaller
    last batch of an epoch is approximated).

    Args:
        mean_now: The logged mean after ``batches_now`` batches.
        mean_before: The logged mean after ``batches_before`` batches (ignored when 0).
        batches_now: Batches the current mean covers (> ``batches_before``).
        batches_before: Batches the earlier mean covered.

    Example:
        >>> batch_loss(2.0, 1.0, 3, 2)  # losses 1, 1, then 4
        4.0
        >>> batch_loss(0.5, 123.0, 1, 0)
        0.5
    """
    if batches_before <= 0:
        return mean_now
    count = batches_now - batches_before
    return (mean_now * batches_now - mean_before * batches_before) / max(count, 1)


def divergence_reason(loss: float, recent: Sequence[float], rule: DivergenceRule) -> str | None:
    """Whether one batch's ``loss`` diverged, given the ``recent`` batch losses before it.

    Returns:
        ``NON_FINITE`` for a NaN or infinite loss; ``SPIKE`` when ``rule.spike_threshold`` is
        set, ``recent`` holds at least ``rule.window`` losses and ``loss`` exceeds the threshold
        times the median of the last ``rule.window`` of them (a median <= 0 never calls a
        spike); else ``None``.

    Example:
        >>> rule = DivergenceRule(spike_threshold=10.0, window=3)
        >>> divergence_reason(float("nan"), [], rule)
        'non_finite'
        >>> divergence_reason(50.0, [1.0, 2.0], rule) is None  # the window is not full yet
        True
        >>> divergence_reason(50.0, [1.0, 2.0, 9.0], rule)
        'spike'
        >>> divergence_reason(15.0, [1.0, 2.0, 9.0], rule) is None
        True
    """
    if not math.isfinite(loss):
        return NON_FINITE
    if rule.spike_threshold is None or len(recent) < rule.window:
        return None
    median = statistics.median(list(recent)[-rule.window :])
    if median > 0 and loss > rule.spike_threshold * median:
        return SPIKE
    return None


def decide_rollback(rollbacks: int, rule: DivergenceRule) -> tuple[int, str]:
    """What to do about a diverged batch after ``rollbacks`` rollbacks.

    Returns:
        The new rollback count and ``ROLLBACK``, or, once ``rule.max_rollbacks`` were made,
        the count unchanged and ``ROLLBACK_LIMIT`` (stop training).

    Example:
        >>> rule = DivergenceRule(max_rollbacks=2)
        >>> decide_rollback(0, rule), decide_rollback(1, rule), decide_rollback(2, rule)
        ((1, 'rollback'), (2, 'rollback'), (2, 'rollback_limit'))
    """
    if rollbacks >= rule.max_rollbacks:
        return rollbacks, ROLLBACK_LIMIT
    return rollbacks + 1, ROLLBACK
