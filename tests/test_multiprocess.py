"""Two JAX processes train together on 127.0.0.1 (CPU collectives through gloo): only process 0
writes, both take the same decisions, both resume from the same checkpoint after either one is
killed, and a signal to one stops both at the same batch."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

import keras_ckpt
from keras_ckpt.store import verify

CHILD = os.path.join(os.path.dirname(__file__), "multiprocess_child.py")
DIRECTORIES = ("resume", "best", "interval")


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch_pair(directory, mode):
    """Both processes' (return code, stdout, stderr), as a launcher runs them: once one process
    fails, the other, which waits for it in a collective, is killed a second later (as torchrun
    or SLURM do; JAX's own heartbeat would end it only after 100 s). Processes still alive at
    the timeout are killed too."""
    port = free_port()
    processes = [
        subprocess.Popen(
            [sys.executable, CHILD, str(index), str(port), str(directory), mode],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for index in (0, 1)
    ]
    try:
        deadline, failed_at = time.monotonic() + 240, None
        while any(p.poll() is None for p in processes) and time.monotonic() < deadline:
            if failed_at is None and any(p.poll() not in (None, 0) for p in processes):
                failed_at = time.monotonic()
            if failed_at is not None and time.monotonic() > failed_at + 1:
                break
            time.sleep(0.05)
    finally:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
    outputs = [process.communicate() for process in processes]
    return [(p.returncode, *output) for p, output in zip(processes, outputs, strict=True)]


def run_pair(directory, mode):
    """Both processes' reports (``None`` for one that died); with mode "train", both must
    finish."""
    reports = []
    for returncode, stdout, stderr in launch_pair(directory, mode):
        lines = [line for line in stdout.splitlines() if line.startswith("report=")]
        if mode == "train" or returncode == 0:
            assert returncode == 0 and lines, stderr[-3000:]
        reports.append(json.loads(lines[0][len("report=") :]) if lines else None)
    return reports


def assert_same_decisions(chief, other):
    """Both processes logged the same checkpoint events and rates, and only process 0 changed
    anything in the directory (no file written, renamed, linked or removed by process 1)."""
    assert chief["logged"] == other["logged"]
    assert chief["epochs"] == other["epochs"] and chief["weights"] == other["weights"]
    assert chief["changes"] > 0 and other["changes"] == 0


@pytest.mark.slow
def test_two_processes_write_once_take_the_same_decisions_and_resume_together(tmp_path):
    [chief, other] = run_pair(tmp_path / "uninterrupted", "train")
    assert_same_decisions(chief, other)
    assert chief["epochs"] == [0, 1, 2, 3]
    uninterrupted, logged = chief["weights"], chief["logged"]
    # Every decision counted in the logs was carried out once, by process 0.
    assert chief["commits"] == {
        "ResumeFromLatest": sum(logged["ckpt/resume_saved"]),
        "BestCheckpoint": sum(logged["ckpt/best_saved"]),
        "IntervalCheckpoint": sum(logged["ckpt/interval_saved"]),
        "ModelCheckpoint": 4,  # the loss improves every epoch
    }
    # Process 0's clock never says "due" and process 1's always does: they agree to save.
    assert logged["ckpt/interval_saved"] == [4, 4, 4, 4]
    for name in DIRECTORIES:
        records = keras_ckpt.list_checkpoints(tmp_path / "uninterrupted" / name)
        for record in records:
            verify(record)  # raises if a file is not what the manifest says
    kept = keras_ckpt.list_checkpoints(tmp_path / "uninterrupted" / "best")
    assert sorted(r.kept_by for r in kept) == [("BestCheckpoint[loss]",)] * 2 + [
        ("ModelCheckpoint",)
    ]
    assert len(keras_ckpt.list_checkpoints(tmp_path / "uninterrupted" / "interval")) == 2
    resume_records = keras_ckpt.list_checkpoints(tmp_path / "uninterrupted" / "resume")
    assert resume_records[-1].state["finished"] == 4
    # What the pair wrote loads here, in one plain process on one device.
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8), keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    keras_ckpt.load_checkpoint(resume_records[-1], model)
    assert sum(float(np.abs(w).sum()) for w in model.get_weights()) == pytest.approx(
        chief["weights"], abs=1e-5
    )
    assert int(model.optimizer.iterations) == 16

    # One process is SIGKILLed before batch 11 (mid-epoch 3) and the launcher kills the other:
    # rerun, both resume from the same checkpoint and end where the uninterrupted pair ended.
    for killed in (0, 1):
        run = tmp_path / f"kill{killed}"
        reports = run_pair(run, f"kill{killed}")
        assert reports[killed] is None
        [chief, other] = run_pair(run, "train")
        assert chief["resumed"] == other["resumed"] is not None
        assert chief["weights"] == other["weights"] == uninterrupted
        assert chief["logged"]["learning_rate"] == logged["learning_rate"]
        assert other["changes"] == 0

    # Process 0 commits slowly, so process 1 is ahead of what is on disk: ModelCheckpoint opens
    # its store (BestCheckpoint's directory) while BestCheckpoint's save is in flight, and the
    # second fit, which continues the first, opens every store while the first's last save
    # may be. Process 1 reads each directory only once process 0's saves are there.
    [chief, other] = run_pair(tmp_path / "twice", "twice")
    assert_same_decisions(chief, other)
    assert chief["resumed"] == other["resumed"] == "resume-epoch0002-step00000008.weights.h5"
    assert chief["weights"] == uninterrupted


@pytest.mark.slow
def test_a_signal_or_early_stopping_in_two_processes_stops_both_at_the_same_point(tmp_path):
    # SIGTERM to process 1 only: both stop at the same batch, one checkpoint says where.
    # The signal comes before the 6th batch (epoch 2's second) and is seen before the third.
    [chief, other] = run_pair(tmp_path / "signal", "signal")
    assert_same_decisions(chief, other)
    assert chief["epochs"] == [0, 1]
    resume_records = keras_ckpt.list_checkpoints(tmp_path / "signal" / "resume")
    assert (resume_records[-1].state["epoch"], resume_records[-1].state["batch"]) == (1, 2)
    assert resume_records[-1].state["finished"] is None

    # No epoch after the first improves by min_delta: both stop after epoch 2 (patience 1).
    [chief, other] = run_pair(tmp_path / "stop", "stop")
    assert_same_decisions(chief, other)
    assert chief["epochs"] == [0, 1]


@pytest.mark.slow
def test_a_directory_one_process_cannot_open_or_sees_otherwise_fails_every_process(tmp_path):
    # Process 0 cannot open the directory (a damaged manifest): both raise at once. (Before,
    # process 1 waited in the barrier for process 0, and process 0 in JAX's shutdown at exit
    # for process 1, until both were killed at the 240 s deadline.)
    damaged = tmp_path / "damaged" / "resume"
    damaged.mkdir(parents=True)
    (damaged / keras_ckpt.store.MANIFEST_NAME).write_text("{not json")
    [(code0, _, error0), (code1, _, error1)] = launch_pair(tmp_path / "damaged", "train")
    assert (code0, code1) == (1, 1), (error0[-2000:], error1[-2000:])
    assert "is not valid JSON" in error0
    assert "process 0 could not open the checkpoint directory" in error1

    # Process 1's directory is not the one process 0 writes to (no shared file system): both
    # raise before anything is resumed or saved.
    chief_only = keras_ckpt.store.CheckpointStore(tmp_path / "unshared" / "resume")
    chief_only.commit(
        "resume-epoch0001-step00000004.weights.h5",
        lambda path: open(path, "wb").close(),
        epoch=1,
        step=4,
        metrics={},
        kind="weights",
        run="earlier",
        keeper="ResumeFromLatest",
    )
    chief_only.close()  # the pair writes here next: one writing process per directory
    [(code0, _, error0), (code1, _, error1)] = launch_pair(tmp_path / "unshared", "unshared")
    assert (code0, code1) == (1, 1), (error0[-2000:], error1[-2000:])
    assert "(process 0: 1 checkpoint)" in error0
    assert "(process 0: 1 checkpoint, process 1: 0 checkpoints)" in error1
    assert chief_only.filenames() == {
        "resume-epoch0001-step00000004.weights.h5",
        keras_ckpt.store.MANIFEST_NAME,
    }


def expected_loads(directory):
    """The weights and optimizer iterations of the checkpoints the "load*" modes load, read
    here in one plain process."""
    local = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8), keras.layers.Dense(1)])
    local.compile(optimizer="adam", loss="mse")
    last = keras_ckpt.list_checkpoints(directory / "resume")[-1]
    keras_ckpt.load_checkpoint(last, local)
    return {
        "best": keras.saving.load_model(keras_ckpt.best_checkpoint(directory / "best").path),
        "latest": keras.saving.load_model(
            keras_ckpt.latest_checkpoint(directory / "interval").path
        ),
        "resume": local,
    }


@pytest.mark.slow
def test_process_0_alone_loads_what_the_pair_wrote(tmp_path):
    # After training under a two-process distribution, process 0 alone calls the loaders (the
    # natural `if jax.process_index() == 0: load_best(directory)`). Each returns a plain model
    # on process 0's device whose weights are the checkpoint's. Before, building the model
    # was a collective process 1 never joined: process 0 hung (killed at launch_pair's
    # deadline, which fails the test).
    [chief, other] = run_pair(tmp_path, "load")
    assert other["loaded"] == {}
    expected = expected_loads(tmp_path)
    assert sorted(chief["loaded"]) == sorted(expected)
    for key, model in expected.items():
        loaded = chief["loaded"][key]
        assert loaded["local"], key
        assert loaded["iterations"] == int(model.optimizer.iterations) > 0, key
        for got, want in zip(loaded["weights"], model.get_weights(), strict=True):
            np.testing.assert_array_equal(np.asarray(got, dtype="float32"), want, err_msg=key)


@pytest.mark.slow
def test_process_0_alone_loading_into_the_distributed_model_raises_instead_of_hanging(tmp_path):
    # Process 0 alone calls each loader with the trained model, whose variables span both
    # processes: loading into it is a collective process 1 never joins. Each call raises a
    # clear error once the barrier before it times out (2 s here); process 1 goes on, and the
    # two processes still agree afterwards. Before, process 0's load entered a collective of
    # its own: it waited for ever, or (here) was paired with process 1's next collective, a
    # mismatch that aborted process 1 ("Is there a distributed collective mismatch").
    [chief, other] = run_pair(tmp_path, "load_alone")
    assert chief is not None and other is not None  # both finished (return code 0)
    assert other["raised"] == other["loaded"] == {} and other["meetings"] == []
    assert chief["agreed"] is other["agreed"] is True
    assert chief["weights"] == other["weights"]  # nothing was loaded on process 0
    assert chief["loaded"] == {}
    assert len(chief["meetings"]) == 3 and all("DEADLINE_EXCEEDED" in m for m in chief["meetings"])
    functions = {"best": "load_best", "latest": "load_latest", "resume": "load_checkpoint"}
    assert sorted(chief["raised"]) == sorted(functions)
    for key, function in functions.items():
        raised = chief["raised"][key]
        assert (raised["type"], raised["runtime"]) == ("DistributedLoadError", True)
        assert raised["message"].startswith(
            f"{function}: the model is distributed over 2 processes"
        )
        assert f"not every process called {function} within 2 s" in raised["message"]
        assert f"Call {function} on every process at the same point" in raised["message"]
        assert "pass no model" in raised["message"]
        assert "set_distribution(None)" in raised["message"]
        assert 2 <= raised["seconds"] < 60, key


@pytest.mark.slow
def test_both_processes_load_into_the_distributed_model_together(tmp_path):
    # EarlyStopping(restore_best_weights=<directory>) restores the best checkpoint on both
    # processes at the end of training, then both call each loader with the trained model:
    # every process meets the others first, and the model, still distributed, holds exactly
    # the checkpoint's weights on both.
    [chief, other] = run_pair(tmp_path, "load_together")
    assert chief is not None and other is not None
    assert chief["meetings"] == other["meetings"] == [None] * 4  # every process arrived
    assert chief["raised"] == other["raised"] == {}
    expected = expected_loads(tmp_path)
    expected["restored"] = expected["best"]
    for report in (chief, other):
        assert sorted(report["loaded"]) == sorted(expected)
        for key, model in expected.items():
            loaded = report["loaded"][key]
            assert not loaded["local"], key  # still spans both processes
            assert loaded["iterations"] == int(model.optimizer.iterations) > 0, key
            for got, want in zip(loaded["weights"], model.get_weights(), strict=True):
                np.testing.assert_array_equal(np.asarray(got, dtype="float32"), want, key)
