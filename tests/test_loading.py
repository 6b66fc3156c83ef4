"""load_best, load_latest and load_checkpoint: safe_mode and custom_objects reach Keras."""

import re

import keras
import numpy as np
import pytest
from keras.src.utils import python_utils

import keras_ckpt


class Doubler(keras.layers.Layer):
    """A custom layer registered nowhere: Keras finds it only through custom_objects."""

    def call(self, inputs):
        return inputs * 2


def train_best(directory, data, last_layer):
    """One epoch of real training of Dense(1) then ``last_layer``, kept by BestCheckpoint."""
    x, y = data
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1, name="dense"), last_layer])
    model.compile(optimizer="adam", loss="mse")
    model.fit(
        x,
        y,
        validation_data=(x[:32], y[:32]),
        epochs=1,
        batch_size=32,
        verbose=0,
        callbacks=[keras_ckpt.BestCheckpoint(directory)],
    )
    return model


@pytest.fixture
def lambda_directory(tmp_path, data):
    train_best(tmp_path, data, keras.layers.Lambda(lambda x: x * 2))
    return tmp_path


@pytest.fixture
def func_load_calls(monkeypatch):
    """Every call of the Keras function that turns a saved Lambda's bytecode into a function."""
    calls = []
    real = python_utils.func_load

    def spy(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(python_utils, "func_load", spy)
    return calls


def test_a_lambda_checkpoint_is_refused_by_default(lambda_directory, func_load_calls):
    with pytest.raises(ValueError, match="safe_mode=False"):
        keras_ckpt.load_best(lambda_directory)
    assert func_load_calls == []  # the saved bytecode was never turned into a function


def test_a_lambda_checkpoint_loads_with_safe_mode_false(lambda_directory, data, func_load_calls):
    x, _ = data
    model = keras_ckpt.load_best(lambda_directory, safe_mode=False)
    assert func_load_calls  # the lambda came from its saved bytecode
    dense = model.get_layer("dense")
    np.testing.assert_allclose(
        model.predict(x, verbose=0),
        2 * keras.ops.convert_to_numpy(dense(x)),
        rtol=1e-6,
        atol=1e-6,
    )
    record = keras_ckpt.best_checkpoint(lambda_directory)
    with pytest.raises(ValueError, match="safe_mode=False"):
        keras_ckpt.load_checkpoint(record)
    assert keras_ckpt.load_checkpoint(record, safe_mode=False).get_layer("dense") is not None


def test_a_custom_layer_loads_with_custom_objects(tmp_path, data):
    x, _ = data
    train_best(tmp_path, data, Doubler(name="doubler"))
    with pytest.raises(TypeError, match="Doubler"):
        keras_ckpt.load_best(tmp_path)
    model = keras_ckpt.load_best(tmp_path, custom_objects={"Doubler": Doubler})
    assert isinstance(model.get_layer("doubler"), Doubler)
    dense = model.get_layer("dense")
    np.testing.assert_allclose(
        model.predict(x, verbose=0),
        2 * keras.ops.convert_to_numpy(dense(x)),
        rtol=1e-6,
        atol=1e-6,
    )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"safe_mode": 1}, "Argument `safe_mode` must be True or False. Received: safe_mode=1"),
        ({"safe_mode": None}, "Received: safe_mode=None"),
        ({"custom_objects": [Doubler]}, "Argument `custom_objects` must be a dict"),
        ({"custom_objects": "Doubler"}, "Received: custom_objects='Doubler'"),
    ],
)
@pytest.mark.parametrize("loader", ["load_best", "load_latest", "load_checkpoint"])
def test_load_options_are_checked_before_anything_is_read(tmp_path, loader, kwargs, message):
    target = tmp_path / "missing" if loader != "load_checkpoint" else None
    with pytest.raises(ValueError, match=re.escape(message)):
        getattr(keras_ckpt, loader)(target, **kwargs)
