"""RollbackOnDivergence, and saving callbacks that never commit a non-finite training loss."""

import json
import math
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import Crash, assert_weights_equal, run_child_script
from resume_setup import make_resume_model
from rollback_setup import BATCHES, NaNData, max_difference, reference_weights, skipped_of

import keras_ckpt
from keras_ckpt import decisions
from keras_ckpt.store import read_manifest
from keras_ckpt.writer import WRITER


@pytest.fixture(autouse=True, scope="module")
def deterministic_ops():
    tf.config.experimental.enable_op_determinism()


def train(callbacks, data, epochs=3, model=None):
    model = model or make_resume_model()
    try:
        return model.fit(data, epochs=epochs, verbose=0, shuffle=False, callbacks=callbacks)
    finally:
        WRITER.wait()


# Pure decisions --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("loss", "recent", "threshold", "expected"),
    [
        (math.nan, [], None, decisions.NON_FINITE),
        (math.inf, [1.0], 10.0, decisions.NON_FINITE),
        (-math.inf, [1.0], None, decisions.NON_FINITE),
        (1e9, [1.0] * 5, None, None),  # no threshold: only non-finite losses diverge
        (11.0, [1.0, 1.0, 2.0], 10.0, decisions.SPIKE),
        (11.0, [1.0, 2.0], 10.0, None),  # the window is not full
        (10.0, [1.0, 1.0, 1.0], 10.0, None),  # not larger than the threshold times the median
        (25.0, [1.0, 2.0, 3.0, 100.0], 10.0, None),  # the median of the last 3 is 3
        (21.0, [100.0, 1.0, 2.0, 3.0], 10.0, decisions.SPIKE),
        (5.0, [0.0, 0.0, 0.0], 2.0, None),  # a median of 0 never calls a spike
    ],
)
def test_divergence_reason(loss, recent, threshold, expected):
    rule = decisions.DivergenceRule(spike_threshold=threshold, window=3)
    assert decisions.divergence_reason(loss, recent, rule) == expected


def test_decide_rollback_counts_up_to_the_limit():
    rule = decisions.DivergenceRule(max_rollbacks=2)
    assert decisions.decide_rollback(0, rule) == (1, decisions.ROLLBACK)
    assert decisions.decide_rollback(1, rule) == (2, decisions.ROLLBACK)
    assert decisions.decide_rollback(2, rule) == (2, decisions.ROLLBACK_LIMIT)


@pytest.mark.parametrize(
    ("means", "expected"),
    [([1.0, 1.0, 2.0], [1.0, 1.0, 4.0]), ([3.0, 2.0], [3.0, 1.0]), ([0.5], [0.5])],
)
def test_batch_loss_from_running_means(means, expected):
    losses, before = [], 0.0
    for count, mean in enumerate(means, start=1):
        losses.append(decisions.batch_loss(mean, before, count, count - 1))
        before = mean
    assert losses == pytest.approx(expected)


# Arguments -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"window": 0}, r"Argument `window` must be a positive integer. Received: window=0"),
        ({"window": True}, r"Argument `window` must be a positive integer. Received: window=True"),
        ({"window": 2.5}, r"Received: window=2.5"),
        ({"spike_threshold": 1}, r"`spike_threshold` must be a finite number > 1 or None. "),
        ({"spike_threshold": True}, r"Received: spike_threshold=True"),
        ({"spike_threshold": math.inf}, r"Received: spike_threshold=inf"),
        ({"spike_threshold": "10"}, r"Received: spike_threshold='10'"),
        ({"lr_factor": 0}, r"`lr_factor` must be a number in \(0, 1\]. Received: lr_factor=0"),
        ({"lr_factor": 1.5}, r"Received: lr_factor=1.5"),
        ({"lr_factor": True}, r"Received: lr_factor=True"),
        ({"max_rollbacks": 0}, r"`max_rollbacks` must be a positive integer. Received: max_"),
        ({"max_rollbacks": False}, r"Received: max_rollbacks=False"),
        ({"skip_batches": 0}, r"`skip_batches` must be a positive integer. Received: skip_b"),
        ({"skip_batches": True}, r"Received: skip_batches=True"),
        ({"verbose": 2}, r"Argument `verbose` must be one of 0, 1. Received: verbose=2"),
    ],
)
def test_invalid_arguments_are_refused(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        keras_ckpt.RollbackOnDivergence(tmp_path, **kwargs)


@pytest.mark.parametrize("source", [None, 3, b"runs", "", keras.callbacks.History()])
def test_invalid_source_is_refused(source):
    with pytest.raises(ValueError, match=r"Argument `source` must be"):
        keras_ckpt.RollbackOnDivergence(source)


@pytest.mark.parametrize(
    ("state", "match"),
    [
        ({"rollbacks": "x"}, "rollbacks must be a list of objects"),
        ({"rollbacks": [{"checkpoint_step": -1}]}, "integer checkpoint_step >= 0"),
        ({"rollbacks": [{"checkpoint_time": "soon"}]}, "numeric checkpoint_time"),
        ({"recent": [1.0, "nan"]}, "recent must be a list of finite numbers"),
    ],
)
def test_a_state_from_the_manifest_is_checked(tmp_path, state, match):
    resume = keras_ckpt.ResumeFromLatest(tmp_path)
    rollback = keras_ckpt.RollbackOnDivergence(resume)
    rollback.load_state_dict(state)
    with pytest.raises(ValueError, match=match):
        train([resume, rollback], NaNData(), epochs=1)


def test_a_numpy_spike_threshold_is_a_number(tmp_path):
    rollback = keras_ckpt.RollbackOnDivergence(tmp_path, spike_threshold=np.float32(5.0))
    assert rollback.spike_threshold == 5.0


def test_a_run_of_several_processes_is_refused_before_training(tmp_path, monkeypatch):
    from keras_ckpt.callbacks import rollback

    monkeypatch.setattr(rollback, "trains_alone", lambda: False)
    resume = keras_ckpt.ResumeFromLatest(tmp_path)
    with pytest.raises(ValueError, match="RollbackOnDivergence restores in one process only"):
        train([resume, keras_ckpt.RollbackOnDivergence(resume)], NaNData(), epochs=1)


def test_a_source_outside_the_fit_is_an_error(tmp_path):
    rollback = keras_ckpt.RollbackOnDivergence(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="no ResumeFromLatest or IntervalCheckpoint saving into"):
        train([rollback], NaNData(), epochs=1)


# Exactness -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("save_freq", "bad_batch", "checkpoint_step"),
    [
        pytest.param(
            "epoch",
            2,
            6,  # epoch 1, batch 2: back to the epoch's start, batches 0-2 skipped
            marks=pytest.mark.xfail(
                keras.backend.backend() == "torch",
                reason="on PyTorch a rollback to an epoch-boundary checkpoint ends 4e-3 away "
                "from the reference run (mid-epoch ones are exact); not yet understood",
                strict=True,
            ),
        ),
        (3, 4, 9),  # epoch 1, batch 4: back to after batch 2 (step 9), batches 3-4 skipped
        (3, 5, 9),  # the epoch's last batch: batches 3-5 skipped, the epoch ends there
    ],
)
def test_rollback_equals_a_run_without_the_skipped_batches(
    tmp_path, save_freq, bad_batch, checkpoint_step, capsys
):
    resume = keras_ckpt.ResumeFromLatest(tmp_path, save_freq=save_freq)
    rollback = keras_ckpt.RollbackOnDivergence(resume, verbose=1)
    history = train([resume, rollback], NaNData(poisoned=[(1, bad_batch)]))
    assert len(rollback.rollbacks) == 1
    event = rollback.rollbacks[0]
    assert event["checkpoint_step"] == checkpoint_step
    assert (event["epoch"], event["batch"], event["reason"]) == (2, bad_batch + 1, "non_finite")
    bad_read = BATCHES + bad_batch
    expected = reference_weights(3, 1, skipped_of(rollback, bad_batch))
    assert max_difference(history.model.get_weights(), expected) == 0.0
    assert history.history["ckpt/rollbacks"] == [0.0, 1.0, 1.0]
    assert all(math.isfinite(loss) for loss in history.history["loss"])
    out = capsys.readouterr().out
    assert f"at step {bad_read + 1} (batch {bad_batch + 1})" in out
    assert f"rolled back to {event['checkpoint']}" in out
    # Recorded in the manifest: the checkpoint saved right after the rollback holds it.
    recorded = [
        state["rollbacks"]
        for record in read_manifest(str(tmp_path)).records
        for key, state in (record.state or {}).get("callbacks", {}).items()
        if key.startswith("RollbackOnDivergence")
    ]
    assert recorded[-1] == [{**event, "loss": "nan"}]


def test_a_rollback_gives_stochastic_weight_averaging_its_average_back(tmp_path):
    # SWA's running average lives in the resume checkpoint's file; a rollback reads it there.
    swa = keras_ckpt.StochasticWeightAveraging(start_epoch=0)
    resume = keras_ckpt.ResumeFromLatest(tmp_path, save_freq=3)
    rollback = keras_ckpt.RollbackOnDivergence(resume)
    seen = []

    class AverageCount(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append(swa.averaged_count)

    train([swa, resume, rollback, AverageCount()], NaNData(poisoned=[(1, 4)]))
    assert len(rollback.rollbacks) == 1
    assert seen == [1, 2, 3]  # the epoch-end averages, restored with the checkpoint of epoch 2
    assert all(np.isfinite(w).all() for w in swa.average)


def test_interval_checkpoint_source_by_directory_is_exact(tmp_path):
    interval = keras_ckpt.IntervalCheckpoint(tmp_path, every_steps=2, save_weights_only=True)
    rollback = keras_ckpt.RollbackOnDivergence(str(tmp_path))
    history = train([interval, rollback], NaNData(poisoned=[(1, 3)]))
    assert rollback.rollbacks[0]["checkpoint_step"] == 8
    expected = reference_weights(3, 1, skipped_of(rollback, 3))
    assert skipped_of(rollback, 3) == [2, 3]
    assert max_difference(history.model.get_weights(), expected) == 0.0
    # Saved again right after the rollback, the manifest record holding it.
    recorded = [
        state["rollbacks"]
        for record in read_manifest(str(tmp_path)).records
        for key, state in (record.state or {}).get("callbacks", {}).items()
        if key.startswith("RollbackOnDivergence")
    ]
    assert recorded == [[{**rollback.rollbacks[0], "loss": "nan"}]]


def test_skip_batches_also_skips_the_batches_after_the_bad_one(tmp_path):
    resume = keras_ckpt.ResumeFromLatest(tmp_path, save_freq=2)
    rollback = keras_ckpt.RollbackOnDivergence(resume, skip_batches=2)
    history = train([resume, rollback], NaNData(poisoned=[(1, 3)]))
    # Batch 3 of epoch 1 is bad, the checkpoint is after batch 1: 2 and 3 undone, 4 skipped.
    assert rollback.rollbacks[0]["skipped_batches"] == 3
    expected = reference_weights(3, 1, [2, 3, 4])
    assert max_difference(history.model.get_weights(), expected) == 0.0


def test_spike_rolls_back_and_lr_factor_lowers_the_rate(tmp_path):
    resume = keras_ckpt.ResumeFromLatest(tmp_path, save_freq=1)
    rollback = keras_ckpt.RollbackOnDivergence(
        resume, spike_threshold=50.0, window=3, lr_factor=0.5
    )
    history = train([resume, rollback], NaNData(poisoned=[(1, 2)], value=1e4))
    assert [(r["reason"], r["batch"]) for r in rollback.rollbacks] == [("spike", 3)]
    assert history.history["learning_rate"][-1] == pytest.approx(0.0005)


class LearningRateAccident(keras.callbacks.Callback):
    """A learning rate of 1e20 for one batch, once (the rate a rollback restores stays)."""

    def __init__(self, at_step):
        super().__init__()
        self.at_step, self.steps, self.rate = at_step, 0, None

    def on_train_batch_begin(self, batch, logs=None):
        optimizer = self.model.optimizer
        self.steps += 1
        if self.steps == self.at_step:
            self.rate = float(optimizer.learning_rate)
            optimizer.learning_rate = 1e20
        elif self.rate is not None:
            optimizer.learning_rate, self.rate = self.rate, None


def test_a_checkpoint_that_diverges_again_at_once_is_passed_over(tmp_path):
    """The checkpoint saved after the accident's batch has a finite loss (computed before the
    update) and damaged weights. Restoring it diverges again at once, so the second rollback
    goes one checkpoint further back, to step 8, and training recovers."""
    resume = keras_ckpt.ResumeFromLatest(tmp_path, save_freq=1)
    rollback = keras_ckpt.RollbackOnDivergence(resume)
    history = train([resume, rollback, LearningRateAccident(at_step=9)], NaNData())
    steps = [r["checkpoint_step"] for r in rollback.rollbacks]
    assert steps == [9, 8], rollback.rollbacks
    assert np.isfinite(history.history["loss"][-1])
    assert all(np.isfinite(w).all() for w in history.model.get_weights())


def test_rollback_limit_stops_training(tmp_path):
    resume = keras_ckpt.ResumeFromLatest(tmp_path, save_freq=1)
    rollback = keras_ckpt.RollbackOnDivergence(resume, max_rollbacks=2)
    with pytest.warns(UserWarning, match=r"after 2 rollbacks \(max_rollbacks=2\); training stops"):
        history = train([resume, rollback], NaNData(poisoned=[(1, 2), (1, 3), (1, 4)]), epochs=4)
    assert rollback.stopping_reason == decisions.ROLLBACK_LIMIT
    assert len(rollback.rollbacks) == 2
    assert history.epoch == [0, 1]  # stopped in epoch 1 of 4


def test_nan_without_a_checkpoint_stops_training(tmp_path):
    resume = keras_ckpt.ResumeFromLatest(tmp_path, save_freq="epoch")
    rollback = keras_ckpt.RollbackOnDivergence(resume)
    with pytest.warns(UserWarning, match="no checkpoint in"):
        history = train([resume, rollback], NaNData(poisoned=[(0, 2)]))
    assert rollback.stopping_reason == decisions.NON_FINITE
    assert history.epoch == [0]


@pytest.mark.parametrize(
    ("skip_batches", "crash"),
    # The bad batch is batch 3 of epoch 1 (the 10th read); the crash comes 2 batches on, or,
    # skipping batch 4 too, right before batch 5, the first trained after the rollback.
    [(None, 12), (2, 11)],
)
def test_a_rerun_after_a_rollback_neither_retrains_skipped_batches_nor_resets_the_count(
    tmp_path, skip_batches, crash
):
    def callbacks(directory):
        resume = keras_ckpt.ResumeFromLatest(directory, save_freq=4)
        return resume, keras_ckpt.RollbackOnDivergence(resume, skip_batches=skip_batches)

    whole = callbacks(tmp_path / "whole")
    expected = train(list(whole), NaNData(poisoned=[(1, 3)])).model.get_weights()
    assert len(whole[1].rollbacks) == 1
    crashed = callbacks(tmp_path / "crashed")
    with pytest.raises(RuntimeError, match="simulated crash"):
        train([*crashed, Crash(crash)], NaNData(poisoned=[(1, 3)]))
    rerun = callbacks(tmp_path / "crashed")
    model = make_resume_model(seed=1)
    train(list(rerun), NaNData(), model=model)  # batch 3 of epoch 1 is only read again

    def untimed(rollbacks):
        return [{k: v for k, v in r.items() if k != "checkpoint_time"} for r in rollbacks]

    assert untimed(rerun[1].rollbacks) == untimed(whole[1].rollbacks)  # once, not reset
    assert_weights_equal(model.get_weights(), expected)


def test_jax_rollback_is_exact(tmp_path):
    pytest.importorskip("jax")
    result = run_child_script("rollback_child.py", "jax", tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith("case")]
    assert len(lines) == 2, result.stdout
    for line in lines:
        assert line.endswith("max_diff=0.0"), line


# Never committing a non-finite loss --------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda d: keras_ckpt.IntervalCheckpoint(d, every_steps=2),
        lambda d: keras_ckpt.ResumeFromLatest(d, save_freq=2),
        # A finite monitored metric: the loss alone tells the weights are poisoned.
        lambda d: keras_ckpt.BestCheckpoint(d, monitor="score", mode="max"),
        lambda d: keras_ckpt.ModelCheckpoint(os.path.join(d, "m{epoch}.keras")),
    ],
    ids=["interval", "resume", "best", "model"],
)
def test_saving_callbacks_never_commit_a_nan_loss(tmp_path, make):
    directory = str(tmp_path)
    # The loss turns NaN at step 9 (epoch 1, batch 2) and stays so: no rollback here.
    poisoned = [(1, 2)]

    class Snapshot(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            if self.model.optimizer.iterations.numpy() == 8:
                WRITER.wait()
                self.before = read_manifest(directory).to_json()["checkpoints"]

    class Score(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            logs["score"] = float(epoch)

    snapshot = Snapshot()
    with pytest.warns(UserWarning, match=r"not saving .* at step \d+ .*the training loss is nan"):
        train([Score(), make(directory), snapshot], NaNData(poisoned=poisoned))
    after = read_manifest(directory).to_json()["checkpoints"]
    assert after == snapshot.before and after  # the earlier checkpoints stay, nothing added


def test_resume_never_resumes_into_a_nan_state(tmp_path):
    train([keras_ckpt.ResumeFromLatest(tmp_path, save_freq=2)], NaNData(), epochs=1)
    # A directory written before the guard: the newest record has a NaN loss.
    manifest_path = os.path.join(tmp_path, "keras_ckpt.json")
    with open(manifest_path) as file:
        manifest = json.load(file)
    manifest["checkpoints"][-1]["metrics"]["loss"] = "nan"
    with open(manifest_path, "w") as file:
        json.dump(manifest, file)
    resume = keras_ckpt.ResumeFromLatest(tmp_path, save_freq=2)
    with pytest.warns(UserWarning, match="its training loss is nan"):
        train([resume], NaNData(), epochs=2)
    assert resume.resumed_from.filename != manifest["checkpoints"][-1]["file"]
    assert all(np.isfinite(w).all() for w in resume.model.get_weights())


def test_the_loss_is_read_only_when_a_save_is_due(tmp_path, monkeypatch):
    """No batch pays for the guard: on JAX and PyTorch a read would be a device-to-host sync."""
    from keras_ckpt.callbacks import _base

    reads = []
    real = _base.training_loss

    def counting(model, metrics):
        reads.append(dict(metrics))
        return real(model, metrics)

    monkeypatch.setattr(_base, "training_loss", counting)
    train([keras_ckpt.IntervalCheckpoint(tmp_path, every_steps=4)], NaNData(), epochs=2)
    assert len(reads) == len(keras_ckpt.list_checkpoints(tmp_path)) == 3  # steps 4, 8, 12
