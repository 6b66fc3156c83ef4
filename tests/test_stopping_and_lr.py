"""EarlyStopping, ReduceLROnPlateau and LearningRateScheduler: Keras parity, additions, resume."""

import math

import keras
import numpy as np
import pytest
from conftest import assert_weights_equal, needs_keras

import keras_ckpt
from keras_ckpt.schedules import Scaled, StepDecay, WarmupCosine

VALIDATION = 8


def fit(model, data, callbacks, epochs, **kwargs):
    x, y = data
    kwargs.setdefault("validation_data", (x[:VALIDATION], y[:VALIDATION]))
    return model.fit(x, y, batch_size=32, epochs=epochs, verbose=0, callbacks=callbacks, **kwargs)


# EarlyStopping --------------------------------------------------------------------------

PARITY_CASES = [
    ([0.9, 0.8, 0.85, 0.86, 0.7, 0.75, 0.76, 0.77, 0.78, 0.79], {"patience": 2}),
    ([0.9, 0.8, 0.85, 0.86, 0.7, 0.75, 0.76, 0.77, 0.78, 0.79], {"patience": 0}),
    (
        [0.9, 0.8, 0.79, 0.78, 0.77, 0.76, 0.75, 0.74, 0.73, 0.72],
        {"patience": 1, "min_delta": 0.05},
    ),
    ([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05], {"patience": 2, "baseline": 0.1}),
    (
        [0.9, 0.95, 0.97, 0.98, 0.7, 0.99, 0.99, 0.99, 0.99, 0.99],
        {"patience": 1, "start_from_epoch": 3},
    ),
    (
        [0.5, 0.6, 0.7, 0.4, 0.8, 0.9, 0.95, 0.96, 0.97, 0.98],
        {"patience": 2, "restore_best_weights": True},
    ),
]


@pytest.mark.parametrize(("sequence", "kwargs"), PARITY_CASES)
def test_early_stopping_stops_where_keras_does(make_model, data, scripted, sequence, kwargs):
    outcomes = []
    for stopping_class in (keras.callbacks.EarlyStopping, keras_ckpt.EarlyStopping):
        model = make_model()
        stop = stopping_class(**kwargs)
        history = fit(model, data, [scripted(sequence), stop], epochs=len(sequence))
        outcomes.append((len(history.epoch), stop.stopped_epoch, stop.best, model.get_weights()))
    (keras_epochs, keras_stop, keras_best, keras_weights), (epochs, stopped, best, weights) = (
        outcomes
    )
    assert (epochs, stopped, best) == (keras_epochs, keras_stop, keras_best)
    assert_weights_equal(weights, keras_weights)


def test_stopping_reason_patience(make_model, data, scripted):
    stop = keras_ckpt.EarlyStopping(patience=1)
    fit(make_model(), data, [scripted([0.5, 0.6, 0.7, 0.8]), stop], epochs=4)
    assert (stop.stopped_epoch, stop.stopping_reason) == (1, "patience")


def test_stopping_threshold(make_model, data, scripted):
    stop = keras_ckpt.EarlyStopping(patience=10, stopping_threshold=0.3)
    history = fit(make_model(), data, [scripted([0.5, 0.4, 0.3, 0.29, 0.1]), stop], epochs=5)
    assert len(history.epoch) == 4 and stop.stopping_reason == "stopping_threshold"


def test_divergence_threshold_in_max_mode(make_model, data, scripted):
    stop = keras_ckpt.EarlyStopping(
        monitor="val_loss", mode="max", patience=10, divergence_threshold=0.2
    )
    history = fit(make_model(), data, [scripted([0.5, 0.6, 0.3, 0.19, 0.7]), stop], epochs=5)
    assert len(history.epoch) == 4 and stop.stopping_reason == "divergence_threshold"


def test_check_finite_stops_on_nan(make_model, data, scripted):
    stop = keras_ckpt.EarlyStopping(patience=10)
    history = fit(make_model(), data, [scripted([0.5, math.nan, 0.4]), stop], epochs=3)
    assert len(history.epoch) == 2 and stop.stopping_reason == "non_finite"
    keras_like = keras_ckpt.EarlyStopping(patience=10, check_finite=False)
    history = fit(make_model(), data, [scripted([0.5, math.nan, 0.4]), keras_like], epochs=3)
    assert len(history.epoch) == 3 and keras_like.stopping_reason is None


@pytest.mark.parametrize("pass_callback", [True, False])
def test_restore_best_weights_from_a_best_checkpoint(
    tmp_path, make_model, data, scripted, weights_by_epoch, pass_callback
):
    weights = weights_by_epoch()
    best = keras_ckpt.BestCheckpoint(tmp_path, save_weights_only=True)
    stop = keras_ckpt.EarlyStopping(
        patience=2, restore_best_weights=best if pass_callback else str(tmp_path)
    )
    model = make_model()
    fit(model, data, [scripted([0.5, 0.3, 0.4, 0.45, 0.5]), best, weights, stop], epochs=5)
    assert stop.stopped_epoch == 3
    assert stop.best_weights is None  # nothing held in memory
    assert_weights_equal(model.get_weights(), weights.weights[2])


def test_early_stopping_stops_at_the_same_epoch_after_an_interruption(make_model, data, scripted):
    sequence = [0.9, 0.8, 0.85, 0.7, 0.75, 0.76, 0.8, 0.9, 0.95, 0.99]
    whole = keras_ckpt.EarlyStopping(patience=3)
    history = fit(make_model(), data, [scripted(sequence), whole], epochs=10)
    assert len(history.epoch) == 7

    model = make_model()
    first = keras_ckpt.EarlyStopping(patience=3)
    fit(model, data, [scripted(sequence), first], epochs=5)  # interrupted after epoch 5
    resumed = keras_ckpt.EarlyStopping(patience=3)
    resumed.load_state_dict(first.state_dict())
    history = fit(model, data, [scripted(sequence), resumed], epochs=10, initial_epoch=5)
    assert history.epoch[-1] + 1 == 7
    assert (resumed.stopped_epoch, resumed.best) == (whole.stopped_epoch, whole.best)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"stopping_threshold": "low"}, r"Argument `stopping_threshold` must be a number or None"),
        ({"divergence_threshold": math.nan}, r"Argument `divergence_threshold` must be a number"),
        ({"check_finite": 1}, r"Argument `check_finite` must be True or False"),
        (
            {"restore_best_weights": [3]},
            r"Argument `restore_best_weights` must be True, False, a BestCheckpoint",
        ),
    ],
)
def test_early_stopping_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        keras_ckpt.EarlyStopping(**kwargs)


def test_unknown_mode_warns_like_keras():
    with pytest.warns(UserWarning, match="EarlyStopping mode 'unknown' is unknown"):
        keras_ckpt.EarlyStopping(mode="unknown")
    with pytest.warns(UserWarning, match="ReduceLROnPlateau mode 'unknown' is unknown"):
        keras_ckpt.ReduceLROnPlateau(mode="unknown")


# ReduceLROnPlateau ----------------------------------------------------------------------

PLATEAU = [0.9, 0.8, 0.8, 0.8, 0.7, 0.7, 0.7, 0.7, 0.6, 0.6]


def test_reduce_lr_matches_keras(make_model, data, scripted):
    histories = []
    for reduce_class in (keras.callbacks.ReduceLROnPlateau, keras_ckpt.ReduceLROnPlateau):
        reduce = reduce_class(patience=1, factor=0.5, cooldown=1, min_lr=0.002)
        history = fit(make_model(), data, [scripted(PLATEAU), reduce], epochs=len(PLATEAU))
        histories.append(history.history["learning_rate"])
    assert histories[1] == pytest.approx(histories[0])
    assert histories[1][-1] < histories[1][0]


def test_reduce_lr_scales_a_schedule(tmp_path, data, scripted):
    keras.utils.set_random_seed(0)
    schedule = StepDecay(0.1, milestones=[6], factor=0.5)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=schedule), loss="mse")
    with pytest.raises(TypeError):  # what Keras does
        fit(model, data, [scripted(PLATEAU), keras.callbacks.ReduceLROnPlateau(patience=1)], 4)

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=schedule), loss="mse")
    reduce = keras_ckpt.ReduceLROnPlateau(patience=1, factor=0.5)
    history = fit(model, data, [scripted(PLATEAU), reduce], epochs=5)
    # The schedule halves after step 6 (end of epoch 2); the plateau at epochs 3 and 4 halves the
    # rate twice more (patience 1). The rate is logged before each reduction, as Keras does.
    assert history.history["learning_rate"] == pytest.approx([0.1, 0.05, 0.05, 0.025, 0.0125])
    scaled = model.optimizer._learning_rate
    assert isinstance(scaled, Scaled) and scaled.scale == pytest.approx(0.25)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert float(loaded.optimizer.learning_rate) == pytest.approx(0.0125)


def test_reduce_lr_counters_continue_after_an_interruption(make_model, data, scripted):
    whole = keras_ckpt.ReduceLROnPlateau(patience=2, factor=0.5)
    expected = fit(make_model(), data, [scripted(PLATEAU), whole], epochs=10).history
    model = make_model()
    first = keras_ckpt.ReduceLROnPlateau(patience=2, factor=0.5)
    lrs = fit(model, data, [scripted(PLATEAU), first], epochs=3).history["learning_rate"]
    resumed = keras_ckpt.ReduceLROnPlateau(patience=2, factor=0.5)
    resumed.load_state_dict(first.state_dict())
    lrs += fit(model, data, [scripted(PLATEAU), resumed], epochs=10, initial_epoch=3).history[
        "learning_rate"
    ]
    assert lrs == pytest.approx(expected["learning_rate"])


def test_reduce_lr_factor_error_matches_keras():
    with pytest.raises(ValueError, match="does not support a factor >= 1.0. Received factor=1.5"):
        keras_ckpt.ReduceLROnPlateau(factor=1.5)


# LearningRateScheduler ------------------------------------------------------------------


def halve_after_two(epoch, lr):
    return lr if epoch < 2 else lr * 0.5


def test_scheduler_matches_keras(make_model, data):
    histories = []
    for scheduler_class in (
        keras.callbacks.LearningRateScheduler,
        keras_ckpt.LearningRateScheduler,
    ):
        history = fit(make_model(), data, [scheduler_class(halve_after_two)], epochs=4)
        histories.append(history.history["learning_rate"])
    assert histories[1] == pytest.approx(histories[0])
    assert histories[1] == pytest.approx([0.01, 0.01, 0.005, 0.0025])


def test_scheduler_accepts_zero_d_arrays(make_model, data):
    scheduler = keras_ckpt.LearningRateScheduler(lambda epoch: np.array(0.1) / (epoch + 1))
    history = fit(make_model(), data, [scheduler], epochs=2)
    assert history.history["learning_rate"] == pytest.approx([0.1, 0.05])


def test_scheduler_accepts_a_learning_rate_schedule_per_epoch(make_model, data):
    scheduler = keras_ckpt.LearningRateScheduler(StepDecay(0.1, milestones=[2], factor=0.1))
    history = fit(make_model(), data, [scheduler], epochs=3)
    assert history.history["learning_rate"] == pytest.approx([0.1, 0.1, 0.01])


def test_scheduler_per_step(make_model, data):
    schedule = WarmupCosine(0.1, total_steps=9, warmup_steps=3)

    class RatePerBatch(keras.callbacks.Callback):
        rates = []

        def on_train_batch_end(self, batch, logs=None):
            self.rates.append(float(self.model.optimizer.learning_rate))

    recorder = RatePerBatch()
    model = make_model()
    scheduler = keras_ckpt.LearningRateScheduler(schedule, per="step")
    fit(model, data, [scheduler, recorder], epochs=2)
    # A second fit (or a resumed model) continues from the optimizer's step count.
    fit(model, data, [keras_ckpt.LearningRateScheduler(schedule, per="step"), recorder], epochs=1)
    assert recorder.rates == pytest.approx([float(schedule(step)) for step in range(9)])


def test_scheduler_refuses_a_schedule_driven_optimizer(data):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=StepDecay(0.1, [5])), loss="mse")
    with pytest.raises(
        ValueError, match="cannot set the learning rate of an optimizer created with"
    ):
        fit(model, data, [keras_ckpt.LearningRateScheduler(halve_after_two)], epochs=1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"schedule": 0.1}, r"Argument `schedule` must be callable\. Received: schedule=0\.1"),
        (
            {"schedule": halve_after_two, "per": "batch"},
            r"Argument `per` must be one of 'epoch', 'step'",
        ),
    ],
)
def test_scheduler_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        keras_ckpt.LearningRateScheduler(**kwargs)


def test_scheduler_non_float_output_is_an_error(make_model, data):
    scheduler = keras_ckpt.LearningRateScheduler(lambda epoch: "fast")
    with pytest.raises(ValueError, match="should be a float. Got: fast"):
        fit(make_model(), data, [scheduler], epochs=1)


NAN_FIRST = [math.nan, 1.0, 0.9, 0.8, 0.7, 0.6]


@needs_keras((3, 11), "check_finite=False reproduces the NaN handling of Keras 3.11 and later")
def test_nan_quirks_match_keras_when_check_finite_is_off(make_model, data, scripted):
    # Keras lets a first NaN become `best`, which nothing beats afterwards.
    outcomes = []
    for stop, reduce in [
        (keras.callbacks.EarlyStopping(patience=2), keras.callbacks.ReduceLROnPlateau(patience=1)),
        (
            keras_ckpt.EarlyStopping(patience=2, check_finite=False),
            keras_ckpt.ReduceLROnPlateau(patience=1),
        ),
    ]:
        history = fit(make_model(), data, [scripted(NAN_FIRST), stop, reduce], epochs=6)
        outcomes.append((history.epoch, history.history["learning_rate"]))
    assert outcomes[1][0] == outcomes[0][0]
    assert outcomes[1][1] == pytest.approx(outcomes[0][1])


def test_restore_best_weights_takes_truthy_values_like_keras():
    assert keras_ckpt.EarlyStopping(restore_best_weights=1).restore_best_weights is True
    assert keras_ckpt.EarlyStopping(restore_best_weights=np.True_).restore_best_weights is True


def test_resumed_restore_best_weights_warns_instead_of_restoring_wrong_weights(
    make_model, data, scripted
):
    model = make_model()
    first = keras_ckpt.EarlyStopping(patience=5, restore_best_weights=True)
    fit(model, data, [scripted([0.5, 0.6]), first], epochs=2)
    resumed = keras_ckpt.EarlyStopping(patience=5, restore_best_weights=True)
    resumed.load_state_dict(first.state_dict())
    with pytest.warns(UserWarning, match=r"best weights \(epoch 1\) were seen before the resume"):
        fit(model, data, [scripted([0.5, 0.6, 0.7]), resumed], epochs=3, initial_epoch=2)
    assert (resumed.best, resumed.best_epoch) == (0.5, 0)


def test_mixed_precision_per_step_schedule(data):
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
        steps = []
        scheduler = keras_ckpt.LearningRateScheduler(lambda s: steps.append(s) or 0.1, per="step")
        fit(model, data, [scheduler], epochs=2)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    # The step is the inner optimizer's count (the LossScaleOptimizer wrapper counts nothing):
    # epoch 2 starts past 0, behind 3 when loss scaling skipped overflowing first steps.
    assert steps[:3] == [0, 1, 2] and 1 <= steps[3] <= 3
