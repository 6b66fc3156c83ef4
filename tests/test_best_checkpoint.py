"""keras_ckpt.BestCheckpoint, load_best and list_checkpoints."""

import math
import os

import keras
import pytest
from conftest import assert_weights_equal

import keras_ckpt
from keras_ckpt.records import LOCK_NAME, MANIFEST_NAME

SEQUENCE = [0.9, 0.7, 0.8, 0.6, 0.95, 0.5, 0.65]


def fit(model, data, callbacks, epochs=1, **kwargs):
    x, y = data
    kwargs.setdefault("validation_data", (x[:32], y[:32]))
    return model.fit(x, y, batch_size=32, epochs=epochs, verbose=0, callbacks=callbacks, **kwargs)


def kept_epochs(directory):
    return [r.epoch for r in keras_ckpt.list_checkpoints(directory)]


# Tier 3: real training -----------------------------------------------------------------


def test_top_k_set_for_a_scripted_sequence(tmp_path, make_model, data, scripted, weights_by_epoch):
    weights = weights_by_epoch()
    best = keras_ckpt.BestCheckpoint(tmp_path, top_k=3)
    fit(make_model(), data, [scripted(SEQUENCE), best, weights], epochs=len(SEQUENCE))
    assert kept_epochs(tmp_path) == [4, 6, 7]
    assert sorted(os.listdir(tmp_path)) == [
        LOCK_NAME,
        "best.keras",
        "epoch004-val_loss0.6000.keras",
        "epoch006-val_loss0.5000.keras",
        "epoch007-val_loss0.6500.keras",
        MANIFEST_NAME,
    ]
    assert os.path.samefile(tmp_path / "best.keras", tmp_path / "epoch006-val_loss0.5000.keras")
    assert best.best_value == 0.5 and best.best_path == str(
        tmp_path / "epoch006-val_loss0.5000.keras"
    )
    loaded = keras_ckpt.load_best(tmp_path)
    assert_weights_equal(loaded.get_weights(), weights.weights[6])
    plain = keras.saving.load_model(tmp_path / "best.keras")  # plain Keras reads the alias
    assert_weights_equal(plain.get_weights(), weights.weights[6])


def test_weights_only_best_loads_into_a_model_with_its_optimizer(
    tmp_path, make_model, data, scripted, weights_by_epoch
):
    weights = weights_by_epoch()
    model = make_model()
    best = keras_ckpt.BestCheckpoint(tmp_path, save_weights_only=True, top_k=1)
    fit(model, data, [scripted([0.5, 0.3, 0.4]), best, weights], epochs=3)
    assert sorted(os.listdir(tmp_path)) == [
        LOCK_NAME,
        "best.weights.h5",
        "epoch002-val_loss0.3000.weights.h5",
        MANIFEST_NAME,
    ]
    with pytest.raises(ValueError, match="holds weights only; pass the model"):
        keras_ckpt.load_best(tmp_path)
    fresh = make_model(seed=5)
    assert keras_ckpt.load_best(tmp_path, model=fresh) is fresh
    assert_weights_equal(fresh.get_weights(), weights.weights[2])
    # The optimizer state came back too: its step count is that of epoch 2 (3 batches each).
    assert int(fresh.optimizer.iterations.numpy()) == 6


def test_max_mode_inferred_from_metric(tmp_path, data):
    keras.utils.set_random_seed(0)
    x, y = data
    labels = (y > 0).astype("float32")
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1, activation="sigmoid")])
    model.compile(optimizer="adam", loss="binary_crossentropy", metrics=["accuracy"])
    best = keras_ckpt.BestCheckpoint(tmp_path, monitor="val_accuracy", top_k=2)
    history = model.fit(
        x, labels, validation_data=(x[:32], labels[:32]), epochs=4, verbose=0, callbacks=[best]
    )
    values = history.history["val_accuracy"]
    assert best.best_value == pytest.approx(max(values))


def test_epochs_without_validation_are_skipped(tmp_path, make_model, data):
    best = keras_ckpt.BestCheckpoint(tmp_path, top_k=5)
    fit(make_model(), data, [best], epochs=4, validation_freq=2)
    assert kept_epochs(tmp_path) == [2, 4]


def test_no_validation_at_all_warns_at_the_end(tmp_path, make_model, data):
    best = keras_ckpt.BestCheckpoint(tmp_path)
    with pytest.warns(
        UserWarning, match="saved nothing: 'val_loss' never appeared.*validation_data"
    ):
        fit(make_model(), data, [best], epochs=2, validation_data=None)
    assert kept_epochs(tmp_path) == []


def test_misspelled_monitor_names_the_metrics_that_exist(tmp_path, make_model, data):
    best = keras_ckpt.BestCheckpoint(tmp_path, monitor="val_los")
    with pytest.raises(
        ValueError,
        match=r"monitor='val_los'. Metrics available: \['loss', 'mae', 'val_loss', 'val_mae'\]",
    ):
        fit(make_model(), data, [best])


def test_training_metric_can_be_monitored(tmp_path, make_model, data):
    best = keras_ckpt.BestCheckpoint(tmp_path, monitor="mae", mode="min", filename="e{epoch}")
    history = fit(make_model(), data, [best], epochs=3, validation_data=None)
    assert best.best_value == pytest.approx(min(history.history["mae"]))


def test_earlier_runs_are_kept_and_never_overwritten(tmp_path, make_model, data, scripted):
    first = keras_ckpt.BestCheckpoint(tmp_path, top_k=2)
    fit(make_model(), data, [scripted([0.5, 0.4, 0.6]), first], epochs=3)
    first_files = {r.filename: r.sha256 for r in keras_ckpt.list_checkpoints(tmp_path)}
    second = keras_ckpt.BestCheckpoint(tmp_path, top_k=2)
    fit(make_model(seed=1), data, [scripted([0.5, 0.6, 0.3]), second], epochs=3)
    records = keras_ckpt.list_checkpoints(tmp_path)
    assert {r.filename: r.sha256 for r in records if r.filename in first_files} == first_files
    second_files = sorted(r.filename for r in records if r.filename not in first_files)
    # Epoch 1 of the second run has the same name as a first-run file: it gets a suffix.
    assert second_files == ["epoch001-val_loss0.5000-v1.keras", "epoch003-val_loss0.3000.keras"]
    assert os.path.samefile(tmp_path / "best.keras", tmp_path / "epoch003-val_loss0.3000.keras")


def test_state_dict_continues_the_same_top_k(tmp_path, make_model, data, scripted):
    model = make_model()
    first = keras_ckpt.BestCheckpoint(tmp_path, top_k=2, filename="e{epoch}-{step}")
    fit(model, data, [scripted([0.5, 0.4]), first], epochs=2)
    resumed = keras_ckpt.BestCheckpoint(tmp_path, top_k=2, filename="e{epoch}-{step}")
    resumed.load_state_dict(first.state_dict())
    fit(model, data, [scripted([None, None, 0.3]), resumed], epochs=3, initial_epoch=2)
    # One top-2 over both segments: epoch 1 (0.5) fell out when epoch 3 (0.3) came in.
    assert kept_epochs(tmp_path) == [2, 3]


def test_unknown_filename_field_is_reported_at_the_first_save(tmp_path, make_model, data):
    best = keras_ckpt.BestCheckpoint(tmp_path, filename="{epoch}-{val_acc}")
    with pytest.raises(
        ValueError, match=r"uses field\(s\) \['val_acc'\].*Fields available: \['epoch', 'loss'"
    ):
        fit(make_model(), data, [best])
    assert kept_epochs(tmp_path) == []


# Tier 2: hooks driven with scripted logs -----------------------------------------------


@pytest.fixture
def driven(tmp_path, make_model):
    """A BestCheckpoint attached to a real model, driven hook by hook."""

    def drive(values, **kwargs):
        best = keras_ckpt.BestCheckpoint(tmp_path, **kwargs)
        best.set_model(make_model())
        best.on_train_begin()
        for epoch, value in enumerate(values):
            best.on_epoch_end(epoch, {"loss": 1.0, "val_loss": value})
        best.on_train_end()  # waits for the background writer, as at the end of fit
        return best

    return drive


def test_min_delta(driven, tmp_path):
    driven([0.5, 0.49, 0.3], min_delta=0.05)
    assert kept_epochs(tmp_path) == [3]
    assert [r.epoch for r in keras_ckpt.list_checkpoints(tmp_path)] == [3]


def test_min_delta_against_the_worst_of_top_k(driven, tmp_path):
    driven([0.5, 0.4, 0.45, 0.38], top_k=2, min_delta=0.05)
    # 0.45 does not beat the worst kept (0.5) by 0.05; 0.38 beats 0.5 by 0.12.
    assert kept_epochs(tmp_path) == [2, 4]


def test_non_finite_values_are_never_saved(driven, tmp_path):
    with pytest.warns(UserWarning, match=r"is not finite; nothing saved") as caught:
        driven([math.nan, 0.4, math.inf], top_k=3)
    assert [str(w.message).split(" is")[0] for w in caught if w.category is UserWarning] == [
        "BestCheckpoint: val_loss=nan at epoch 1",
        "BestCheckpoint: val_loss=inf at epoch 3",
    ]
    assert kept_epochs(tmp_path) == [2]


# Bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"top_k": 0}, r"Argument `top_k` must be a positive integer\. Received: top_k=0"),
        ({"top_k": True}, r"Received: top_k=True"),
        ({"top_k": 2.0}, r"Received: top_k=2\.0"),
        (
            {"mode": "mx"},
            r"Argument `mode` must be one of 'auto', 'min', 'max'\. Received: mode='mx'",
        ),
        (
            {"min_delta": -1},
            r"Argument `min_delta` must be a finite number >= 0\. Received: min_delta=-1",
        ),
        ({"monitor": ""}, r"Argument `monitor` must be a non-empty string"),
        ({"verbose": 3}, r"Argument `verbose` must be one of 0, 1\. Received: verbose=3"),
        ({"save_weights_only": "yes"}, r"Argument `save_weights_only` must be True or False"),
        ({"filename": "x.keras", "save_weights_only": True}, r"must end in `\.weights\.h5`"),
        ({"filename": "{epoch"}, r"Argument `filename` is not a valid format template"),
        (
            {"filename": "sub/{epoch}"},
            r"Argument `filename` must be a file name without directories",
        ),
        (
            {"filename": "fixed", "top_k": 2},
            r"must contain a field such as \{epoch\} when `top_k` > 1",
        ),
    ],
)
def test_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        keras_ckpt.BestCheckpoint(tmp_path, **kwargs)


def test_directory_under_a_file(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match=r"Argument `directory` must be a directory.*is a file"):
        keras_ckpt.BestCheckpoint(tmp_path / "file" / "ckpt")


def test_load_best_without_best(tmp_path):
    with pytest.raises(FileNotFoundError, match="has no best checkpoint"):
        keras_ckpt.load_best(tmp_path)
    with pytest.raises(FileNotFoundError, match="No checkpoint directory"):
        keras_ckpt.list_checkpoints(tmp_path / "missing")


def test_load_best_refuses_a_corrupted_file(tmp_path, driven):
    driven([0.5])
    record = keras_ckpt.best_checkpoint(tmp_path)
    with open(record.path, "r+b") as file:
        file.seek(100)
        file.write(b"corrupt")
    with pytest.raises(keras_ckpt.CheckpointCorruptedError, match="SHA-256"):
        keras_ckpt.load_best(tmp_path)
