"""Keras's sharded weights (``.weights.json`` with ``max_shard_size``) as one checkpoint.

Real training of a tiny model whose shards are a few hundred bytes (``max_shard_size`` below
one kB), so that every checkpoint has several shard files: committed together, listed once,
verified part by part, deleted together, and loadable with plain ``model.load_weights``.
"""

import hashlib
import json
import os
import shutil
import signal

import keras
import numpy as np
import pytest
from conftest import assert_weights_equal, needs_keras, run_child_script

import keras_ckpt
from keras_ckpt import cli, keras_adapter
from keras_ckpt.loading import checkpoint_file
from keras_ckpt.records import MANIFEST_NAME, TEMP_PREFIX, CheckpointRecord, ManifestError
from keras_ckpt.store import CheckpointCorruptedError, CheckpointStore, read_manifest, verify

sharding = needs_keras((3, 10), "sharded weights (`max_shard_size`)")

# In GB, as Keras takes it: about 215 bytes, so the 49-parameter model and its Adam state
# spread over several shards (no single variable of it is larger).
SHARD_GB = 2e-7


def fit(model, data, callbacks, epochs=3):
    x, y = data
    model.fit(x, y, epochs=epochs, batch_size=32, verbose=0, callbacks=callbacks)


def shards_of(directory, record):
    return sorted(name for name in os.listdir(directory) if name in record.filenames[1:])


def fresh_weights(make_model, path):
    """The variables of a fresh model (its optimizer built) after plain Keras loads ``path``."""
    model = make_model(seed=1)
    model.optimizer.build(model.trainable_variables)
    model.load_weights(path)
    return [v.numpy() for v in model.weights], [v.numpy() for v in model.optimizer.variables]


# Real training, one test per callback ------------------------------------------------------


@sharding
@pytest.mark.parametrize("async_save", [True, False])
def test_model_checkpoint_commits_index_and_shards_as_one_checkpoint(
    tmp_path, data, make_model, async_save
):
    model = make_model()
    directory = tmp_path / "run"
    checkpoint = keras_ckpt.ModelCheckpoint(
        str(directory / "e{epoch}.weights.json"),
        save_weights_only=True,
        max_shard_size=SHARD_GB,
        async_save=async_save,
    )
    fit(model, data, [checkpoint])
    records = keras_ckpt.list_checkpoints(directory)
    assert [r.filename for r in records] == [f"e{epoch}.weights.json" for epoch in (1, 2, 3)]
    manifest = json.loads((directory / MANIFEST_NAME).read_text())
    assert len(manifest["checkpoints"]) == 3  # one record each, the shards as its parts
    for record in records:
        assert len(record.parts) >= 3
        prefix = record.filename[: -len(".weights.json")]
        assert all(p.filename.startswith(prefix + "_") for p in record.parts)
        assert shards_of(directory, record) == sorted(record.filenames[1:])
        verify(record)
    expected = {name for record in records for name in record.filenames}
    assert set(os.listdir(directory)) - {MANIFEST_NAME, ".keras_ckpt.lock"} == expected
    # Plain Keras opens the last one: the trained model's variables, the optimizer's included.
    weights, optimizer = fresh_weights(make_model, records[-1].path)
    assert_weights_equal(weights, [v.numpy() for v in model.weights])
    assert_weights_equal(optimizer, [v.numpy() for v in model.optimizer.variables])
    # The same index Keras's own save_weights writes.
    model.save_weights(str(tmp_path / "own.weights.json"), max_shard_size=SHARD_GB)
    own = json.loads((tmp_path / "own.weights.json").read_text())
    ours = json.loads((directory / "e3.weights.json").read_text())
    assert json.dumps(ours["weight_map"]).replace("e3_", "own_") == json.dumps(own["weight_map"])


@sharding
def test_best_checkpoint_deletes_every_shard_of_a_dropped_checkpoint(
    tmp_path, data, make_model, scripted
):
    model = make_model()
    directory = tmp_path / "best"
    best = keras_ckpt.BestCheckpoint(
        directory,
        monitor="val_loss",
        top_k=1,
        save_weights_only=True,
        filename="e{epoch}",
        max_shard_size=SHARD_GB,
    )
    fit(model, data, [scripted([3.0, 2.0, 1.0]), best])
    (record,) = keras_ckpt.list_checkpoints(directory)
    assert record.filename == "e3.weights.json" and len(record.parts) >= 3
    names = set(os.listdir(directory)) - {MANIFEST_NAME, ".keras_ckpt.lock"}
    # e1's and e2's index and shards are gone; the best alias is in the manifest alone.
    assert names == set(record.filenames)
    assert keras_ckpt.best_checkpoint(directory).filename == record.filename
    expected = [v.numpy() for v in model.weights]
    assert_weights_equal(fresh_weights(make_model, record.path)[0], expected)
    loaded = keras_ckpt.load_best(directory, model=make_model(seed=2))
    assert_weights_equal([v.numpy() for v in loaded.weights], expected)


@sharding
def test_interval_checkpoint_keeps_the_last_two_sharded_checkpoints(tmp_path, data, make_model):
    model = make_model()
    directory = tmp_path / "interval"
    interval = keras_ckpt.IntervalCheckpoint(
        directory, keep_last=2, save_weights_only=True, max_shard_size=SHARD_GB
    )
    fit(model, data, [interval], epochs=4)
    records = keras_ckpt.list_checkpoints(directory)
    assert [r.epoch for r in records] == [3, 4]
    assert all(r.filename.endswith(".weights.json") and len(r.parts) >= 3 for r in records)
    names = set(os.listdir(directory)) - {MANIFEST_NAME, ".keras_ckpt.lock"}
    kept = {name for record in records for name in record.filenames}
    assert names == kept  # the latest alias is in the manifest alone
    assert keras_ckpt.latest_checkpoint(directory).filename == records[-1].filename
    assert not any("epoch001" in name or "epoch002" in name for name in names)
    loaded = keras_ckpt.load_latest(directory, model=make_model(seed=2))
    assert_weights_equal([v.numpy() for v in loaded.weights], [v.numpy() for v in model.weights])


# Verification ------------------------------------------------------------------------------


@pytest.fixture
def sharded_run(tmp_path_factory, data, make_model):
    """A directory with two sharded checkpoints, trained once per session of tests."""
    if keras_adapter.SHARDED_WEIGHTS_SUPPORTED is False:
        pytest.skip("Keras 3.10+: sharded weights")
    directory = tmp_path_factory.mktemp("sharded") / "run"
    checkpoint = keras_ckpt.ModelCheckpoint(
        str(directory / "e{epoch}.weights.json"), save_weights_only=True, max_shard_size=SHARD_GB
    )
    fit(make_model(), data, [checkpoint], epochs=2)
    return directory


@pytest.mark.parametrize("damage", ["changed", "missing"])
def test_verify_names_a_damaged_or_missing_shard(sharded_run, tmp_path, damage, capsys):
    directory = tmp_path / "copy"
    shutil.copytree(sharded_run, directory)
    record = keras_ckpt.list_checkpoints(directory)[0]
    shard = directory / record.parts[1].filename
    if damage == "missing":
        os.remove(shard)
    else:
        raw = bytearray(shard.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        shard.write_bytes(bytes(raw))
    with pytest.raises(CheckpointCorruptedError, match=record.parts[1].filename):
        verify(record)
    assert cli.main(["verify", str(directory)]) == 1
    out = capsys.readouterr().out
    assert f"BAD {record.filename}" in out and record.parts[1].filename in out
    assert "ok  e2.weights.json" in out
    assert cli.main(["ls", str(directory)]) == 0
    listed = capsys.readouterr().out
    assert listed.count("e1.weights.json") == 1 and "_00000" not in listed
    with pytest.raises(CheckpointCorruptedError):
        keras_ckpt.load_checkpoint(record, model=keras.Sequential([keras.Input((4,))]))


def test_prune_deletes_every_shard_and_counts_them(sharded_run, tmp_path, capsys):
    directory = tmp_path / "copy"
    shutil.copytree(sharded_run, directory)
    first, second = keras_ckpt.list_checkpoints(directory)
    assert first.total_size == first.size + sum(part.size for part in first.parts)
    assert cli.main(["show", str(directory), "latest"]) == 0
    shown = capsys.readouterr().out
    assert f"{len(second.parts)} shards" in shown
    assert all(part.filename in shown for part in second.parts)
    assert cli.main(["prune", str(directory), "--keep-last", "1"]) == 0
    assert user_files(directory) == sorted(second.filenames)
    assert keras_ckpt.list_checkpoints(directory) == [second]


# Untrusted directories ---------------------------------------------------------------------


@pytest.mark.parametrize("hostile", ["../x.weights.h5", "/tmp/x.weights.h5", TEMP_PREFIX + "a"])
def test_a_manifest_part_outside_the_directory_is_refused(sharded_run, tmp_path, hostile):
    directory = tmp_path / "copy"
    shutil.copytree(sharded_run, directory)
    manifest = json.loads((directory / MANIFEST_NAME).read_text())
    manifest["checkpoints"][0]["parts"][0]["file"] = hostile
    (directory / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match=r"parts\[0\]"):
        keras_ckpt.list_checkpoints(directory)


def test_a_part_listed_by_two_checkpoints_is_refused(sharded_run, tmp_path):
    directory = tmp_path / "copy"
    shutil.copytree(sharded_run, directory)
    manifest = json.loads((directory / MANIFEST_NAME).read_text())
    manifest["checkpoints"][1]["parts"][0] = manifest["checkpoints"][0]["parts"][0]
    (directory / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match="each file listed once"):
        keras_ckpt.list_checkpoints(directory)


@pytest.mark.parametrize("hostile", ["../outside.weights.h5", "/etc/hostname"])
def test_an_index_naming_a_shard_outside_is_refused_before_keras_opens_it(
    sharded_run, tmp_path, hostile, make_model
):
    """The index is rewritten and its checksum in the manifest updated to match, as whoever
    made a hostile directory would: the name is still refused, checksum or not."""
    directory = tmp_path / "copy"
    shutil.copytree(sharded_run, directory)
    (tmp_path / "outside.weights.h5").write_bytes(b"not a checkpoint")
    index = directory / "e1.weights.json"
    data = json.loads(index.read_text())
    first = next(iter(data["weight_map"]))
    data["weight_map"][first] = hostile
    os.remove(index)  # a hard link may share it with the session's directory
    index.write_text(json.dumps(data))
    manifest = json.loads((directory / MANIFEST_NAME).read_text())
    entry = manifest["checkpoints"][0]
    entry["size"] = index.stat().st_size
    entry["sha256"] = hashlib.sha256(index.read_bytes()).hexdigest()
    (directory / MANIFEST_NAME).write_text(json.dumps(manifest))
    record = keras_ckpt.list_checkpoints(directory)[0]
    for verify_checksum in (True, False):
        with pytest.raises(CheckpointCorruptedError, match="plain file name"):
            keras_ckpt.load_checkpoint(record, model=make_model(), verify_checksum=verify_checksum)


def test_the_first_shard_keras_opens_unlisted_is_checked_too(sharded_run, tmp_path, make_model):
    """Keras opens ``<base>_00000.weights.h5`` whatever the index lists: an index that routes
    every variable elsewhere, beside a link of that name to a file outside, is refused."""
    directory = tmp_path / "copy"
    shutil.copytree(sharded_run, directory)
    (tmp_path / "outside.weights.h5").write_bytes(b"not a checkpoint")
    index = directory / "e1.weights.json"
    data = json.loads(index.read_text())
    assert ["e1_00000.weights.h5"] in data["weight_map"].values()
    data["weight_map"] = {key: ["e1_00001.weights.h5"] for key in data["weight_map"]}
    os.remove(index)  # a hard link may share it with the session's directory
    index.write_text(json.dumps(data))
    os.remove(directory / "e1_00000.weights.h5")
    os.symlink(tmp_path / "outside.weights.h5", directory / "e1_00000.weights.h5")
    record = keras_ckpt.list_checkpoints(directory)[0]
    with pytest.raises(CheckpointCorruptedError, match="e1_00000.weights.h5"):
        keras_ckpt.load_checkpoint(record, model=make_model(), verify_checksum=False)


def test_an_unverified_checkpoint_that_is_a_link_is_refused(sharded_run, tmp_path, make_model):
    directory = tmp_path / "copy"
    shutil.copytree(sharded_run, directory)
    (tmp_path / "outside.weights.json").write_text("{}")
    os.remove(directory / "e2.weights.json")
    os.symlink(tmp_path / "outside.weights.json", directory / "e2.weights.json")
    record = keras_ckpt.list_checkpoints(directory)[1]
    with pytest.raises(CheckpointCorruptedError, match="e2.weights.json"):
        keras_ckpt.load_checkpoint(record, model=make_model(), verify_checksum=False)
    # The file that average_checkpoints and the resume callbacks hand to Keras: refused too.
    with pytest.raises(CheckpointCorruptedError, match="e2.weights.json"):
        with checkpoint_file(record, verify_checksum=False):
            pass


# Crashes -----------------------------------------------------------------------------------


def fake_sharded(payload, shards=3, fail_after=None):
    """A ``write`` that writes an index and its shards as Keras names them (or raises)."""

    def write(path):
        folder, filename = os.path.split(path)
        stem = filename[: -len(".weights.json")]
        names = [f"{stem}_{i:05d}.weights.h5" for i in range(shards)]
        for number, name in enumerate(names):
            if fail_after is not None and number == fail_after:
                raise OSError("disk full (injected)")
            with open(os.path.join(folder, name), "wb") as file:
                file.write(payload + bytes([number]))
        index = {"metadata": {}, "weight_map": {f"/layer{i}/vars": n for i, n in enumerate(names)}}
        with open(path, "w") as file:
            json.dump(index, file)

    return write


def commit(store, filename, write):
    return store.commit(
        filename,
        write,
        epoch=1,
        step=1,
        metrics={},
        kind="weights",
        run="r",
        keeper="k",
        multi_file=True,
    )


def user_files(directory):
    return sorted(set(os.listdir(directory)) - {MANIFEST_NAME, ".keras_ckpt.lock"})


def test_a_write_failing_between_shards_leaves_the_earlier_checkpoint_and_no_leftover(tmp_path):
    store = CheckpointStore(tmp_path)
    first = commit(store, "a.weights.json", fake_sharded(b"a"))
    before = user_files(tmp_path)
    assert before == sorted(first.filenames)
    with pytest.raises(OSError, match="injected"):
        commit(store, "b.weights.json", fake_sharded(b"b", fail_after=2))
    assert user_files(tmp_path) == before
    assert [r.filename for r in store.records()] == ["a.weights.json"]
    verify(store.records()[0])


def test_recovery_removes_the_folder_of_a_save_killed_before_its_commit(tmp_path):
    store = CheckpointStore(tmp_path)
    commit(store, "a.weights.json", fake_sharded(b"a"))
    before = user_files(tmp_path)
    # What a process killed while Keras wrote the shards leaves: the staging folder.
    folder = tmp_path / f"{TEMP_PREFIX}0123456789ab-b.weights.json"
    folder.mkdir()
    (folder / "b_00000.weights.h5").write_bytes(b"half")
    store.close()
    reopened = CheckpointStore(tmp_path)
    assert user_files(tmp_path) == before
    assert [r.filename for r in reopened.records()] == ["a.weights.json"]


def test_recovery_finishes_the_renames_of_a_save_killed_between_them(tmp_path):
    """Killed after the manifest marked the commit pending, with two of four files renamed:
    every file was complete, so recovery completes the commit."""
    store = CheckpointStore(tmp_path)
    record = commit(store, "a.weights.json", fake_sharded(b"a"))
    store.close()
    folder = tmp_path / f"{TEMP_PREFIX}0123456789ab-a.weights.json"
    folder.mkdir()
    for name in (record.filename, record.parts[2].filename):
        os.replace(tmp_path / name, folder / name)
    manifest = json.loads((tmp_path / MANIFEST_NAME).read_text())
    manifest["pending"] = {"temp": folder.name, "record": manifest["checkpoints"].pop()}
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(manifest))
    assert keras_ckpt.list_checkpoints(tmp_path) == []  # readers: not committed yet
    reopened = CheckpointStore(tmp_path)
    (committed,) = reopened.records()
    assert committed.filenames == record.filenames
    verify(committed)
    assert user_files(tmp_path) == sorted(record.filenames)
    assert read_manifest(str(tmp_path)).pending is None


@sharding
@pytest.mark.parametrize("kill_point", ["hash:12", "rename:3"])
def test_sigkill_mid_save_leaves_every_committed_checkpoint_loadable(
    tmp_path, kill_point, make_model
):
    directory = tmp_path / "run"
    result = run_child_script("sharded_crash_child.py", directory, kill_point)
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    assert "on keras_ckpt-writer" in result.stdout, result.stdout
    leftovers = [n for n in os.listdir(directory) if n.startswith(TEMP_PREFIX)]
    assert leftovers  # the save in flight left its folder
    before = keras_ckpt.list_checkpoints(directory)
    assert before  # earlier saves committed; readers see them, whole, before any recovery
    for record in before:
        verify(record)
        fresh_weights(make_model, record.path)
    CheckpointStore(directory).close()  # recovery
    manifest = read_manifest(str(directory))
    assert manifest.pending is None and manifest.trash == []
    after = keras_ckpt.list_checkpoints(directory)
    if kill_point.startswith("rename"):
        # The commit was decided (pending, every file complete): recovery finished it.
        assert len(after) == len(before) + 1
    else:
        assert after == before
    for record in after:
        verify(record)
        fresh_weights(make_model, record.path)
    assert user_files(directory) == sorted(name for r in after for name in r.filenames)


def test_a_shard_name_another_checkpoint_owns_is_refused(tmp_path):
    store = CheckpointStore(tmp_path)
    store.commit(
        "b_00001.weights.h5",
        lambda path: open(path, "wb").close(),
        epoch=1,
        step=1,
        metrics={},
        kind="weights",
        run="r",
        keeper="k",
    )
    before = user_files(tmp_path)
    with pytest.raises(ValueError, match="would replace 'b_00001.weights.h5'"):
        commit(store, "b.weights.json", fake_sharded(b"b"))
    assert user_files(tmp_path) == before
    assert len(store.records()) == 1


def test_a_checkpoint_named_like_another_ones_shard_is_refused(tmp_path):
    store = CheckpointStore(tmp_path)
    sharded = commit(store, "b.weights.json", fake_sharded(b"b"))
    before = user_files(tmp_path)
    with pytest.raises(ValueError, match="would replace a shard of the checkpoint 'b.weights"):
        store.commit(
            "b_00001.weights.h5",
            lambda path: open(path, "wb").close(),
            epoch=2,
            step=2,
            metrics={},
            kind="weights",
            run="r",
            keeper="k",
        )
    assert user_files(tmp_path) == before
    assert keras_ckpt.list_checkpoints(tmp_path) == [sharded]  # the manifest still reads
    verify(sharded)


def test_a_resave_under_the_same_name_deletes_the_shards_it_no_longer_has(tmp_path):
    store = CheckpointStore(tmp_path)
    commit(store, "w.weights.json", fake_sharded(b"1", shards=4))
    record = commit(store, "w.weights.json", fake_sharded(b"2", shards=2))
    assert user_files(tmp_path) == sorted(record.filenames)
    (only,) = store.records()
    assert len(only.parts) == 2
    verify(only)
    store.release("k", ["w.weights.json"])
    assert user_files(tmp_path) == []


def test_records_without_parts_read_and_write_as_before():
    data = {
        "file": "e1.keras",
        "epoch": 1,
        "step": 1,
        "metrics": {},
        "time": 1.0,
        "size": 1,
        "sha256": "0" * 64,
    }
    record = CheckpointRecord.from_json(data, "/d")
    assert record.parts == () and record.filenames == ("e1.keras",)
    assert "parts" not in record.to_json()


# Arguments ---------------------------------------------------------------------------------

CALLBACKS = {
    "ModelCheckpoint": lambda d, **kw: keras_ckpt.ModelCheckpoint(
        kw.pop("filepath") if "filepath" in kw else str(d / "e{epoch}.weights.json"), **kw
    ),
    "BestCheckpoint": lambda d, **kw: keras_ckpt.BestCheckpoint(d, **kw),
    "IntervalCheckpoint": lambda d, **kw: keras_ckpt.IntervalCheckpoint(d, **kw),
}


@sharding
@pytest.mark.parametrize("callback", CALLBACKS)
@pytest.mark.parametrize("size", [0, -1.0, float("nan"), float("inf"), True, "1"])
def test_max_shard_size_must_be_a_positive_number(tmp_path, callback, size):
    with pytest.raises(ValueError, match=r"`max_shard_size` must be a finite number of GB > 0"):
        CALLBACKS[callback](tmp_path, save_weights_only=True, max_shard_size=size)


@sharding
@pytest.mark.parametrize("callback", CALLBACKS)
def test_max_shard_size_needs_save_weights_only(tmp_path, callback):
    with pytest.raises(ValueError, match=r"pass `save_weights_only=True`.*save_weights_only=False"):
        CALLBACKS[callback](tmp_path, max_shard_size=1.0)


@sharding
@pytest.mark.parametrize(
    "callback, arguments",
    [
        ("ModelCheckpoint", {"filepath": "d/e{epoch}.weights.json"}),
        ("BestCheckpoint", {"filename": "e{epoch}.weights.json"}),
        ("IntervalCheckpoint", {"filename": "e{epoch}.weights.json"}),
    ],
)
def test_a_weights_json_name_needs_max_shard_size(tmp_path, callback, arguments):
    with pytest.raises(ValueError, match=r"needs `max_shard_size`.*max_shard_size=None"):
        CALLBACKS[callback](tmp_path, save_weights_only=True, **arguments)


@sharding
@pytest.mark.parametrize(
    "callback, arguments",
    [
        ("ModelCheckpoint", {"filepath": "d/e{epoch}.weights.h5"}),
        ("BestCheckpoint", {"filename": "e{epoch}.weights.h5"}),
        ("IntervalCheckpoint", {"filename": "e{epoch}.keras"}),
    ],
)
def test_max_shard_size_needs_a_weights_json_name(tmp_path, callback, arguments):
    with pytest.raises(ValueError, match=r"must end in `.weights.json` when `max_shard_size`"):
        CALLBACKS[callback](tmp_path, save_weights_only=True, max_shard_size=1.0, **arguments)


@sharding
@pytest.mark.parametrize("callback", CALLBACKS)
def test_sharded_weights_are_refused_in_a_remote_directory(callback):
    location = "memory://keras_ckpt-sharded/run"
    with pytest.raises(ValueError, match="local directories only.*memory://"):
        if callback == "ModelCheckpoint":
            CALLBACKS[callback](
                None,
                filepath=location + "/e{epoch}.weights.json",
                save_weights_only=True,
                max_shard_size=1.0,
            )
        else:
            CALLBACKS[callback](location, save_weights_only=True, max_shard_size=1.0)


@pytest.mark.parametrize("callback", CALLBACKS)
def test_a_keras_without_sharded_weights_is_named(tmp_path, callback, monkeypatch):
    monkeypatch.setattr(keras_adapter, "SHARDED_WEIGHTS_SUPPORTED", False)
    with pytest.raises(ValueError, match=r"need Keras 3\.10 or newer.*max_shard_size=1\.0"):
        CALLBACKS[callback](tmp_path, save_weights_only=True, max_shard_size=1.0)


def test_the_probe_matches_the_installed_keras():
    version = tuple(int(part) for part in keras.__version__.split(".")[:2])
    assert keras_adapter.SHARDED_WEIGHTS_SUPPORTED == (version >= (3, 10))
    assert np.isfinite(SHARD_GB)


@pytest.mark.skipif(keras_adapter.SHARDED_WEIGHTS_SUPPORTED, reason="this Keras writes shards")
def test_the_floor_keras_refuses_sharded_weights_at_construction(tmp_path):
    with pytest.raises(ValueError, match=r"need Keras 3\.10 or newer; this is Keras 3\."):
        keras_ckpt.ModelCheckpoint(
            str(tmp_path / "e{epoch}.weights.json"), save_weights_only=True, max_shard_size=1.0
        )
