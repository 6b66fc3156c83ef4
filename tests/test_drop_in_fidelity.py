"""The drop-in classes have Keras's public attributes with Keras's meaning, raise instances of the
exception classes Keras raises, and print their messages where Keras prints its own."""

import logging

import keras
import numpy as np
import pytest

import keras_ckpt
from keras_ckpt import keras_adapter
from keras_ckpt.schedules import StepDecay


def compiled_model(learning_rate=0.1):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(learning_rate), loss="mse", metrics=["mae"])
    return model


def data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(32, 4)).astype("float32"), rng.normal(size=(32, 1)).astype("float32")


def public_attributes(callback):
    return {name for name in vars(callback) if not name.startswith("_")} - {"model", "params"}


# Public attributes ---------------------------------------------------------------------------

CLASSES = [
    ("EarlyStopping", {}),
    ("ReduceLROnPlateau", {}),
    ("LearningRateScheduler", {"schedule": lambda epoch: 0.1}),
    ("BackupAndRestore", {"backup_dir": "backup"}),
    ("SwapEMAWeights", {"swap_on_epoch": True}),
]


@pytest.mark.parametrize(("name", "kwargs"), CLASSES)
def test_every_public_attribute_of_keras_s_class_is_there(name, kwargs):
    theirs = getattr(keras.callbacks, name)(**kwargs)
    ours = getattr(keras_ckpt, name)(**kwargs)
    model = compiled_model()
    for callback in (theirs, ours):
        callback.set_model(model)
    # EarlyStopping sets best_epoch in on_train_begin; compared after construction and after it.
    assert public_attributes(theirs) - public_attributes(ours) == set()
    if name in ("EarlyStopping", "ReduceLROnPlateau"):
        theirs.on_train_begin()
        ours.on_train_begin()
        assert public_attributes(theirs) - public_attributes(ours) == set()


MONITORED = [
    ("min", "val_loss", [1.0, 0.9, 0.95, 0.97, 0.85, 0.96, 0.97, 0.98]),
    ("max", "val_mae", [0.1, 0.2, 0.15, 0.25, 0.2, 0.2, 0.21, 0.19]),
    ("auto", "val_loss", [1.0, 0.9, 0.91, 0.92, 0.93, 0.8, 0.81, 0.82]),
]
ATTRIBUTES = {
    "EarlyStopping": ("monitor_op", "min_delta", "best", "wait", "stopped_epoch", "best_epoch"),
    "ReduceLROnPlateau": ("monitor_op", "min_delta", "best", "wait", "cooldown_counter"),
}


@pytest.mark.parametrize("name", sorted(ATTRIBUTES))
@pytest.mark.parametrize(("mode", "monitor", "values"), MONITORED)
def test_attributes_mean_what_they_mean_in_keras(name, mode, monitor, values):
    kwargs = {"monitor": monitor, "mode": mode, "min_delta": 0.02, "patience": 2}
    if name == "ReduceLROnPlateau":
        kwargs["cooldown"] = 1
    else:
        kwargs["baseline"] = values[0] + (0.05 if mode == "max" else -0.05)
    callbacks = [getattr(keras.callbacks, name)(**kwargs), getattr(keras_ckpt, name)(**kwargs)]
    for callback in callbacks:
        callback.set_model(compiled_model())
        assert (callback.monitor_op, callback.min_delta) == (None, 0.02)  # before the first epoch
        callback.on_train_begin()
    for epoch, value in enumerate(values):
        seen = []
        for callback in callbacks:
            callback.on_epoch_end(epoch, {monitor: value, "loss": 1.0})
            seen.append({a: getattr(callback, a) for a in ATTRIBUTES[name]})
        theirs, ours = seen
        assert ours == pytest.approx(theirs), f"epoch {epoch}"
    op = callbacks[1].monitor_op
    assert op is (keras.ops.greater if mode == "max" else keras.ops.less)
    assert callbacks[1].min_delta == (0.02 if mode == "max" else -0.02)


def test_a_negative_min_delta_counts_as_its_size_as_in_keras():
    stop = keras_ckpt.EarlyStopping(monitor="val_loss", min_delta=-0.5, patience=0)
    stop.set_model(compiled_model())
    stop.on_train_begin()
    stop.on_epoch_end(0, {"val_loss": 1.0})
    stop.on_epoch_end(1, {"val_loss": 0.7})  # better by 0.3: not by the 0.5 asked for
    assert (stop.min_delta, stop.best, stop.stopped_epoch) == (-0.5, 1.0, 1)


# Exception classes ---------------------------------------------------------------------------


def test_scheduler_on_a_schedule_driven_optimizer_raises_keras_s_type_error():
    x, y = data()
    errors = []
    for scheduler in (keras.callbacks.LearningRateScheduler, keras_ckpt.LearningRateScheduler):
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
        model.compile(optimizer=keras.optimizers.SGD(StepDecay(0.1, [5])), loss="mse")
        with pytest.raises(TypeError, match="created with a `LearningRateSchedule`") as raised:
            model.fit(x, y, epochs=1, verbose=0, callbacks=[scheduler(lambda epoch, lr: lr / 2)])
        errors.append(raised.value)
    ours = errors[1]
    assert isinstance(ours, type(errors[0]))  # Keras's own class: TypeError
    assert isinstance(ours, ValueError)  # and like every argument error of keras_ckpt
    assert "Pass the schedule to LearningRateScheduler" in str(ours)


# Messages ------------------------------------------------------------------------------------


@pytest.fixture
def keras_output_to_logging(caplog):
    """Keras's output routed to logging, as ``keras.config.disable_interactive_logging()`` does;
    yields the records caught."""
    keras.config.disable_interactive_logging()
    caplog.set_level(logging.INFO)
    try:
        yield caplog
    finally:
        keras.config.enable_interactive_logging()


def messages(caplog):
    return "\n".join(record.getMessage() for record in caplog.records)


def test_messages_go_where_keras_s_go(keras_output_to_logging, capsys, tmp_path):
    x, y = data()
    model = compiled_model()
    stop = keras_ckpt.EarlyStopping(
        monitor="loss", patience=0, verbose=1, mode="max", restore_best_weights=True
    )
    callbacks = [
        keras_ckpt.LearningRateScheduler(lambda epoch: 0.05, verbose=1),
        keras_ckpt.ReduceLROnPlateau(monitor="loss", patience=0, mode="max", verbose=1),
        keras_ckpt.ResumeFromLatest(tmp_path, verbose=1),
        keras_ckpt.ModelCheckpoint(
            str(tmp_path / "model.keras"), monitor="loss", save_best_only=True, verbose=1
        ),
        stop,
    ]
    model.fit(x, y, epochs=3, verbose=0, callbacks=callbacks)
    logged = messages(keras_output_to_logging)
    for expected in (
        "Epoch 1: LearningRateScheduler setting learning rate to 0.05.",
        "ReduceLROnPlateau reducing learning rate to",
        "ResumeFromLatest saved",
        "Epoch 1: loss improved from None to",
        "finished saving model to",
        f"Epoch {stop.stopped_epoch + 1}: early stopping (patience)",
        "Restoring model weights from the end of the best epoch: 1.",
    ):
        assert expected in logged
    assert capsys.readouterr().out == ""


def test_messages_are_printed_while_keras_prints(capsys):
    keras_adapter.print_message("Epoch 1: a message")
    assert capsys.readouterr().out == "Epoch 1: a message\n"


def test_messages_are_printed_where_keras_s_printing_is_missing(monkeypatch, capsys):
    monkeypatch.setattr(keras_adapter, "PRINT_MESSAGE_SUPPORTED", False)
    keras.config.disable_interactive_logging()  # ignored: there is no Keras printing to follow
    try:
        keras_adapter.print_message("Epoch 1: a message")
    finally:
        keras.config.enable_interactive_logging()
    assert capsys.readouterr().out == "Epoch 1: a message\n"


# BackupAndRestore._current_epoch -------------------------------------------------------------


class EpochSeen(keras.callbacks.Callback):
    def __init__(self, backup):
        super().__init__()
        self.backup, self.seen = backup, []

    def on_epoch_begin(self, epoch, logs=None):
        self.seen.append(self.backup._current_epoch)


class StopAfter(keras.callbacks.Callback):
    def __init__(self, epochs):
        super().__init__()
        self.epochs = epochs

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.epochs:
            raise RuntimeError("interrupted")


def test_backup_and_restore_current_epoch_is_the_epoch_a_restore_continues_at(tmp_path):
    x, y = data()
    backup = keras_ckpt.BackupAndRestore(tmp_path / "backup")
    assert backup._current_epoch == 0
    with pytest.raises(RuntimeError):
        compiled_model().fit(x, y, epochs=5, verbose=0, callbacks=[backup, StopAfter(3)])
    assert backup._current_epoch == 3
    # A new callback, as in a new process: the counter comes from the checkpoint (Keras's
    # starts at 0 again); the epoch-3 save was not taken (it is taken as epoch 4 begins).
    again = keras_ckpt.BackupAndRestore(tmp_path / "backup")
    seen = EpochSeen(again)
    compiled_model().fit(x, y, epochs=5, verbose=0, callbacks=[again, seen])
    assert seen.seen == [2, 3, 4] and again._current_epoch == 5
