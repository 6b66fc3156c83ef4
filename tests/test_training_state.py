"""Tiers 1 and 2: what a resume checkpoint holds besides the variables, captured and restored on
a tiny built model without ``fit``; the keys of callback states; the position in an epoch."""

import json
import random
import warnings

import keras
import numpy as np
import pytest

from keras_ckpt.callbacks._batches import EpochPosition, enable_batch_hook
from keras_ckpt.callbacks._callback_states import (
    callback_key,
    callback_states,
    load_callback_states,
)
from keras_ckpt.callbacks._monitor import set_replayed_batches
from keras_ckpt.callbacks._random_state import host_generators, random_state, set_random_state
from keras_ckpt.callbacks._training_state import (
    capture_state,
    check_architecture,
    history_state,
    load_variables,
    restore_history,
    state_problem,
    variable_signature,
)
from keras_ckpt.keras_adapter import seed_generators
from keras_ckpt.loading import load_weights


def dropout_model(width=8, seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(width),
            keras.layers.Dropout(0.5),
            keras.layers.Dense(1),
        ]
    )
    model.compile(optimizer="adam", loss="mse")
    return model


def as_saved(state):
    """``state`` as the manifest gives it back: through JSON."""
    return json.loads(json.dumps(state))


def dropout_mask(model):
    """The mask the Dropout layer draws next (training mode advances its seed generator)."""
    dropout = model.layers[1]
    ones = np.ones((2, 64), dtype="float32")
    return keras.ops.convert_to_numpy(dropout(ones, training=True)) != 0


# Random generators ---------------------------------------------------------------------------


def test_python_and_numpy_generators_come_back():
    model = dropout_model()
    saved = as_saved(random_state(model, host_generators()))
    expected = (random.random(), np.random.random(3).tolist())
    random.random(), np.random.random(10)  # the run goes on drawing
    set_random_state(model, saved)
    assert (random.random(), np.random.random(3).tolist()) == expected


def test_seed_generator_states_come_back():
    model = dropout_model()
    saved = as_saved(random_state(model, host_generators()))
    assert len(saved["seed_generators"]) == 1  # the Dropout layer's
    expected = dropout_mask(model)
    assert not np.array_equal(dropout_mask(model), expected)  # the state moved on
    set_random_state(model, saved)
    np.testing.assert_array_equal(dropout_mask(model), expected)


def test_seed_generator_states_of_another_count_are_left_alone():
    model = dropout_model()
    saved = as_saved(random_state(model, host_generators()))
    saved["seed_generators"].append(saved["seed_generators"][0])  # a model with two Dropouts
    [generator] = seed_generators(model)
    # Moved on by hand: on PyTorch an unseeded Dropout draws from torch's generator instead.
    generator.next()
    moved_on = keras.ops.convert_to_numpy(generator.state.value).tolist()
    assert moved_on != saved["seed_generators"][0]
    set_random_state(model, saved)
    assert keras.ops.convert_to_numpy(generator.state.value).tolist() == moved_on


# Architecture and variables -----------------------------------------------------------------


def test_the_same_architecture_passes():
    check_architecture(dropout_model(seed=1), variable_signature(dropout_model()), "ckpt.h5")


def test_another_architecture_is_refused_naming_the_checkpoint():
    saved = as_saved(variable_signature(dropout_model(width=8)))
    with pytest.raises(
        ValueError,
        match=r"runs/x/resume\.weights\.h5 was saved from a different architecture "
        r"\(variable 0 is .*\[4, 16\] here but .*\[4, 8\]\)",
    ):
        check_architecture(dropout_model(width=16), saved, "runs/x/resume.weights.h5")


def test_a_model_with_fewer_variables_is_refused():
    wider = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8)])
    with pytest.raises(ValueError, match=r"the model has 2 variables, the checkpoint 4"):
        check_architecture(wider, variable_signature(dropout_model()), "ckpt.h5")


def test_load_weights_builds_the_optimizer_first(tmp_path):
    trained = dropout_model()
    trained.optimizer.build(trained.trainable_variables)
    trained.optimizer.iterations.assign(7)
    path = str(tmp_path / "x.weights.h5")
    trained.save_weights(path)
    plain = dropout_model(seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Keras: "Skipping variable loading for optimizer"
        plain.load_weights(path)
    assert int(plain.optimizer.iterations) == 0  # why the build is needed
    fresh = dropout_model(seed=1)
    load_weights(fresh, path)
    assert int(fresh.optimizer.iterations) == 7
    np.testing.assert_array_equal(fresh.get_weights()[0], trained.get_weights()[0])


def test_load_variables_refuses_another_architecture_before_loading(tmp_path):
    path = str(tmp_path / "x.weights.h5")
    dropout_model().save_weights(path)
    other = dropout_model(width=16)
    before = other.get_weights()
    with pytest.raises(ValueError, match="different architecture"):
        load_variables(other, path, variable_signature(dropout_model()))
    assert all(np.array_equal(a, b) for a, b in zip(before, other.get_weights(), strict=True))


def test_load_variables_names_a_file_it_cannot_read(tmp_path):
    path = tmp_path / "x.weights.h5"
    path.write_bytes(b"not hdf5")
    with pytest.raises(ValueError, match=r"could not load .*x\.weights\.h5"):
        load_variables(dropout_model(), str(path), [])


# History ---------------------------------------------------------------------------------------


def history_of(epochs, losses):
    history = keras.callbacks.History()
    history.epoch = list(epochs)
    history.history = {"loss": list(losses)}
    return history


def test_history_comes_back_into_an_empty_history():
    saved = as_saved(history_state([keras.callbacks.Callback(), history_of([0, 1], [0.5, 0.25])]))
    saved["history"]["loss"][1] = "nan"  # how the manifest writes a NaN loss
    fresh = keras.callbacks.History()
    fresh.on_train_begin()  # as fit resets it, before the first epoch refills it
    restore_history([fresh], saved)
    assert fresh.epoch == [0, 1]
    assert fresh.history["loss"][0] == 0.5 and np.isnan(fresh.history["loss"][1])


def test_history_that_recorded_already_is_not_overwritten():
    current = history_of([0], [9.0])
    restore_history([current], as_saved(history_state([history_of([0, 1], [0.5, 0.25])])))
    assert (current.epoch, current.history) == ([0], {"loss": [9.0]})


def test_no_history_no_state():
    assert history_state([keras.callbacks.Callback()]) is None


# The whole state, and a state read from disk -----------------------------------------------


class Counter(keras.callbacks.Callback):
    """A user's callback with state."""

    def __init__(self, count=0, monitor=None):
        super().__init__()
        self.count = count
        if monitor is not None:
            self.monitor = monitor

    def state_dict(self):
        return {"count": self.count}

    def load_state_dict(self, state):
        self.count = state["count"]


def test_a_captured_state_passes_its_own_check():
    model = dropout_model()
    state = capture_state(
        model,
        [Counter(3), history_of([0], [1.0])],
        epoch=2,
        batch=3,
        finished=None,
        start_batches=0,
        host=host_generators(),
    )
    saved = as_saved(state)
    assert state_problem(saved) is None
    assert saved["callbacks"] == {"Counter()": {"count": 3}}
    assert saved["history"] == {"epoch": [0], "history": {"loss": [1.0]}}
    assert (saved["epoch"], saved["batch"], saved["finished"]) == (2, 3, None)


VALID = {"version": 1, "epoch": 2, "batch": 0, "finished": None, "start_batches": 0}


@pytest.mark.parametrize(
    ("state", "problem"),
    [
        ([], "is not an object"),
        ({**VALID, "version": 99}, "has version 99 (a newer keras_ckpt wrote it)"),
        ({"batch": 1}, "has no 'epoch'"),
        ({**VALID, "epoch": -1}, "has epoch=-1, expected an integer >= 0"),
        ({**VALID, "epoch": True}, "has epoch=True, expected an integer >= 0"),
        ({**VALID, "batch": [1]}, "has batch=[1], expected an integer >= 0"),
        ({**VALID, "finished": "yes"}, "has finished='yes', expected null or an integer >= 0"),
        ({**VALID, "variables": "dense"}, "expected a list of [path, shape]"),
        ({**VALID, "variables": [["dense", [4, -1]]]}, "expected a list of [path, shape]"),
        ({**VALID, "random": {"python": [3, "x", None]}}, "expected generator states"),
        ({**VALID, "random": {"seed_generators": [1]}}, "expected generator states"),
        ({**VALID, "callbacks": {"Counter()": 3}}, "expected an object of callback states"),
        ({**VALID, "history": {"epoch": [-1]}}, "expected null or a History"),
        ({**VALID, "history": {"history": {"loss": ["x"]}}}, "expected null or a History"),
        ({**VALID, "history": 5}, "has history=5, expected null or a History"),
    ],
)
def test_state_problem_names_what_is_malformed(state, problem):
    assert problem in state_problem(state)


def test_a_long_value_is_shortened_in_the_problem():
    problem = state_problem({**VALID, "batch": "x" * 200})
    assert problem.endswith("..., expected an integer >= 0") and len(problem) < 120


def test_well_formed_states_have_no_problem():
    assert state_problem(VALID) is None
    assert state_problem({"epoch": 0}) is None  # the older fields are optional
    assert state_problem({**VALID, "history": {"epoch": [0], "history": {"loss": ["nan"]}}}) is None


# Callback states: keyed by class and configuration ------------------------------------------


def test_keys_name_class_and_configuration(tmp_path):
    from keras_ckpt import EarlyStopping, IntervalCheckpoint

    assert callback_key(EarlyStopping(monitor="val_loss")) == (
        "EarlyStopping(monitor='val_loss', mode='auto')"
    )
    assert callback_key(Counter()) == "Counter()"
    interval = IntervalCheckpoint(tmp_path / "interval")  # a PathLike, kept as an absolute path
    assert callback_key(interval) == f"IntervalCheckpoint(directory={str(tmp_path / 'interval')!r})"


def test_states_follow_their_callbacks_into_another_order():
    first, second = Counter(1, monitor="a"), Counter(2, monitor="b")
    saved = as_saved(callback_states([first, second, keras.callbacks.Callback()]))
    assert set(saved) == {"Counter(monitor='a')", "Counter(monitor='b')"}
    a, b, new = Counter(monitor="a"), Counter(monitor="b"), Counter(monitor="c")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # nothing is ambiguous
        load_callback_states([new, b, a], saved, "ckpt.h5")
    assert (a.count, b.count, new.count) == (1, 2, 0)


def test_alike_callbacks_get_their_states_by_order_with_one_warning():
    saved = as_saved(callback_states([Counter(1), Counter(2), Counter(5, monitor="m")]))
    assert set(saved) == {"Counter()#0", "Counter()#1", "Counter(monitor='m')"}
    first, second, other = Counter(), Counter(), Counter(monitor="m")
    with pytest.warns(UserWarning, match=r"ckpt\.h5.*the 2 callbacks Counter\(\) got their") as w:
        load_callback_states([other, first, second], saved, "ckpt.h5")
    assert len(w) == 1
    assert (first.count, second.count, other.count) == (1, 2, 5)


@pytest.mark.parametrize(("saved_for", "now"), [(1, 2), (2, 1), (3, 2)])
def test_states_that_cannot_be_matched_unambiguously_are_not_restored(saved_for, now):
    saved = as_saved(callback_states([Counter(index + 1) for index in range(saved_for)]))
    current = [Counter() for _ in range(now)]
    with pytest.warns(UserWarning) as caught:
        load_callback_states(current, saved, "ckpt.h5")
    [warning] = caught
    assert f"{saved_for} state(s) saved for Counter(), {now} such callback(s) now" in str(
        warning.message
    )
    assert "none restored" in str(warning.message)
    assert [c.count for c in current] == [0] * now


def test_states_of_older_checkpoints_load_by_class_and_occurrence():
    older = {"Counter#0": {"count": 1}, "Counter#1": {"count": 2}}
    first, second = Counter(monitor="a"), Counter(monitor="b")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        load_callback_states([first, keras.callbacks.Callback(), second], older, "ckpt.h5")
    assert (first.count, second.count) == (1, 2)


def test_a_refused_state_is_an_error_naming_key_and_checkpoint():
    with pytest.raises(ValueError, match=r"the state of Counter\(\) in ckpt\.h5 cannot be loaded"):
        load_callback_states([Counter()], {"Counter()": {"other": 1}}, "ckpt.h5")


def test_keys_ignore_values_whose_repr_may_change():
    callback = Counter()
    callback.monitor = object()  # its repr names a memory address
    assert callback_key(callback) == "Counter()"


# The position in an epoch ---------------------------------------------------------------------


def test_a_fresh_epoch_replays_nothing_and_has_nothing_new_at_batch_0():
    position = EpochPosition(start_step=10, replayed=0)
    assert not position.is_replayed(0)
    assert [position.has_trained(b) for b in (0, 1)] == [False, True]
    assert position.step(0) == 10 and position.step(3) == 13


def test_a_resumed_epoch_replays_up_to_the_saved_batch():
    # Resumed after batch 3: batches 0, 1, 2 are read again; batch 3 is the first trained, and
    # its begin hook is the boundary the checkpoint was taken at (a stop request is served
    # there, a periodic save is not taken again).
    position = EpochPosition(start_step=15, replayed=3)
    assert [position.is_replayed(b) for b in range(5)] == [True, True, True, False, False]
    assert [position.has_trained(b) for b in range(5)] == [False, False, False, False, True]


def test_the_position_is_read_from_the_model():
    model = dropout_model()
    model.optimizer.build(model.trainable_variables)
    model.optimizer.iterations.assign(18)
    set_replayed_batches(model, 3)
    assert EpochPosition.current(model) == EpochPosition(start_step=15, replayed=3)
    assert EpochPosition.current(model, start_batches=10) == EpochPosition(5, 3)


def test_a_batch_hook_is_enabled_on_the_instance_only():
    class Saver(keras.callbacks.Callback):
        def save(self, batch, logs=None):
            self.saved = batch

    saver, other = Saver(), Saver()
    enable_batch_hook(saver, "on_train_batch_end", saver.save)
    saver.on_train_batch_end(4)
    assert saver.saved == 4
    # The class keeps Keras's default hook, which Keras's asynchronous dispatch looks for.
    assert Saver.on_train_batch_end is keras.callbacks.Callback.on_train_batch_end
    assert other.on_train_batch_end.__func__ is keras.callbacks.Callback.on_train_batch_end
    with pytest.raises(ValueError, match=r"`hook` must be one of .*Received: hook='on_epoch_end'"):
        enable_batch_hook(saver, "on_epoch_end", saver.save)
