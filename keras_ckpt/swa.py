"""When stochastic weight averaging averages, and the learning rate it trains with. Pure: no
Keras, no NumPy.

Both questions are asked in *units*: epochs when ``StochasticWeightAveraging`` is given
``start_epoch``, training steps (batches) when it is given ``start_step``. Units are counted
from 0 and ``start`` units train normally first, so the averaging phase begins with unit index
``start`` (``start_epoch=0``: from the first epoch, as Keras's ``start_from_epoch=0`` means in
``EarlyStopping``).

- The average takes the weights after every ``average_every``-th unit of the phase: with
  ``done`` units trained, a point is due when ``done > start`` and ``(done - start)`` is a
  multiple of ``average_every``.
- The learning rate of unit ``u`` of the phase (``k = u - start``) is ``swa_lr``, or with a
  cycle of ``cycle_length`` units it falls linearly from near ``swa_lr_max`` to ``swa_lr`` within
  each cycle, as in Izmailov et al. 2018 ("Averaging Weights Leads to Wider Optima and Better
  Generalization", eq. 2): ``t = (k mod c + 1) / c`` and ``rate = (1 - t) * swa_lr_max + t *
  swa_lr``, so the last unit of every cycle trains at ``swa_lr``, and the cycle's end is where the
  average is taken when ``average_every == cycle_length`` (the default with a cycle).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SwaSchedule:
    """The averaging points and learning rates of one SWA phase (see the module docstring).

    Attributes:
        start: Units (epochs or steps) trained before the phase begins.
        average_every: Units between two averaging points.
        swa_lr: The rate of the phase (the lowest of a cycle); ``None`` leaves the rate alone.
        swa_lr_max: With ``cycle_length``, the rate a cycle starts near.
        cycle_length: Units per cycle; ``None`` for a constant ``swa_lr``.

    Example:
        >>> schedule = SwaSchedule(start=2, average_every=1, swa_lr=0.01)
        >>> [schedule.averaging_due(done - 1, done) for done in range(1, 6)]
        [False, False, True, True, True]
        >>> [schedule.learning_rate(unit) for unit in range(4)]
        [None, None, 0.01, 0.01]
    """

    start: int
    average_every: int = 1
    swa_lr: float | None = None
    swa_lr_max: float | None = None
    cycle_length: int | None = None

    def in_phase(self, unit: int) -> bool:
        """Whether unit index ``unit`` (0-based) trains in the averaging phase."""
        return unit >= self.start

    def averaging_due(self, averaged_at: int, done: int) -> bool:
        """Whether an averaging point lies in ``(averaged_at, done]``: ``done`` units are
        trained and the last average was taken with ``averaged_at`` units done (0: never).
        Points skipped between two checks (``steps_per_execution > 1``) are taken once, late.

        Example:
            >>> schedule = SwaSchedule(start=10, average_every=5)
            >>> schedule.averaging_due(0, 15), schedule.averaging_due(15, 19)
            (True, False)
            >>> schedule.averaging_due(15, 21)  # the point 20 was passed between two checks
            True
        """
        latest = done - self.start
        if latest <= 0:
            return False
        previous = max(averaged_at - self.start, 0)
        return latest // self.average_every > previous // self.average_every

    def learning_rate(self, unit: int) -> float | None:
        """The rate unit index ``unit`` trains with, or ``None`` to leave the rate alone (before
        the phase, or without ``swa_lr``).

        Example:
            >>> cyclic = SwaSchedule(start=0, average_every=4, swa_lr=0.01, swa_lr_max=0.05,
            ...                      cycle_length=4)
            >>> [round(cyclic.learning_rate(unit), 6) for unit in range(5)]
            [0.04, 0.03, 0.02, 0.01, 0.04]
        """
        if self.swa_lr is None or not self.in_phase(unit):
            return None
        if self.cycle_length is None or self.swa_lr_max is None:
            return self.swa_lr
        fraction = ((unit - self.start) % self.cycle_length + 1) / self.cycle_length
        return (1 - fraction) * self.swa_lr_max + fraction * self.swa_lr
