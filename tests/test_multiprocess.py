"""Two JAX processes train together on 127.0.0.1 (CPU collectives through gloo): only process 0
writes, both resume from the same checkpoint, a signal to one stops both at the same batch."""

import os
import re
import signal
import socket
import subprocess
import sys

import pytest

import keras_ckpt

MANIFEST = "keras_ckpt.json"
CHILD = os.path.join(os.path.dirname(__file__), "multiprocess_child.py")


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_pair(directory, mode):
    """Both processes' report lines; they are killed if they outlive the timeout."""
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
    reports = []
    try:
        for process in processes:
            stdout, stderr = process.communicate(timeout=240)
            assert process.returncode == 0, stderr[-3000:]
            [line] = [line for line in stdout.splitlines() if line.startswith("commits=")]
            reports.append(dict(re.findall(r"(\w+)=(\[[^\]]*\]|\S+)", line)))
    finally:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
                process.wait()
    return reports


@pytest.mark.slow
def test_two_processes_write_once_resume_together_and_stop_together(tmp_path):
    [chief, other] = run_pair(tmp_path / "uninterrupted", "train")
    assert int(chief["commits"]) > 0 and other["commits"] == "0"  # one writer
    assert chief["weights"] == other["weights"] and chief["epochs"] == "[0, 1, 2, 3]"
    uninterrupted = chief["weights"]
    records = keras_ckpt.list_checkpoints(tmp_path / "uninterrupted" / "resume")
    assert len(records) == 2 and records[-1].state["finished"] == 4
    assert (
        len({r.filename for r in records})
        == len(os.listdir(tmp_path / "uninterrupted" / "resume")) - 2
    )

    # Killed in both (a crash in epoch 3), rerun: both resume from the same checkpoint, and end
    # where the uninterrupted pair ended.
    run_pair(tmp_path / "interrupted", "crash")
    [chief, other] = run_pair(tmp_path / "interrupted", "train")
    assert chief["resumed"] == other["resumed"] != "None"
    assert chief["weights"] == other["weights"] == uninterrupted
    assert other["commits"] == "0"

    # SIGTERM to process 1 only: both stop at the same batch, one checkpoint says where.
    # The signal comes before the 6th batch (epoch 2's second) and is seen before the third.
    [chief, other] = run_pair(tmp_path / "signal", "signal")
    assert chief["epochs"] == other["epochs"] == "[0, 1]"
    assert chief["weights"] == other["weights"]
    resume_records = keras_ckpt.list_checkpoints(tmp_path / "signal" / "resume")
    assert (resume_records[-1].state["epoch"], resume_records[-1].state["batch"]) == (1, 2)
    assert resume_records[-1].state["finished"] is None
