"""keras_ckpt.schedules: values against closed forms, serialization, saving with a model."""

import math

import keras
import pytest

from keras_ckpt import schedules
from keras_ckpt.schedules import (
    Chain,
    CosineRestarts,
    CyclicalLR,
    ExponentialDecay,
    OneCycle,
    StepDecay,
    WarmupCosine,
)


def values(schedule, steps):
    return [float(schedule(step)) for step in steps]


def cosine(start, end, fraction):
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * fraction))


def test_warmup_cosine():
    schedule = WarmupCosine(
        0.1,
        total_steps=1000,
        warmup_steps=100,
        initial_learning_rate=0.01,
        final_learning_rate=0.001,
    )
    expected = [0.01, 0.055, 0.1, cosine(0.1, 0.001, 0.25), cosine(0.1, 0.001, 0.5), 0.001, 0.001]
    assert values(schedule, [0, 50, 100, 325, 550, 1000, 5000]) == pytest.approx(expected, rel=1e-5)


def test_warmup_cosine_without_warmup_starts_at_the_peak():
    assert values(WarmupCosine(0.2, total_steps=10), [0, 5, 10]) == pytest.approx([0.2, 0.1, 0.0])


def test_one_cycle_matches_the_pytorch_shape():
    schedule = OneCycle(1.0, total_steps=1000)  # pct_start 0.3, div 25, final div 1e4
    initial, minimum = 1.0 / 25, 1.0 / 25 / 1e4
    expected = [
        initial,
        cosine(initial, 1.0, 0.5),
        1.0,
        cosine(1.0, minimum, 0.5),
        minimum,
        minimum,
    ]
    got = values(schedule, [0, 150, 300, 650, 1000, 2000])
    assert got == pytest.approx(expected, rel=1e-4)


def test_step_decay():
    schedule = StepDecay(0.1, milestones=[3, 7], factor=0.5)
    assert values(schedule, [0, 2, 3, 6, 7, 100]) == pytest.approx(
        [0.1, 0.1, 0.05, 0.05, 0.025, 0.025]
    )


@pytest.mark.parametrize("staircase", [False, True])
def test_exponential_decay_matches_keras_without_warmup(staircase):
    ours = ExponentialDecay(0.1, decay_steps=7, decay_rate=0.9, staircase=staircase)
    theirs = keras.optimizers.schedules.ExponentialDecay(0.1, 7, 0.9, staircase=staircase)
    steps = [0, 3, 7, 10, 50]
    assert values(ours, steps) == pytest.approx(values(theirs, steps), rel=1e-6)


def test_exponential_decay_with_warmup():
    schedule = ExponentialDecay(
        1.0, decay_steps=10, decay_rate=0.1, warmup_steps=10, warmup_initial_learning_rate=0.5
    )
    assert values(schedule, [0, 5, 10, 15, 20]) == pytest.approx([0.5, 0.75, 1.0, 0.1**0.5, 0.1])


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("triangular", [0.1, 0.55, 1.0, 0.55, 0.1, 1.0, 0.1]),
        ("triangular2", [0.1, 0.55, 1.0, 0.55, 0.1, 0.55, 0.1]),
        (
            "exp_range",
            [
                0.1,
                0.1 + 0.45 * 0.9**5,
                0.1 + 0.9 * 0.9**10,
                0.1 + 0.45 * 0.9**15,
                0.1,
                0.1 + 0.9 * 0.9**30,
                0.1,
            ],
        ),
    ],
)
def test_cyclical(mode, expected):
    schedule = CyclicalLR(0.1, 1.0, step_size=10, mode=mode, gamma=0.9)
    assert values(schedule, [0, 5, 10, 15, 20, 30, 40]) == pytest.approx(expected, rel=1e-5)


def test_cosine_restarts_matches_keras():
    ours = CosineRestarts(0.1, first_decay_steps=10, t_mul=2.0, m_mul=0.8, alpha=0.1)
    theirs = keras.optimizers.schedules.CosineDecayRestarts(
        0.1, 10, t_mul=2.0, m_mul=0.8, alpha=0.1
    )
    steps = [0, 5, 9, 10, 20, 29, 30, 60, 100]
    assert values(ours, steps) == pytest.approx(values(theirs, steps), rel=1e-5)


def test_cosine_restarts_cycle_limit_holds_the_floor():
    schedule = CosineRestarts(
        1.0, first_decay_steps=10, t_mul=1.0, m_mul=0.5, alpha=0.2, cycle_limit=2
    )
    # Floor 0.2; the second cycle's cosine part is halved: it starts at 0.2 + 0.8 * 0.5.
    assert values(schedule, [0, 10, 15, 19, 20, 35]) == pytest.approx(
        [1.0, 0.6, cosine(0.6, 0.2, 0.5), cosine(0.6, 0.2, 0.9), 0.2, 0.2], rel=1e-5
    )


def test_chain_restarts_each_schedule_at_its_milestone():
    chain = Chain(
        [
            schedules.WarmupCosine(1.0, total_steps=100, warmup_steps=99),
            StepDecay(0.5, milestones=[10]),
            ExponentialDecay(0.2, 1, 0.5),
        ],
        milestones=[10, 30],
    )
    assert values(chain, [0, 5, 10, 19, 20, 30, 32]) == pytest.approx(
        [0.0, 5 / 99, 0.5, 0.5, 0.05, 0.2, 0.05], rel=1e-5
    )


ALL = [
    WarmupCosine(0.1, 100, warmup_steps=10, initial_learning_rate=0.01, final_learning_rate=0.001),
    OneCycle(0.1, 100, pct_start=0.2, div_factor=10.0, final_div_factor=100.0),
    StepDecay(0.1, [10, 20], factor=0.3),
    ExponentialDecay(
        0.1, 10, 0.9, staircase=True, warmup_steps=5, warmup_initial_learning_rate=0.0
    ),
    CyclicalLR(0.01, 0.1, 5, mode="exp_range", gamma=0.99),
    CosineRestarts(0.1, 10, t_mul=1.5, m_mul=0.9, alpha=0.05, cycle_limit=3),
    Chain([StepDecay(0.1, [5]), OneCycle(0.05, 50)], milestones=[20]),
]
IDS = [type(s).__name__ for s in ALL]
STEPS = [0, 1, 7, 10, 33, 99, 150]


@pytest.mark.parametrize("schedule", ALL, ids=IDS)
def test_config_is_the_constructor_arguments(schedule):
    config = schedule.get_config()
    again = type(schedule)(**config)
    assert again.get_config() == config
    assert values(again, STEPS) == values(schedule, STEPS)


@pytest.mark.parametrize("schedule", ALL, ids=IDS)
def test_keras_serialize_round_trip(schedule):
    data = keras.optimizers.schedules.serialize(schedule)
    assert data["registered_name"] == f"keras_ckpt>{type(schedule).__name__}"
    restored = keras.optimizers.schedules.deserialize(data)
    assert type(restored) is type(schedule)
    assert values(restored, STEPS) == values(schedule, STEPS)


@pytest.mark.parametrize("schedule", ALL, ids=IDS)
def test_saved_model_resumes_the_schedule(tmp_path, data, schedule):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=schedule), loss="mse")
    model.fit(*data, batch_size=32, epochs=4, verbose=0)  # 12 steps
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert int(loaded.optimizer.iterations.numpy()) == 12
    assert float(loaded.optimizer.learning_rate) == pytest.approx(float(schedule(12)), rel=1e-6)
    assert type(loaded.optimizer._learning_rate) is type(schedule)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda: WarmupCosine(0.1, total_steps=0),
            r"Argument `total_steps` must be an integer >= 1\. Received: total_steps=0",
        ),
        (
            lambda: WarmupCosine(0.1, total_steps=10, warmup_steps=10),
            r"`warmup_steps` must be smaller than `total_steps`",
        ),
        (
            lambda: WarmupCosine(0.1, total_steps=10, warmup_steps=-1),
            r"Argument `warmup_steps` must be an integer >= 0",
        ),
        (
            lambda: WarmupCosine(-0.1, total_steps=10),
            r"Argument `peak_learning_rate` must be a finite learning rate >= 0",
        ),
        (lambda: WarmupCosine(0.1, total_steps=True), r"Received: total_steps=True"),
        (
            lambda: OneCycle(0.1, 100, pct_start=1.0),
            r"Argument `pct_start` must be between 0 and 1",
        ),
        (lambda: OneCycle(0.1, 100, pct_start=0), r"Received: pct_start=0"),
        (
            lambda: OneCycle(0.1, 100, div_factor=0),
            r"Argument `div_factor` must be a finite number > 0",
        ),
        (
            lambda: StepDecay(0.1, milestones=[5, 5]),
            r"Argument `milestones` must be a non-empty, strictly increasing",
        ),
        (lambda: StepDecay(0.1, milestones=[]), r"Received: milestones=\[\]"),
        (lambda: ExponentialDecay(0.1, decay_steps=0, decay_rate=0.5), r"Argument `decay_steps`"),
        (
            lambda: ExponentialDecay(0.1, 10, 0.5, staircase="yes"),
            r"Argument `staircase` must be True or False",
        ),
        (
            lambda: CyclicalLR(0.1, 1.0, 10, mode="sine"),
            r"one of 'triangular', 'triangular2', 'exp_range'\. Received: mode='sine'",
        ),
        (lambda: CyclicalLR(1.0, 0.1, 10), r"`max_learning_rate` must be >= `base_learning_rate`"),
        (lambda: CyclicalLR(0.1, 1.0, 10, gamma=1.5), r"Argument `gamma` must be in \(0, 1\]"),
        (lambda: CosineRestarts(0.1, 10, t_mul=0.5), r"Argument `t_mul` must be a number >= 1"),
        (lambda: CosineRestarts(0.1, 10, alpha=2), r"Argument `alpha` must be in \[0, 1\]"),
        (
            lambda: CosineRestarts(0.1, 10, cycle_limit=0),
            r"Argument `cycle_limit` must be an integer >= 1",
        ),
        (
            lambda: Chain([StepDecay(0.1, [1])], milestones=[]),
            r"Argument `schedules` must hold at least two",
        ),
        (
            lambda: Chain([StepDecay(0.1, [1]), StepDecay(0.1, [1])], milestones=[5, 6]),
            r"one entry fewer than `schedules`",
        ),
    ],
)
def test_bad_arguments(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_plot_schedule(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    figure = schedules.plot_schedule(OneCycle(0.1, total_steps=200), steps=200)
    [line] = figure.axes[0].lines
    assert len(line.get_xdata()) == 200
    assert max(line.get_ydata()) == pytest.approx(0.1, rel=1e-3)
    figure.savefig(tmp_path / "curve.png")
    assert (tmp_path / "curve.png").stat().st_size > 0
    with pytest.raises(ValueError, match="Argument `steps`"):
        schedules.plot_schedule(OneCycle(0.1, total_steps=200), steps=0)
