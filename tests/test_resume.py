"""ResumeFromLatest: exact continuation after interruptions, crash safety, callback states."""

import json
import os
import random
import signal
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import Crash, another_process_writing, assert_weights_equal, run_child_script
from resume_setup import make_resume_model, resume_data

import keras_ckpt
from keras_ckpt.schedules import WarmupCosine
from keras_ckpt.writer import WRITER


@pytest.fixture(autouse=True, scope="module")
def deterministic_ops():
    tf.config.experimental.enable_op_determinism()


@pytest.fixture
def data():
    return resume_data()


make_model = make_resume_model


def fit(model, data, callbacks, epochs=5, **kwargs):
    x, y = data
    try:
        return model.fit(
            x,
            y,
            batch_size=16,
            epochs=epochs,
            shuffle=False,
            verbose=0,
            callbacks=callbacks,
            **kwargs,
        )
    finally:
        # A simulated crash skips on_train_end: let the save in flight land, as the writer
        # thread would before the interpreter exits, so the directory is the same every time.
        WRITER.wait()


def reference_weights(data, epochs=5):
    model = make_model()
    fit(model, data, [], epochs=epochs)
    return model.get_weights()


@pytest.mark.parametrize(
    ("crash_step", "resume_epoch", "resume_batch"),
    # Saves come every 3 batches and at epoch ends (5 batches each). Crash before batch 10:
    # resume at the start of epoch index 2; before 13: after batch 12 (epoch 2, batch 2);
    # before 19: after batch 18 (epoch 3, batch 3).
    [(10, 2, 0), (13, 2, 2), (19, 3, 3)],
)
def test_resume_is_bit_identical(tmp_path, data, crash_step, resume_epoch, resume_batch):
    expected = reference_weights(data)
    crashed = make_model()
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(crashed, data, [keras_ckpt.ResumeFromLatest(tmp_path, save_freq=3), Crash(crash_step)])
    model = make_model(seed=1)  # the rerun builds its model afresh
    resume = keras_ckpt.ResumeFromLatest(tmp_path, save_freq=3)
    history = fit(model, data, [resume])
    state = resume.resumed_from.state
    assert (state["epoch"], state["batch"]) == (resume_epoch, resume_batch)
    # History continues: it lists every epoch, those before the crash included.
    assert history.epoch == [0, 1, 2, 3, 4]
    before_crash = crashed.history.history["loss"][:resume_epoch]
    assert len(before_crash) == resume_epoch
    assert history.history["loss"][:resume_epoch] == pytest.approx(before_crash)
    assert_weights_equal(model.get_weights(), expected)
    assert model._initial_epoch is None  # a later plain fit starts at epoch 0


def test_finished_run_does_not_train_again(tmp_path, data, capsys):
    expected = reference_weights(data)
    fit(make_model(), data, [keras_ckpt.ResumeFromLatest(tmp_path)])
    model = make_model(seed=1)
    history = fit(model, data, [keras_ckpt.ResumeFromLatest(tmp_path)])
    assert history.epoch == []
    assert "already finished (5 epochs)" in capsys.readouterr().out
    assert_weights_equal(model.get_weights(), expected)
    # Asking for more epochs trains on, exactly as one longer run would.
    history = fit(model, data, [keras_ckpt.ResumeFromLatest(tmp_path)], epochs=7)
    assert history.epoch == list(range(7))  # History continues too
    assert_weights_equal(model.get_weights(), reference_weights(data, epochs=7))


def test_step_schedules_and_step_triggers_continue_exactly_in_a_resumed_epoch(tmp_path, data):
    """Per-step learning rates and every-N-steps saves follow the uninterrupted run's steps in
    the epoch a run resumes midway, whose trained batches fit reads again without training."""

    def callbacks(run, crash=None):
        return [
            keras_ckpt.ResumeFromLatest(tmp_path / run / "resume", save_freq=3),
            keras_ckpt.IntervalCheckpoint(tmp_path / run / "interval", every_steps=2),
            keras_ckpt.LearningRateScheduler(WarmupCosine(0.05, 25, warmup_steps=5), per="step"),
            *([Crash(crash)] if crash else []),
        ]

    reference = make_model()
    expected = fit(reference, data, callbacks("whole"))
    with pytest.raises(RuntimeError, match="simulated crash"):
        # Resumes after batch 18: epoch 4's first 3 batches are read again without training.
        fit(make_model(), data, callbacks("resumed", crash=19))
    model = make_model(seed=1)
    history = fit(model, data, callbacks("resumed"))
    assert history.history["learning_rate"] == expected.history["learning_rate"]
    assert_weights_equal(model.get_weights(), reference.get_weights())

    def steps(run):
        return [r.step for r in keras_ckpt.list_checkpoints(tmp_path / run / "interval")]

    assert steps("whole") == list(range(2, 26, 2)) + [25]
    assert sorted(steps("resumed")) == steps("whole")
    # Nothing is saved while batches are read again (that state is the one resumed from): in
    # epoch 4 (steps 16 to 20) the rerun saves only what comes after step 18.
    assert expected.history["ckpt/interval_saved"][3] == 3  # steps 16, 18 and 20
    assert history.history["ckpt/interval_saved"][3] == 1  # step 20
    assert expected.history["ckpt/resume_saved"][3] == 2  # steps 18 and 20
    assert history.history["ckpt/resume_saved"][3] == 1  # step 20


def test_only_one_resuming_callback_per_fit(tmp_path, data):
    callbacks = [
        keras_ckpt.ResumeFromLatest(tmp_path / "a"),
        keras_ckpt.BackupAndRestore(tmp_path / "b"),
    ]
    with pytest.raises(ValueError, match=r"Only one ResumeFromLatest or BackupAndRestore"):
        fit(make_model(), data, callbacks)


@pytest.mark.parametrize("ending", ["stops", "raises"])
def test_a_fit_that_ends_during_the_replay_leaves_the_model_as_it_was(tmp_path, data, ending):
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(make_model(), data, [keras_ckpt.ResumeFromLatest(tmp_path, save_freq=3), Crash(4)])

    class StopAtOnce(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            self.model.stop_training = True  # during the replay of batches 1 to 3

    model = make_model()
    resume = keras_ckpt.ResumeFromLatest(tmp_path, save_freq=3)
    if ending == "stops":
        fit(model, data, [resume, StopAtOnce()])
    else:  # no on_train_end: Keras has no hook for a fit that raises
        with pytest.raises(RuntimeError, match="simulated crash"):
            fit(model, data, [resume, Crash(0)])
    before = model.get_weights()
    history = fit(model, data, [], epochs=1)  # a plain fit afterwards trains every batch
    assert int(model.optimizer.iterations) == 3 + 5
    assert history.epoch == [0]
    assert not all(np.array_equal(a, b) for a, b in zip(before, model.get_weights(), strict=True))


@pytest.mark.parametrize("stop_first", [True, False], ids=["stop-before", "stop-after"])
def test_callback_states_continue(tmp_path, data, scripted, stop_first):
    sequence = [0.9, 0.8, 0.85, 0.7, 0.75, 0.76, 0.8, 0.9, 0.95, 0.99]
    whole = keras_ckpt.EarlyStopping(monitor="loss", patience=3)
    expected_epochs = fit(make_model(), data, [scripted(sequence, "loss"), whole], epochs=10).epoch

    def callbacks(crash):
        # Whether EarlyStopping comes before or after ResumeFromLatest, its state is saved
        # after its own on_epoch_end and restored all the same.
        stop = keras_ckpt.EarlyStopping(monitor="loss", patience=3)
        best = keras_ckpt.BestCheckpoint(tmp_path / "best", monitor="loss", top_k=2)
        extra = [Crash(crash)] if crash else []
        resume = keras_ckpt.ResumeFromLatest(tmp_path / "resume")
        ordered = [stop, best, resume] if stop_first else [best, resume, stop]
        return [scripted(sequence, "loss"), *ordered, *extra], stop, best

    crashing, _, _ = callbacks(crash=22)  # during epoch 5 (index 4)
    with pytest.raises(RuntimeError):
        fit(make_model(), data, crashing, epochs=10)
    rerun, stop, best = callbacks(crash=None)
    history = fit(make_model(seed=1), data, rerun, epochs=10)
    assert history.epoch[-1] == expected_epochs[-1]
    assert (stop.stopped_epoch, stop.best) == (whole.stopped_epoch, whole.best)
    # One top-2 over both processes: one run id, the two best epochs (0.7 and 0.75).
    kept = keras_ckpt.list_checkpoints(tmp_path / "best")
    assert [r.epoch for r in kept] == [4, 5] and len({r.run for r in kept}) == 1


def test_corrupted_newest_checkpoint_falls_back(tmp_path, data):
    expected = reference_weights(data)
    with pytest.raises(RuntimeError):
        fit(make_model(), data, [keras_ckpt.ResumeFromLatest(tmp_path, save_freq=3), Crash(16)])
    newest = keras_ckpt.list_checkpoints(tmp_path)[-1]
    with open(newest.path, "r+b") as file:
        file.seek(newest.size // 2)
        file.write(b"\xffcorrupt" * 8)
    resume = keras_ckpt.ResumeFromLatest(tmp_path, save_freq=3)
    model = make_model(seed=1)
    with pytest.warns(UserWarning, match=f"skipping {newest.path}: .*SHA-256"):
        fit(model, data, [resume])
    assert resume.resumed_from.step < newest.step
    assert_weights_equal(model.get_weights(), expected)


def test_another_architecture_is_a_clear_error(tmp_path, data):
    fit(make_model(), data, [keras_ckpt.ResumeFromLatest(tmp_path)], epochs=1)
    before = {r.filename: r.sha256 for r in keras_ckpt.list_checkpoints(tmp_path)}
    wider = keras.Sequential([keras.Input((4,)), keras.layers.Dense(32), keras.layers.Dense(1)])
    wider.compile(optimizer="adam", loss="mse")
    with pytest.raises(
        ValueError, match=r"different architecture \(variable 0 is .*\[4, 32\] here"
    ):
        fit(wider, data, [keras_ckpt.ResumeFromLatest(tmp_path)])
    assert {r.filename: r.sha256 for r in keras_ckpt.list_checkpoints(tmp_path)} == before


def test_directory_is_a_checkpoint_store(tmp_path, data):
    fit(make_model(), data, [keras_ckpt.ResumeFromLatest(tmp_path, keep_last=2)], epochs=3)
    records = keras_ckpt.list_checkpoints(tmp_path)
    # The end-of-training save replaces the last epoch's (same step, now marked finished).
    assert [(r.epoch, r.step, r.state["epoch"]) for r in records] == [(2, 10, 2), (3, 15, 3)]
    assert records[-1].state["finished"] == 3 and records[0].state["finished"] is None
    fresh = make_model(seed=3)
    keras_ckpt.load_latest(tmp_path, model=fresh)  # plain .weights.h5 files
    assert int(fresh.optimizer.iterations.numpy()) == 15


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"save_freq": 0},
            r"Argument `save_freq` must be a positive integer\. Received: save_freq=0",
        ),
        ({"save_freq": True}, r"Received: save_freq=True"),
        ({"save_freq": "batch"}, r"Received: save_freq='batch'"),
        (
            {"every_seconds": 0},
            r"Argument `every_seconds` must be a number > 0\. Received: every_seconds=0",
        ),
        ({"keep_last": 0}, r"Argument `keep_last` must be a positive integer"),
        ({"handle_signals": "yes"}, r"Argument `handle_signals` must be True or False"),
        ({"verbose": 2}, r"Argument `verbose` must be one of 0, 1"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        keras_ckpt.ResumeFromLatest(tmp_path, **kwargs)


# Real processes ------------------------------------------------------------------------


def run_child(directory, output, mode, point=0):
    return run_child_script("resume_child.py", directory, output, mode, point)


def load_npz(path):
    with np.load(path) as arrays:
        return [arrays[f"arr_{i}"] for i in range(len(arrays.files))]


@pytest.mark.slow
def test_sigkill_and_sigterm_then_rerun_match_an_uninterrupted_run(tmp_path):
    reference = run_child(tmp_path / "reference", tmp_path / "reference.npz", "plain")
    assert reference.returncode == 0, reference.stderr
    expected = load_npz(tmp_path / "reference.npz")
    seeded = random.Random(2026)
    cases = [
        ("kill", seeded.randrange(1, 30)),
        ("kill", seeded.randrange(1, 30)),
        ("save-kill", 5),
        ("save-kill", 9),
        ("term", seeded.randrange(1, 30)),
    ]
    for index, (mode, point) in enumerate(cases):
        directory, output = tmp_path / f"run{index}", tmp_path / f"run{index}.npz"
        first = run_child(directory, output, mode, point)
        if mode == "term":
            assert first.returncode == 0 and "fit returned" in first.stdout, first.stderr
        else:
            assert first.returncode == -signal.SIGKILL, (mode, point, first.stderr[-2000:])
        rerun = run_child(directory, output, "plain")
        assert rerun.returncode == 0, (mode, point, rerun.stderr[-2000:])
        assert_weights_equal(load_npz(output), expected)


# BackupAndRestore -----------------------------------------------------------------------


def test_backup_and_restore_resumes_exactly_and_deletes_its_files(tmp_path, data):
    expected = reference_weights(data)
    backup = tmp_path / "backup"
    with pytest.raises(RuntimeError):
        fit(make_model(), data, [keras_ckpt.BackupAndRestore(backup, save_freq=3), Crash(17)])
    assert [r.state["batch"] for r in keras_ckpt.list_checkpoints(backup)] == [0]  # keeps 1
    model = make_model(seed=1)
    history = fit(model, data, [keras_ckpt.BackupAndRestore(backup, save_freq=3)])
    assert history.epoch == [0, 1, 2, 3, 4]  # resumed in epoch index 3, after its first batch
    assert_weights_equal(model.get_weights(), expected)
    assert not backup.exists()  # delete_checkpoint=True, nothing else was in it
    assert model._initial_epoch is None


def test_backup_and_restore_second_interruption_keeps_the_epoch(tmp_path, data):
    # Keras restarts from epoch 0 after a second interruption in a new process.
    expected = reference_weights(data)
    # The first process dies in epoch index 1; the second resumes there (epoch-end saves only)
    # and dies 9 batches later, in epoch index 2.
    for crash in (7, 9):
        with pytest.raises(RuntimeError):
            fit(make_model(), data, [keras_ckpt.BackupAndRestore(tmp_path), Crash(crash)])
    model = make_model(seed=1)
    history = fit(model, data, [keras_ckpt.BackupAndRestore(tmp_path, delete_checkpoint=False)])
    assert history.epoch == [0, 1, 2, 3, 4]
    assert_weights_equal(model.get_weights(), expected)


def test_backup_and_restore_leaves_other_files_alone(tmp_path, data):
    (tmp_path / "notes.txt").write_text("mine")
    fit(make_model(), data, [keras_ckpt.BackupAndRestore(tmp_path)], epochs=2)
    assert sorted(os.listdir(tmp_path)) == [".keras_ckpt.lock", "keras_ckpt.json", "notes.txt"]


def test_backup_and_restore_double_checkpoint_keeps_two(tmp_path, data):
    callback = keras_ckpt.BackupAndRestore(
        tmp_path, double_checkpoint=True, delete_checkpoint=False
    )
    fit(make_model(), data, [callback], epochs=3)
    assert len(keras_ckpt.list_checkpoints(tmp_path)) == 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"backup_dir": ""}, "Empty `backup_dir` argument passed"),
        ({"backup_dir": None}, "Empty `backup_dir` argument passed"),
        ({"backup_dir": "b", "save_freq": "invalid"}, "Invalid value for argument `save_freq`"),
        ({"backup_dir": "b", "save_freq": 0}, "Invalid value for argument `save_freq`"),
        ({"backup_dir": "b", "save_freq": True}, "Invalid value for argument `save_freq`"),
    ],
)
def test_backup_and_restore_errors_match_keras(kwargs, message):
    with pytest.raises(ValueError, match=message):
        keras_ckpt.BackupAndRestore(**kwargs)


def test_shuffled_numpy_inputs_resume_exactly_with_a_global_seed(tmp_path, data):
    # TensorFlow replays the seeded permutation every epoch, so the skipped batches are the
    # ones trained before the crash.
    def run(callbacks):
        model = make_model()
        x, y = data
        model.fit(x, y, batch_size=16, epochs=5, shuffle=True, verbose=0, callbacks=callbacks)
        return model

    expected = run([]).get_weights()
    with pytest.raises(RuntimeError):
        run([keras_ckpt.ResumeFromLatest(tmp_path, save_freq=3), Crash(13)])
    assert_weights_equal(
        run([keras_ckpt.ResumeFromLatest(tmp_path, save_freq=3)]).get_weights(), expected
    )


def test_tf_data_resume_warns_that_order_is_not_replayed(tmp_path, data):
    dataset = tf.data.Dataset.from_tensor_slices(data).batch(16)
    with pytest.raises(RuntimeError):
        make_model().fit(
            dataset,
            epochs=3,
            verbose=0,
            callbacks=[keras_ckpt.ResumeFromLatest(tmp_path), Crash(7)],
        )
    with pytest.warns(UserWarning, match="tf.data.Dataset. The epoch and step are resumed"):
        history = make_model().fit(
            dataset, epochs=3, verbose=0, callbacks=[keras_ckpt.ResumeFromLatest(tmp_path)]
        )
    assert history.epoch == [0, 1, 2]


def test_a_second_signal_goes_to_the_previous_handler(tmp_path, data):
    received = []

    def previous(signum, frame):
        received.append(signum)

    class TwoSignals(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            if batch == 2 and not received:
                signal.raise_signal(signal.SIGTERM)  # first: save at the next boundary, stop
                signal.raise_signal(signal.SIGTERM)  # second: straight to `previous`

    old = signal.signal(signal.SIGTERM, previous)
    try:
        resume = keras_ckpt.ResumeFromLatest(tmp_path)
        history = fit(make_model(), data, [TwoSignals(), resume])
        assert signal.getsignal(signal.SIGTERM) is previous  # put back after fit
    finally:
        signal.signal(signal.SIGTERM, old)
    assert received == [signal.SIGTERM]
    assert history.epoch == [0]  # stopped in the first epoch
    [record] = keras_ckpt.list_checkpoints(tmp_path)
    # Saved at the same batch boundary, before batch index 2 trained; not marked finished.
    assert (record.state["epoch"], record.state["batch"], record.state["finished"]) == (0, 2, None)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_exact_resume_on_other_backends(tmp_path, backend):
    # JAX shuffles NumPy inputs with np.random, PyTorch with its own CPU generator (which its
    # unseeded Dropout draws from too): the mid-epoch checkpoint's generator states as of the
    # epoch start let the resumed epoch draw the same permutation, and the states at the save
    # let Dropout continue.
    result = run_child_script("backend_child.py", backend, tmp_path / "run")
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith("shuffle=")]
    assert lines == [
        "shuffle=False epochs=[0, 1, 2, 3, 4] max_diff=0.0",
        "shuffle=True epochs=[0, 1, 2, 3, 4] max_diff=0.0",
    ]


@pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="JAX and PyTorch replay an unseeded shuffle: nothing to warn about",
)
def test_unseeded_shuffled_mid_epoch_resume_warns(tmp_path, data, monkeypatch):
    from keras.src.backend.common import global_state

    x, y = data
    with pytest.raises(RuntimeError):
        make_model().fit(
            x,
            y,
            batch_size=16,
            epochs=3,
            shuffle=True,
            verbose=0,
            callbacks=[keras_ckpt.ResumeFromLatest(tmp_path, save_freq=3), Crash(7)],
        )
    model = make_model()
    global_state.set_global_attribute("global_random_seed", None)  # as if never seeded
    # Keras before 3.10 keeps no record; its seed is read from TensorFlow's, which the suite's
    # determinism needs set: the replay is told "no seed" directly.
    monkeypatch.setattr(keras_ckpt.callbacks._replay, "global_seed", lambda: None)
    with pytest.warns(UserWarning, match="shuffle=True and no global seed"):
        model.fit(
            x,
            y,
            batch_size=16,
            epochs=3,
            shuffle=True,
            verbose=0,
            callbacks=[keras_ckpt.ResumeFromLatest(tmp_path, save_freq=3)],
        )


@pytest.mark.parametrize("resume_first", [True, False])
def test_interval_checkpoint_keeps_its_steps_after_a_resume_in_any_list_order(
    tmp_path, data, resume_first
):
    """An IntervalCheckpoint listed before ResumeFromLatest (as in the README) counts its steps
    from the restored step, not from 0: a rerun saves exactly where the whole run saved."""

    def callbacks(run, crash=None):
        interval = keras_ckpt.IntervalCheckpoint(tmp_path / run / "interval", every_steps=4)
        resume = keras_ckpt.ResumeFromLatest(tmp_path / run / "resume", save_freq=3)
        listed = [resume, interval] if resume_first else [interval, resume]
        return [*listed, *([Crash(crash)] if crash else [])]

    def steps(run):
        return [r.step for r in keras_ckpt.list_checkpoints(tmp_path / run / "interval")]

    fit(make_model(), data, callbacks("whole"))
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(make_model(), data, callbacks("resumed", crash=19))  # resumes after step 18
    fit(make_model(seed=1), data, callbacks("resumed"))
    assert steps("whole") == [4, 8, 12, 16, 20, 24, 25]
    assert sorted(steps("resumed")) == steps("whole")


def test_a_nan_loss_never_crashes_a_fit_with_every_saving_callback(tmp_path, data):
    """NaN losses are common; the callbacks that protect a run must never be what kills it.
    Once the loss is NaN no callback commits a checkpoint (a warning says so), so a rerun goes
    on from the last state saved before (a NaN History entry's round trip through the manifest
    is test_training_state's)."""

    class Poison(keras.callbacks.Callback):
        """Turns the weights NaN before the second epoch's third batch, as a diverging run."""

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_begin(self, batch, logs=None):
            if self.epoch == 1 and batch == 2:
                self.model.set_weights([w * np.nan for w in self.model.get_weights()])

    callbacks = [
        Poison(),
        keras_ckpt.BestCheckpoint(tmp_path / "best", monitor="loss"),
        keras_ckpt.IntervalCheckpoint(tmp_path / "interval", every_steps=2),
        keras_ckpt.ModelCheckpoint(tmp_path / "model" / "e{epoch}.keras"),
        keras_ckpt.EarlyStopping(monitor="loss", check_finite=False),
        keras_ckpt.ReduceLROnPlateau(monitor="loss"),
        keras_ckpt.ResumeFromLatest(tmp_path / "resume", save_freq=2),
    ]
    with pytest.warns(UserWarning, match=r"not saving .* the training loss is nan"):
        history = fit(make_model(), data, callbacks, epochs=3)
    assert np.isfinite(history.history["loss"][0]) and np.isnan(history.history["loss"][-1])
    assert [r.epoch for r in keras_ckpt.list_checkpoints(tmp_path / "best")] == [1]  # finite
    for name in ("interval", "model", "resume"):
        records = keras_ckpt.list_checkpoints(tmp_path / name)
        assert records and all(np.isfinite(r.metrics.get("loss", 0.0)) for r in records), name
    newest = keras_ckpt.list_checkpoints(tmp_path / "resume")[-1]
    assert np.isfinite(newest.state["history"]["history"]["loss"]).all()
    rerun = fit(make_model(), data, [keras_ckpt.ResumeFromLatest(tmp_path / "resume")], 4)
    assert rerun.epoch == [0, 1, 2, 3]
    assert all(isinstance(value, float) for value in rerun.history["loss"])
    # It resumed from the last save before the NaN loss, at epoch 2, and trains on from there.
    assert np.isfinite(rerun.history["loss"]).all()


def test_signal_handlers_are_given_back_when_fit_raises(tmp_path, data):
    """Keras skips on_train_end when fit raises; Ctrl-C must still interrupt as before."""
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(make_model(), data, [keras_ckpt.ResumeFromLatest(tmp_path), Crash(7)])
    with pytest.raises(KeyboardInterrupt):
        signal.raise_signal(signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_a_checkpoint_deleted_by_hand_is_skipped_with_a_warning(tmp_path, data):
    fit(make_model(), data, [keras_ckpt.ResumeFromLatest(tmp_path)], epochs=2)
    newest = keras_ckpt.list_checkpoints(tmp_path)[-1]
    os.remove(newest.path)
    resume = keras_ckpt.ResumeFromLatest(tmp_path)
    model = make_model(seed=1)
    with pytest.warns(UserWarning, match=rf"skipping {newest.path}: .*missing"):
        fit(model, data, [resume], epochs=3)
    assert resume.resumed_from.epoch == 1  # the one before it
    assert_weights_equal(model.get_weights(), reference_weights(data, epochs=3))


def test_a_directory_another_process_writes_into_is_refused_before_training(tmp_path, data):
    with another_process_writing(tmp_path) as pid:
        model = make_model()
        with pytest.raises(keras_ckpt.store.DirectoryLockedError, match=f"pid {pid}"):
            fit(model, data, [keras_ckpt.ResumeFromLatest(tmp_path)])
        assert int(model.optimizer.iterations) == 0  # not one batch trained
    fit(make_model(), data, [keras_ckpt.ResumeFromLatest(tmp_path)], epochs=1)
    assert len(keras_ckpt.list_checkpoints(tmp_path)) == 1


# Callback states find their own callbacks ------------------------------------------------------

FALLING = [1.0 - 0.1 * epoch for epoch in range(8)]  # "a" improves every epoch
RISING = [0.5 + 0.1 * epoch for epoch in range(8)]  # "b" never improves after the first


class EpochCounter(keras.callbacks.Callback):
    """A user's callback with a state."""

    def __init__(self):
        super().__init__()
        self.epochs = 0

    def on_epoch_end(self, epoch, logs=None):
        self.epochs += 1

    def state_dict(self):
        return {"epochs": self.epochs}

    def load_state_dict(self, state):
        self.epochs = state["epochs"]


class StatesAtFirstEpoch(keras.callbacks.Callback):
    """Records the given callbacks' states as the rerun's first epoch begins (every
    on_train_begin, where states are restored, has run by then)."""

    def __init__(self, callbacks):
        super().__init__()
        self.callbacks, self.seen = callbacks, None

    def on_epoch_begin(self, epoch, logs=None):
        if self.seen is None:
            self.seen = (epoch, [c.state_dict() for c in self.callbacks])


def test_callback_states_find_their_callbacks_in_another_list_order(tmp_path, data, scripted):
    def callbacks(reverse, crash=None):
        stateful = [
            keras_ckpt.EarlyStopping(monitor="a", mode="min", patience=20),
            keras_ckpt.EarlyStopping(monitor="b", mode="min", patience=20),
            keras_ckpt.ReduceLROnPlateau(monitor="b", mode="min", patience=20),
            EpochCounter(),
        ]
        probe = StatesAtFirstEpoch(stateful)
        listed = [
            scripted(FALLING, "a"),
            scripted(RISING, "b"),
            *(stateful[::-1] if reverse else stateful),
            keras_ckpt.ResumeFromLatest(tmp_path),
            probe,
            *([Crash(crash)] if crash else []),
        ]
        return listed, probe

    crashing, _ = callbacks(reverse=False, crash=27)  # in epoch index 5
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(make_model(), data, crashing, epochs=8)
    rerun, probe = callbacks(reverse=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # each state has one callback to go to
        fit(make_model(seed=1), data, rerun, epochs=8)
    epoch, (stop_a, stop_b, reduce, counter) = probe.seen
    assert epoch == 5  # resumed after five epochs
    assert (stop_a["wait"], stop_a["best"]) == (0, pytest.approx(FALLING[4]))
    assert (stop_b["wait"], stop_b["best"]) == (4, pytest.approx(RISING[0]))
    assert (reduce["wait"], reduce["best"]) == (4, pytest.approx(RISING[0]))
    assert counter == {"epochs": 5}


def test_alike_callbacks_get_their_states_by_list_order_with_one_warning(tmp_path, data, scripted):
    def callbacks(crash=None):
        # One key for both (start_from_epoch is not part of it); their counters differ.
        alike = [
            keras_ckpt.EarlyStopping(monitor="b", mode="min", patience=20),
            keras_ckpt.EarlyStopping(monitor="b", mode="min", patience=20, start_from_epoch=2),
        ]
        probe = StatesAtFirstEpoch(alike)
        extra = [Crash(crash)] if crash else []
        return [scripted(RISING, "b"), *alike, keras_ckpt.ResumeFromLatest(tmp_path), probe, *extra]

    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(make_model(), data, callbacks(crash=27), epochs=8)
    rerun = callbacks()
    key = "EarlyStopping(monitor='b', mode='min')"
    with pytest.warns(UserWarning, match="cannot be told apart") as caught:
        fit(make_model(seed=1), data, rerun, epochs=8)
    [warning] = [w for w in caught if "cannot be told apart" in str(w.message)]
    assert f"the 2 callbacks {key} got their states by their order" in str(warning.message)
    _, (first, second) = rerun[-1].seen
    assert (first["wait"], first["best"]) == (4, pytest.approx(RISING[0]))
    assert (second["wait"], second["best"]) == (2, pytest.approx(RISING[2]))


def test_callback_states_of_an_older_checkpoint_load_by_class_and_occurrence(
    tmp_path, data, scripted
):
    def callbacks(crash=None):
        stops = [
            keras_ckpt.EarlyStopping(monitor="a", mode="min", patience=20),
            keras_ckpt.EarlyStopping(monitor="b", mode="min", patience=20),
        ]
        probe = StatesAtFirstEpoch(stops)
        listed = [
            scripted(FALLING, "a"),
            scripted(RISING, "b"),
            *stops,
            keras_ckpt.ResumeFromLatest(tmp_path),
            probe,
        ]
        return [*listed, *([Crash(crash)] if crash else [])], probe

    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(make_model(), data, callbacks(crash=27)[0], epochs=8)
    # Keys as keras_ckpt wrote them before they named the configuration.
    older = {
        "EarlyStopping(monitor='a', mode='min')": "EarlyStopping#0",
        "EarlyStopping(monitor='b', mode='min')": "EarlyStopping#1",
    }
    path = tmp_path / "keras_ckpt.json"
    manifest = json.loads(path.read_text(encoding="utf-8"))
    for record in manifest["checkpoints"]:
        states = record["state"]["callbacks"]
        assert set(states) == set(older)
        record["state"]["callbacks"] = {older[key]: state for key, state in states.items()}
    os.remove(path)
    path.write_text(json.dumps(manifest), encoding="utf-8")
    rerun, probe = callbacks()
    fit(make_model(seed=1), data, rerun, epochs=8)
    _, (stop_a, stop_b) = probe.seen
    assert (stop_a["wait"], stop_a["best"]) == (0, pytest.approx(FALLING[4]))
    assert (stop_b["wait"], stop_b["best"]) == (4, pytest.approx(RISING[0]))


def test_a_stop_request_during_the_replay_is_served_at_the_first_trained_batch(tmp_path, data):
    """The batches read again are skipped with ``batch < replayed``: the begin hook of batch
    ``replayed`` is a real boundary (the one the checkpoint was taken at), where a signal that
    came during the replay saves and stops before one more batch trains into the checkpoint."""
    with pytest.raises(RuntimeError, match="simulated crash"):
        # Resumes after batch 12: epoch index 2, its first 2 batches read again.
        fit(make_model(), data, [keras_ckpt.ResumeFromLatest(tmp_path, save_freq=3), Crash(13)])

    class SignalDuringReplay(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            if batch == 1 and not hasattr(self, "sent"):
                self.sent = True
                signal.raise_signal(signal.SIGTERM)

    resume = keras_ckpt.ResumeFromLatest(tmp_path, save_freq=3)
    history = fit(make_model(seed=1), data, [SignalDuringReplay(), resume])
    assert (resume.resumed_from.state["epoch"], resume.resumed_from.state["batch"]) == (2, 2)
    assert history.epoch == [0, 1, 2]  # stopped in the epoch it resumed
    newest = keras_ckpt.list_checkpoints(tmp_path)[-1]
    assert (newest.state["epoch"], newest.state["batch"], newest.step) == (2, 2, 12)


def test_fit_is_searched_for_its_callbacks_once_per_fit(tmp_path, data, monkeypatch):
    # Reading fit's locals again at every save kept the previous epoch's data iterator alive
    # until then and freed it inside the save (seconds on TensorFlow): the search happens once.
    from keras_ckpt.callbacks import resume

    searches = []
    original = resume.fit_callbacks

    def counted(callback):
        searches.append(callback)
        return original(callback)

    monkeypatch.setattr(resume, "fit_callbacks", counted)
    counts = []
    for epochs in (1, 4):
        searches.clear()
        history = keras.callbacks.History()
        callback = keras_ckpt.ResumeFromLatest(tmp_path / f"run{epochs}", save_freq=2)
        fit(make_model(), data, [callback, history], epochs=epochs)
        counts.append(len(searches))
        assert history.epoch == list(range(epochs))  # the siblings' states were saved
        record = keras_ckpt.list_checkpoints(tmp_path / f"run{epochs}")[-1]
        assert record.state["history"]  # found: the History's epochs were saved
    assert counts[0] == counts[1] > 0
