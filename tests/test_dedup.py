"""Weights stored once (``dedup=True``): content-addressed blobs that checkpoints share.

The store tier commits fabricated dedup checkpoints (an index and its blobs, no Keras), so that
a seeded random loop of commits and releases runs in well under a second; the Keras tier trains
a model whose backbone is frozen and checks the disk use, the loading and the export.
"""

import hashlib
import json
import os
import random

import pytest

from keras_ckpt.records import (
    DEDUP_FORMAT,
    MANIFEST_NAME,
    CheckpointPart,
    CheckpointRecord,
    Manifest,
    ManifestError,
    blob_filename,
    dedup_index_layout,
    unreferenced,
)
from keras_ckpt.store import (
    CheckpointCorruptedError,
    CheckpointStore,
    read_dedup_index,
    read_manifest,
    verify,
)

LOCK = ".keras_ckpt.lock"


def blob_of(content: bytes) -> str:
    return blob_filename(hashlib.sha256(content).hexdigest())


def dedup_writer(variables: dict[str, bytes], skip: set[str] = frozenset()):
    """A ``write(path)`` of a dedup checkpoint of ``variables`` (name -> 4-byte-aligned bytes,
    as float32): the index at ``path``, each blob beside it unless its name is in ``skip``."""

    def write(path):
        folder = os.path.dirname(path)
        layout = [{"group": "layers/dense", "attrs": {}}]
        for key, content in variables.items():
            name = blob_of(content)
            layout.append(
                {"dataset": key, "blob": name, "dtype": "float32", "shape": [len(content) // 4]}
            )
            if name not in skip and not os.path.exists(os.path.join(folder, name)):
                with open(os.path.join(folder, name), "wb") as file:
                    file.write(content)
        with open(path, "w") as file:
            json.dump({"format": DEDUP_FORMAT, "version": 1, "layout": layout}, file)

    return write


def commit(store, name, variables, keeper="A", epoch=1):
    known = {p.filename for r in store.records() for p in r.parts}
    return store.commit(
        name,
        dedup_writer(variables, skip=known),
        epoch=epoch,
        step=epoch,
        metrics={},
        kind="weights",
        run="r1",
        keeper=keeper,
        multi_file=True,
    )


def on_disk(directory):
    return set(os.listdir(directory)) - {MANIFEST_NAME, LOCK}


def assert_consistent(directory):
    """Every record verifies, and the files on disk are exactly those the records list."""
    manifest = read_manifest(str(directory))
    for record in manifest.records:
        verify(record)
    listed = {name for record in manifest.records for name in record.filenames}
    assert on_disk(directory) == listed


FROZEN = b"\x01\x02\x03\x04" * 64


# Pure core -----------------------------------------------------------------------------------


def test_unreferenced_keeps_blobs_a_remaining_record_lists():
    shared = CheckpointPart(blob_of(FROZEN), len(FROZEN), hashlib.sha256(FROZEN).hexdigest())
    kept = CheckpointRecord("d/b.weights.dedup.json", 2, 2, {}, 0.0, 1, "", "", "weights", "")
    kept = CheckpointRecord(**{**kept.__dict__, "parts": (shared,)})
    dropped = ["a.weights.dedup.json", shared.filename, blob_of(b"head")]
    assert unreferenced(dropped, [kept]) == ["a.weights.dedup.json", blob_of(b"head")]
    assert unreferenced(dropped, []) == dropped


@pytest.mark.parametrize(
    "entry, field",
    [
        ({"dataset": "0", "blob": "../x", "dtype": "float32", "shape": [1]}, "blob"),
        ({"dataset": "0", "blob": "/etc/passwd", "dtype": "float32", "shape": [1]}, "blob"),
        ({"dataset": "0", "blob": "blob-zz.bin", "dtype": "float32", "shape": [1]}, "blob"),
        ({"dataset": "0", "blob": blob_of(b"x"), "dtype": "object", "shape": [1]}, "dtype"),
        ({"dataset": "0", "blob": blob_of(b"x"), "dtype": "float32", "shape": [-1]}, "shape"),
        ({"dataset": "0", "blob": blob_of(b"x"), "dtype": "float32", "shape": "1"}, "shape"),
        ({"dataset": "a/b", "blob": blob_of(b"x"), "dtype": "float32", "shape": [1]}, "dataset"),
    ],
)
def test_an_untrusted_index_is_refused_naming_the_field(entry, field):
    data = {"format": DEDUP_FORMAT, "version": 1, "layout": [{"group": "", "attrs": {}}, entry]}
    with pytest.raises(ManifestError, match=rf"layout\[1\] has {field}"):
        dedup_index_layout(data, "e1.weights.dedup.json")


def test_a_manifest_may_list_a_blob_twice_but_no_other_file():
    part = {"file": blob_of(FROZEN), "size": 256, "sha256": hashlib.sha256(FROZEN).hexdigest()}

    def entry(name, parts):
        return {
            "file": name,
            "epoch": 1,
            "step": 1,
            "time": 0.0,
            "size": 1,
            "sha256": "",
            "kind": "weights",
            "parts": parts,
        }

    data = {
        "format": "keras_ckpt.manifest",
        "checkpoints": [
            entry("a.weights.dedup.json", [part]),
            entry("b.weights.dedup.json", [part]),
        ],
    }
    assert len(Manifest.from_json(data, "/d").records) == 2
    shard = {**part, "file": "a_00000.weights.h5"}
    data["checkpoints"] = [entry("a.weights.json", [shard]), entry("b.weights.json", [shard])]
    with pytest.raises(ManifestError, match="each file listed once"):
        Manifest.from_json(data, "/d")
    # A blob's recorded SHA-256 is the one its name gives: every record agrees on its bytes.
    data["checkpoints"] = [entry("a.weights.dedup.json", [{**part, "sha256": "0" * 64}])]
    with pytest.raises(ManifestError, match="the SHA-256 its name"):
        Manifest.from_json(data, "/d")
    # A checkpoint is never a blob itself.
    data["checkpoints"] = [entry(blob_of(FROZEN), [])]
    with pytest.raises(ManifestError, match="a blob"):
        Manifest.from_json(data, "/d")


# Store ----------------------------------------------------------------------------------------


def test_a_blob_committed_once_is_shared_not_written_again(tmp_path):
    store = CheckpointStore(tmp_path)
    first = commit(store, "e1.weights.dedup.json", {"0": FROZEN, "1": b"head"}, epoch=1)
    frozen_file = tmp_path / blob_of(FROZEN)
    inode = frozen_file.stat().st_ino
    second = commit(store, "e2.weights.dedup.json", {"0": FROZEN, "1": b"hea2"}, epoch=2)
    assert frozen_file.stat().st_ino == inode  # not written again
    assert blob_of(FROZEN) in first.filenames and blob_of(FROZEN) in second.filenames
    assert len(on_disk(tmp_path)) == 5  # two indexes, one frozen blob, two heads
    assert_consistent(tmp_path)
    # Releasing the first deletes its index and its own head, not the shared blob.
    assert store.release("A", ["e1.weights.dedup.json"]) == ["e1.weights.dedup.json"]
    assert on_disk(tmp_path) == set(second.filenames)
    assert_consistent(tmp_path)
    store.release("A", ["e2.weights.dedup.json"])
    assert on_disk(tmp_path) == set()


def test_a_commit_sharing_a_blob_no_checkpoint_has_is_refused(tmp_path):
    store = CheckpointStore(tmp_path)
    with pytest.raises(ValueError, match="which no committed checkpoint has"):
        store.commit(
            "e1.weights.dedup.json",
            dedup_writer({"0": FROZEN}, skip={blob_of(FROZEN)}),
            epoch=1,
            step=1,
            metrics={},
            kind="weights",
            run="r",
            keeper="A",
            multi_file=True,
        )
    assert on_disk(tmp_path) == set() and read_manifest(str(tmp_path)).records == []


def test_verify_and_the_index_check_catch_a_damaged_blob_or_index(tmp_path):
    store = CheckpointStore(tmp_path)
    record = commit(store, "e1.weights.dedup.json", {"0": FROZEN})
    (tmp_path / blob_of(FROZEN)).write_bytes(b"\x00" * len(FROZEN))
    with pytest.raises(CheckpointCorruptedError, match="SHA-256"):
        verify(record)
    index = json.loads((tmp_path / record.filename).read_text())
    index["layout"][1]["blob"] = blob_of(b"elsewhere")
    (tmp_path / record.filename).write_text(json.dumps(index))
    with pytest.raises(CheckpointCorruptedError, match="not its recorded part"):
        read_dedup_index(record)


def test_random_commits_and_releases_never_delete_a_blob_in_use(tmp_path):
    """A seeded random sequence of commits (variables drawn from a small pool, so blobs are
    shared) and releases by two keepers: after every step each remaining checkpoint verifies,
    and the directory holds exactly the files the records list, no blob more or less."""
    rng = random.Random(17)
    pool = [bytes([value]) * 16 for value in range(6)]
    store = CheckpointStore(tmp_path)
    names = []
    for step in range(120):
        if names and rng.random() < 0.45:
            chosen = rng.sample(names, rng.randint(1, min(3, len(names))))
            deleted = store.release(rng.choice("AB"), chosen)
            names = [n for n in names if n not in deleted]
        else:
            name = f"s{step:03d}.weights.dedup.json"
            variables = {str(i): rng.choice(pool) for i in range(rng.randint(1, 4))}
            commit(store, name, variables, keeper=rng.choice("AB"), epoch=step + 1)
            names.append(name)
        assert_consistent(tmp_path)
    CheckpointStore(tmp_path).recover()
    assert_consistent(tmp_path)


def test_recovery_removes_blobs_no_checkpoint_lists_and_nothing_else(tmp_path):
    store = CheckpointStore(tmp_path)
    record = commit(store, "e1.weights.dedup.json", {"0": FROZEN})
    stray = tmp_path / blob_of(b"left by a killed save")
    stray.write_bytes(b"left by a killed save")
    other = tmp_path / "blob-notes.bin"  # not of the blob pattern: not keras_ckpt's
    other.write_bytes(b"mine")
    store.recover()
    assert not stray.exists() and other.exists()
    assert on_disk(tmp_path) == set(record.filenames) | {other.name}
