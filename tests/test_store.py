"""The store on its own: atomic commits, recovery after a crash, retention, aliases. No Keras."""

import hashlib
import json
import os

import pytest
from conftest import another_process_writing

import keras_ckpt
from keras_ckpt.records import LOCK_NAME, MANIFEST_NAME
from keras_ckpt.store import (
    TEMP_PREFIX,
    CheckpointCorruptedError,
    CheckpointStore,
    DirectoryLockedError,
    FollowerStore,
    check_directory_usable,
    contents_digest,
    read_manifest,
    verify,
)


def writer(content: bytes):
    def write(path):
        with open(path, "wb") as file:
            file.write(content)

    return write


def commit(store, name, content=b"weights", keeper="A", run="r1", epoch=1, metrics=None):
    return store.commit(
        name,
        writer(content),
        epoch=epoch,
        step=epoch * 10,
        metrics=metrics or {"val_loss": 0.5},
        kind="weights",
        run=run,
        keeper=keeper,
    )


def files(directory):
    return sorted(os.listdir(directory))


def test_commit_writes_file_and_manifest(tmp_path):
    store = CheckpointStore(tmp_path / "ckpt", keras_version="3.15.1")
    record = commit(store, "a.weights.h5", b"hello")
    assert files(store.directory) == [LOCK_NAME, "a.weights.h5", MANIFEST_NAME]
    with open(record.path, "rb") as file:
        assert file.read() == b"hello"
    [listed] = read_manifest(store.directory).records
    assert listed == record
    assert listed.sha256 == hashlib.sha256(b"hello").hexdigest()
    assert listed.size == 5 and listed.keras_version == "3.15.1" and listed.step == 10
    verify(listed)


def test_failed_write_changes_nothing(tmp_path):
    store = CheckpointStore(tmp_path)
    commit(store, "a.weights.h5", b"good")
    manifest_before = (tmp_path / MANIFEST_NAME).read_bytes()

    def broken(path):
        with open(path, "wb") as file:
            file.write(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        store.commit(
            "a.weights.h5",
            broken,
            epoch=2,
            step=20,
            metrics={},
            kind="weights",
            run="r1",
            keeper="A",
        )
    assert (tmp_path / "a.weights.h5").read_bytes() == b"good"
    assert (tmp_path / MANIFEST_NAME).read_bytes() == manifest_before
    assert files(tmp_path) == [LOCK_NAME, "a.weights.h5", MANIFEST_NAME]


def test_same_name_commit_replaces_record(tmp_path):
    store = CheckpointStore(tmp_path)
    commit(store, "a.keras", b"one", epoch=1)
    commit(store, "a.keras", b"two", epoch=2)
    [record] = store.records()
    assert record.epoch == 2 and (tmp_path / "a.keras").read_bytes() == b"two"


def test_leftover_temporary_files_are_removed_and_never_listed(tmp_path):
    store = CheckpointStore(tmp_path)
    commit(store, "a.keras")
    leftover = tmp_path / f"{TEMP_PREFIX}0123456789ab-b.keras"
    leftover.write_bytes(b"partial")
    assert [r.filename for r in store.records()] == ["a.keras"]
    CheckpointStore(tmp_path)
    assert not leftover.exists()


def _manifest_json(directory):
    return json.loads((directory / MANIFEST_NAME).read_text())


def test_pending_commit_before_rename_is_undone(tmp_path):
    # A process killed after announcing a commit but before renaming: the old file stays.
    store = CheckpointStore(tmp_path)
    commit(store, "a.keras", b"old")
    temporary = tmp_path / f"{TEMP_PREFIX}00000000000a-a.keras"
    temporary.write_bytes(b"new")
    data = _manifest_json(tmp_path)
    new_record = dict(data["checkpoints"][0], sha256=hashlib.sha256(b"new").hexdigest(), epoch=9)
    data["pending"] = {"temp": temporary.name, "record": new_record}
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(data))
    store = CheckpointStore(tmp_path)
    [record] = store.records()
    assert record.epoch == 1 and (tmp_path / "a.keras").read_bytes() == b"old"
    assert files(tmp_path) == [LOCK_NAME, "a.keras", MANIFEST_NAME]
    assert read_manifest(str(tmp_path)).pending is None


def test_pending_commit_after_rename_is_completed(tmp_path):
    # Killed after the rename, before the manifest named the file: the commit is finished.
    store = CheckpointStore(tmp_path)
    commit(store, "a.keras", b"old")
    (tmp_path / "a.keras").write_bytes(b"new")
    data = _manifest_json(tmp_path)
    new_record = dict(
        data["checkpoints"][0], sha256=hashlib.sha256(b"new").hexdigest(), size=3, epoch=9
    )
    data["pending"] = {"temp": f"{TEMP_PREFIX}abcdef012345-a.keras", "record": new_record}
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(data))
    [record] = CheckpointStore(tmp_path).records()
    assert record.epoch == 9
    verify(record)


def test_release_deletes_only_when_no_keeper_is_left(tmp_path):
    store = CheckpointStore(tmp_path)
    commit(store, "shared.keras", keeper="A")
    commit(store, "shared.keras", keeper="B")  # same file, now kept by A and B
    commit(store, "only_a.keras", keeper="A")
    deleted = store.release("A", ["shared.keras", "only_a.keras"])
    assert deleted == ["only_a.keras"]
    assert files(tmp_path) == [LOCK_NAME, MANIFEST_NAME, "shared.keras"]
    [record] = store.records()
    assert record.kept_by == ("B",)


def test_trash_left_by_a_crash_is_emptied(tmp_path):
    store = CheckpointStore(tmp_path)
    commit(store, "a.keras")
    (tmp_path / "dropped.keras").write_bytes(b"x")
    data = _manifest_json(tmp_path)
    data["trash"] = ["dropped.keras", "a.keras"]  # a.keras is still a checkpoint: kept
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(data))
    CheckpointStore(tmp_path)
    assert files(tmp_path) == [LOCK_NAME, "a.keras", MANIFEST_NAME]


def test_alias_is_a_hard_link_that_follows_the_target(tmp_path):
    store = CheckpointStore(tmp_path)
    commit(store, "e1.keras", b"one")
    commit(store, "e2.keras", b"two")
    alias = store.set_alias("best", "e1.keras")
    assert os.path.samefile(alias, tmp_path / "e1.keras")
    store.set_alias("best", "e2.keras")
    assert os.path.samefile(alias, tmp_path / "e2.keras")
    assert os.stat(alias).st_nlink == 2
    assert read_manifest(str(tmp_path)).aliases == {"best": "e2.keras"}
    # Releasing the alias's target removes the alias too.
    store.release("A", ["e2.keras"])
    assert not os.path.exists(alias)
    assert read_manifest(str(tmp_path)).aliases == {}


def test_alias_falls_back_to_a_copy_where_links_fail(tmp_path, monkeypatch):
    store = CheckpointStore(tmp_path)
    commit(store, "e1.keras", b"one")

    def no_links(*args, **kwargs):
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    alias = store.set_alias("best", "e1.keras")
    assert open(alias, "rb").read() == b"one"
    assert not os.path.samefile(alias, tmp_path / "e1.keras")


def test_alias_to_unknown_file_is_refused(tmp_path):
    with pytest.raises(ValueError, match="not a committed checkpoint"):
        CheckpointStore(tmp_path).set_alias("best", "nope.keras")


def test_verify_detects_corruption(tmp_path):
    record = commit(CheckpointStore(tmp_path), "a.keras", b"abcdef")
    with open(record.path, "r+b") as file:
        file.write(b"X")
    with pytest.raises(CheckpointCorruptedError, match="SHA-256"):
        verify(record)
    os.truncate(record.path, 2)
    with pytest.raises(CheckpointCorruptedError, match="has 2 bytes"):
        verify(record)
    os.remove(record.path)
    with pytest.raises(CheckpointCorruptedError, match="missing"):
        verify(record)


def test_invalid_manifest_is_a_clear_error(tmp_path):
    (tmp_path / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(ValueError, match="is not valid JSON"):
        CheckpointStore(tmp_path)


def test_directory_that_is_a_file(tmp_path):
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(ValueError, match="cannot be written"):
        CheckpointStore(path)
    with pytest.raises(ValueError, match=r"Argument `directory` must be a directory.*is a file"):
        check_directory_usable(path / "sub", "directory")


def test_plain_names_only(tmp_path):
    with pytest.raises(ValueError, match="plain name"):
        commit(CheckpointStore(tmp_path), "sub/a.keras")


def test_an_alias_never_overwrites_a_checkpoint_of_that_name(tmp_path):
    store = CheckpointStore(tmp_path)
    commit(store, "best.keras", b"model checkpoint's own file", keeper="ModelCheckpoint")
    commit(store, "e1.keras", b"best model", keeper="BestCheckpoint")
    store.set_alias("best", "e1.keras")
    CheckpointStore(tmp_path)  # recovery does not relink it either
    assert (tmp_path / "best.keras").read_bytes() == b"model checkpoint's own file"
    for record in store.records():
        verify(record)
    assert read_manifest(str(tmp_path)).aliases == {"best": "e1.keras"}


def test_a_failed_manifest_write_after_the_rename_is_settled(tmp_path, monkeypatch):
    store = CheckpointStore(tmp_path)
    commit(store, "m.keras", b"old")
    original = CheckpointStore._write_manifest
    calls = []

    def full_disk_after_first_write(self, manifest):
        calls.append(manifest.pending)
        if len(calls) > 1:
            raise OSError(28, "No space left on device")
        original(self, manifest)

    monkeypatch.setattr(CheckpointStore, "_write_manifest", full_disk_after_first_write)
    with pytest.raises(OSError, match="No space left"):
        commit(store, "m.keras", b"new", epoch=2)
    # The rename happened; the manifest on disk still says pending. Readers settle it.
    assert (tmp_path / "m.keras").read_bytes() == b"new"
    [record] = keras_ckpt.list_checkpoints(tmp_path)
    assert record.epoch == 2
    verify(record)
    # The next commit in the same process settles it on disk before taking the pending slot.
    monkeypatch.setattr(CheckpointStore, "_write_manifest", original)
    commit(store, "other.keras", b"x", epoch=3)
    assert [(r.filename, r.epoch) for r in store.records()] == [("m.keras", 2), ("other.keras", 3)]
    for record in store.records():
        verify(record)


def test_manifest_reads_follow_changes_made_by_another_process(tmp_path):
    store = CheckpointStore(tmp_path)
    commit(store, "a.weights.h5", epoch=1)
    assert [r.epoch for r in read_manifest(str(tmp_path)).records] == [1]
    # Another process rewrites the manifest: the next read sees it, although nothing here wrote.
    data = _manifest_json(tmp_path)
    data["checkpoints"][0]["epoch"] = 7
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(data))
    assert [r.epoch for r in read_manifest(str(tmp_path)).records] == [7]
    assert [r.epoch for r in store.records()] == [7]


def test_changing_a_read_manifest_does_not_change_the_next_read(tmp_path):
    store = CheckpointStore(tmp_path)
    commit(store, "a.weights.h5")
    store.set_alias("best", "a.weights.h5")
    manifest = read_manifest(str(tmp_path))
    manifest.records.clear()
    manifest.aliases.clear()
    manifest.trash.append("x")
    again = read_manifest(str(tmp_path))
    assert [r.filename for r in again.records] == ["a.weights.h5"]
    assert again.aliases == {"best": "a.weights.h5"} and again.trash == []


def test_recovery_leaves_a_write_in_flight_alone(tmp_path):
    # A background save writes outside the directory lock; a store opened meanwhile in the same
    # process (another callback's on_train_begin) must not take its temporary files for debris.
    import threading

    store = CheckpointStore(tmp_path)
    started, finish = threading.Event(), threading.Event()

    def slow_write(path):
        with open(path, "wb") as file:
            file.write(b"weights")
        with open(path + ".part", "wb") as file:  # a file the writer makes beside it
            file.write(b"x")
        started.set()
        finish.wait(10)
        os.remove(path + ".part")

    def save():
        store.commit(
            "a.weights.h5",
            slow_write,
            epoch=1,
            step=1,
            metrics={},
            kind="weights",
            run="r",
            keeper="A",
        )

    thread = threading.Thread(target=save)
    thread.start()
    assert started.wait(10)
    CheckpointStore(tmp_path)  # recovers
    in_flight = [n for n in files(tmp_path) if n.startswith(TEMP_PREFIX)]
    finish.set()
    thread.join()
    assert len(in_flight) == 2  # the checkpoint's temporary file and the one beside it
    assert [r.filename for r in store.records()] == ["a.weights.h5"]
    assert files(tmp_path) == [LOCK_NAME, "a.weights.h5", MANIFEST_NAME]


def test_a_follower_takes_the_chiefs_changes_in_memory_and_writes_nothing(tmp_path):
    follower = FollowerStore(tmp_path / "not-yet")
    assert follower.records() == [] and not (tmp_path / "not-yet").exists()
    chief = CheckpointStore(tmp_path / "run")
    commit(chief, "a.weights.h5")
    commit(chief, "other-run.weights.h5", run="r0")
    follower = FollowerStore(tmp_path / "run")
    assert [r.filename for r in follower.records()] == ["a.weights.h5", "other-run.weights.h5"]

    def unwritten(path):
        raise AssertionError("a follower never writes")

    def changes(store, write):
        store.commit(
            "b.weights.h5",
            write,
            epoch=2,
            step=20,
            metrics={"val_loss": 0.4},
            kind="weights",
            run="r1",
            keeper="A",
        )
        store.set_alias("best", "b.weights.h5")
        store.set_alias("latest", "b.weights.h5")
        assert store.release("A", ["a.weights.h5"]) == ["a.weights.h5"]
        store.set_alias("best", "other-run.weights.h5")
        assert store.release("A", ["b.weights.h5"]) == ["b.weights.h5"]  # "latest" goes too
        assert not store.remove_if_empty()
        manifest = store.manifest()
        return [(r.filename, r.epoch, r.step, r.kept_by) for r in manifest.records], (
            manifest.aliases
        )

    assert changes(chief, writer(b"b")) == changes(follower, unwritten)
    assert follower.filenames() == chief.filenames()
    assert chief.filenames() == {"other-run.weights.h5", "best.weights.h5", MANIFEST_NAME}

    on_disk = {name: (tmp_path / "run" / name).read_bytes() for name in files(tmp_path / "run")}
    follower.recover()
    commit(follower, "c.weights.h5")
    with pytest.raises(ValueError, match="plain name"):
        commit(follower, "../c.weights.h5")
    with pytest.raises(ValueError, match="not a committed"):
        follower.set_alias("best", "missing.weights.h5")
    assert {n: (tmp_path / "run" / n).read_bytes() for n in files(tmp_path / "run")} == on_disk


def test_contents_digest_is_what_a_follower_compares_with_the_chief(tmp_path):
    chief = CheckpointStore(tmp_path / "shared")
    commit(chief, "a.weights.h5")
    chief.set_alias("best", "a.weights.h5")
    digest = contents_digest(chief)
    assert len(digest) == 64 and digest.isascii() and digest.startswith("00000001")
    assert contents_digest(FollowerStore(tmp_path / "shared")) == digest
    # Another directory (a host's own disk): no checkpoint, or another one of the same name.
    assert contents_digest(FollowerStore(tmp_path / "elsewhere")).startswith("00000000")
    commit(CheckpointStore(tmp_path / "other"), "a.weights.h5", content=b"other weights")
    assert contents_digest(FollowerStore(tmp_path / "other"))[:8] == digest[:8]
    assert contents_digest(FollowerStore(tmp_path / "other")) != digest


def test_followers_of_one_directory_share_one_view_read_afresh_at_each_opening(tmp_path):
    # As two callbacks of the chief share a directory through the disk, two of a follower share
    # it in memory: a name one of them takes is taken for the other.
    chief = CheckpointStore(tmp_path)
    commit(chief, "a.weights.h5")
    best, interval = FollowerStore(tmp_path), FollowerStore(tmp_path)
    commit(best, "b.weights.h5", keeper="B")
    assert "b.weights.h5" in interval.filenames()
    assert [r.filename for r in interval.records()] == ["a.weights.h5", "b.weights.h5"]
    # Opening again (a new fit, once the chief's saves are on disk) reads the directory.
    commit(chief, "c.weights.h5")
    FollowerStore(tmp_path)
    assert [r.filename for r in best.records()] == ["a.weights.h5", "c.weights.h5"]


def contents(directory):
    """Every name in ``directory`` with its bytes, and the inode of each checkpoint and alias (an
    alias is a link: the same inode as its checkpoint)."""
    state = {}
    for name in files(directory):
        path = os.path.join(directory, name)
        with open(path, "rb") as file:
            inode = None if name == MANIFEST_NAME else os.stat(path).st_ino
            state[name] = (file.read(), inode)
    return state


def failing_on_call(monkeypatch, function_name, number):
    """Makes the ``number``-th call of ``os.<function_name>`` fail as a full disk would."""
    original, calls = getattr(os, function_name), []

    def fail(*args, **kwargs):
        calls.append(args)
        if len(calls) == number:
            raise OSError(28, "No space left on device")
        return original(*args, **kwargs)

    monkeypatch.setattr(os, function_name, fail)
    return calls


@pytest.mark.parametrize(
    ("function_name", "number"),
    [("fsync", 1), ("fsync", 2), ("fsync", 3), ("replace", 1), ("replace", 2)],
)
def test_a_failed_alias_update_leaves_the_directory_as_it_was(
    tmp_path, monkeypatch, function_name, number
):
    store = CheckpointStore(tmp_path)
    commit(store, "a.keras", b"aaa")
    store.set_alias("latest", "a.keras")
    commit(store, "b.keras", b"bbb")
    before = contents(tmp_path)
    calls = failing_on_call(monkeypatch, function_name, number)
    with pytest.raises(OSError, match="No space left"):
        store.set_alias("latest", "b.keras")
    assert len(calls) >= number  # the failure was injected, not skipped
    monkeypatch.undo()
    aliases = read_manifest(str(tmp_path)).aliases
    if aliases == {"latest": "a.keras"}:
        assert contents(tmp_path) == before  # latest.keras is still a's, no temporary is left
    else:  # the manifest was replaced, only the directory's fsync after it failed: committed
        assert aliases == {"latest": "b.keras"}
        assert os.path.samefile(tmp_path / "latest.keras", tmp_path / "b.keras")
        assert not [n for n in files(tmp_path) if n.startswith(TEMP_PREFIX)]


@pytest.mark.parametrize("number", range(1, 6))
def test_a_commit_that_fails_at_any_fsync_leaves_the_old_or_the_new_directory(
    tmp_path, monkeypatch, number
):
    """A failed save never damages what was there: the directory is as before, or the new
    checkpoint is whole and listed (when only the last manifest write failed); no leftovers."""
    store = CheckpointStore(tmp_path)
    commit(store, "a.keras", b"old")
    before = contents(tmp_path)
    calls = failing_on_call(monkeypatch, "fsync", number)
    with pytest.raises(OSError, match="No space left"):
        commit(store, "a.keras", b"new")
    assert len(calls) >= number
    monkeypatch.undo()
    assert not [n for n in files(tmp_path) if n.startswith(TEMP_PREFIX)]
    [record] = keras_ckpt.list_checkpoints(tmp_path)
    verify(record)
    if (tmp_path / "a.keras").read_bytes() == b"old":
        assert contents(tmp_path) == before
    CheckpointStore(tmp_path)  # reopening settles it, and finds nothing more to do
    assert [r.sha256 for r in keras_ckpt.list_checkpoints(tmp_path)] == [record.sha256]


def test_a_checkpoint_deleted_by_hand_loses_its_alias_not_the_directory(tmp_path):
    store = CheckpointStore(tmp_path)
    commit(store, "a.keras", b"aaa")
    commit(store, "b.keras", b"bbb")
    store.set_alias("latest", "b.keras")
    os.remove(tmp_path / "b.keras")
    with pytest.warns(UserWarning, match=r"dropping the 'latest' alias .*b\.keras is missing"):
        reopened = CheckpointStore(tmp_path)
    assert reopened.manifest().aliases == {}
    assert files(tmp_path) == [LOCK_NAME, "a.keras", MANIFEST_NAME]  # latest.keras went too
    assert [r.filename for r in reopened.records()] == ["a.keras", "b.keras"]
    with pytest.raises(CheckpointCorruptedError, match="missing"):
        verify(reopened.records()[-1])


def test_a_second_writing_process_is_refused_until_the_first_ends(tmp_path):
    commit(CheckpointStore(tmp_path), "a.keras")
    with another_process_writing(tmp_path) as pid:
        before = contents(tmp_path)
        with pytest.raises(DirectoryLockedError, match=rf"{tmp_path} \(pid {pid} on "):
            CheckpointStore(tmp_path)
        assert [r.filename for r in keras_ckpt.list_checkpoints(tmp_path)] == ["a.keras"]
        assert contents(tmp_path) == before  # refused before recovery could touch anything
    commit(CheckpointStore(tmp_path), "b.keras")


def test_stores_of_one_process_share_the_lock_and_a_write_after_close_takes_it_again(tmp_path):
    first, second = CheckpointStore(tmp_path), CheckpointStore(tmp_path)
    first.close()
    commit(second, "a.keras")
    second.close()
    commit(first, "b.keras")  # takes the lock again
    assert [r.filename for r in first.records()] == ["a.keras", "b.keras"]
