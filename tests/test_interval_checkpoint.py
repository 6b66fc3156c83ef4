"""keras_ckpt.IntervalCheckpoint: triggers, retention, aliases, shared directories."""

import os

import keras
import pytest
from conftest import assert_weights_equal, needs_keras
from keras.src.utils.python_utils import is_default

import keras_ckpt
from keras_ckpt.policies import KeepEvery
from keras_ckpt.records import LOCK_NAME, MANIFEST_NAME

# The fixtures' data: 96 samples in batches of 32, so 3 steps per epoch.


def fit(model, data, callbacks, epochs, **kwargs):
    x, y = data
    return model.fit(x, y, batch_size=32, epochs=epochs, verbose=0, callbacks=callbacks, **kwargs)


def saved(directory):
    return [(r.epoch, r.batch, r.step) for r in keras_ckpt.list_checkpoints(directory)]


def test_every_epoch_by_default_with_latest_alias(tmp_path, make_model, data):
    model = make_model()
    fit(model, data, [keras_ckpt.IntervalCheckpoint(tmp_path)], epochs=4)
    assert saved(tmp_path) == [(1, None, 3), (2, None, 6), (3, None, 9), (4, None, 12)]
    assert os.path.samefile(tmp_path / "latest.keras", tmp_path / "epoch004-step000012.keras")
    assert_weights_equal(keras_ckpt.load_latest(tmp_path).get_weights(), model.get_weights())


@pytest.mark.parametrize(
    ("save_on_train_end", "expected"),
    [(True, [(2, None, 6), (4, None, 12), (5, None, 15)]), (False, [(2, None, 6), (4, None, 12)])],
)
def test_every_epochs_and_save_on_train_end(
    tmp_path, make_model, data, save_on_train_end, expected
):
    callback = keras_ckpt.IntervalCheckpoint(
        tmp_path, every_epochs=2, save_on_train_end=save_on_train_end
    )
    fit(make_model(), data, [callback], epochs=5)
    assert saved(tmp_path) == expected


def test_save_on_train_end_after_early_stopping(tmp_path, make_model, data, scripted):
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=1)
    callback = keras_ckpt.IntervalCheckpoint(tmp_path, every_epochs=10)
    fit(
        make_model(),
        data,
        [scripted([0.5, 0.6, 0.7, 0.8]), stop, callback],
        epochs=10,
        validation_data=(data[0][:8], data[1][:8]),
    )
    assert saved(tmp_path) == [(2, None, 6)]


def test_every_steps_saves_mid_epoch_with_the_state_of_that_step(tmp_path, make_model, data):
    class WeightsByStep(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.weights, self.step = {}, 0

        def on_train_batch_end(self, batch, logs=None):
            self.step += 1
            self.weights[self.step] = [w.copy() for w in self.model.get_weights()]

    by_step = WeightsByStep()
    callback = keras_ckpt.IntervalCheckpoint(tmp_path, every_steps=4, save_weights_only=True)
    model = make_model()
    fit(model, data, [callback, by_step], epochs=4)
    # Steps 4 and 8 fall inside epochs 2 and 3; step 12 ends epoch 4.
    assert saved(tmp_path) == [(2, 1, 4), (3, 2, 8), (4, None, 12)]
    for record in keras_ckpt.list_checkpoints(tmp_path):
        fresh = keras_ckpt.load_checkpoint(record, make_model(seed=9))
        assert_weights_equal(fresh.get_weights(), by_step.weights[record.step])
        assert int(fresh.optimizer.iterations.numpy()) == record.step


def test_a_step_hit_by_several_triggers_is_saved_once(tmp_path, make_model, data):
    callback = keras_ckpt.IntervalCheckpoint(tmp_path, every_epochs=1, every_steps=3)
    fit(make_model(), data, [callback], epochs=3)
    assert saved(tmp_path) == [(1, None, 3), (2, None, 6), (3, None, 9)]


def test_time_trigger_with_an_injected_clock(tmp_path, make_model, data):
    class TenSecondsPerStep(keras.callbacks.Callback):
        """Time is 10 s per completed step, advanced before IntervalCheckpoint looks."""

        now = 0.0

        def on_train_batch_begin(self, batch, logs=None):
            TenSecondsPerStep.now = 10.0 * (self.epoch * 3 + batch)

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_epoch_end(self, epoch, logs=None):
            TenSecondsPerStep.now = 10.0 * (epoch + 1) * 3

    callback = keras_ckpt.IntervalCheckpoint(
        tmp_path, every_seconds=45, clock=lambda: TenSecondsPerStep.now
    )
    fit(make_model(), data, [TenSecondsPerStep(), callback], epochs=4)
    # Due at 50 s (step 5) and 100 s (step 10); step 12 is the save at the end of training.
    assert saved(tmp_path) == [(2, 2, 5), (4, 1, 10), (4, None, 12)]


def test_keep_last_and_keep_every_by_epoch(tmp_path, make_model, data):
    callback = keras_ckpt.IntervalCheckpoint(tmp_path, keep_last=2, keep_every=3)
    fit(make_model(), data, [callback], epochs=7)
    assert [epoch for epoch, _, _ in saved(tmp_path)] == [3, 6, 7]
    assert sorted(os.listdir(tmp_path)) == [
        LOCK_NAME,
        "epoch003-step000009.keras",
        "epoch006-step000018.keras",
        "epoch007-step000021.keras",
        MANIFEST_NAME,
        "latest.keras",
    ]


def test_keep_every_by_step_when_saving_by_steps(tmp_path, make_model, data):
    callback = keras_ckpt.IntervalCheckpoint(tmp_path, every_steps=2, keep_last=1, keep_every=6)
    fit(make_model(), data, [callback], epochs=4)
    assert [step for _, _, step in saved(tmp_path)] == [6, 12]


def test_custom_retention_policy(tmp_path, make_model, data):
    callback = keras_ckpt.IntervalCheckpoint(tmp_path, retention=KeepEvery(2, by="epoch"))
    fit(make_model(), data, [callback], epochs=5)
    # The newest checkpoint is never dropped, whatever the policy says.
    assert [epoch for epoch, _, _ in saved(tmp_path)] == [2, 4, 5]


@pytest.mark.parametrize("async_save, most_files", [(False, 6), (True, 8)])
def test_disk_use_stays_bounded_over_a_long_run(tmp_path, make_model, data, async_save, most_files):
    class CountFiles(keras.callbacks.Callback):
        counts = []

        def on_epoch_end(self, epoch, logs=None):
            self.counts.append(len(os.listdir(tmp_path)))

    counter = CountFiles()
    callback = keras_ckpt.IntervalCheckpoint(
        tmp_path, keep_last=3, save_weights_only=True, async_save=async_save
    )
    fit(make_model(), data, [callback, counter], epochs=50)
    # 3 checkpoints + the latest alias + the manifest + the writer lock at every epoch end. With
    # async saving the
    # previous epoch's save may be in flight, which adds two at most: its checkpoint (temporary,
    # or committed before the oldest is released) and one temporary file of the store's own
    # (the manifest's or the alias's, written beside it and renamed over it).
    assert max(counter.counts) <= most_files
    assert len(os.listdir(tmp_path)) == 6  # fit returned: nothing in flight
    assert [epoch for epoch, _, _ in saved(tmp_path)] == [48, 49, 50]


def test_shares_a_directory_with_best_checkpoint(tmp_path, make_model, data, scripted):
    best = keras_ckpt.BestCheckpoint(tmp_path, top_k=1)
    interval = keras_ckpt.IntervalCheckpoint(tmp_path, keep_last=1)
    fit(
        make_model(),
        data,
        [scripted([0.5, 0.2, 0.4, 0.3, 0.6]), best, interval],
        epochs=5,
        validation_data=(data[0][:8], data[1][:8]),
    )
    best_record = keras_ckpt.best_checkpoint(tmp_path)
    latest_record = keras_ckpt.latest_checkpoint(tmp_path)
    assert best_record.epoch == 2 and latest_record.epoch == 5
    assert sorted(os.listdir(tmp_path)) == sorted(
        [
            best_record.filename,
            latest_record.filename,
            "best.keras",
            "latest.keras",
            MANIFEST_NAME,
            LOCK_NAME,
        ]
    )
    keras_ckpt.load_best(tmp_path)
    keras_ckpt.load_latest(tmp_path)


@needs_keras((3, 6), "batch hooks are marked default, for asynchronous dispatch")
def test_batch_hooks_only_for_step_or_time_triggers():
    epoch_only = keras_ckpt.IntervalCheckpoint("unused", every_epochs=2)
    assert is_default(epoch_only.on_train_batch_begin)
    assert is_default(epoch_only.on_train_batch_end)
    by_steps = keras_ckpt.IntervalCheckpoint("unused", every_steps=100)
    assert not is_default(by_steps.on_train_batch_begin)
    # The batch-end hook stays Keras's default, so asynchronous dispatch stays on.
    assert is_default(by_steps.on_train_batch_end)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"every_epochs": 0},
            r"Argument `every_epochs` must be a positive integer\. Received: every_epochs=0",
        ),
        (
            {"every_steps": True},
            r"Argument `every_steps` must be a positive integer\. Received: every_steps=True",
        ),
        ({"every_steps": 2.5}, r"Received: every_steps=2\.5"),
        (
            {"every_seconds": -1},
            r"Argument `every_seconds` must be a number > 0\. Received: every_seconds=-1",
        ),
        ({"every_seconds": "60"}, r"Received: every_seconds='60'"),
        ({"every_seconds": float("inf")}, r"Argument `every_seconds` must be finite"),
        ({"keep_last": 0}, r"Argument `keep_last` must be a positive integer"),
        (
            {"keep_last": 2, "keep_every": False},
            r"Argument `keep_every` must be a positive integer",
        ),
        ({"keep_every": 5}, r"Argument `keep_every` only matters together with `keep_last`"),
        ({"keep_last": 2, "retention": KeepEvery(2)}, r"Pass either `retention` or `keep_last`"),
        ({"retention": "latest"}, r"Argument `retention` must have a `keep\(records\)` method"),
        ({"save_on_train_end": 1}, r"Argument `save_on_train_end` must be True or False"),
        ({"verbose": 2}, r"Argument `verbose` must be one of 0, 1"),
        ({"filename": "a/b"}, r"Argument `filename` must be a file name without directories"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        keras_ckpt.IntervalCheckpoint(tmp_path, **kwargs)


def test_load_latest_without_latest(tmp_path):
    with pytest.raises(FileNotFoundError, match="has no latest checkpoint"):
        keras_ckpt.load_latest(tmp_path)


def test_a_loop_of_one_epoch_fits_is_one_run(tmp_path, make_model, data):
    model = make_model()
    every = keras_ckpt.IntervalCheckpoint(tmp_path / "all", every_steps=4)
    rolling = keras_ckpt.IntervalCheckpoint(tmp_path / "rolling", every_steps=4, keep_last=2)
    for _ in range(4):
        fit(model, data, [every, rolling], epochs=1)
    # Steps continue over the fits (3 per fit): saves at steps 4 and 8 and at the end of every
    # fit (3, 6, 9, 12).
    assert [step for _, _, step in saved(tmp_path / "all")] == [3, 4, 6, 8, 9, 12]
    assert len({r.run for r in keras_ckpt.list_checkpoints(tmp_path / "all")}) == 1
    # keep_last spans the fits.
    assert [step for _, _, step in saved(tmp_path / "rolling")] == [9, 12]


def test_steps_count_batches_with_gradient_accumulation(tmp_path, data):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(gradient_accumulation_steps=2), loss="mse")
    callback = keras_ckpt.IntervalCheckpoint(tmp_path, every_steps=2, save_on_train_end=False)
    fit(model, data, [callback], epochs=2)
    assert saved(tmp_path) == [(1, 2, 2), (2, 1, 4), (2, None, 6)]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"filename": "fixed"}, r"must contain \{epoch\} or \{step\}"),
        ({"filename": "ep{epoch}", "every_steps": 10}, r"must contain \{step\} when saving by"),
        ({"filename": "e{epoch}b{batch}", "every_seconds": 60}, r"must contain \{step\} when"),
    ],
)
def test_filename_must_tell_saves_apart(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        keras_ckpt.IntervalCheckpoint(tmp_path, **kwargs)


def test_the_checkpoint_a_new_run_started_from_is_never_deleted(tmp_path, make_model, data):
    fit(make_model(), data, [keras_ckpt.IntervalCheckpoint(tmp_path, keep_last=1)], epochs=2)
    started_from = keras_ckpt.latest_checkpoint(tmp_path)
    model = keras_ckpt.load_latest(tmp_path)
    fit(model, data, [keras_ckpt.IntervalCheckpoint(tmp_path, keep_last=1)], epochs=3)
    records = keras_ckpt.list_checkpoints(tmp_path)
    assert started_from in records
    keras_ckpt.store.verify(started_from)
    # The new run rotated its own checkpoints only, and `latest` moved to its newest.
    assert [r.step for r in records if r.run != started_from.run] == [9]
    assert keras_ckpt.latest_checkpoint(tmp_path).run != started_from.run
