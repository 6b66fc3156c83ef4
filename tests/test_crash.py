"""SIGKILL at any moment, mid-save included, leaves every committed checkpoint loadable."""

import os
import random
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import keras
import pytest

import keras_ckpt
from keras_ckpt.store import TEMP_PREFIX, CheckpointStore, read_manifest, verify

CHILD = os.path.join(os.path.dirname(__file__), "crash_child.py")
# Manifest replacements per epoch: ModelCheckpoint commit (2), BestCheckpoint commit (2), alias
# (1), deletion (2). These points fall at every stage of the first epochs.
KILL_POINTS = [2, 3, 5, 6, 7, 11, 13, -1, -3]


def run_child(directory, kill_point):
    process = subprocess.Popen(
        [sys.executable, CHILD, str(directory), str(kill_point)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    if kill_point == 0:
        # Kill from outside at a seeded random moment after the first checkpoint committed.
        deadline = time.monotonic() + 120
        while not os.path.exists(os.path.join(directory, "latest.keras")):
            assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()
            time.sleep(0.05)
        time.sleep(random.Random(7).uniform(0.2, 1.5))
        process.send_signal(signal.SIGKILL)
    stdout, stderr = process.communicate(timeout=300)
    return process.returncode, stdout, stderr


def assert_every_entry_loads(directory, point):
    records = keras_ckpt.list_checkpoints(directory)
    # Only a kill inside the very first file write comes before any commit.
    assert bool(records) == (point != -1), f"kill point {point}: {records}"
    for record in records:
        verify(record)
        keras.saving.load_model(record.path)
    return records


@pytest.mark.slow
def test_sigkill_at_every_stage_of_saving(tmp_path):
    points = KILL_POINTS + [0]
    directories = [tmp_path / f"kill{point}" for point in points]
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(run_child, directories, points))
    for point, directory, (returncode, stdout, stderr) in zip(
        points, directories, results, strict=True
    ):
        assert returncode == -signal.SIGKILL, f"kill point {point}: {stderr[-2000:]}"
        if point:
            assert "on keras_ckpt-writer" in stdout, f"kill point {point}: {stdout}"
        # Readers see only committed checkpoints, each intact, before any recovery ran.
        assert_every_entry_loads(directory, point)
        # Reopening finishes or undoes the interrupted change and clears leftovers.
        CheckpointStore(directory)
        assert not [n for n in os.listdir(directory) if n.startswith(TEMP_PREFIX)]
        manifest = read_manifest(str(directory))
        assert manifest.pending is None and manifest.trash == []
        records = assert_every_entry_loads(directory, point)
        listed = {r.filename for r in records} | {
            "best.keras",
            "keras_ckpt.json",
            ".keras_ckpt.lock",
        }
        assert set(os.listdir(directory)) <= listed, f"kill point {point}: stray files"
        if "best" in manifest.aliases:
            assert os.path.samefile(directory / "best.keras", directory / manifest.aliases["best"])
