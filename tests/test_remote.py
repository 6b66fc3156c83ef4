"""Remote checkpoint directories (keras_ckpt.remote) against a real S3 API (moto's server on
127.0.0.1, through s3fs) and fsspec's memory://, with real training where a callback is used."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
import warnings

import fsspec
import keras
import numpy as np
import pytest
import s3fs
from conftest import CountBatches, Crash, run_child_script
from resume_setup import make_resume_model, resume_data

import keras_ckpt
from keras_ckpt import remote
from keras_ckpt.records import MANIFEST_NAME, TEMP_PATTERN
from keras_ckpt.writer import WRITER

SOURCE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(params=["memory", "s3"])
def url(request):
    """A fresh remote directory: on fsspec's memory:// or on the S3 server."""
    if request.param == "memory":
        return f"memory://keras-ckpt-tests/{uuid.uuid4().hex[:12]}/run"
    return f"{request.getfixturevalue('s3_bucket')}/run"


def writing(data):
    def write(path):
        with open(path, "wb") as file:
            file.write(data)

    return write


def commit(store, name, data=b"checkpoint", keeper="k", epoch=1):
    return store.commit(
        name,
        writing(data),
        epoch=epoch,
        step=epoch,
        metrics={"loss": 1.0 / epoch},
        kind="weights",
        run="r",
        keeper=keeper,
    )


def quietly(function, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # memory:// says once that it has no conditional writes
        return function(*args, **kwargs)


# The store's protocol -------------------------------------------------------------------------


def test_commits_are_listed_verified_replaced_and_released(url):
    store = quietly(remote.RemoteStore, url)
    first = quietly(commit, store, "a.weights.h5", b"first")
    quietly(commit, store, "b.weights.h5", b"other", epoch=2)
    replaced = quietly(commit, store, "a.weights.h5", b"second version", epoch=3)
    assert first.path == f"{url}/a.weights.h5"
    listed = {r.filename: r for r in keras_ckpt.list_checkpoints(url)}
    assert sorted(listed) == ["a.weights.h5", "b.weights.h5"]
    assert listed["a.weights.h5"].sha256 == replaced.sha256 != first.sha256
    for record in listed.values():
        remote.verify(record)
    with keras_ckpt.store.local_file(listed["a.weights.h5"]) as path:
        assert open(path, "rb").read() == b"second version"
    quietly(store.set_alias, "best", "b.weights.h5")
    assert keras_ckpt.best_checkpoint(url).filename == "b.weights.h5"
    assert quietly(store.release, "k", ["b.weights.h5"]) == ["b.weights.h5"]
    # No upload, probe or trash is left: the objects are the listed ones and the manifest.
    assert remote.list_names(url) == {"a.weights.h5", MANIFEST_NAME}
    with pytest.raises(FileNotFoundError, match="no best checkpoint"):
        keras_ckpt.best_checkpoint(url)


def test_a_failed_save_changes_nothing(url):
    store = quietly(remote.RemoteStore, url)
    quietly(commit, store, "a.weights.h5", b"kept")
    before = fsspec.core.url_to_fs(url)[0].cat_file(
        fsspec.core.url_to_fs(f"{url}/{MANIFEST_NAME}")[1]
    )

    def broken(path):
        with open(path, "wb") as file:
            file.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        store.commit(
            "a.weights.h5", broken, epoch=2, step=2, metrics={}, kind="weights", run="r", keeper="k"
        )
    fs, path = fsspec.core.url_to_fs(f"{url}/{MANIFEST_NAME}")
    assert fs.cat_file(path) == before
    assert remote.list_names(url) == {"a.weights.h5", MANIFEST_NAME}
    with keras_ckpt.store.local_file(keras_ckpt.list_checkpoints(url)[0]) as local:
        assert open(local, "rb").read() == b"kept"


def test_an_interrupted_commit_is_settled_when_the_directory_is_next_opened(s3_bucket):
    url = f"{s3_bucket}/run"
    fs = s3fs.S3FileSystem()
    store = remote.RemoteStore(url)
    commit(store, "kept.weights.h5", b"kept")
    # A writer killed after its pending manifest write: once before the server-side copy (the
    # commit is dropped, its upload deleted), once after it (the commit is completed).
    for copied in (False, True):
        name = "copied.weights.h5" if copied else "lost.weights.h5"
        upload = f".keras_ckpt-tmp-{uuid.uuid4().hex[:12]}-{name}"
        fs.pipe_file(f"{url}/{upload}", b"new bytes")
        record = keras_ckpt.store.CheckpointRecord(
            path=f"{url}/{name}",
            epoch=2,
            step=2,
            metrics={},
            time=0.0,
            size=len(b"new bytes"),
            sha256=hashlib.sha256(b"new bytes").hexdigest(),
            keras_version="3",
            kind="weights",
            run="r",
            kept_by=("k",),
        )
        manifest, token = remote._read_manifest(fs, url)
        manifest.pending = {"temp": upload, "record": record.to_json()}
        remote._write_manifest(fs, url, manifest, token)
        if copied:
            fs.copy(f"{url}/{upload}", f"{url}/{name}")
        # A reader sees the commit exactly when its copy happened, and writes nothing.
        listed = [r.filename for r in keras_ckpt.list_checkpoints(url)]
        assert (name in listed) is copied
        assert upload in remote.list_names(url)
        remote.RemoteStore(url)  # opening for writing settles it
        assert not [n for n in remote.list_names(url) if TEMP_PATTERN.match(n)]
        assert remote._read_manifest(fs, url)[0].pending is None
    listed = [r.filename for r in keras_ckpt.list_checkpoints(url)]
    assert listed == ["kept.weights.h5", "copied.weights.h5"]
    assert remote.list_names(url) == {"kept.weights.h5", "copied.weights.h5", MANIFEST_NAME}


def child(*args):
    environment = {**os.environ, "PYTHONPATH": SOURCE_ROOT}
    script = os.path.join(os.path.dirname(__file__), "remote_child.py")
    return subprocess.Popen(
        [sys.executable, script, *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment,
    )


def test_unfinished_multipart_uploads_of_a_killed_writer_are_aborted_at_open(s3_bucket):
    # What a writer killed in the middle of a large (multipart) upload leaves: parts that no
    # listing shows. Opening the directory for writing aborts those of its temporary objects.
    fs, bucket = s3fs.S3FileSystem(), s3_bucket[len("s3://") :]
    keys = {
        "leftover": "run/.keras_ckpt-tmp-0123456789ab-epoch0001.keras",
        "elsewhere": "other/.keras_ckpt-tmp-0123456789ab-epoch0001.keras",
        "deeper": "run/sub/.keras_ckpt-tmp-0123456789ab-epoch0001.keras",
        "not ours": "run/mine.bin",
    }
    for key in keys.values():
        fs.call_s3("create_multipart_upload", Bucket=bucket, Key=key)

    remote.RemoteStore(f"{s3_bucket}/run")

    left = {u["Key"] for u in fs.call_s3("list_multipart_uploads", Bucket=bucket)["Uploads"]}
    assert left == {keys["elsewhere"], keys["deeper"], keys["not ours"]}


@pytest.mark.slow
def test_a_writer_killed_at_any_moment_leaves_only_whole_checkpoints(s3_bucket):
    # SIGKILL at three different moments of a loop of uploads, commits and deletions: every
    # checkpoint listed afterwards verifies, and opening the directory removes every leftover.
    url = f"{s3_bucket}/run"
    committed = []
    for delay in (1.5, 2.3, 3.1):
        writer = child("forever", url)
        time.sleep(delay)
        writer.send_signal(signal.SIGKILL)
        output, errors = writer.communicate()
        assert writer.returncode == -signal.SIGKILL, errors[-2000:]
        committed += [line.split()[1] for line in output.splitlines()]
        listed = keras_ckpt.list_checkpoints(url)
        for record in listed:
            remote.verify(record)
        # What the writer reported committed last is there (the two before it may be deleted).
        if committed:
            assert committed[-1] in {r.filename for r in listed}
        remote.RemoteStore(url)
        names = remote.list_names(url)
        assert not [n for n in names if TEMP_PATTERN.match(n)], names
        assert names - {MANIFEST_NAME} == {r.filename for r in keras_ckpt.list_checkpoints(url)}
    assert len(committed) >= 3  # the kills came during the loop, not before it began


@pytest.mark.slow
def test_two_writers_on_one_manifest_never_lose_a_commit(s3_bucket):
    # Conditional manifest writes: a writer whose manifest is out of date is refused with
    # ManifestConflictError instead of overwriting the other's commits. Every commit reported
    # done is listed and whole at the end.
    url = f"{s3_bucket}/run"
    remote.RemoteStore(url)  # the manifest exists before the race
    writers = [child("race", url, tag, 25) for tag in ("a", "b")]
    lines = []
    for writer in writers:
        output, errors = writer.communicate(timeout=240)
        assert writer.returncode == 0, errors[-2000:]
        lines += output.splitlines()
    done = {line.split()[1] for line in lines if line.startswith("ok ")}
    refused = [line for line in lines if line.startswith("conflict ")]
    listed = {r.filename: r for r in keras_ckpt.list_checkpoints(url)}
    assert done <= set(listed), sorted(done - set(listed))
    for record in listed.values():
        remote.verify(record)
    assert len(lines) == 50 and done, lines
    # Without the preconditions the two would overwrite each other's manifests silently; with
    # them, the losers are told (how many depends on the timing, so it is not asserted).
    print(f"{len(done)} commits, {len(refused)} refused")


# Failing fast ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad, message",
    [
        ("nosuchprotocol://bucket/run", "protocol 'nosuchprotocol', which fsspec does not know"),
        ("s3://", "a path of plain names"),
        ("s3://bucket/../run", "a path of plain names"),
        ("s3://bucket//run", "a path of plain names"),
    ],
)
def test_a_bad_url_is_refused_at_construction(bad, message):
    for make in (
        lambda: keras_ckpt.BestCheckpoint(bad),
        lambda: keras_ckpt.IntervalCheckpoint(bad, every_epochs=1),
        lambda: keras_ckpt.ResumeFromLatest(bad),
        lambda: keras_ckpt.ModelCheckpoint(f"{bad}/model.keras"),
    ):
        with pytest.raises(ValueError, match=message):
            make()


def test_a_protocol_whose_file_system_is_missing_names_the_extra():
    try:
        import gcsfs  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("gcsfs is installed here")
    with pytest.raises(ValueError, match=r'pip install "keras-ckpt\[gcs\]"'):
        keras_ckpt.BestCheckpoint("gs://bucket/run")


def test_a_missing_bucket_fails_before_the_first_batch(s3_endpoint, make_model, data):
    x, y = data
    counter = CountBatches()
    callback = keras_ckpt.BestCheckpoint(f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/run")
    with pytest.raises(ValueError, match="cannot be written.*(bucket|NoSuchBucket)"):
        make_model().fit(x, y, epochs=2, verbose=0, callbacks=[callback, counter])
    assert counter.batches == 0


def test_missing_credentials_fail_before_the_first_batch(
    s3_bucket, make_model, data, without_s3_credentials
):
    x, y = data
    counter = CountBatches()
    callback = keras_ckpt.ResumeFromLatest(f"{s3_bucket}/run")
    with pytest.raises(ValueError, match="cannot be written.*credentials"):
        make_model().fit(x, y, epochs=2, verbose=0, callbacks=[callback, counter])
    assert counter.batches == 0


# Transient errors -----------------------------------------------------------------------------


class Flaky:
    """Fails the first ``failures`` uploads of a real file system with a dropped connection."""

    def __init__(self, fs, failures):
        self.put_file, self.failures, self.calls = fs.put_file, failures, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls <= self.failures:
            raise ConnectionResetError("connection reset by peer (injected)")
        return self.put_file(*args, **kwargs)


def test_transient_upload_errors_are_retried_then_raised_with_nothing_lost(
    s3_bucket, make_model, data, monkeypatch
):
    x, y = data
    url = f"{s3_bucket}/run"
    monkeypatch.setattr(remote, "RETRY_DELAYS", (0.0, 0.0, 0.0))
    fs = fsspec.core.url_to_fs(url)[0]
    # Two dropped connections: retried, the save lands.
    flaky = Flaky(fs, failures=2)
    monkeypatch.setattr(fs, "put_file", flaky)
    model = make_model()
    with pytest.warns(UserWarning, match="injected.*retrying"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[keras_ckpt.ResumeFromLatest(url)])
    assert [r.epoch for r in keras_ckpt.list_checkpoints(url)] == [1]
    # Four in a row: more than the retries; fit raises it (at the end: the save is async), and
    # the checkpoint already listed is still there, whole.
    monkeypatch.setattr(fs, "put_file", Flaky(fs, failures=4))
    with pytest.raises(ConnectionResetError, match="injected"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(x, y, epochs=2, verbose=0, callbacks=[keras_ckpt.ResumeFromLatest(url)])
    [record] = keras_ckpt.list_checkpoints(url)
    remote.verify(record)
    assert record.epoch == 1
    assert not [n for n in remote.list_names(url) if TEMP_PATTERN.match(n)]


# Training with a remote directory -------------------------------------------------------------


@pytest.mark.parametrize("save_freq", ["epoch", 3], ids=["epoch-boundary", "mid-epoch"])
def test_resume_from_s3_is_exact(s3_bucket, save_freq):
    # The run crashes; the rerun (same script, nothing of the first run kept locally) resumes
    # from the bucket; its final weights equal an uninterrupted run's, bit for bit.
    x, y = resume_data()
    url = f"{s3_bucket}/run"

    def fit(model, callbacks):
        return model.fit(
            x, y, batch_size=16, epochs=4, shuffle=True, verbose=0, callbacks=callbacks
        )

    reference = make_resume_model()
    fit(reference, [])
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(make_resume_model(), [keras_ckpt.ResumeFromLatest(url, save_freq=save_freq), Crash(14)])
    # The crash came before the 15th of 20 batches. The rerun resumes from the end of the 10th
    # (an epoch's end), or of the 12th (every 3 batches: the 2nd of the 3rd epoch).
    WRITER.wait()  # the crashed run's last save may still be uploading
    latest = max(keras_ckpt.list_checkpoints(url), key=lambda record: record.step)
    assert (latest.step, latest.batch) == ((10, None) if save_freq == "epoch" else (12, 2))
    resumed = make_resume_model()
    fit(resumed, [keras_ckpt.ResumeFromLatest(url, save_freq=save_freq)])
    for got, want in zip(resumed.get_weights(), reference.get_weights(), strict=True):
        np.testing.assert_array_equal(got, want)
    assert remote.list_names(url) - {MANIFEST_NAME} == {
        r.filename for r in keras_ckpt.list_checkpoints(url)
    }


def test_best_models_on_s3_load_with_plain_keras(s3_bucket, make_model, data, weights_by_epoch):
    x, y = data
    recorder = weights_by_epoch()
    best = f"{s3_bucket}/best"
    model = make_model()
    stopper = keras_ckpt.EarlyStopping(monitor="loss", patience=50, restore_best_weights=best)
    model.fit(
        x,
        y,
        epochs=4,
        verbose=0,
        callbacks=[
            keras_ckpt.BestCheckpoint(best, monitor="loss", top_k=2),
            keras_ckpt.ModelCheckpoint(
                f"{s3_bucket}/mc/model.keras", monitor="loss", save_best_only=True
            ),
            stopper,
            recorder,
        ],
    )
    [*_, top] = sorted(keras_ckpt.list_checkpoints(best), key=lambda r: -r.metrics["loss"])
    assert len(keras_ckpt.list_checkpoints(best)) == 2
    loaded = keras_ckpt.load_best(best)
    for got, want in zip(loaded.get_weights(), recorder.weights[top.epoch], strict=True):
        np.testing.assert_array_equal(got, want)
    # EarlyStopping restored the best weights from the bucket.
    for got, want in zip(model.get_weights(), recorder.weights[top.epoch], strict=True):
        np.testing.assert_array_equal(got, want)
    # ModelCheckpoint's one file, replaced at each improvement, is a plain .keras file there.
    [record] = keras_ckpt.list_checkpoints(f"{s3_bucket}/mc")
    assert record.filename == "model.keras"
    with keras_ckpt.store.local_file(record) as path:
        plain = keras.saving.load_model(path)
    for got, want in zip(plain.get_weights(), recorder.weights[top.epoch], strict=True):
        np.testing.assert_array_equal(got, want)


def test_model_checkpoint_on_s3_asks_the_bucket_about_earlier_files(s3_bucket, make_model, data):
    x, y = data
    filepath = f"{s3_bucket}/mc/model.keras"
    make_model().fit(x, y, epochs=1, verbose=0, callbacks=[keras_ckpt.ModelCheckpoint(filepath)])
    with pytest.warns(UserWarning, match="replacing .*model.keras, which an earlier run wrote"):
        make_model().fit(
            x, y, epochs=1, verbose=0, callbacks=[keras_ckpt.ModelCheckpoint(filepath)]
        )
    # A name that is a prefix holding objects (a directory) cannot be a checkpoint's.
    s3fs.S3FileSystem().pipe_file(f"{s3_bucket[len('s3://') :]}/mc/taken.keras/x", b"x")
    callback = keras_ckpt.ModelCheckpoint(f"{s3_bucket}/mc/taken.keras")
    with pytest.raises(OSError, match="Filepath used is an existing directory"):
        make_model().fit(x, y, epochs=1, verbose=0, callbacks=[callback])


def test_async_saves_to_s3_send_no_request_from_the_training_thread(
    s3_bucket, make_model, data, monkeypatch
):
    """After the directories are opened (in on_train_begin), every S3 request of a save is the
    writer's: the training thread only copies the variables."""
    import fsspec.asyn

    training_thread, on_training_thread = threading.main_thread(), []
    sync = fsspec.asyn.sync  # every blocking call of an async fsspec file system goes through it

    def recorded_sync(loop, func, *args, **kwargs):
        if threading.current_thread() is training_thread:
            on_training_thread.append(getattr(func, "__name__", repr(func)))
        return sync(loop, func, *args, **kwargs)

    class CountFromTheFirstEpoch(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            monkeypatch.setattr(fsspec.asyn, "sync", recorded_sync)

    x, y = data
    callbacks = [
        keras_ckpt.ResumeFromLatest(f"{s3_bucket}/resume", save_freq=2),
        keras_ckpt.BestCheckpoint(f"{s3_bucket}/run", monitor="loss", top_k=2),
        keras_ckpt.IntervalCheckpoint(f"{s3_bucket}/run", keep_last=2),
        CountFromTheFirstEpoch(),  # after the others: their directories are open
    ]
    make_model().fit(
        x, y, epochs=4, batch_size=16, verbose=0, callbacks=callbacks[:3] + [callbacks[3]]
    )
    monkeypatch.undo()
    assert on_training_thread == []
    assert len(keras_ckpt.list_checkpoints(f"{s3_bucket}/resume")) == 2
    assert len(keras_ckpt.list_checkpoints(f"{s3_bucket}/run")) == 4


def test_interval_checkpoints_and_backup_and_restore_on_memory(make_model, data):
    x, y = data
    base = f"memory://keras-ckpt-tests/{uuid.uuid4().hex[:12]}"
    reference = make_model()
    reference.fit(x, y, epochs=3, verbose=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # memory:// has no conditional writes: one warning
        with pytest.raises(RuntimeError, match="simulated crash"):
            make_model().fit(
                x,
                y,
                epochs=3,
                verbose=0,
                callbacks=[
                    keras_ckpt.IntervalCheckpoint(f"{base}/interval", every_epochs=1, keep_last=2),
                    keras_ckpt.BackupAndRestore(backup_dir=f"{base}/backup"),
                    Crash(5),  # the 2nd batch of the 2nd epoch (3 batches an epoch)
                ],
            )
        WRITER.wait()
        assert [r.epoch for r in keras_ckpt.list_checkpoints(f"{base}/interval")] == [1]
        # The rerun continues from the backup of epoch 1 and ends where an uninterrupted run does.
        counter, model = CountBatches(), make_model()
        model.fit(
            x,
            y,
            epochs=3,
            verbose=0,
            callbacks=[
                keras_ckpt.IntervalCheckpoint(f"{base}/interval", every_epochs=1, keep_last=2),
                keras_ckpt.BackupAndRestore(backup_dir=f"{base}/backup"),
                counter,
            ],
        )
    assert counter.batches == 6
    for got, want in zip(model.get_weights(), reference.get_weights(), strict=True):
        np.testing.assert_array_equal(got, want)
    assert [r.epoch for r in keras_ckpt.list_checkpoints(f"{base}/interval")] == [2, 3]
    latest = keras_ckpt.load_latest(f"{base}/interval")
    for got, want in zip(latest.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(got, want)
    # BackupAndRestore deletes its backup once training ends, as Keras's does.
    assert remote.list_names(f"{base}/backup") == set()


@pytest.mark.slow
def test_sigkill_during_uploads_then_a_rerun_from_the_bucket_is_exact(s3_bucket, tmp_path):
    # The training script of test_resume.py, writing to S3, killed inside a save. Each save is
    # an upload, the pending manifest write, the committing one, the `latest` alias's; from the
    # third on, retention's two (trash listed, trash emptied). Killed right after the 2nd save's
    # pending write (6: uploaded, not copied yet), its commit (7), and the 3rd save's first
    # release write (13: trash listed, not deleted). The rerun, with nothing local, ends with
    # the weights of an uninterrupted run.
    reference = run_child_script("resume_child.py", tmp_path / "ref", tmp_path / "ref.npz", "plain")
    assert reference.returncode == 0, reference.stderr[-2000:]
    expected = load_npz(tmp_path / "ref.npz")
    for index, point in enumerate((6, 7, 13)):
        url, output = f"{s3_bucket}/run{index}", tmp_path / f"run{index}.npz"
        first = run_child_script("resume_child.py", url, output, "upload-kill", point)
        assert first.returncode == -signal.SIGKILL, (point, first.stderr[-2000:])
        assert keras_ckpt.list_checkpoints(url), point  # killed after the first save
        rerun = run_child_script("resume_child.py", url, output, "plain")
        assert rerun.returncode == 0, (point, rerun.stderr[-2000:])
        for got, want in zip(load_npz(output), expected, strict=True):
            np.testing.assert_array_equal(got, want)
        assert not [n for n in remote.list_names(url) if TEMP_PATTERN.match(n)]


def load_npz(path):
    with np.load(path) as arrays:
        return [arrays[f"arr_{i}"] for i in range(len(arrays.files))]


@pytest.mark.slow
def test_two_jax_processes_share_an_s3_directory_and_resume_together(s3_bucket):
    # The two-process JAX run of test_multiprocess.py with its directories on S3: process 0
    # writes (process 1 holds a FollowerStore, which cannot write), both take the same
    # decisions; after process 1 is SIGKILLed mid-epoch 3, the rerun pair resumes from the
    # same checkpoint and ends where the uninterrupted pair ended.
    from test_multiprocess import DIRECTORIES, run_pair

    [chief, other] = run_pair(f"{s3_bucket}/pair", "train")
    assert chief["logged"] == other["logged"] and chief["epochs"] == [0, 1, 2, 3]
    assert chief["weights"] == other["weights"]
    for name in DIRECTORIES:
        records = keras_ckpt.list_checkpoints(f"{s3_bucket}/pair/{name}")
        assert records, name
        for record in records:
            remote.verify(record)
    uninterrupted = chief["weights"]
    reports = run_pair(f"{s3_bucket}/killed", "kill1")
    assert reports[1] is None
    [chief, other] = run_pair(f"{s3_bucket}/killed", "train")
    assert chief["resumed"] == other["resumed"] is not None
    assert chief["weights"] == other["weights"] == uninterrupted


@pytest.mark.parametrize(
    "entry",
    [
        {"trash": ["../victim.txt"]},
        {"pending": {"temp": "../victim.txt", "record": {}}},
        {"aliases": {"best": "../victim.txt"}},
    ],
    ids=["trash", "pending", "alias"],
)
def test_a_hostile_remote_manifest_is_refused_and_touches_nothing_outside(url, entry):
    # A manifest is untrusted input on remote storage too: a name that leads out of the
    # directory is refused whole, by readers and by a writer opening the directory, and the
    # object beside the directory stays as it was.
    fs = fsspec.core.url_to_fs(url)[0]
    victim = url.rsplit("/", 1)[0] + "/victim.txt"
    fs.pipe_file(victim, b"precious")
    fs.pipe_file(f"{url}/{MANIFEST_NAME}", json.dumps({**MANIFEST_HEAD, **entry}).encode())
    with pytest.raises(keras_ckpt.store.ManifestError, match="plain file name|temporary name"):
        keras_ckpt.list_checkpoints(url)
    with pytest.raises(keras_ckpt.store.ManifestError), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        remote.RemoteStore(url)
    assert fs.cat_file(victim) == b"precious"


MANIFEST_HEAD = {"format": "keras_ckpt.manifest", "version": 1, "checkpoints": []}
