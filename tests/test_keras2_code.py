"""Keras 2-era code runs with only the import swapped: legacy ``.h5`` / ``.hdf5`` files and
tf.keras 2's ``period`` and ``options`` arguments of ModelCheckpoint (issue 15)."""

import os
import warnings

import h5py
import keras
import numpy as np
import pytest
from conftest import assert_weights_equal

import keras_ckpt
from keras_ckpt import ModelCheckpoint, keras_adapter
from keras_ckpt.keras_adapter import KerasInternalsError
from keras_ckpt.records import LOCK_NAME, MANIFEST_NAME


def tiny_model(seed=0, layer=None):
    keras.utils.set_random_seed(seed)
    layers = [keras.Input((4,)), keras.layers.Dense(8, activation="relu")]
    layers += [layer] if layer is not None else []
    model = keras.Sequential([*layers, keras.layers.Dense(1)])
    # Not loss="mse": Keras 3.15 cannot compile a legacy .h5 model saved with that alias back
    # ("Could not deserialize 'keras.metrics.mse'"); the full name loads.
    model.compile(optimizer="adam", loss="mean_squared_error")
    return model


def arrays(samples, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(samples, 4)).astype("float32")
    y = (x @ np.arange(1.0, 5.0).reshape(4, 1)).astype("float32")
    return x, y


def legacy_warnings(caught):
    return [w for w in caught if "legacy HDF5" in str(w.message)]


def test_the_tutorial_snippet_runs_with_the_import_swapped(tmp_path, monkeypatch, weights_by_epoch):
    monkeypatch.chdir(tmp_path)  # the tutorial's filepath is relative
    (x_train, y_train), (x_val, y_val) = arrays(96, 0), arrays(32, 1)
    model = tiny_model()
    weights = weights_by_epoch()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # The tutorial, verbatim (apart from `weights` to compare against).
        checkpoint = ModelCheckpoint(filepath='weights.{epoch:02d}-{val_loss:.2f}.hdf5', monitor='val_loss', verbose=1, save_best_only=True, mode='min')  # fmt: skip # noqa: E501
        model.fit(x_train, y_train, validation_data=(x_val, y_val), callbacks=[checkpoint, weights], epochs=10)  # fmt: skip # noqa: E501

    [warning] = legacy_warnings(caught)  # one per callback, not one per save
    assert "filepath='weights.{epoch:02d}-{val_loss:.2f}.hdf5'" in str(warning.message)
    assert "'.keras'" in str(warning.message)
    assert warning.filename == __file__  # points at the user's line

    records = keras_ckpt.list_checkpoints(tmp_path)
    assert len(records) >= 2  # a learning model improves more than once in 10 epochs
    val_losses = [r.metrics["val_loss"] for r in records]
    assert val_losses == sorted(val_losses, reverse=True)  # save_best_only: each one better
    assert [r.filename for r in records] == [
        f"weights.{r.epoch:02d}-{r.metrics['val_loss']:.2f}.hdf5" for r in records
    ]
    assert all(r.kind == "model" and r.size > 0 for r in records)
    on_disk = sorted(os.listdir(tmp_path))
    assert on_disk == sorted([r.filename for r in records] + [LOCK_NAME, MANIFEST_NAME])

    for record in records:
        with h5py.File(record.path, "r") as file:  # Keras's legacy model layout
            assert "model_config" in file.attrs and "model_weights" in file
        loaded = keras.saving.load_model(record.path)
        assert_weights_equal(loaded.get_weights(), weights.weights[record.epoch])
        through_manifest = keras_ckpt.load_checkpoint(record)  # checks the SHA-256 first
        assert_weights_equal(through_manifest.get_weights(), weights.weights[record.epoch])
    # ModelCheckpoint keeps no `best` alias: load_best ranks the checkpoints by the metric.
    best = min(records, key=lambda r: r.metrics["val_loss"])
    assert best is records[-1]
    assert keras_ckpt.best_checkpoint(tmp_path, monitor="val_loss") == best
    assert_weights_equal(
        keras_ckpt.load_best(tmp_path, monitor="val_loss").get_weights(),
        weights.weights[best.epoch],
    )


@pytest.mark.parametrize("extension", [".h5", ".hdf5"])
def test_weights_only_legacy_file_loads_with_plain_load_weights(tmp_path, extension):
    x, y = arrays(96, 0)
    model = tiny_model()
    path = tmp_path / f"weights{extension}"
    with pytest.warns(UserWarning, match=r"legacy HDF5 weights format.*'\.weights\.h5'"):
        callback = ModelCheckpoint(path, save_weights_only=True)
    model.fit(x, y, epochs=2, verbose=0, callbacks=[callback])

    fresh = tiny_model(seed=1)
    fresh.load_weights(path)  # plain Keras, legacy branch
    assert_weights_equal(fresh.get_weights(), model.get_weights())
    [record] = keras_ckpt.list_checkpoints(tmp_path)
    assert (record.filename, record.kind, record.epoch) == (path.name, "weights", 2)
    other = keras_ckpt.load_checkpoint(record, tiny_model(seed=2))
    assert_weights_equal(other.get_weights(), model.get_weights())


def test_legacy_files_keep_the_top_k(tmp_path, scripted):
    x, y = arrays(96, 0)
    model = tiny_model()
    val_losses = [5.0, 3.0, 4.0, 1.0, 2.0]
    with pytest.warns(UserWarning, match="legacy HDF5"):
        callback = ModelCheckpoint(tmp_path / "e{epoch}.h5", save_weights_only=True, save_top_k=2)
    model.fit(
        x,
        y,
        validation_data=arrays(32, 1),
        epochs=5,
        verbose=0,
        callbacks=[scripted(val_losses), callback],
    )
    assert [r.filename for r in keras_ckpt.list_checkpoints(tmp_path)] == ["e4.h5", "e5.h5"]
    assert sorted(n for n in os.listdir(tmp_path) if n.endswith(".h5")) == ["e4.h5", "e5.h5"]
    assert callback.best_path == str(tmp_path / "e4.h5")


def test_legacy_weights_need_keras_s_legacy_writer(tmp_path, monkeypatch):
    model = tiny_model()
    monkeypatch.setattr(keras_adapter, "LEGACY_H5_WEIGHTS_SUPPORTED", False)
    with pytest.raises(KerasInternalsError, match=r"legacy `\.h5`.*save_weights_to_hdf5_group"):
        keras_adapter.save_legacy_h5_weights(model, str(tmp_path / "w.h5"))
    assert not (tmp_path / "w.h5").exists()


def test_native_names_do_not_warn():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ModelCheckpoint("a.keras")
        ModelCheckpoint("a.weights.h5", save_weights_only=True)
    assert caught == []


# A layer whose config fails on demand: the legacy .h5 save needs the config.
class Fragile(keras.layers.Layer):
    fail = False

    def call(self, inputs):
        return inputs

    def get_config(self):
        if Fragile.fail:
            raise RuntimeError("get_config failed")
        return super().get_config()


class FailFromEpoch(keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        Fragile.fail = epoch + 1 >= self.epoch


def test_a_failed_legacy_save_leaves_the_earlier_checkpoint_intact(
    tmp_path, monkeypatch, weights_by_epoch
):
    monkeypatch.setattr(Fragile, "fail", False)
    x, y = arrays(96, 0)
    model = tiny_model(layer=Fragile())
    path = tmp_path / "model.h5"  # one name: the failed save would replace the good file
    with pytest.warns(UserWarning, match="legacy HDF5"):
        callback = ModelCheckpoint(path)
    weights = weights_by_epoch()
    with pytest.raises(RuntimeError, match="get_config failed"):
        model.fit(x, y, epochs=3, verbose=0, callbacks=[FailFromEpoch(2), weights, callback])

    assert sorted(os.listdir(tmp_path)) == sorted(["model.h5", LOCK_NAME, MANIFEST_NAME])
    [record] = keras_ckpt.list_checkpoints(tmp_path)
    assert record.epoch == 1
    Fragile.fail = False
    loaded = keras_ckpt.load_checkpoint(record, tiny_model(seed=1, layer=Fragile()))
    assert_weights_equal(loaded.get_weights(), weights.weights[1])


# tf.keras 2's period and options ------------------------------------------------------------


def checkpoint_files(directory):
    return sorted(n for n in os.listdir(directory) if n.endswith(".keras"))


def test_period_saves_every_period_th_epoch_with_tf_keras_warning(tmp_path):
    x, y = arrays(96, 0)
    model = tiny_model()
    with pytest.warns(FutureWarning, match=r"`period` argument is deprecated\. Please use"):
        callback = ModelCheckpoint(str(tmp_path / "e{epoch}.keras"), period=2)
    model.fit(x, y, epochs=5, verbose=0, callbacks=[callback])
    assert checkpoint_files(tmp_path) == ["e2.keras", "e4.keras"]
    assert [r.epoch for r in keras_ckpt.list_checkpoints(tmp_path)] == [2, 4]
    # As in tf.keras, the count goes on across fit calls: the 6th epoch seen is due.
    model.fit(x, y, epochs=1, verbose=0, callbacks=[callback])
    assert checkpoint_files(tmp_path) == ["e1.keras", "e2.keras", "e4.keras"]


def test_period_count_is_kept_in_the_state(tmp_path):
    x, y = arrays(96, 0)
    with pytest.warns(FutureWarning):
        first = ModelCheckpoint(str(tmp_path / "e{epoch}.keras"), period=3)
    tiny_model().fit(x, y, epochs=2, verbose=0, callbacks=[first])
    with pytest.warns(FutureWarning):
        resumed = ModelCheckpoint(str(tmp_path / "e{epoch}.keras"), period=3)
    resumed.load_state_dict(first.state_dict())
    tiny_model().fit(x, y, epochs=1, verbose=0, callbacks=[resumed])  # the 3rd epoch seen
    assert checkpoint_files(tmp_path) == ["e1.keras"]


def test_options_are_accepted_and_ignored_with_a_warning(tmp_path):
    tf = pytest.importorskip("tensorflow")
    x, y = arrays(96, 0)
    options = tf.train.CheckpointOptions()
    with pytest.warns(FutureWarning, match=r"`options` argument is ignored.*Received: options="):
        callback = ModelCheckpoint(
            str(tmp_path / "w.weights.h5"), save_weights_only=True, options=options
        )
    model = tiny_model()
    model.fit(x, y, epochs=1, verbose=0, callbacks=[callback])
    fresh = tiny_model(seed=1)
    fresh.optimizer.build(fresh.trainable_variables)  # else Keras skips the optimizer's state
    fresh.load_weights(tmp_path / "w.weights.h5")
    assert_weights_equal(fresh.get_weights(), model.get_weights())


@pytest.mark.parametrize("period", [0, -1, True, 1.5, "2"])
def test_bad_period_is_refused_at_construction(period):
    with pytest.raises(
        ValueError, match=r"Argument `period` must be a positive integer\. Received: period="
    ) as error:
        ModelCheckpoint("a.keras", period=period)
    assert repr(period) in str(error.value)


def test_extension_errors_name_the_legacy_extensions():
    with pytest.raises(ValueError, match=r"`\.weights\.h5`.*`\.h5` or `\.hdf5`.*filepath=a\.ckpt"):
        ModelCheckpoint("a.ckpt", save_weights_only=True)
    with pytest.raises(ValueError, match=r"`\.keras`.*`\.h5` or `\.hdf5`.*filepath=a\.tf"):
        ModelCheckpoint("a.tf")


def test_a_legacy_model_with_a_lambda_layer_loads_only_without_safe_mode(tmp_path):
    # Its function is saved as Python bytecode, which building the model would run.
    x, y = arrays(16, seed=2)
    model = tiny_model(layer=keras.layers.Lambda(lambda t: t * 2.0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        checkpoint = ModelCheckpoint(str(tmp_path / "model.h5"))
        model.fit(x, y, epochs=1, verbose=0, callbacks=[checkpoint])
    [record] = keras_ckpt.list_checkpoints(tmp_path)
    with pytest.raises(ValueError, match=r"model\.h5 holds a Lambda layer.*safe_mode=False"):
        keras_ckpt.load_checkpoint(record)
    loaded = keras_ckpt.load_checkpoint(record, safe_mode=False)
    assert_weights_equal(loaded.get_weights(), model.get_weights())


def test_a_damaged_legacy_model_is_reported_as_damaged(tmp_path):
    x, y = arrays(16, seed=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tiny_model().fit(
            x, y, epochs=1, verbose=0, callbacks=[ModelCheckpoint(str(tmp_path / "m.h5"))]
        )
    [record] = keras_ckpt.list_checkpoints(tmp_path)
    with h5py.File(record.path, "r+") as file:
        del file.attrs["model_config"]
    with pytest.raises(keras_ckpt.CheckpointCorruptedError, match="without a model"):
        keras_ckpt.load_checkpoint(record, verify_checksum=False)


def test_a_legacy_file_is_refused_in_a_multi_process_run(tmp_path, monkeypatch):
    # Keras writes it on process 0 alone, where its saving may enter collectives.
    x, y = arrays(16, seed=4)
    monkeypatch.setattr(keras_ckpt.processes, "process_count", lambda: 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        checkpoint = ModelCheckpoint(str(tmp_path / "model.h5"))
    with pytest.raises(ValueError, match=r"legacy HDF5\) in a multi-process run"):
        tiny_model().fit(x, y, epochs=1, verbose=0, callbacks=[checkpoint])
    assert os.listdir(tmp_path) == []
