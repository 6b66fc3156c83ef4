"""Learning-rate schedules: pure functions of the step that save and resume with the model.

Each is a ``keras.optimizers.schedules.LearningRateSchedule`` whose ``get_config()`` returns
exactly its constructor arguments, registered for serialization under the package name
``keras_ckpt``, so a model whose optimizer uses one saves and loads with ``model.save`` /
``keras.saving.load_model`` (after ``import keras_ckpt.schedules``), and a resumed run continues
the curve through ``optimizer.iterations``.

The arithmetic uses ``keras.ops`` so that it traces on every backend; the step may be a Python
int or a tensor.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from numbers import Integral, Real
from typing import Any

import keras
from keras import ops

from keras_ckpt import validation

__all__ = [
    "Chain",
    "CosineRestarts",
    "CyclicalLR",
    "ExponentialDecay",
    "OneCycle",
    "Scaled",
    "StepDecay",
    "WarmupCosine",
    "plot_schedule",
]

_register = keras.saving.register_keras_serializable(package="keras_ckpt")


def _is_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, Real) and math.isfinite(value)


def _rate(name: str, value: Any) -> float:
    if not _is_number(value) or value < 0:
        raise ValueError(
            f"Argument `{name}` must be a finite learning rate >= 0. Received: {name}={value!r}"
        )
    return float(value)


def _positive(name: str, value: Any) -> float:
    if not _is_number(value) or value <= 0:
        raise ValueError(
            f"Argument `{name}` must be a finite number > 0. Received: {name}={value!r}"
        )
    return float(value)


def _steps(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
        raise ValueError(
            f"Argument `{name}` must be an integer >= {minimum}. Received: {name}={value!r}"
        )
    return int(value)


def _float_step(step: Any) -> Any:
    return ops.cast(step, "float32")


def _anneal_cos(start: float, end: float, fraction: Any) -> Any:
    """From ``start`` at fraction 0 to ``end`` at fraction 1 along half a cosine."""
    return end + (start - end) * 0.5 * (1.0 + ops.cos(math.pi * fraction))


class _Schedule(keras.optimizers.schedules.LearningRateSchedule):
    """Shared ``from_config``: the config is the constructor's arguments."""

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> _Schedule:
        return cls(**config)


@_register
class WarmupCosine(_Schedule):
    """Linear warmup from ``initial_learning_rate`` to ``peak_learning_rate`` over
    ``warmup_steps``, then a cosine from the peak to ``final_learning_rate`` at ``total_steps``,
    constant after.

    Example:
        >>> schedule = WarmupCosine(1.0, total_steps=110, warmup_steps=10)
        >>> [round(float(schedule(s)), 3) for s in (0, 5, 10, 60, 110, 200)]
        [0.0, 0.5, 1.0, 0.5, 0.0, 0.0]
    """

    def __init__(
        self,
        peak_learning_rate: float,
        total_steps: int,
        warmup_steps: int = 0,
        initial_learning_rate: float = 0.0,
        final_learning_rate: float = 0.0,
    ):
        self.peak_learning_rate = _rate("peak_learning_rate", peak_learning_rate)
        self.total_steps = _steps("total_steps", total_steps)
        self.warmup_steps = _steps("warmup_steps", warmup_steps, minimum=0)
        if self.warmup_steps >= self.total_steps:
            raise ValueError(
                "Argument `warmup_steps` must be smaller than `total_steps`. "
                f"Received: warmup_steps={warmup_steps!r}, total_steps={total_steps!r}"
            )
        self.initial_learning_rate = _rate("initial_learning_rate", initial_learning_rate)
        self.final_learning_rate = _rate("final_learning_rate", final_learning_rate)

    def __call__(self, step: Any) -> Any:
        step = _float_step(step)
        warmup = float(max(self.warmup_steps, 1))
        warming = self.initial_learning_rate + (
            self.peak_learning_rate - self.initial_learning_rate
        ) * (step / warmup)
        fraction = ops.clip(
            (step - self.warmup_steps) / float(self.total_steps - self.warmup_steps), 0.0, 1.0
        )
        decaying = _anneal_cos(self.peak_learning_rate, self.final_learning_rate, fraction)
        return ops.where(step < self.warmup_steps, warming, decaying)

    def get_config(self) -> dict[str, Any]:
        return {
            "peak_learning_rate": self.peak_learning_rate,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "initial_learning_rate": self.initial_learning_rate,
            "final_learning_rate": self.final_learning_rate,
        }


@_register
class OneCycle(_Schedule):
    """The one-cycle policy (PyTorch's ``OneCycleLR`` shape with cosine annealing).

    Starts at ``max_learning_rate / div_factor``, rises along a cosine to ``max_learning_rate``
    at ``pct_start * total_steps``, then falls along a cosine to
    ``max_learning_rate / (div_factor * final_div_factor)`` at ``total_steps``; constant after.

    Example:
        >>> schedule = OneCycle(1.0, total_steps=100, pct_start=0.25, div_factor=10.0,
        ...                     final_div_factor=100.0)
        >>> [round(float(schedule(s)), 4) for s in (0, 25, 100)]
        [0.1, 1.0, 0.001]
    """

    pct_start: float
    div_factor: float
    final_div_factor: float

    def __init__(
        self,
        max_learning_rate: float,
        total_steps: int,
        pct_start: float = 0.3,
        div_factor: float = 25.0,
        final_div_factor: float = 1e4,
    ):
        self.max_learning_rate = _rate("max_learning_rate", max_learning_rate)
        self.total_steps = _steps("total_steps", total_steps)
        if isinstance(pct_start, bool) or not isinstance(pct_start, Real) or not 0 < pct_start < 1:
            raise ValueError(
                f"Argument `pct_start` must be between 0 and 1 (exclusive). "
                f"Received: pct_start={pct_start!r}"
            )
        self.pct_start = float(pct_start)
        self.div_factor = _positive("div_factor", div_factor)
        self.final_div_factor = _positive("final_div_factor", final_div_factor)

    def __call__(self, step: Any) -> Any:
        step = _float_step(step)
        initial = self.max_learning_rate / self.div_factor
        minimum = initial / self.final_div_factor
        rise_steps = self.pct_start * self.total_steps
        rising = _anneal_cos(initial, self.max_learning_rate, ops.clip(step / rise_steps, 0.0, 1.0))
        falling_fraction = ops.clip((step - rise_steps) / (self.total_steps - rise_steps), 0.0, 1.0)
        falling = _anneal_cos(self.max_learning_rate, minimum, falling_fraction)
        return ops.where(step < rise_steps, rising, falling)

    def get_config(self) -> dict[str, Any]:
        return {
            "max_learning_rate": self.max_learning_rate,
            "total_steps": self.total_steps,
            "pct_start": self.pct_start,
            "div_factor": self.div_factor,
            "final_div_factor": self.final_div_factor,
        }


@_register
class StepDecay(_Schedule):
    """Multiplies the learning rate by ``factor`` at each milestone step.

    Example:
        >>> schedule = StepDecay(1.0, milestones=[10, 20], factor=0.5)
        >>> [float(schedule(s)) for s in (0, 9, 10, 19, 20, 100)]
        [1.0, 1.0, 0.5, 0.5, 0.25, 0.25]
    """

    def __init__(
        self, initial_learning_rate: float, milestones: Sequence[int], factor: float = 0.1
    ):
        self.initial_learning_rate = _rate("initial_learning_rate", initial_learning_rate)
        self.milestones = _milestones("milestones", milestones)
        self.factor = _positive("factor", factor)

    def __call__(self, step: Any) -> Any:
        step = _float_step(step)
        passed = sum((ops.cast(step >= m, "float32") for m in self.milestones), ops.zeros(()))
        return self.initial_learning_rate * ops.power(self.factor, passed)

    def get_config(self) -> dict[str, Any]:
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "milestones": list(self.milestones),
            "factor": self.factor,
        }


@_register
class ExponentialDecay(_Schedule):
    """``initial_learning_rate * decay_rate ** (step / decay_steps)``, after an optional warmup.

    During ``warmup_steps`` the rate rises linearly from ``warmup_initial_learning_rate`` to
    ``initial_learning_rate``; decay counts steps from the end of the warmup. With
    ``staircase=True`` the exponent is an integer, as in Keras's ``ExponentialDecay``.

    Example:
        >>> schedule = ExponentialDecay(1.0, decay_steps=10, decay_rate=0.5, warmup_steps=4)
        >>> [round(float(schedule(s)), 3) for s in (0, 2, 4, 14, 24)]
        [0.0, 0.5, 1.0, 0.5, 0.25]
    """

    def __init__(
        self,
        initial_learning_rate: float,
        decay_steps: int,
        decay_rate: float,
        staircase: bool = False,
        warmup_steps: int = 0,
        warmup_initial_learning_rate: float = 0.0,
    ):
        self.initial_learning_rate = _rate("initial_learning_rate", initial_learning_rate)
        self.decay_steps = _steps("decay_steps", decay_steps)
        self.decay_rate = _positive("decay_rate", decay_rate)
        self.staircase = validation.boolean("staircase", staircase)
        self.warmup_steps = _steps("warmup_steps", warmup_steps, minimum=0)
        self.warmup_initial_learning_rate = _rate(
            "warmup_initial_learning_rate", warmup_initial_learning_rate
        )

    def __call__(self, step: Any) -> Any:
        step = _float_step(step)
        exponent = ops.maximum(step - self.warmup_steps, 0.0) / self.decay_steps
        if self.staircase:
            exponent = ops.floor(exponent)
        decayed = self.initial_learning_rate * ops.power(self.decay_rate, exponent)
        if not self.warmup_steps:
            return decayed
        warming = self.warmup_initial_learning_rate + (
            self.initial_learning_rate - self.warmup_initial_learning_rate
        ) * (step / self.warmup_steps)
        return ops.where(step < self.warmup_steps, warming, decayed)

    def get_config(self) -> dict[str, Any]:
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "decay_steps": self.decay_steps,
            "decay_rate": self.decay_rate,
            "staircase": self.staircase,
            "warmup_steps": self.warmup_steps,
            "warmup_initial_learning_rate": self.warmup_initial_learning_rate,
        }


CYCLICAL_MODES = ("triangular", "triangular2", "exp_range")


@_register
class CyclicalLR(_Schedule):
    """Cyclical learning rates (Smith, 2017) between ``base_learning_rate`` and
    ``max_learning_rate``, ``step_size`` steps up and ``step_size`` down.

    ``mode``: ``"triangular"`` (constant amplitude), ``"triangular2"`` (amplitude halved each
    cycle) or ``"exp_range"`` (amplitude times ``gamma ** step``).

    Example:
        >>> schedule = CyclicalLR(0.0, 1.0, step_size=10, mode="triangular2")
        >>> [float(schedule(s)) for s in (0, 5, 10, 20, 30, 40)]
        [0.0, 0.5, 1.0, 0.0, 0.5, 0.0]
    """

    gamma: float

    def __init__(
        self,
        base_learning_rate: float,
        max_learning_rate: float,
        step_size: int,
        mode: str = "triangular",
        gamma: float = 1.0,
    ):
        self.base_learning_rate = _rate("base_learning_rate", base_learning_rate)
        self.max_learning_rate = _rate("max_learning_rate", max_learning_rate)
        if self.max_learning_rate < self.base_learning_rate:
            raise ValueError(
                "Argument `max_learning_rate` must be >= `base_learning_rate`. "
                f"Received: max_learning_rate={max_learning_rate!r}, "
                f"base_learning_rate={base_learning_rate!r}"
            )
        self.step_size = _steps("step_size", step_size)
        self.mode = validation.one_of("mode", mode, CYCLICAL_MODES)
        if isinstance(gamma, bool) or not isinstance(gamma, Real) or not 0 < gamma <= 1:
            raise ValueError(f"Argument `gamma` must be in (0, 1]. Received: gamma={gamma!r}")
        self.gamma = float(gamma)

    def __call__(self, step: Any) -> Any:
        step = _float_step(step)
        cycle = ops.floor(1.0 + step / (2.0 * self.step_size))
        position = ops.abs(step / self.step_size - 2.0 * cycle + 1.0)
        height = ops.maximum(0.0, 1.0 - position)
        if self.mode == "triangular2":
            height = height / ops.power(2.0, cycle - 1.0)
        elif self.mode == "exp_range":
            height = height * ops.power(self.gamma, step)
        return self.base_learning_rate + (self.max_learning_rate - self.base_learning_rate) * height

    def get_config(self) -> dict[str, Any]:
        return {
            "base_learning_rate": self.base_learning_rate,
            "max_learning_rate": self.max_learning_rate,
            "step_size": self.step_size,
            "mode": self.mode,
            "gamma": self.gamma,
        }


@_register
class CosineRestarts(_Schedule):
    """Cosine annealing with warm restarts (SGDR, Loshchilov & Hutter 2017).

    The first cycle lasts ``first_decay_steps``; each next one is ``t_mul`` times longer, and
    its cosine part ``m_mul`` times the last one's. Within a cycle the rate falls to the floor
    ``alpha * initial_learning_rate``; the formula is Keras's ``CosineDecayRestarts``:
    ``initial * (alpha + (1 - alpha) * m_mul**cycle * cosine_part)``. After ``cycle_limit``
    cycles (if set) the rate stays at the floor.

    Example:
        >>> schedule = CosineRestarts(1.0, first_decay_steps=10, t_mul=2.0, m_mul=0.5)
        >>> [round(float(schedule(s)), 3) for s in (0, 5, 10, 20, 30)]
        [1.0, 0.5, 0.5, 0.25, 0.25]
    """

    t_mul: float
    m_mul: float
    alpha: float
    cycle_limit: int | None

    def __init__(
        self,
        initial_learning_rate: float,
        first_decay_steps: int,
        t_mul: float = 2.0,
        m_mul: float = 1.0,
        alpha: float = 0.0,
        cycle_limit: int | None = None,
    ):
        self.initial_learning_rate = _rate("initial_learning_rate", initial_learning_rate)
        self.first_decay_steps = _steps("first_decay_steps", first_decay_steps)
        if isinstance(t_mul, bool) or not isinstance(t_mul, Real) or not 1 <= t_mul < math.inf:
            raise ValueError(f"Argument `t_mul` must be a number >= 1. Received: t_mul={t_mul!r}")
        self.t_mul = float(t_mul)
        self.m_mul = _positive("m_mul", m_mul)
        if isinstance(alpha, bool) or not isinstance(alpha, Real) or not 0 <= alpha <= 1:
            raise ValueError(f"Argument `alpha` must be in [0, 1]. Received: alpha={alpha!r}")
        self.alpha = float(alpha)
        self.cycle_limit = None if cycle_limit is None else _steps("cycle_limit", cycle_limit)

    def __call__(self, step: Any) -> Any:
        completed = _float_step(step) / self.first_decay_steps  # in units of the first cycle
        if self.t_mul == 1.0:
            cycle = ops.floor(completed)
            fraction = completed - cycle
        else:
            cycle = ops.floor(ops.log(1.0 - completed * (1.0 - self.t_mul)) / math.log(self.t_mul))
            before = (1.0 - ops.power(self.t_mul, cycle)) / (1.0 - self.t_mul)
            fraction = (completed - before) / ops.power(self.t_mul, cycle)
        cosine_part = 0.5 * (1.0 + ops.cos(math.pi * fraction)) * ops.power(self.m_mul, cycle)
        rate = self.initial_learning_rate * (self.alpha + (1.0 - self.alpha) * cosine_part)
        if self.cycle_limit is None:
            return rate
        floor = self.initial_learning_rate * self.alpha
        return ops.where(cycle >= self.cycle_limit, floor, rate)

    def get_config(self) -> dict[str, Any]:
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "first_decay_steps": self.first_decay_steps,
            "t_mul": self.t_mul,
            "m_mul": self.m_mul,
            "alpha": self.alpha,
            "cycle_limit": self.cycle_limit,
        }


@_register
class Chain(_Schedule):
    """Runs ``schedules`` one after another, switching at ``milestones`` (one fewer than the
    schedules); each schedule sees steps counted from its own start.

    Example:
        >>> warmup = WarmupCosine(1.0, total_steps=11, warmup_steps=10)
        >>> chain = Chain([warmup, StepDecay(1.0, milestones=[5])], milestones=[10])
        >>> [round(float(chain(s)), 2) for s in (5, 10, 14, 15)]
        [0.5, 1.0, 1.0, 0.1]
    """

    def __init__(self, schedules: Sequence[Any], milestones: Sequence[int]):
        if isinstance(schedules, (str, bytes, dict)) or not isinstance(schedules, Iterable):
            raise validation.ArgumentTypeError(
                "Argument `schedules` must be a list of at least two schedules (callables of "
                f"the step). Received: schedules={schedules!r}"
            )
        resolved = [
            keras.optimizers.schedules.deserialize(s) if isinstance(s, dict) else s
            for s in schedules
        ]
        if len(resolved) < 2:
            raise ValueError(
                "Argument `schedules` must hold at least two schedules (callables of the step). "
                f"Received: schedules={schedules!r}"
            )
        for index, schedule in enumerate(resolved):
            validation.function(f"schedules[{index}]", schedule, what="a schedule of the step")
        self.schedules = resolved
        self.milestones = _milestones("milestones", milestones)
        if len(self.milestones) != len(resolved) - 1:
            raise ValueError(
                "Argument `milestones` must have one entry fewer than `schedules`. "
                f"Received: milestones={list(milestones)!r} for {len(resolved)} schedules"
            )

    def __call__(self, step: Any) -> Any:
        step = _float_step(step)
        starts = [0, *self.milestones]
        rate = self.schedules[-1](step - starts[-1])
        for schedule, start, end in reversed(
            list(zip(self.schedules[:-1], starts[:-1], self.milestones, strict=True))
        ):
            rate = ops.where(step < end, schedule(step - start), rate)
        return rate

    def get_config(self) -> dict[str, Any]:
        return {
            "schedules": [keras.optimizers.schedules.serialize(s) for s in self.schedules],
            "milestones": list(self.milestones),
        }


def _milestones(name: str, value: Any) -> list[int]:
    try:
        milestones = list(value)
    except TypeError:
        milestones = None
    if (
        not milestones
        or any(isinstance(m, bool) or not isinstance(m, Integral) or m < 1 for m in milestones)
        or any(b <= a for a, b in zip(milestones, milestones[1:], strict=False))
    ):
        raise ValueError(
            f"Argument `{name}` must be a non-empty, strictly increasing list of positive step "
            f"numbers. Received: {name}={value!r}"
        )
    return [int(m) for m in milestones]


def plot_schedule(schedule: Any, steps: int, ax: Any = None) -> Any:
    """Plots ``schedule`` over steps ``0 .. steps - 1`` and returns the matplotlib figure.

    Needs matplotlib (``pip install "keras-ckpt[plot]"``).

    Example:
        >>> figure = plot_schedule(OneCycle(0.1, total_steps=1000), steps=1000)
    """
    validation.function("schedule", schedule, what="a schedule of the step")
    steps = _steps("steps", steps)
    try:
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError(
            'plot_schedule needs matplotlib: pip install "keras-ckpt[plot]"'
        ) from None
    values = ops.convert_to_numpy(schedule(ops.arange(steps)))
    if ax is None:
        figure, ax = plt.subplots(figsize=(6, 3.5))
    else:
        figure = ax.figure
    ax.plot(range(steps), values)
    ax.set_xlabel("step")
    ax.set_ylabel("learning rate")
    ax.set_title(type(schedule).__name__)
    return figure


@_register
class Scaled(_Schedule):
    """``schedule`` multiplied by ``scale``: how ReduceLROnPlateau lowers a scheduled rate.

    Example:
        >>> float(Scaled(StepDecay(1.0, milestones=[10]), scale=0.5)(0))
        0.5
    """

    def __init__(self, schedule: Any, scale: float):
        self.schedule = validation.function(
            "schedule",
            keras.optimizers.schedules.deserialize(schedule)
            if isinstance(schedule, dict)
            else schedule,
            what="a schedule of the step",
        )
        self.scale = _rate("scale", scale)

    def __call__(self, step: Any) -> Any:
        return self.schedule(step) * self.scale

    def get_config(self) -> dict[str, Any]:
        return {
            "schedule": keras.optimizers.schedules.serialize(self.schedule),
            "scale": self.scale,
        }
