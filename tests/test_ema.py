"""Exponential moving averages (``use_ema=True``): checkpoints hold the raw weights as the
model's and the averages in the optimizer, whatever SwapEMAWeights does; resumes are exact."""

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import Crash, assert_weights_equal

import keras_ckpt
from keras_ckpt.writer import WRITER


@pytest.fixture(autouse=True, scope="module")
def deterministic_ops():
    tf.config.experimental.enable_op_determinism()


@pytest.fixture
def data():
    x = np.random.default_rng(0).normal(size=(48, 3)).astype("float32")
    return x[:32], x[:32].sum(axis=1, keepdims=True), x[32:], x[32:].sum(axis=1, keepdims=True)


def make_model(seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [keras.Input((3,)), keras.layers.Dense(4, activation="relu"), keras.layers.Dense(1)]
    )
    model.compile(optimizer=keras.optimizers.Adam(0.05, use_ema=True, ema_momentum=0.9), loss="mse")
    return model


def fit(model, data, callbacks, epochs=4, **kwargs):
    x, y, x_val, y_val = data
    try:
        return model.fit(
            x,
            y,
            batch_size=8,  # 4 batches an epoch
            epochs=epochs,
            shuffle=False,
            verbose=0,
            validation_data=(x_val, y_val),
            callbacks=callbacks,
            **kwargs,
        )
    finally:
        WRITER.wait()


class Record(keras.callbacks.Callback):
    """Records the raw weights and the averages at each epoch's end, before any swap."""

    def __init__(self):
        super().__init__()
        self.raw, self.averages = {}, {}

    def on_epoch_end(self, epoch, logs=None):
        optimizer = self.model.optimizer
        averages = optimizer._model_variables_moving_average
        pairs = zip(optimizer._trainable_variables, averages, strict=True)
        values = [(np.array(v.numpy()), np.array(a.numpy())) for v, a in pairs]
        self.raw[epoch] = [v for v, _ in values]
        self.averages[epoch] = [a for _, a in values]


def saved_layers_and_averages(path):
    """The model's weights and the optimizer's averages in a .weights.h5 file, read by plain
    Keras: a fresh model loads it, then its optimizer's average slots are read."""
    model = make_model(seed=5)
    model.optimizer.build(model.trainable_variables)
    model.load_weights(path)
    averages = [np.array(a.numpy()) for a in model.optimizer._model_variables_moving_average]
    return [np.array(w) for w in model.get_weights()], averages


def h5_datasets(path):
    found = {}
    with h5py.File(path, "r") as file:
        file.visititems(
            lambda name, item: (
                found.__setitem__(name, item[()]) if isinstance(item, h5py.Dataset) else None
            )
        )
    return found


def reference(data, epochs=4, swap=None):
    model = make_model()
    fit(model, data, [swap] if swap else [], epochs=epochs)
    return model


@pytest.mark.parametrize("swap_class", [keras_ckpt.SwapEMAWeights, None])
def test_resume_is_exact_with_the_keras_recipe(tmp_path, data, swap_class):
    def callbacks(crash=None):
        swap = [swap_class(swap_on_epoch=True)] if swap_class else []
        return [
            *swap,
            keras_ckpt.ResumeFromLatest(tmp_path / "resume", save_freq=3),
            *([Crash(crash)] if crash else []),
        ]

    expected = make_model()
    fit(expected, data, callbacks()[:-1])
    for crash in (6, 11):
        with pytest.raises(RuntimeError, match="simulated crash"):
            fit(make_model(), data, callbacks(crash))
    model = make_model(seed=1)
    fit(model, data, callbacks())
    assert_weights_equal(model.get_weights(), expected.get_weights())
    assert_weights_equal(
        [v.numpy() for v in model.optimizer.variables],
        [v.numpy() for v in expected.optimizer.variables],
    )


@pytest.mark.parametrize("swap_class", [keras_ckpt.SwapEMAWeights, None])
def test_a_finished_run_extended_equals_one_longer_run(tmp_path, data, swap_class):
    def callbacks():
        swap = [swap_class(swap_on_epoch=True)] if swap_class else []
        return [*swap, keras_ckpt.ResumeFromLatest(tmp_path)]

    expected = make_model()
    fit(expected, data, callbacks()[:-1], epochs=5)
    fit(make_model(), data, callbacks(), epochs=3)
    model = make_model(seed=1)
    history = fit(model, data, callbacks(), epochs=5)
    assert history.epoch == list(range(5))
    assert_weights_equal(model.get_weights(), expected.get_weights())
    assert_weights_equal(
        [v.numpy() for v in model.optimizer.variables],
        [v.numpy() for v in expected.optimizer.variables],
    )


def test_files_hold_the_raw_weights_and_the_averages(tmp_path, data):
    record = Record()
    callbacks = [
        record,  # before the swap: sees the raw weights in the model
        keras_ckpt.SwapEMAWeights(swap_on_epoch=True),
        keras_ckpt.IntervalCheckpoint(tmp_path / "interval", every_epochs=1, keep_last=None),
        keras_ckpt.ModelCheckpoint(str(tmp_path / "model-{epoch}.keras")),
        keras_ckpt.ResumeFromLatest(tmp_path / "resume", keep_last=9),
    ]
    model = make_model()
    fit(model, data, callbacks, epochs=3)
    # As in Keras, the model ends with the averages.
    assert_weights_equal(model.get_weights(), record.averages[2])
    for epoch in range(3):
        loaded = keras.saving.load_model(tmp_path / f"model-{epoch + 1}.keras")
        assert_weights_equal(loaded.get_weights(), record.raw[epoch])
        averages = loaded.optimizer._model_variables_moving_average
        assert_weights_equal([a.numpy() for a in averages], record.averages[epoch])
    interval = keras_ckpt.list_checkpoints(tmp_path / "interval")
    resume = keras_ckpt.list_checkpoints(tmp_path / "resume")
    assert len(interval) == 3 and len(resume) == 3
    for epoch, path in [(r.epoch - 1, r.path) for r in [*interval, *resume]]:
        weights, averages = saved_layers_and_averages(path)
        assert_weights_equal(weights, record.raw[epoch])
        assert_weights_equal(averages, record.averages[epoch])
