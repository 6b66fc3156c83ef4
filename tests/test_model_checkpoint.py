"""keras_ckpt.ModelCheckpoint: Keras's behaviour where Keras is right, fixed where it is not."""

import math
import os
import warnings

import keras
import numpy as np
import pytest
from conftest import assert_weights_equal, needs_keras
from keras.src.utils.python_utils import is_default

import keras_ckpt
from keras_ckpt.records import LOCK_NAME, MANIFEST_NAME


def fit(model, data, callbacks, epochs=1, **kwargs):
    x, y = data
    kwargs.setdefault("validation_data", (x[:32], y[:32]))
    return model.fit(x, y, batch_size=32, epochs=epochs, verbose=0, callbacks=callbacks, **kwargs)


def checkpoint_files(directory):
    return sorted(n for n in os.listdir(directory) if n.endswith((".keras", ".h5")))


# Keras parity ---------------------------------------------------------------------------


def test_saves_every_epoch_into_a_created_subdirectory(tmp_path, make_model, data):
    filepath = tmp_path / "subdir" / "checkpoint.keras"
    model = make_model()
    fit(model, data, [keras_ckpt.ModelCheckpoint(filepath)], epochs=2)
    loaded = keras.saving.load_model(filepath)
    assert_weights_equal(loaded.get_weights(), model.get_weights())
    [record] = keras_ckpt.list_checkpoints(tmp_path / "subdir")
    assert record.epoch == 2 and record.kind == "model" and record.step == 6


@pytest.mark.parametrize("weights_only", [False, True])
def test_integer_save_freq_counts_batches_across_epochs(tmp_path, make_model, data, weights_only):
    # 3 batches per epoch, a save every 9 batches: at the ends of epochs 3, 6 and 9.
    extension = ".weights.h5" if weights_only else ".keras"
    filepath = str(tmp_path / ("checkpoint.epoch{epoch:02d}" + extension))
    callback = keras_ckpt.ModelCheckpoint(filepath, save_freq=9, save_weights_only=weights_only)
    fit(make_model(), data, [callback], epochs=10)
    assert checkpoint_files(tmp_path) == [f"checkpoint.epoch{e:02d}{extension}" for e in (3, 6, 9)]
    records = keras_ckpt.list_checkpoints(tmp_path)
    assert [(r.epoch, r.batch, r.step) for r in records] == [(3, 3, 9), (6, 3, 18), (9, 3, 27)]


def test_batch_field_in_filename(tmp_path, make_model, data):
    filepath = str(tmp_path / "e{epoch:02d}b{batch:02d}.keras")
    fit(make_model(), data, [keras_ckpt.ModelCheckpoint(filepath, save_freq=2)], epochs=2)
    # Batches 2 and 4 (= epoch 2, batch 1) and 6 (= epoch 2, batch 3).
    assert checkpoint_files(tmp_path) == ["e01b02.keras", "e02b01.keras", "e02b03.keras"]


@needs_keras((3, 6), "batch hooks are marked default, for asynchronous dispatch")
def test_batch_hook_only_when_saving_by_batches():
    # Overriding on_train_batch_end turns off Keras's asynchronous dispatch (JAX, torch).
    assert is_default(keras_ckpt.ModelCheckpoint("a.keras").on_train_batch_end)
    assert not is_default(keras_ckpt.ModelCheckpoint("a.keras", save_freq=3).on_train_batch_end)


def test_extension_errors_match_keras():
    with pytest.raises(
        ValueError, match=r"must end in `\.weights\.h5`.*Received: filepath=a\.keras"
    ):
        keras_ckpt.ModelCheckpoint("a.keras", save_weights_only=True)
    with pytest.raises(ValueError, match=r"must end in `\.keras`.*Received: filepath=a\.weights"):
        keras_ckpt.ModelCheckpoint("a.weights")


@pytest.mark.parametrize("save_freq", ["invalid_save_freq", True, False, 0, -3, 2.5, None])
def test_bad_save_freq(save_freq):
    with pytest.raises(
        ValueError, match=rf"Unrecognized save_freq.*Received: save_freq={save_freq!r}"
    ):
        keras_ckpt.ModelCheckpoint("a.keras", save_freq=save_freq)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"save_top_k": 0},
            "Argument `save_top_k` must be a positive integer. Received: save_top_k=0",
        ),
        ({"save_top_k": True}, "Received: save_top_k=True"),
        ({"initial_value_threshold": "low"}, "Argument `initial_value_threshold` must be a number"),
        ({"save_top_k": 2}, r"must contain a field such as \{epoch\}"),
    ],
)
def test_bad_added_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        keras_ckpt.ModelCheckpoint("fixed.keras", **kwargs)


def test_unknown_mode_warns_like_keras():
    with pytest.warns(UserWarning, match="ModelCheckpoint mode 'unknown' is unknown"):
        callback = keras_ckpt.ModelCheckpoint("a.keras", mode="unknown")
    assert callback.mode == "auto"


def test_missing_metric_first_epoch_saves_with_warning(tmp_path, make_model, data):
    filepath = tmp_path / "checkpoint.keras"
    callback = keras_ckpt.ModelCheckpoint(
        filepath, monitor="unknown", save_best_only=True, mode="min"
    )
    with pytest.warns(UserWarning, match="Can save best model only with unknown available"):
        fit(make_model(), data, [callback])
    assert filepath.exists()


def test_unknown_template_key(tmp_path, make_model, data):
    callback = keras_ckpt.ModelCheckpoint(str(tmp_path / "{val_acc:.2f}.keras"))
    with pytest.raises(
        KeyError, match=r"Failed to format this callback filepath.*'val_acc'.*val_loss"
    ):
        fit(make_model(), data, [callback])


# Keras bugs fixed -----------------------------------------------------------------------


def test_save_best_only_with_integer_save_freq(tmp_path, make_model, data):
    # Keras 3.15 raises TypeError here in the first epoch.
    filepath = tmp_path / "best.keras"
    callback = keras_ckpt.ModelCheckpoint(
        filepath, monitor="loss", save_best_only=True, save_freq=2
    )
    fit(make_model(), data, [callback], epochs=2)
    [record] = keras_ckpt.list_checkpoints(tmp_path)
    assert record.metrics["loss"] == callback.best == callback.best_value


def test_unvalidated_epoch_does_not_overwrite_best(
    tmp_path, make_model, data, scripted, weights_by_epoch
):
    # validation_freq=2: epochs 1 and 3 have no val_loss. Keras saves epoch 3 over the best.
    filepath = tmp_path / "best.weights.h5"
    weights = weights_by_epoch()
    callback = keras_ckpt.ModelCheckpoint(filepath, save_best_only=True, save_weights_only=True)
    with pytest.warns(UserWarning, match="Can save best model only with val_loss available"):
        fit(
            make_model(),
            data,
            [scripted([None, 0.5, None, 0.9]), callback, weights],
            epochs=4,
            validation_freq=2,
        )
    model = make_model(seed=1)
    model.load_weights(filepath)
    assert_weights_equal(model.get_weights(), weights.weights[2])
    [record] = keras_ckpt.list_checkpoints(tmp_path)
    assert record.epoch == 2 and callback.best == 0.5


def test_best_restarts_with_each_fit(tmp_path, make_model, data, scripted):
    # Keras carries `best` over, so a second fit (a new fold, a new model) never saves.
    filepath = tmp_path / "best.keras"
    callback = keras_ckpt.ModelCheckpoint(filepath, save_best_only=True)
    fit(make_model(), data, [scripted([0.1]), callback])
    first = keras_ckpt.list_checkpoints(tmp_path)[0].run
    with pytest.warns(UserWarning, match="replacing .*best.keras, which an earlier run wrote"):
        fit(make_model(seed=1), data, [scripted([0.5]), callback])
    [record] = keras_ckpt.list_checkpoints(tmp_path)
    assert record.run != first and record.metrics["val_loss"] == 0.5 and callback.best == 0.5


def test_a_save_refused_for_a_nan_training_loss_does_not_become_the_best(
    tmp_path, make_model, data, scripted
):
    # Epoch 2's val_loss improves, but its training loss is NaN: not saved, so not the best.
    filepath = tmp_path / "e{epoch}.keras"
    callback = keras_ckpt.ModelCheckpoint(str(filepath), save_best_only=True)
    callbacks = [scripted([0.5, 0.3, 0.4]), scripted([1.0, math.nan, 1.0], key="loss"), callback]
    with pytest.warns(UserWarning, match="not saving e2.keras .* the training loss is nan"):
        fit(make_model(), data, callbacks, epochs=3)
    assert checkpoint_files(tmp_path) == ["e1.keras", "e3.keras"]
    assert callback.best == 0.4


def test_nan_is_never_best(tmp_path, make_model, data, scripted):
    filepath = tmp_path / "e{epoch}.keras"
    callback = keras_ckpt.ModelCheckpoint(str(filepath), save_best_only=True)
    fit(make_model(), data, [scripted([math.nan, 0.7, 0.8]), callback], epochs=3)
    assert checkpoint_files(tmp_path) == ["e2.keras"]
    assert callback.best == 0.7


# Added features -------------------------------------------------------------------------


def test_save_top_k_keeps_the_k_best(tmp_path, make_model, data, scripted, weights_by_epoch):
    sequence = [0.9, 0.7, 0.8, 0.6, 0.95, 0.5, 0.65]
    weights = weights_by_epoch()
    callback = keras_ckpt.ModelCheckpoint(
        str(tmp_path / "e{epoch}.weights.h5"), save_weights_only=True, save_top_k=2
    )
    fit(make_model(), data, [scripted(sequence), callback, weights], epochs=len(sequence))
    assert checkpoint_files(tmp_path) == ["e4.weights.h5", "e6.weights.h5"]
    assert [r.epoch for r in keras_ckpt.list_checkpoints(tmp_path)] == [4, 6]
    assert callback.best_value == 0.5
    assert callback.best_path == str(tmp_path / "e6.weights.h5")
    model = make_model(seed=3)
    model.load_weights(callback.best_path)
    assert_weights_equal(model.get_weights(), weights.weights[6])


def test_top_k_respects_initial_value_threshold(tmp_path, make_model, data, scripted):
    callback = keras_ckpt.ModelCheckpoint(
        str(tmp_path / "e{epoch}.keras"), save_top_k=3, initial_value_threshold=0.6
    )
    fit(make_model(), data, [scripted([0.9, 0.5, 0.7, 0.4]), callback], epochs=4)
    assert checkpoint_files(tmp_path) == ["e2.keras", "e4.keras"]


def test_manifest_describes_each_file(tmp_path, make_model, data):
    model = make_model()
    fit(
        model,
        data,
        [keras_ckpt.ModelCheckpoint(str(tmp_path / "e{epoch}.weights.h5"), save_weights_only=True)],
        epochs=2,
    )
    records = keras_ckpt.list_checkpoints(tmp_path)
    assert [(r.epoch, r.step, r.kind) for r in records] == [(1, 3, "weights"), (2, 6, "weights")]
    for record in records:
        assert set(record.metrics) == {"loss", "mae", "val_loss", "val_mae"}
        assert record.size == os.path.getsize(record.path)
        assert record.keras_version == keras.__version__
        keras_ckpt.store.verify(record)
    assert int(model.optimizer.iterations) == records[-1].step


class Unsaveable(keras.layers.Layer):
    """A real layer whose saving fails once `broken` is set, as a full disk would."""

    broken = False

    def call(self, inputs):
        return inputs

    def save_own_variables(self, store):
        if Unsaveable.broken:
            raise OSError(28, "No space left on device")
        super().save_own_variables(store)


def test_failed_save_leaves_earlier_checkpoint_intact(tmp_path, data):
    class BreakAfterFirstEpoch(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            Unsaveable.broken = epoch >= 1

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1), Unsaveable()])
    model.compile(optimizer="adam", loss="mse")
    filepath = tmp_path / "model.keras"
    try:
        with pytest.raises(OSError, match="No space left"):
            fit(
                model,
                data,
                [BreakAfterFirstEpoch(), keras_ckpt.ModelCheckpoint(filepath)],
                epochs=2,
            )
    finally:
        Unsaveable.broken = False
    assert sorted(os.listdir(tmp_path)) == [LOCK_NAME, MANIFEST_NAME, "model.keras"]
    [record] = keras_ckpt.list_checkpoints(tmp_path)
    assert record.epoch == 1
    keras_ckpt.store.verify(record)
    loaded = keras.saving.load_model(filepath, custom_objects={"Unsaveable": Unsaveable})
    assert len(loaded.get_weights()) == 2


def test_saved_files_load_with_plain_keras(tmp_path, make_model, data):
    model = make_model()
    fit(
        model,
        data,
        [
            keras_ckpt.ModelCheckpoint(tmp_path / "m.keras"),
            keras_ckpt.ModelCheckpoint(tmp_path / "w.weights.h5", save_weights_only=True),
        ],
    )
    x = data[0][:5]
    np.testing.assert_allclose(
        keras.saving.load_model(tmp_path / "m.keras").predict(x, verbose=0),
        model.predict(x, verbose=0),
    )
    fresh = make_model(seed=7)
    fresh.load_weights(tmp_path / "w.weights.h5")
    assert_weights_equal(fresh.get_weights(), model.get_weights())


def test_no_warning_when_a_run_overwrites_its_own_file(tmp_path, make_model, data):
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        fit(make_model(), data, [keras_ckpt.ModelCheckpoint(tmp_path / "m.keras")], epochs=2)


def test_shares_a_directory_with_best_checkpoint_and_its_alias(
    tmp_path, make_model, data, scripted
):
    # ModelCheckpoint's fixed name "best.keras" is also BestCheckpoint's alias name.
    checkpoint = keras_ckpt.ModelCheckpoint(tmp_path / "best.keras")
    best = keras_ckpt.BestCheckpoint(tmp_path)
    model = make_model()
    fit(model, data, [scripted([0.3, 0.5, 0.6]), best, checkpoint], epochs=3)
    keras_ckpt.CheckpointStore(tmp_path)  # reopening must not relink the alias over it
    for record in keras_ckpt.list_checkpoints(tmp_path):
        keras_ckpt.store.verify(record)
    own = keras.saving.load_model(tmp_path / "best.keras")
    assert_weights_equal(own.get_weights(), model.get_weights())  # epoch 3, ModelCheckpoint's
    assert keras_ckpt.best_checkpoint(tmp_path).epoch == 1


def test_top_k_never_overwrites_a_better_file_of_the_same_name(tmp_path, make_model):
    # "{epoch}" with save_freq=1: every batch of an epoch renders the same name.
    callback = keras_ckpt.ModelCheckpoint(
        str(tmp_path / "{epoch:02d}.keras"), monitor="loss", mode="min", save_top_k=2, save_freq=1
    )
    callback.set_model(make_model())
    callback.on_train_begin()
    callback.on_epoch_begin(0)
    for batch, loss in enumerate([0.8, 0.9, 0.7]):
        callback.on_train_batch_end(batch, {"loss": loss})
    callback.on_train_end()
    [record] = keras_ckpt.list_checkpoints(tmp_path)
    assert record.metrics["loss"] == 0.7 and record.batch == 3
    assert callback.best_value == 0.7


def test_unknown_direction_in_auto_mode_raises_like_keras(tmp_path, make_model, data):
    callback = keras_ckpt.ModelCheckpoint(tmp_path / "m.keras", monitor="val_custom")
    with pytest.raises(ValueError, match="isn't able to automatically determine"):
        fit(make_model(), data, [callback])


def test_batch_count_carries_over_between_fits_like_keras(tmp_path, make_model, data):
    model = make_model()
    callback = keras_ckpt.ModelCheckpoint(str(tmp_path / "e{epoch}b{batch}.keras"), save_freq=4)
    fit(model, data, [callback])  # 3 batches: nothing yet
    assert checkpoint_files(tmp_path) == []
    fit(model, data, [callback])  # the 4th batch overall is this fit's first
    assert checkpoint_files(tmp_path) == ["e1b1.keras"]
