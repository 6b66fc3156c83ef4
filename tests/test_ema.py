"""Exponential moving averages (``use_ema=True``): checkpoints hold the raw weights as the
model's and the averages in the optimizer, whatever SwapEMAWeights does; resumes are exact."""

import os

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


@pytest.mark.parametrize(
    "swap_class", [keras_ckpt.SwapEMAWeights, None], ids=["keras_ckpt_swap", "no_swap"]
)
def test_resume_is_exact_with_the_keras_recipe(tmp_path, data, swap_class):
    def callbacks(crash=None):
        swap = [swap_class(swap_on_epoch=True)] if swap_class else []
        weights = "ema" if swap_class else "raw"
        return [
            *swap,
            keras_ckpt.IntervalCheckpoint(tmp_path / "interval", every_steps=2),
            keras_ckpt.BestCheckpoint(tmp_path / "best", weights=weights, top_k=2),
            keras_ckpt.ModelCheckpoint(tmp_path / "model.keras"),
            keras_ckpt.ResumeFromLatest(tmp_path / "resume", save_freq=3),
            *([Crash(crash)] if crash else []),
        ]

    expected = make_model()
    fit(expected, data, [swap_class(swap_on_epoch=True)] if swap_class else [])
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


@pytest.mark.parametrize(
    "swap_class",
    [keras_ckpt.SwapEMAWeights, keras.callbacks.SwapEMAWeights, None],
    ids=["keras_ckpt_swap", "keras_swap", "no_swap"],
)
def test_a_finished_run_extended_equals_one_longer_run(tmp_path, data, swap_class):
    swap = [swap_class(swap_on_epoch=True)] if swap_class else []  # one instance for every fit
    callbacks = [*swap, keras_ckpt.ResumeFromLatest(tmp_path)]
    expected = make_model()
    fit(expected, data, [swap_class(swap_on_epoch=True)] if swap_class else [], epochs=5)
    finished = make_model()
    fit(finished, data, callbacks, epochs=3)
    # Rerun as it was: nothing trains, and the model ends as the finished run did.
    again = make_model(seed=1)
    assert fit(again, data, callbacks, epochs=3).epoch == []
    assert_weights_equal(again.get_weights(), finished.get_weights())
    model = make_model(seed=1)
    history = fit(model, data, callbacks, epochs=5)
    assert history.epoch == list(range(5))
    # Keras's own swap adds and subtracts on TensorFlow, which rounds.
    atol = 1e-6 if swap_class is keras.callbacks.SwapEMAWeights else 0
    for actual, wanted in [
        (model.get_weights(), expected.get_weights()),
        (model.optimizer.variables, expected.optimizer.variables),
    ]:
        for a, e in zip(actual, wanted, strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(e), rtol=0, atol=atol)


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


def test_files_hold_the_raw_weights_with_keras_own_swap_too(tmp_path, data):
    """Keras's SwapEMAWeights copies the averages over the raw weights at the last epoch; the
    raw weights are copied aside first. Its TensorFlow swap rounds, hence the tolerance."""
    record = Record()
    callbacks = [
        record,
        keras.callbacks.SwapEMAWeights(swap_on_epoch=True),
        keras_ckpt.ModelCheckpoint(tmp_path / "model-{epoch}.weights.h5", save_weights_only=True),
        keras_ckpt.ResumeFromLatest(tmp_path / "resume", keep_last=9),
    ]
    fit(make_model(), data, callbacks, epochs=2)
    resume = keras_ckpt.list_checkpoints(tmp_path / "resume")
    paths = [(0, tmp_path / "model-1.weights.h5"), (1, tmp_path / "model-2.weights.h5")]
    for epoch, path in paths + [(r.epoch - 1, r.path) for r in resume]:
        weights, averages = saved_layers_and_averages(path)
        for saved, recorded in zip(weights, record.raw[epoch], strict=True):
            np.testing.assert_allclose(saved, recorded, atol=1e-6)
        for saved, recorded in zip(averages, record.averages[epoch], strict=True):
            np.testing.assert_allclose(saved, recorded, atol=1e-6)


def test_the_swap_is_exact_and_swaps_back(data):
    model = make_model()
    fit(model, data, [], epochs=1)
    optimizer = model.optimizer
    optimizer._model_variables_moving_average[0].assign(
        optimizer._model_variables_moving_average[0] * 1.1 + 0.37
    )  # raw and averages differ everywhere, with bits an add-and-subtract would round
    raw = [np.array(v.numpy()) for v in model.trainable_variables]
    averages = [np.array(a.numpy()) for a in optimizer._model_variables_moving_average]
    swap = keras_ckpt.SwapEMAWeights()
    swap.set_model(model)
    swap.on_test_begin()
    assert swap._ema_weights_in_model
    assert_weights_equal([v.numpy() for v in model.trainable_variables], averages)
    assert_weights_equal([a.numpy() for a in optimizer._model_variables_moving_average], raw)
    swap.on_test_end()
    assert not swap._ema_weights_in_model
    assert_weights_equal([v.numpy() for v in model.trainable_variables], raw)
    assert_weights_equal([a.numpy() for a in optimizer._model_variables_moving_average], averages)
    # predict swaps back at its end (Keras's own callback leaves the averages in the model).
    model.predict(data[0], verbose=0, callbacks=[swap])
    assert_weights_equal([v.numpy() for v in model.trainable_variables], raw)


def test_the_swap_needs_an_ema_optimizer(data):
    model = make_model()
    model.compile(optimizer="adam", loss="mse")
    with pytest.raises(ValueError, match="`use_ema=True` is set on the optimizer"):
        fit(model, data, [keras_ckpt.SwapEMAWeights()], epochs=1)


def best_run(tmp_path, data, swap):
    record = Record()
    best = keras_ckpt.BestCheckpoint(tmp_path / "best", weights="ema", top_k=2)
    model = make_model()
    history = fit(model, data, [record, swap, best], epochs=3)
    return record, best, history


@pytest.mark.parametrize(
    "swap_class",
    [keras_ckpt.SwapEMAWeights, keras.callbacks.SwapEMAWeights],
    ids=["keras_ckpt_swap", "keras_swap"],
)
def test_best_checkpoint_ranks_by_the_averages_and_loads_them(tmp_path, data, swap_class):
    record, best, history = best_run(tmp_path, data, swap_class())
    epoch = int(np.argmin(history.history["val_loss"]))
    assert best.best_value == pytest.approx(history.history["val_loss"][epoch])
    atol = 0 if swap_class is keras_ckpt.SwapEMAWeights else 1e-6
    # The file resumes: raw weights as the model's, the averages in the optimizer.
    loaded = keras_ckpt.load_best(tmp_path / "best")
    for saved, raw in zip(loaded.get_weights(), record.raw[epoch], strict=True):
        np.testing.assert_allclose(saved, raw, rtol=0, atol=atol)
    # weights="ema": the model holding the averages, whose val_loss was the one ranked.
    averaged = keras_ckpt.load_best(tmp_path / "best", weights="ema")
    for saved, average in zip(averaged.get_weights(), record.averages[epoch], strict=True):
        np.testing.assert_allclose(saved, average, rtol=0, atol=atol)
    x_val, y_val = data[2:]
    assert averaged.evaluate(x_val, y_val, verbose=0) == pytest.approx(best.best_value, rel=1e-5)
    # Into a given model; load_checkpoint takes the argument too.
    into = keras_ckpt.load_best(tmp_path / "best", model=make_model(seed=3), weights="ema")
    assert_weights_equal(into.get_weights(), averaged.get_weights())
    first = keras_ckpt.list_checkpoints(tmp_path / "best")[0]
    loaded = keras_ckpt.load_checkpoint(first, weights="ema")
    for saved, average in zip(loaded.get_weights(), record.averages[first.epoch - 1], strict=True):
        np.testing.assert_allclose(saved, average, rtol=0, atol=atol)


def test_export_with_the_averages(tmp_path, data, capsys):
    from keras_ckpt import cli

    record, best, history = best_run(tmp_path, data, keras_ckpt.SwapEMAWeights())
    epoch = int(np.argmin(history.history["val_loss"]))
    assert cli.main(["export", str(tmp_path / "best"), str(tmp_path / "raw.keras")]) == 0
    out = str(tmp_path / "ema.keras")
    assert cli.main(["export", str(tmp_path / "best"), out, "--weights", "ema"]) == 0
    assert "with the moving averages as its weights" in capsys.readouterr().out
    # Plain Keras opens both.
    assert_weights_equal(
        keras.saving.load_model(tmp_path / "raw.keras").get_weights(), record.raw[epoch]
    )
    assert_weights_equal(keras.saving.load_model(out).get_weights(), record.averages[epoch])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best", "ema.keras", "raw.keras"]
    # The averages make a whole model: a weights file is the wrong output, said in one line.
    weights_out = str(tmp_path / "ema.weights.h5")
    assert cli.main(["export", str(tmp_path / "best"), weights_out, "--weights", "ema"]) == 2
    assert "--weights ema writes a whole model" in capsys.readouterr().err
    assert not os.path.exists(weights_out)


def test_averages_are_asked_of_a_checkpoint_without_them(tmp_path, data, capsys):
    from keras_ckpt import cli

    model = make_model()
    model.compile(optimizer="adam", loss="mse")
    fit(model, data, [keras_ckpt.BestCheckpoint(tmp_path)], epochs=1)
    with pytest.raises(ValueError, match="weights='ema' needs moving averages, but .* has none"):
        keras_ckpt.load_best(tmp_path, weights="ema")
    assert cli.main(["export", str(tmp_path), str(tmp_path / "out.keras"), "--weights", "ema"]) == 2
    assert "has none" in capsys.readouterr().err
    assert not (tmp_path / "out.keras").exists()


def test_weights_argument_errors(tmp_path, data):
    message = r"Argument `weights` must be one of 'raw', 'ema'. Received: weights='EMA'"
    with pytest.raises(ValueError, match=message):
        keras_ckpt.BestCheckpoint(tmp_path, weights="EMA")
    with pytest.raises(ValueError, match=message):
        keras_ckpt.load_best(tmp_path, weights="EMA")
    with pytest.raises(ValueError, match="add keras_ckpt.SwapEMAWeights()"):
        fit(make_model(), data, [keras_ckpt.BestCheckpoint(tmp_path, weights="ema")], epochs=1)
    with pytest.raises(ValueError, match="Pass weights='ema' to rank by them"):
        fit(
            make_model(),
            data,
            [keras_ckpt.SwapEMAWeights(), keras_ckpt.BestCheckpoint(tmp_path)],
            epochs=1,
        )
    plain = make_model()
    plain.compile(optimizer="adam", loss="mse")
    with pytest.raises(ValueError, match="Set `use_ema=True` on the optimizer"):
        fit(plain, data, [keras_ckpt.BestCheckpoint(tmp_path, weights="ema")], epochs=1)


def test_keras_own_synchronous_saves_get_the_raw_weights_too(data):
    """A legacy .h5 file is written by Keras from the model itself: the raw weights are put in
    place for the write and everything is put back exactly."""
    from keras_ckpt import ema

    model = make_model()
    fit(model, data, [], epochs=1)
    optimizer = model.optimizer
    optimizer._model_variables_moving_average[0].assign(
        optimizer._model_variables_moving_average[0] + 1.0
    )
    raw = [np.array(v.numpy()) for v in model.trainable_variables]
    averages = [np.array(a.numpy()) for a in optimizer._model_variables_moving_average]
    slots = optimizer._model_variables_moving_average
    ema.swap(model)
    with ema.raw_weights_in_model(model):
        assert_weights_equal([v.numpy() for v in model.trainable_variables], raw)
        assert_weights_equal([a.numpy() for a in slots], averages)
    assert_weights_equal([v.numpy() for v in model.trainable_variables], averages)
    ema.swap(model)
    assert_weights_equal([v.numpy() for v in model.trainable_variables], raw)


def test_without_the_ema_internals_a_save_refuses_and_a_swap_state_warns(monkeypatch, data):
    from keras_ckpt import keras_adapter

    model = make_model()
    fit(model, data, [], epochs=1)
    monkeypatch.setattr(keras_adapter, "EMA_SUPPORTED", False)
    with pytest.raises(keras_adapter.KerasInternalsError, match="_model_variables_moving_average"):
        keras_adapter.ema_variable_pairs(model)
    monkeypatch.setattr(keras_adapter, "KERAS_SWAP_STATE_SUPPORTED", False)
    monkeypatch.setattr(keras_adapter, "_warned", set())
    with pytest.warns(UserWarning, match="use keras_ckpt.SwapEMAWeights"):
        assert not keras_adapter.keras_swap_holds_ema(keras.callbacks.SwapEMAWeights())


def test_early_stopping_restores_the_best_averages(tmp_path, data):
    best = keras_ckpt.BestCheckpoint(tmp_path, weights="ema")
    stop = keras_ckpt.EarlyStopping(patience=5, restore_best_weights=best)
    model = make_model()
    fit(model, data, [keras_ckpt.SwapEMAWeights(), best, stop], epochs=3)
    expected = keras_ckpt.load_best(tmp_path, weights="ema")
    assert_weights_equal(model.get_weights(), expected.get_weights())


class CrashAtEpochBegin(keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            raise RuntimeError("simulated crash")


def test_a_resume_into_the_model_that_crashed_holding_the_averages(tmp_path, data):
    expected = make_model()
    fit(expected, data, [keras_ckpt.SwapEMAWeights(swap_on_epoch=True)])
    model = make_model()
    resume = keras_ckpt.ResumeFromLatest(tmp_path)
    with pytest.raises(RuntimeError, match="simulated crash"):
        # Listed first, the crash comes before the swap back: the model holds the averages.
        fit(model, data, [CrashAtEpochBegin(2), keras_ckpt.SwapEMAWeights(True), resume])
    fit(model, data, [keras_ckpt.SwapEMAWeights(swap_on_epoch=True), resume])
    assert_weights_equal(model.get_weights(), expected.get_weights())
