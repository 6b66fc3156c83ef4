"""keras_ckpt.keras_adapter: the one module that touches Keras internals, and its probes."""

import ast
import os
import pathlib
import warnings

import keras
import numpy as np
import pytest
from conftest import KERAS_VERSION, assert_weights_equal

import keras_ckpt
from keras_ckpt import keras_adapter
from keras_ckpt.keras_adapter import KerasInternalsError
from keras_ckpt.snapshot import take_snapshot

PACKAGE = pathlib.Path(keras_ckpt.__file__).parent
ADAPTER = PACKAGE / "keras_adapter.py"

# Private Keras attributes, and the stack-frame and train-function accesses, that only the
# adapter may use; names of Keras's internal modules; the module of those internals.
PRIVATE_ATTRIBUTES = {
    "_flatten_layers",
    "_seed_generators",
    "_initial_epoch",
    "_learning_rate",
    "_iterations",
    "_direction",
    "_getframe",
    "currentframe",
    "f_locals",
    "train_function",
}
INTERNAL_MODULES = {"saving_lib", "base_optimizer", "rng_utils", "io_utils"}


def private_keras_uses(source: str) -> list[str]:
    """Where ``source`` reaches Keras internals, as ``line: what`` texts."""
    found = []
    for node in ast.walk(ast.parse(source)):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Import):
            found += [f"{line}: import {a.name}" for a in node.names if "keras.src" in a.name]
        elif isinstance(node, ast.ImportFrom):
            if "keras.src" in (node.module or ""):
                found.append(f"{line}: from {node.module} import")
            found += [f"{line}: {a.name}" for a in node.names if a.name in INTERNAL_MODULES]
        elif isinstance(node, ast.Attribute):
            if node.attr in PRIVATE_ATTRIBUTES | INTERNAL_MODULES:
                found.append(f"{line}: .{node.attr}")
            elif (
                node.attr == "src" and isinstance(node.value, ast.Name) and node.value.id == "keras"
            ):
                found.append(f"{line}: keras.src")
        elif isinstance(node, ast.Name) and node.id in INTERNAL_MODULES:
            found.append(f"{line}: {node.id}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            # getattr(obj, "_direction"), importlib.import_module("keras.src...")
            if node.value in PRIVATE_ATTRIBUTES or node.value.startswith("keras.src"):
                found.append(f"{line}: {node.value!r}")
    return found


@pytest.mark.parametrize(
    "source",
    [
        "from keras.src.saving import saving_lib",
        "import keras.src.utils",
        "import keras\nkeras.src.utils.rng_utils.get_random_seed()",
        "model._initial_epoch = 3",
        "model.train_function = skip",
        "original = model.train_function",
        "layers = model._flatten_layers(include_self=True)",
        "direction = getattr(metric, '_direction', None)",
        "import sys\nframe = sys._getframe()",
        "import inspect\nframe = inspect.currentframe()",
        "value = frame.f_locals.get('callbacks')",
        "schedule = optimizer._learning_rate",
        "count = optimizer._iterations",
        "generators = layer._seed_generators",
        "from keras.src.utils import io_utils",
        "io_utils.print_msg('Epoch 1')",
    ],
)
def test_the_scan_finds_private_keras_access(source):
    assert private_keras_uses(source)


def test_the_scan_lets_public_keras_through():
    source = (
        "import keras\n"
        "from keras_ckpt.keras_adapter import replace_train_function, set_fit_start_epoch\n"
        "model.make_train_function\nmodel.optimizer.learning_rate = 0.1\n"
        '"""Docstrings may name ``model.train_function``."""\n'
    )
    assert private_keras_uses(source) == []


def test_only_the_adapter_touches_keras_internals():
    files = [p for p in PACKAGE.rglob("*.py") if p != ADAPTER]
    assert len(files) > 10  # the scan reads the package, not an empty directory
    offenders = {
        str(path.relative_to(PACKAGE)): uses
        for path in files
        if (uses := private_keras_uses(path.read_text(encoding="utf-8")))
    }
    assert offenders == {}


def test_every_probe_passes_on_the_keras_this_suite_runs():
    probes = {
        name: value for name, value in vars(keras_adapter).items() if name.endswith("_SUPPORTED")
    }
    assert len(probes) >= 10
    # Sharded weights (save_weights(max_shard_size=...)) came with Keras 3.10: below it, these
    # probes must say no, so that .weights.json is refused when a callback is built.
    newer = {"SHARDED_WEIGHTS_SUPPORTED": (3, 10), "SHARDED_SNAPSHOT_SUPPORTED": (3, 10)}
    expected = {name: KERAS_VERSION >= newer.get(name, (0, 0)) for name in probes}
    assert probes == expected


def test_the_adapter_answers_on_the_tested_keras(make_model):
    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dropout(0.5), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse", metrics=["mae"])
    assert len(keras_adapter.seed_generators(model)) == 1
    assert keras_adapter.global_seed() == 3
    assert keras_adapter.metric_direction(keras.metrics.MeanAbsoluteError()) == "down"
    assert keras_adapter.metric_direction(keras.metrics.BinaryAccuracy()) == "up"
    assert keras_adapter.metric_direction(keras.metrics.Mean()) is None
    assert keras_adapter.optimizer_batch_count(model.optimizer) == 0
    assert keras_adapter.fit_callbacks(keras.callbacks.Callback()) == []  # outside fit
    assert keras_adapter.fit_epoch_iterator() is None
    assert not keras_adapter.fit_is_running(object())


def test_fit_locals_are_found_inside_fit(make_model, data):
    seen = {}

    class Looks(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            seen["callbacks"] = keras_adapter.fit_callbacks(self)
            iterator = keras_adapter.fit_epoch_iterator()
            seen["running"] = iterator is not None and keras_adapter.fit_is_running(iterator)
            seen["tf.data"] = keras_adapter.reads_tf_dataset(iterator)
            seen["shuffle"] = keras_adapter.fit_shuffle()

    looks = Looks()
    history = keras.callbacks.History()
    make_model().fit(*data, epochs=1, verbose=0, shuffle=False, callbacks=[looks, history])
    assert seen["callbacks"][:2] == [looks, history]
    assert seen == {**seen, "running": True, "tf.data": False, "shuffle": False}


# Degrading where a probe fails ----------------------------------------------------------------


@pytest.fixture
def fresh_warnings(monkeypatch):
    """The adapter's once-per-process warnings, forgotten; returns the list they go to."""
    monkeypatch.setattr(keras_adapter, "_warned", set())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield caught


def adapter_warnings(caught):
    return [str(w.message) for w in caught if str(w.message).startswith("keras_ckpt: Keras")]


def test_a_save_without_the_saving_internals_is_synchronous_with_one_warning(
    tmp_path, make_model, data, monkeypatch, fresh_warnings
):
    monkeypatch.setattr(keras_adapter, "SAVING_SUPPORTED", False)
    model = make_model()
    assert take_snapshot(model, "x.keras", weights_only=False) is None
    callback = keras_ckpt.IntervalCheckpoint(tmp_path, every_epochs=1, async_save=True)
    model.fit(*data, batch_size=32, epochs=2, verbose=0, callbacks=[callback])
    assert [r.epoch for r in keras_ckpt.list_checkpoints(tmp_path)] == [1, 2]
    assert_weights_equal(keras_ckpt.load_latest(tmp_path).get_weights(), model.get_weights())
    (message,) = adapter_warnings(fresh_warnings)
    assert f"Keras {keras.__version__}" in message
    assert "saved synchronously" in message


def dropout_model():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dropout(0.5), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse", metrics=["mae"])
    return model


@pytest.mark.parametrize(
    ("probe", "call", "fallback", "says"),
    [
        ("SEED_GENERATORS_SUPPORTED", lambda m: keras_adapter.seed_generators(m), [], "seed"),
        ("GLOBAL_SEED_SUPPORTED", lambda m: keras_adapter.global_seed(), None, "global seed"),
        (
            "METRIC_DIRECTION_SUPPORTED",
            lambda m: keras_adapter.metric_direction(keras.metrics.MeanAbsoluteError()),
            None,
            "mode=",
        ),
        (
            "OPTIMIZER_SCHEDULE_SUPPORTED",
            lambda m: keras_adapter.optimizer_schedule(m.optimizer),
            None,
            "LearningRateSchedule",
        ),
        (
            "FIT_CALLBACKS_SUPPORTED",
            lambda m: keras_adapter.fit_callbacks(keras.callbacks.Callback()),
            [],
            "callbacks",
        ),
        ("FIT_EPOCH_ITERATOR_SUPPORTED", lambda m: keras_adapter.fit_epoch_iterator(), None, "fit"),
        ("FIT_SHUFFLE_SUPPORTED", lambda m: keras_adapter.fit_shuffle(), None, "shuffled"),
        (
            "LAYER_TREE_SUPPORTED",
            lambda m: keras_adapter.saved_by_keras_code_alone(m),
            False,
            "slower",
        ),
    ],
)
def test_a_failed_probe_falls_back_with_one_warning(
    monkeypatch, fresh_warnings, probe, call, fallback, says
):
    model = dropout_model()
    monkeypatch.setattr(keras_adapter, probe, False)
    assert call(model) == fallback
    assert call(model) == fallback  # warned once only
    (message,) = adapter_warnings(fresh_warnings)
    assert f"Keras {keras.__version__}" in message
    assert says in message


@pytest.mark.parametrize(
    ("probe", "call", "says"),
    [
        (
            "INITIAL_EPOCH_SUPPORTED",
            lambda m: keras_adapter.set_fit_start_epoch(m, 2),
            "Resuming at the saved epoch",
        ),
        (
            "REPLACE_TRAIN_FUNCTION_SUPPORTED",
            lambda m: keras_adapter.replace_train_function(m, lambda original: original),
            "Resuming mid-epoch",
        ),
        (
            "REBUILD_TRAIN_FUNCTION_SUPPORTED",
            lambda m: keras_adapter.rebuild_train_function(m),
            "Rebuilding the train step",
        ),
        (
            "OPTIMIZER_SCHEDULE_SUPPORTED",
            lambda m: keras_adapter.set_optimizer_schedule(m.optimizer, None),
            "learning-rate schedule",
        ),
        ("SAVING_SUPPORTED", lambda m: keras_adapter.model_config_json(m), "Snapshotting"),
        ("LAYER_TREE_SUPPORTED", lambda m: keras_adapter.model_layers(m), "layers"),
    ],
)
def test_a_failed_probe_where_going_on_would_be_wrong_raises(monkeypatch, probe, call, says):
    model = dropout_model()
    monkeypatch.setattr(keras_adapter, probe, False)
    with pytest.raises(KerasInternalsError, match=f"{says}.*Keras {keras.__version__}"):
        call(model)


def test_without_the_start_epoch_probe_clearing_does_nothing(monkeypatch):
    model = dropout_model()
    monkeypatch.setattr(keras_adapter, "INITIAL_EPOCH_SUPPORTED", False)
    keras_adapter.clear_fit_start_epoch(model)  # nothing was set, nothing raises


def test_without_the_raw_batch_counter_iterations_count_unless_gradients_accumulate(
    monkeypatch,
):
    monkeypatch.setattr(keras_adapter, "OPTIMIZER_BATCH_COUNT_SUPPORTED", False)
    optimizer = keras.optimizers.SGD(0.1)
    optimizer.build([keras.Variable(np.zeros(2))])
    assert keras_adapter.optimizer_batch_count(optimizer) == 0
    accumulating = keras.optimizers.SGD(0.1, gradient_accumulation_steps=2)
    accumulating.build([keras.Variable(np.zeros(2))])
    with pytest.raises(KerasInternalsError, match=f"gradient_accumulation.*{keras.__version__}"):
        keras_adapter.optimizer_batch_count(accumulating)


def test_a_resume_without_the_start_epoch_probe_raises_instead_of_restarting(
    tmp_path, make_model, data, monkeypatch
):
    make_model().fit(*data, epochs=1, verbose=0, callbacks=[keras_ckpt.ResumeFromLatest(tmp_path)])
    monkeypatch.setattr(keras_adapter, "INITIAL_EPOCH_SUPPORTED", False)
    with pytest.raises(KerasInternalsError, match=f"saved epoch.*Keras {keras.__version__}"):
        make_model().fit(
            *data, epochs=2, verbose=0, callbacks=[keras_ckpt.ResumeFromLatest(tmp_path)]
        )
    assert os.path.isdir(tmp_path)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="TensorFlow's reads")
def test_tensorflow_reads_hold_their_value_through_updates():
    import tensorflow as tf

    assert keras_adapter.tensorflow_reads_hold()
    variable = tf.Variable([1.0, 2.0])
    read = keras_adapter.tensorflow_read(variable)
    variable.assign_add([1.0, 1.0])
    assert np.asarray(read).tolist() == [1.0, 2.0]
    assert keras_adapter.tensorflow_read(np.zeros(2)) is None  # not a variable
    with tf.distribute.OneDeviceStrategy("/cpu:0").scope():
        assert keras_adapter.tensorflow_read(variable) is None  # read per replica there
