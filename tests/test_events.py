"""Checkpoint events in the logs: History and TensorBoard see what the callbacks did."""

import glob
import os

import keras
import pytest

import keras_ckpt


def fit(model, data, callbacks, epochs, **kwargs):
    x, y = data
    return model.fit(x, y, batch_size=32, epochs=epochs, verbose=0, callbacks=callbacks, **kwargs)


def events(history, name):
    return {
        key.removeprefix(f"ckpt/{name}_"): [int(v) for v in values]
        for key, values in history.history.items()
        if key.startswith(f"ckpt/{name}_")
    }


def test_best_checkpoint_events(tmp_path, make_model, data, scripted):
    sequence = [0.9, 0.7, 0.8, 0.6, 0.95, 0.5, 0.65]
    history = fit(
        make_model(),
        data,
        [scripted(sequence), keras_ckpt.BestCheckpoint(tmp_path, top_k=3)],
        epochs=len(sequence),
    )
    assert events(history, "best") == {
        "saved": [1, 1, 1, 1, 0, 1, 1],
        "kept": [1, 2, 3, 3, 3, 3, 3],
        "deleted": [0, 0, 0, 1, 0, 1, 1],
    }
    assert [r.epoch for r in keras_ckpt.list_checkpoints(tmp_path)] == [4, 6, 7]
    assert history.history["learning_rate"] == pytest.approx([0.01] * len(sequence))


def test_interval_checkpoint_events_and_clean_metrics(tmp_path, make_model, data):
    interval = keras_ckpt.IntervalCheckpoint(tmp_path / "i", keep_last=2, save_weights_only=True)
    best = keras_ckpt.BestCheckpoint(tmp_path / "b", monitor="loss", save_weights_only=True)
    history = fit(make_model(), data, [interval, best], epochs=4)
    assert events(history, "interval") == {
        "saved": [1, 1, 1, 1],
        "kept": [1, 2, 2, 2],
        "deleted": [0, 0, 1, 1],
    }
    # Events are not metrics: the checkpoints' manifest entries do not carry them.
    for directory in ("i", "b"):
        for record in keras_ckpt.list_checkpoints(tmp_path / directory):
            assert not [name for name in record.metrics if name.startswith("ckpt/")]


def test_resume_events_say_where_a_rerun_resumed(tmp_path, make_model, data):
    first = fit(make_model(), data, [keras_ckpt.ResumeFromLatest(tmp_path)], epochs=2)
    assert events(first, "resume") == {"saved": [1, 1], "resumed_from_step": [0, 0]}
    # Asked for more epochs, the rerun goes on from the finished run's last checkpoint.
    again = fit(make_model(), data, [keras_ckpt.ResumeFromLatest(tmp_path)], epochs=3)
    steps = keras_ckpt.list_checkpoints(tmp_path)[-2].step
    assert again.epoch == [0, 1, 2] and steps == 6  # 3 batches an epoch, 2 epochs
    # History continues the first run's epochs; the third is the rerun's.
    assert events(again, "resume") == {"saved": [1, 1, 1], "resumed_from_step": [0, 0, 6]}


def test_drop_ins_add_nothing_to_the_logs(tmp_path, make_model, data):
    history = fit(
        make_model(),
        data,
        [
            keras_ckpt.ModelCheckpoint(str(tmp_path / "m.keras")),
            keras_ckpt.BackupAndRestore(tmp_path / "backup"),
        ],
        epochs=2,
    )
    assert sorted(history.history) == ["loss", "mae"]  # not even the learning rate


def scalar_tags(log_dir):
    import tensorflow as tf

    tags = set()
    for path in glob.glob(os.path.join(log_dir, "train", "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            tags.update(value.tag for value in event.summary.value)
    return tags


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="TensorBoard writes with TF")
def test_tensorboard_listed_after_writes_the_events(tmp_path, make_model, data):
    log_dir = str(tmp_path / "logs")
    fit(
        make_model(),
        data,
        [
            keras_ckpt.BestCheckpoint(tmp_path / "best", monitor="loss"),
            keras_ckpt.IntervalCheckpoint(tmp_path / "interval"),
            keras.callbacks.TensorBoard(log_dir),
        ],
        epochs=2,
    )
    tags = scalar_tags(log_dir)
    assert {"epoch_ckpt/best_saved", "epoch_ckpt/interval_kept", "epoch_loss"} <= tags


def test_tensorboard_listed_before_gets_a_warning(tmp_path, make_model, data):
    with pytest.warns(UserWarning, match="TensorBoard is listed before BestCheckpoint"):
        fit(
            make_model(),
            data,
            [
                keras.callbacks.TensorBoard(str(tmp_path / "logs")),
                keras_ckpt.BestCheckpoint(tmp_path / "best", monitor="loss"),
            ],
            epochs=1,
        )
