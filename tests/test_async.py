"""Asynchronous saving: the writer, the snapshot, and the callbacks that use them.

Correctness only (ordering, error surfacing, files identical to the synchronous path, waiting at
the end of training); timings belong to benchmarks/.
"""

import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import threading
import time
import zipfile

import keras
import numpy as np
import pytest
from conftest import assert_weights_equal, run_child_script

import keras_ckpt
from keras_ckpt.records import LOCK_NAME, MANIFEST_NAME
from keras_ckpt.snapshot import ModelSnapshot, take_snapshot
from keras_ckpt.store import TEMP_PREFIX
from keras_ckpt.writer import WRITER_NICENESS, BackgroundWriter


def digest(path):
    with open(path, "rb") as file:
        return hashlib.sha256(file.read()).hexdigest()


def fit(model, data, callbacks, epochs=3, **kwargs):
    x, y = data
    return model.fit(x, y, batch_size=32, epochs=epochs, verbose=0, callbacks=callbacks, **kwargs)


@pytest.fixture
def slow_writes(monkeypatch):
    """Makes every background write take a while, and records how many overlap."""
    state = {"running": 0, "most": 0, "threads": set()}
    lock = threading.Lock()
    original = ModelSnapshot.write

    def write(self, path):
        with lock:
            state["running"] += 1
            state["most"] = max(state["most"], state["running"])
            state["threads"].add(threading.current_thread().name)
        time.sleep(0.2)
        try:
            original(self, path)
        finally:
            with lock:
                state["running"] -= 1

    monkeypatch.setattr(ModelSnapshot, "write", write)
    return state


# Tier 1: the writer ----------------------------------------------------------------------


def test_writer_runs_jobs_one_at_a_time_in_order():
    writer, log, overlap = BackgroundWriter(), [], []
    running = threading.Event()

    def job(n):
        def run():
            overlap.append(running.is_set())
            running.set()
            time.sleep(0.01)
            log.append(n)
            running.clear()

        return run

    for n in range(5):
        writer.submit(job(n), on_error=pytest.fail)
    writer.wait()
    assert log == [0, 1, 2, 3, 4]
    assert not any(overlap)
    assert not writer.busy


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread niceness: Linux")
def test_writer_runs_below_the_training_threads_priority():
    # The writer yields the cores to training (its niceness WRITER_NICENESS above), and the
    # threads it starts (the fsync beside the hash) inherit that; the submitter keeps its own.
    writer, seen = BackgroundWriter(), []
    before = os.getpriority(os.PRIO_PROCESS, 0)  # on Linux: the calling thread's niceness

    def job():
        seen.append(os.getpriority(os.PRIO_PROCESS, 0))
        child = threading.Thread(target=lambda: seen.append(os.getpriority(os.PRIO_PROCESS, 0)))
        child.start()
        child.join()

    writer.submit(job, on_error=pytest.fail)
    writer.wait()
    expected = min(before + WRITER_NICENESS, 19)
    assert expected > before or before == 19
    assert seen == [expected, expected]
    assert os.getpriority(os.PRIO_PROCESS, 0) == before


def test_writer_hands_errors_to_the_submitter():
    writer, errors = BackgroundWriter(), []

    def fail():
        raise OSError("disk full")

    writer.submit(fail, on_error=errors.append)
    writer.submit(lambda: None, on_error=errors.append)
    writer.wait()
    assert [str(e) for e in errors] == ["disk full"]


# Tier 2: snapshots -------------------------------------------------------------------------


def test_weights_snapshot_writes_the_same_bytes_as_keras(tmp_path, make_model, data):
    model = make_model()
    fit(model, data, [], epochs=1)
    model.save_weights(tmp_path / "keras.weights.h5")
    # The first snapshot walks the model; the second reuses the walk (same variables).
    for name in ("first.weights.h5", "second.weights.h5"):
        take_snapshot(model, "x.weights.h5", weights_only=True).write(str(tmp_path / name))
        assert digest(tmp_path / "keras.weights.h5") == digest(tmp_path / name)


def test_model_snapshot_is_a_keras_archive_that_plain_keras_loads(tmp_path, make_model, data):
    model = make_model()
    fit(model, data, [], epochs=1)
    model.save(tmp_path / "keras.keras")
    take_snapshot(model, "x.keras", weights_only=False).write(str(tmp_path / "ours.keras"))
    ours, theirs = (
        zipfile.ZipFile(tmp_path / "ours.keras"),
        zipfile.ZipFile(tmp_path / "keras.keras"),
    )
    assert sorted(ours.namelist()) == sorted(theirs.namelist())
    assert ours.read("config.json") == theirs.read("config.json")
    loaded = keras.saving.load_model(tmp_path / "ours.keras")
    assert_weights_equal(loaded.get_weights(), model.get_weights())
    assert int(loaded.optimizer.iterations) == int(model.optimizer.iterations) == 3
    assert not [n for n in os.listdir(tmp_path) if n not in ("keras.keras", "ours.keras")]


def local_headers(path):
    """Each entry's local header as (fields, name, extra, data offset), read from the file
    by the zip format (signature, version, flags, method, time, date, CRC, sizes, lengths)."""
    headers = {}
    with zipfile.ZipFile(path) as archive, open(path, "rb") as file:
        for info in archive.infolist():
            file.seek(info.header_offset)
            fields = struct.unpack("<IHHHHHIIIHH", file.read(30))
            name, extra = file.read(fields[9]), file.read(fields[10])
            headers[info.filename] = (info, fields, name, extra, file.tell())
    return headers


@pytest.mark.parametrize("zip64", [False, True])
def test_model_archive_holds_the_weights_written_once_in_a_valid_zip(
    tmp_path, make_model, data, monkeypatch, zip64
):
    # The weights entry is the HDF5 file made in place after a 512-byte block that then takes
    # the entry's local header: its CRC, sizes and name agree with the central directory.
    model = make_model()
    fit(model, data, [], epochs=1)
    if zip64:  # entries above the limit get zip64 sizes in both headers; make ours one
        monkeypatch.setattr(zipfile, "ZIP64_LIMIT", 1000)
    take_snapshot(model, "x.keras", weights_only=False).write(str(tmp_path / "ours.keras"))
    monkeypatch.undo()
    with zipfile.ZipFile(tmp_path / "ours.keras") as archive:
        assert archive.testzip() is None  # every entry's CRC holds
        assert archive.namelist()[0] == "model.weights.h5"
    headers = local_headers(tmp_path / "ours.keras")
    for filename, (info, fields, name, extra, _) in headers.items():
        signature, _, _, method, _, _, crc, compressed, size = fields[:9]
        assert (signature, method, name, crc) == (0x04034B50, 0, filename.encode(), info.CRC)
        if compressed == size == 0xFFFFFFFF:  # zip64: the sizes are in an extra field
            fields = {}
            while extra:  # (id, length, data) records
                field, length = struct.unpack("<HH", extra[:4])
                fields[field], extra = extra[4 : 4 + length], extra[4 + length :]
            assert struct.unpack("<QQ", fields[1]) == (info.file_size, info.compress_size)
        else:
            assert filename != "model.weights.h5" or not zip64
            assert (compressed, size) == (info.compress_size, info.file_size)
    weights = headers["model.weights.h5"]
    assert weights[0].header_offset == 0 and weights[4] == 512
    if shutil.which("unzip"):  # Info-ZIP checks each local header against the central directory
        result = subprocess.run(["unzip", "-tq", str(tmp_path / "ours.keras")], capture_output=True)
        assert result.returncode == 0, result.stdout + result.stderr
    loaded = keras.saving.load_model(tmp_path / "ours.keras")
    assert_weights_equal(loaded.get_weights(), model.get_weights())
    assert_weights_equal(loaded.optimizer.variables, model.optimizer.variables)


def test_model_snapshot_carries_assets(tmp_path):
    # An adapted StringLookup keeps its vocabulary as an asset file inside the .keras archive.
    lookup = keras.layers.StringLookup()
    lookup.adapt(["a", "b", "b"])
    model = keras.Sequential([keras.Input((1,), dtype="string"), lookup])
    for name in ("first.keras", "second.keras"):  # the second one may not skip the assets
        take_snapshot(model, "x.keras", weights_only=False).write(str(tmp_path / name))
        names = zipfile.ZipFile(tmp_path / name).namelist()
        assert any(n.startswith("assets/") for n in names), names
        loaded = keras.saving.load_model(tmp_path / name)
        assert [str(v) for v in loaded.layers[-1].get_vocabulary()] == ["[UNK]", "b", "a"]


def test_snapshot_holds_the_moment_it_was_taken(tmp_path, make_model, data):
    model = make_model()
    fit(model, data, [], epochs=1)
    take_snapshot(model, "x.weights.h5", weights_only=True).discard()  # walks the model
    before = [w.copy() for w in model.get_weights()]
    snapshot = take_snapshot(model, "x.weights.h5", weights_only=True)  # copies variables only
    fit(model, data, [], epochs=2)  # training goes on before the write
    snapshot.write(str(tmp_path / "then.weights.h5"))
    restored = make_model()
    restored.load_weights(tmp_path / "then.weights.h5")
    assert_weights_equal(restored.get_weights(), before)
    assert not np.array_equal(model.get_weights()[0], before[0])


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="TensorFlow's reads")
@pytest.mark.parametrize("jit_compile", [False, True])
def test_a_tensorflow_snapshot_is_a_read_that_holds_the_moment(tmp_path, data, jit_compile):
    # On TensorFlow the snapshot copies nothing on the training thread: it holds reads of the
    # variables, which TensorFlow copies before updating in place (in eager ops, tf.function
    # and XLA alike). The optimizer's slots and iteration count must hold the moment as well.
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse", jit_compile=jit_compile)
    fit(model, data, [], epochs=1)
    model.save_weights(tmp_path / "keras.weights.h5")
    take_snapshot(model, "x.weights.h5", weights_only=True).discard()  # walks the model
    snapshot = take_snapshot(model, "x.weights.h5", weights_only=True)
    held = [value for op, _, value in snapshot._calls if op == "set"]
    # The model's variables are held as reads (on Keras 3.5 the saving traversal hands the
    # optimizer's over as NumPy copies already; on the newest Keras they are reads too).
    reads = [value for value in held if not isinstance(value, np.ndarray)]
    assert len(reads) >= len(model.weights)
    fit(model, data, [], epochs=2)
    snapshot.write(str(tmp_path / "then.weights.h5"))
    assert digest(tmp_path / "then.weights.h5") == digest(tmp_path / "keras.weights.h5")


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_snapshot_holds_the_moment_on_other_backends(tmp_path, backend):
    # PyTorch's optimizers update parameters in place, and JAX donates its buffers: the copy
    # must be a real one on both.
    result = run_child_script("snapshot_child.py", backend, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "max_diff=0.0 same_bytes=True" in result.stdout, result.stdout
    # On the CPU, snapshots copy into host buffers reused between saves: never the buffers of
    # one not written yet; freed when fit ends.
    assert "overlapping=0.0 reused=True released=True" in result.stdout, result.stdout


def test_legacy_h5_models_are_left_to_keras(make_model):
    assert take_snapshot(make_model(), "model.h5", weights_only=False) is None


# Tier 3: callbacks in real training --------------------------------------------------------


def manifest_without_times(directory):
    with open(os.path.join(directory, MANIFEST_NAME), encoding="utf-8") as file:
        manifest = json.load(file)
    for record in manifest["checkpoints"]:
        for varying in ("time", "run"):
            record.pop(varying)
    return manifest


def test_async_files_and_manifest_match_the_sync_path(tmp_path, make_model, data, scripted):
    for async_save in (True, False):
        directory = tmp_path / f"async{async_save}"
        keras.utils.clear_session()  # the same layer names, which the files record
        fit(
            make_model(),
            data,
            [
                scripted([0.5, 0.4, 0.6, 0.3]),
                keras_ckpt.BestCheckpoint(
                    directory, top_k=2, save_weights_only=True, async_save=async_save
                ),
                keras_ckpt.IntervalCheckpoint(
                    directory,
                    every_steps=2,
                    keep_last=2,
                    save_weights_only=True,
                    async_save=async_save,
                ),
            ],
            epochs=4,
            validation_data=data,
        )
    on, off = tmp_path / "asyncTrue", tmp_path / "asyncFalse"
    assert sorted(os.listdir(on)) == sorted(os.listdir(off))
    # 2 best + 2 interval + 2 aliases + the manifest + the writer lock
    assert len(os.listdir(on)) == 8
    for name in os.listdir(on):
        if name not in (MANIFEST_NAME, LOCK_NAME):
            assert digest(on / name) == digest(off / name), name
    assert manifest_without_times(on) == manifest_without_times(off)


def test_each_checkpoint_holds_the_weights_of_its_step(tmp_path, make_model, data, slow_writes):
    class WeightsByStep(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.weights = {}

        def on_train_batch_end(self, batch, logs=None):
            step = int(self.model.optimizer.iterations)
            self.weights[step] = [w.copy() for w in self.model.get_weights()]

    recorder = WeightsByStep()
    callback = keras_ckpt.IntervalCheckpoint(tmp_path, every_steps=2, save_weights_only=True)
    fit(make_model(), data, [recorder, callback], epochs=2)  # 3 batches an epoch
    records = keras_ckpt.list_checkpoints(tmp_path)
    assert [r.step for r in records] == [2, 4, 6]  # committed in the order of the saves
    for record in records:
        model = make_model()
        model.load_weights(record.path)
        assert_weights_equal(model.get_weights(), recorder.weights[record.step])
    assert slow_writes["threads"] == {"keras_ckpt-writer"}


def test_at_most_one_save_in_flight_and_all_on_disk_when_fit_returns(
    tmp_path, make_model, data, slow_writes
):
    callbacks = [
        keras_ckpt.IntervalCheckpoint(tmp_path / "interval", every_steps=1, keep_last=2),
        keras_ckpt.BestCheckpoint(tmp_path / "best", monitor="loss", top_k=2),
        keras_ckpt.ResumeFromLatest(tmp_path / "resume", save_freq=2),
        keras_ckpt.ModelCheckpoint(str(tmp_path / "mc" / "{epoch}.keras")),
    ]
    fit(make_model(), data, callbacks, epochs=3)
    assert slow_writes["most"] == 1
    # Each sleeps 0.2 s in the background, yet every last checkpoint is there once fit returns.
    assert keras_ckpt.list_checkpoints(tmp_path / "interval")[-1].step == 9
    assert os.path.exists(tmp_path / "mc" / "3.keras")
    resume_records = keras_ckpt.list_checkpoints(tmp_path / "resume")
    assert resume_records[-1].state["finished"] == 3
    for directory in ("interval", "best", "resume", "mc"):
        leftovers = [n for n in os.listdir(tmp_path / directory) if n.startswith(TEMP_PREFIX)]
        assert leftovers == []


@pytest.mark.parametrize("async_save", [True, False])
def test_a_failed_write_is_raised_in_fit_and_loses_nothing(
    tmp_path, make_model, data, monkeypatch, async_save
):
    original, writes = ModelSnapshot.write, []

    def write(self, path):
        writes.append(path)
        if len(writes) == 2:
            with open(path, "wb") as file:
                file.write(b"half a file")
            raise OSError(28, "No space left on device")
        original(self, path)

    monkeypatch.setattr(ModelSnapshot, "write", write)
    callback = keras_ckpt.IntervalCheckpoint(
        tmp_path, keep_last=1, save_weights_only=True, async_save=async_save
    )
    begun = []
    tracker = keras.callbacks.LambdaCallback(on_epoch_begin=lambda epoch, logs: begun.append(epoch))
    with pytest.raises(OSError, match="No space left"):
        fit(make_model(), data, [tracker, callback], epochs=5)
    # Sync raises at the failing save (epoch 2), async at the next save (epoch 3): never later.
    assert len(writes) == 2
    assert len(begun) == (3 if async_save else 2)
    [record] = keras_ckpt.list_checkpoints(tmp_path)
    assert record.epoch == 1  # the checkpoint before the failure is whole, not rotated out
    keras_ckpt.store.verify(record)
    assert sorted(os.listdir(tmp_path)) == sorted(
        [LOCK_NAME, MANIFEST_NAME, record.filename, "latest.weights.h5"]
    )


def test_a_failed_last_write_is_raised_when_fit_ends(tmp_path, make_model, data, monkeypatch):
    def write(self, path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ModelSnapshot, "write", write)
    callback = keras_ckpt.BestCheckpoint(tmp_path, monitor="loss")
    with pytest.raises(OSError, match="No space left"):
        fit(make_model(), data, [callback], epochs=1)
    assert keras_ckpt.list_checkpoints(tmp_path) == []


def test_async_save_is_validated(tmp_path):
    with pytest.raises(ValueError, match="async_save"):
        keras_ckpt.BestCheckpoint(tmp_path, async_save="yes")


def test_verbose_lines_and_the_wait_at_the_end_of_training(
    tmp_path, make_model, data, scripted, slow_writes, capsys
):
    callbacks = [
        scripted([0.5, 0.6]),
        keras_ckpt.BestCheckpoint(tmp_path / "best", verbose=1),
        keras_ckpt.IntervalCheckpoint(tmp_path / "interval", verbose=1),
        keras_ckpt.ResumeFromLatest(tmp_path / "resume", verbose=1),
    ]
    fit(make_model(), data, callbacks, epochs=2)
    lines = [line for line in capsys.readouterr().out.splitlines() if line]
    assert "Epoch 1: BestCheckpoint saved epoch001-val_loss0.5000.keras (val_loss=0.5)" in lines
    assert "Epoch 2: BestCheckpoint skipped: val_loss=0.6 is not among the best" in lines
    assert "Epoch 2: IntervalCheckpoint saved epoch002-step000006.keras (step 6)" in lines
    assert any(
        line.startswith("Epoch 2: ResumeFromLatest saved resume-epoch0002") for line in lines
    )
    # The last save is still being written when training ends: the wait is announced.
    waits = [line for line in lines if "is waiting for the save in flight" in line]
    assert waits and any(line.startswith("BestCheckpoint done waiting (") for line in lines)
