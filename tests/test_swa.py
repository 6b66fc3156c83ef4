"""StochasticWeightAveraging: its schedule (pure), the average against NumPy, the learning
rates it sets, BatchNormalization statistics, exact resume and plain-Keras files."""

import json

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import Crash, assert_weights_equal
from resume_setup import make_resume_model, resume_data

import keras_ckpt
from keras_ckpt.averaging import recompute_batch_norm
from keras_ckpt.callbacks._callback_states import join_arrays, split_arrays
from keras_ckpt.snapshot import append_arrays, read_arrays
from keras_ckpt.swa import SwaSchedule
from keras_ckpt.writer import WRITER


@pytest.fixture(autouse=True, scope="module")
def deterministic_ops():
    tf.config.experimental.enable_op_determinism()


def fit(model, callbacks, epochs=4, data=None):
    x, y = resume_data() if data is None else data
    try:
        return model.fit(
            x, y, batch_size=16, epochs=epochs, shuffle=False, verbose=0, callbacks=callbacks
        )
    finally:
        WRITER.wait()  # a simulated crash skips on_train_end: let the save in flight land


def reference_average(snapshots):
    """PyTorch's (and the callback's) incremental float32 mean of ``snapshots``."""
    average = [value.astype(np.float32).copy() for value in snapshots[0]]
    for count, snapshot in enumerate(snapshots[1:], start=1):
        for mean, value in zip(average, snapshot, strict=True):
            mean += (value - mean) / (count + 1)
    return average


class Recorder(keras.callbacks.Callback):
    """Records trainable weights after every epoch and batch, and the rate of every epoch and
    batch as it begins (put it after StochasticWeightAveraging, which sets the rate)."""

    def __init__(self):
        super().__init__()
        self.epoch_weights, self.step_weights = [], []
        self.epoch_rates, self.step_rates = [], []

    def _trainable(self):
        return [keras.ops.convert_to_numpy(v.value).copy() for v in self.model.trainable_variables]

    def _rate(self):
        return float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_rates.append(self._rate())

    def on_train_batch_begin(self, batch, logs=None):
        self.step_rates.append(self._rate())

    def on_train_batch_end(self, batch, logs=None):
        self.step_weights.append(self._trainable())

    def on_epoch_end(self, epoch, logs=None):
        self.epoch_weights.append(self._trainable())


def trainable(model):
    return [keras.ops.convert_to_numpy(v.value) for v in model.trainable_variables]


def assert_close(actual, expected, atol=1e-6):
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected, strict=True):
        np.testing.assert_allclose(a, e, rtol=0, atol=atol)


# Pure schedule -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "every", "averaged_at", "done", "due"),
    [
        (0, 1, 0, 1, True),  # the first unit's end
        (0, 1, 1, 1, False),  # the same point is not taken twice (a resumed boundary)
        (3, 1, 0, 3, False),  # the phase begins with unit index 3: nothing done in it yet
        (3, 1, 0, 4, True),
        (3, 2, 0, 4, False),
        (3, 2, 0, 5, True),
        (3, 2, 5, 6, False),
        (3, 2, 5, 7, True),
        (3, 2, 5, 8, True),  # 7 was passed between two checks: taken once, late
        (3, 2, 8, 8, False),
    ],
)
def test_averaging_points(start, every, averaged_at, done, due):
    schedule = SwaSchedule(start=start, average_every=every)
    assert schedule.averaging_due(averaged_at, done) is due


def test_constant_rate_begins_with_the_phase_and_none_leaves_the_rate_alone():
    assert [SwaSchedule(start=2, swa_lr=0.05).learning_rate(u) for u in range(4)] == [
        None,
        None,
        0.05,
        0.05,
    ]
    assert SwaSchedule(start=0).learning_rate(7) is None


def test_cyclical_rate_falls_from_near_the_maximum_to_swa_lr_in_each_cycle():
    schedule = SwaSchedule(start=1, average_every=4, swa_lr=0.1, swa_lr_max=0.5, cycle_length=4)
    rates = [schedule.learning_rate(unit) for unit in range(10)]
    assert rates[0] is None
    # t = 1/4, 2/4, 3/4, 1: (1 - t) * 0.5 + t * 0.1
    assert rates[1:] == pytest.approx([0.4, 0.3, 0.2, 0.1, 0.4, 0.3, 0.2, 0.1, 0.4])
    # The average is taken at each cycle's end, the lowest rate.
    assert [d for d in range(12) if schedule.averaging_due(d - 1, d)] == [5, 9]


# Arguments -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (
            {"start_epoch": -1},
            ValueError,
            r"Argument `start_epoch` must be a non-negative integer. Received: start_epoch=-1",
        ),
        ({"start_epoch": True}, TypeError, r"`start_epoch` must be a non-negative integer"),
        ({"start_step": 1.5}, TypeError, r"`start_step` must be a non-negative integer"),
        (
            {"start_epoch": 1, "start_step": 10},
            ValueError,
            r"Give one of the arguments `start_epoch` and `start_step`. Received: start_epoch=1",
        ),
        ({"average_every": 0}, ValueError, r"`average_every` must be a positive integer"),
        ({"swa_lr": 0}, ValueError, r"Argument `swa_lr` must be a number > 0. Received: swa_lr=0"),
        ({"swa_lr": "fast"}, TypeError, r"`swa_lr` must be a number > 0"),
        (
            {"swa_lr": 0.01, "swa_lr_max": 0.1},
            ValueError,
            r"needs both `swa_lr_max` and `cycle_length`. Received: swa_lr_max=0.1, "
            r"cycle_length=None",
        ),
        (
            {"swa_lr": 0.01, "cycle_length": 3},
            ValueError,
            r"needs both `swa_lr_max` and `cycle_length`",
        ),
        ({"cycle_length": 0}, ValueError, r"`cycle_length` must be a positive integer"),
        (
            {"swa_lr": 0.1, "swa_lr_max": 0.01, "cycle_length": 3},
            ValueError,
            r"`swa_lr_max` must be at least `swa_lr`.*Received: swa_lr_max=0.01, swa_lr=0.1",
        ),
        (
            {"swa_lr_max": 0.1, "cycle_length": 3},
            ValueError,
            r"`swa_lr_max` must be at least `swa_lr`.*swa_lr=None",
        ),
        ({"bn_batch_size": 0}, ValueError, r"`bn_batch_size` must be a positive integer"),
        (
            {"verbose": 2},
            ValueError,
            r"Argument `verbose` must be one of 0, 1. Received: verbose=2",
        ),
    ],
)
def test_invalid_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        keras_ckpt.StochasticWeightAveraging(**kwargs)


def test_swa_lr_with_a_schedule_driven_optimizer_is_refused():
    model = make_resume_model()
    schedule = keras.optimizers.schedules.ExponentialDecay(0.01, 10, 0.9)
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss="mse")
    swa = keras_ckpt.StochasticWeightAveraging(swa_lr=0.01)
    with pytest.raises(ValueError, match=r"cannot set `swa_lr` on an optimizer whose learning"):
        fit(model, [swa], epochs=1)
    # Without swa_lr the schedule is left alone and the average is taken.
    swa = keras_ckpt.StochasticWeightAveraging()
    fit(model, [swa], epochs=2)
    assert swa.averaged_count == 2


def test_must_come_before_resume_from_latest(tmp_path):
    callbacks = [keras_ckpt.ResumeFromLatest(tmp_path), keras_ckpt.StochasticWeightAveraging()]
    with pytest.raises(ValueError, match=r"must come before ResumeFromLatest in `callbacks`"):
        fit(make_resume_model(), callbacks, epochs=1)


def test_an_optimizer_with_use_ema_is_refused_before_training():
    model = make_resume_model()
    model.compile(optimizer=keras.optimizers.Adam(use_ema=True), loss="mse")
    with pytest.raises(ValueError, match="does not combine with an optimizer's use_ema=True"):
        fit(model, [keras_ckpt.StochasticWeightAveraging()], epochs=1)


def test_a_dedup_resume_checkpoint_refuses_the_running_average(tmp_path):
    swa = keras_ckpt.StochasticWeightAveraging(start_epoch=0)
    resume = keras_ckpt.ResumeFromLatest(tmp_path, dedup=True)
    with pytest.raises(ValueError, match=r"ResumeFromLatest\(dedup=True\) cannot store the arr"):
        fit(make_resume_model(), [swa, resume], epochs=2)
    assert keras_ckpt.list_checkpoints(tmp_path) == []


# Real training -------------------------------------------------------------------------------


def test_epoch_average_equals_numpy_and_the_constant_rate_is_set():
    model = make_resume_model()
    model.optimizer.learning_rate = 0.01
    swa = keras_ckpt.StochasticWeightAveraging(start_epoch=2, average_every=2, swa_lr=0.003)
    recorder = Recorder()
    fit(model, [swa, recorder], epochs=7)
    # Epoch indices 2..6 are the phase; points after 2 of its epochs: epochs 3 and 5.
    expected = reference_average([recorder.epoch_weights[3], recorder.epoch_weights[5]])
    assert swa.averaged_count == 2
    assert_close(trainable(model), expected)
    assert_close(swa.average, expected)
    assert recorder.epoch_rates == pytest.approx([0.01, 0.01] + [0.003] * 5)
    # The trained weights stay available.
    assert_weights_equal(
        [w for w, v in zip(swa.raw_weights, model.weights, strict=True) if v.trainable],
        recorder.epoch_weights[-1],
    )


def test_step_average_equals_numpy_and_the_cyclical_rate_is_set_per_step():
    model = make_resume_model()
    swa = keras_ckpt.StochasticWeightAveraging(
        start_step=4, swa_lr=0.001, swa_lr_max=0.005, cycle_length=3
    )
    recorder = Recorder()
    fit(model, [swa, recorder], epochs=3)  # 15 steps
    default_rate = 0.001  # Adam's
    cycle = [0.005 * (1 - t) + 0.001 * t for t in (1 / 3, 2 / 3, 1)]
    assert recorder.step_rates == pytest.approx([default_rate] * 4 + cycle * 3 + cycle[:2])
    # Averaged after 7, 10 and 13 steps (each cycle's end).
    points = [recorder.step_weights[done - 1] for done in (7, 10, 13)]
    assert swa.averaged_count == 3
    assert_close(trainable(model), reference_average(points))


def test_no_averaging_point_warns_and_keeps_the_trained_weights():
    model = make_resume_model()
    swa = keras_ckpt.StochasticWeightAveraging(start_epoch=5)
    recorder = Recorder()
    with pytest.warns(UserWarning, match=r"ended before the first averaging point \(epoch 6\)"):
        fit(model, [swa, recorder], epochs=2)
    assert swa.raw_weights is None
    assert_weights_equal(trainable(model), recorder.epoch_weights[-1])


def batch_norm_model():
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(8),
            keras.layers.BatchNormalization(momentum=0.5),
            keras.layers.Dense(1),
        ]
    )
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    return model


def test_batch_norm_statistics_are_recomputed_for_the_averaged_weights():
    x, y = resume_data()
    model = batch_norm_model()
    swa = keras_ckpt.StochasticWeightAveraging(start_epoch=1, bn_data=x, bn_batch_size=32)
    fit(model, [swa], epochs=3, data=(x, y))
    dense, norm = model.layers[0], model.layers[1]
    # By hand: the Dense outputs of the averaged weights, batch by batch (32, 32, 16 samples);
    # each batch's mean and (biased) variance count once.
    kernel, bias = (keras.ops.convert_to_numpy(v) for v in dense.weights)
    assert_close([kernel, bias], swa.average[:2])
    features = [x[i : i + 32].astype(np.float64) @ kernel + bias for i in (0, 32, 64)]
    mean = np.mean([f.mean(axis=0) for f in features], axis=0)
    variance = np.mean([f.var(axis=0) for f in features], axis=0)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(norm.moving_mean), mean, atol=1e-5)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(norm.moving_variance), variance, rtol=1e-4
    )
    assert norm.momentum == 0.5  # put back


def test_batch_norm_without_bn_data_warns():
    model = batch_norm_model()
    with pytest.warns(UserWarning, match=r"Pass bn_data= \(training inputs\)"):
        fit(model, [keras_ckpt.StochasticWeightAveraging()], epochs=1)


def test_recompute_batch_norm_takes_batches_of_an_iterable():
    x, _ = resume_data()
    model = batch_norm_model()
    model(x[:2])
    from_array = batch_norm_model()
    from_array(x[:2])
    assert recompute_batch_norm(model, [(x[:40], None), (x[40:], None)]) == 2
    assert recompute_batch_norm(from_array, x, batch_size=40) == 2
    assert_weights_equal(model.get_weights(), from_array.get_weights())
    assert recompute_batch_norm(make_resume_model(), x) == 0  # no BatchNormalization


def test_averaged_model_saves_and_loads_in_plain_keras(tmp_path):
    model = make_resume_model()
    fit(model, [keras_ckpt.StochasticWeightAveraging(start_epoch=1)], epochs=3)
    model.save(tmp_path / "swa.keras")
    loaded = keras.saving.load_model(tmp_path / "swa.keras")
    assert_weights_equal(loaded.get_weights(), model.get_weights())


# Resume --------------------------------------------------------------------------------------


def test_state_survives_the_manifest_and_the_weights_file_exactly(tmp_path):
    model = make_resume_model()
    swa = keras_ckpt.StochasticWeightAveraging(start_epoch=1)
    fit(model, [swa], epochs=3)
    arrays = []
    manifest_state = json.loads(json.dumps(split_arrays(swa.state_dict(), arrays)))
    assert manifest_state["average"] == [{"keras_ckpt_array": i} for i in range(4)]
    path = str(tmp_path / "x.weights.h5")
    model.save_weights(path)
    append_arrays(path, arrays)
    other = keras_ckpt.StochasticWeightAveraging(start_epoch=1)
    other.load_state_dict(join_arrays(manifest_state, lambda: read_arrays(path)))
    other.on_train_begin()  # a pending state is applied after the reset
    assert other.averaged_count == 2
    assert_weights_equal(other.average, swa.average)
    # The state holds copies: the next averaging point does not change a state taken before.
    state = swa.state_dict()
    swa.average[0] += 1
    assert_weights_equal(state["average"], other.average)
    # Plain Keras loads the file and passes the arrays by.
    plain = make_resume_model(seed=2)
    plain.optimizer.build(plain.trainable_variables)
    plain.load_weights(path)
    assert_weights_equal(plain.get_weights(), model.get_weights())


def test_damaged_array_references_and_groups_are_errors(tmp_path):
    with pytest.raises(ValueError, match=r"array 3 is not in the checkpoint \(1\)"):
        join_arrays({"a": {"keras_ckpt_array": 3}}, lambda: [np.zeros(1)])
    with pytest.raises(ValueError, match=r"an array reference is 'x', not an index"):
        join_arrays({"a": [{"keras_ckpt_array": "x"}]}, lambda: [np.zeros(1)])
    path = str(tmp_path / "x.weights.h5")
    with h5py.File(path, "w") as file:
        file.create_group("keras_ckpt_callback_arrays").create_dataset("1", data=np.zeros(1))
    with pytest.raises(ValueError, match=r"keras_ckpt_callback_arrays holds \['1'\]"):
        read_arrays(path)
    assert join_arrays({"count": 2}, lambda: pytest.fail("no array to read")) == {"count": 2}


def test_a_state_of_other_shapes_is_refused_with_the_shapes():
    swa = keras_ckpt.StochasticWeightAveraging()
    fit(make_resume_model(), [swa], epochs=1)
    other = keras_ckpt.StochasticWeightAveraging()
    other.set_model(
        keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])  # other shapes
    )
    other.load_state_dict(swa.state_dict())
    with pytest.raises(ValueError, match=r"the averaged weights have the shapes \[\(4, 16\)"):
        other.on_train_begin()


def test_verbose_says_when_it_averages_and_swaps(capsys):
    swa = keras_ckpt.StochasticWeightAveraging(start_epoch=1, verbose=1)
    fit(make_resume_model(), [swa], epochs=3)
    out = capsys.readouterr().out
    assert "1 snapshot(s) of the weights averaged (epoch 2)" in out
    assert "2 snapshot(s) of the weights averaged (epoch 3)" in out
    assert "the model holds the average of 2 snapshot(s) of its weights" in out


@pytest.mark.parametrize(
    ("swa_arguments", "crash_step"),
    [
        # Epochs of 5 batches; saves every 3 batches and at epoch ends.
        ({"start_epoch": 1, "swa_lr": 0.002}, 13),  # resumed mid-epoch, 1 average taken
        ({"start_epoch": 1, "swa_lr": 0.002}, 15),  # resumed at an epoch boundary
        ({"start_step": 4, "swa_lr": 0.001, "swa_lr_max": 0.004, "cycle_length": 3}, 13),
        ({"start_step": 2, "average_every": 3}, 10),  # resumed at step 9, an averaging point
    ],
)
def test_kill_and_resume_averages_exactly_the_same_weights(tmp_path, swa_arguments, crash_step):
    def callbacks(directory):
        return [
            keras_ckpt.StochasticWeightAveraging(**swa_arguments),
            keras_ckpt.ResumeFromLatest(directory, save_freq=3),
        ]

    uninterrupted = make_resume_model()
    whole = callbacks(tmp_path / "whole")
    fit(uninterrupted, whole, epochs=5)
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(make_resume_model(), [*callbacks(tmp_path / "cut"), Crash(crash_step)], epochs=5)
    resumed = make_resume_model(seed=1)
    again = callbacks(tmp_path / "cut")
    fit(resumed, again, epochs=5)
    resumed_from = again[1].resumed_from
    assert resumed_from is not None
    # The average went into the weights file, the manifest holds references to it.
    swa_state = resumed_from.state["callbacks"]["StochasticWeightAveraging()"]
    assert swa_state["average"] == [{"keras_ckpt_array": i} for i in range(4)]
    assert len(read_arrays(resumed_from.path)) == 4
    assert again[0].averaged_count == whole[0].averaged_count > 1
    assert_weights_equal(resumed.get_weights(), uninterrupted.get_weights())
    assert_weights_equal(again[0].raw_weights, whole[0].raw_weights)
    # The finished run's checkpoint holds the averaged model, in a file plain Keras loads; a
    # rerun of the finished script gives it back.
    plain = make_resume_model(seed=2)
    plain.optimizer.build(plain.trainable_variables)  # else Keras skips the optimizer, warning
    plain.load_weights(keras_ckpt.latest_checkpoint(tmp_path / "cut").path)
    assert_weights_equal(plain.get_weights(), uninterrupted.get_weights())
    rerun = make_resume_model(seed=3)
    fit(rerun, callbacks(tmp_path / "cut"), epochs=5)
    assert_weights_equal(rerun.get_weights(), uninterrupted.get_weights())
