"""Weights stored once (``dedup=True``): content-addressed blobs that checkpoints share.

The store tier commits fabricated dedup checkpoints (an index and its blobs, no Keras), so that
a seeded random loop of commits and releases runs in well under a second; the Keras tier trains
a model whose backbone is frozen and checks the disk use, the loading and the export.
"""

import hashlib
import json
import os
import random
import re

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


def assert_assembles_to(record, variables, folder):
    """``record`` assembles into a ``.weights.h5`` file holding ``variables`` (float32)."""
    import h5py
    import numpy as np

    from keras_ckpt.snapshot import assemble_weights

    path = os.path.join(folder, "assembled.weights.h5")
    assemble_weights(record, path)
    with h5py.File(path, "r") as file:
        group = file["layers/dense/vars"]
        assert sorted(group) == sorted(variables)
        for key, content in variables.items():
            np.testing.assert_array_equal(group[key][()], np.frombuffer(content, "float32"))
    os.remove(path)


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


@pytest.mark.parametrize("attrs", [{"name": {"nested": 1}}, {"name": [1]}, {"name": "a\x00b"}])
def test_an_untrusted_group_attribute_is_refused(attrs):
    data = {"format": DEDUP_FORMAT, "version": 1, "layout": [{"group": "g", "attrs": attrs}]}
    with pytest.raises(ManifestError, match=r"layout\[0\] has attrs.name"):
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


def test_a_blob_committed_once_is_shared_not_written_again(tmp_path, capsys):
    store = CheckpointStore(tmp_path)
    first = commit(store, "e1.weights.dedup.json", {"0": FROZEN, "1": b"head"}, epoch=1)
    frozen_file = tmp_path / blob_of(FROZEN)
    inode = frozen_file.stat().st_ino
    second = commit(store, "e2.weights.dedup.json", {"0": FROZEN, "1": b"hea2"}, epoch=2)
    assert frozen_file.stat().st_ino == inode  # not written again
    assert blob_of(FROZEN) in first.filenames and blob_of(FROZEN) in second.filenames
    assert len(on_disk(tmp_path)) == 5  # two indexes, one frozen blob, two heads
    assert_consistent(tmp_path)
    from keras_ckpt import cli

    assert cli.main(["show", str(tmp_path), "e2.weights.dedup.json"]) == 0
    assert "2 blobs (1 shared with other checkpoints)" in capsys.readouterr().out
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
    names, contents = [], {}
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
            contents[name] = variables
        assert_consistent(tmp_path)
        if step % 10 == 9:  # and each loads: the assembled .weights.h5 holds its variables
            for record in store.records():
                assert_assembles_to(record, contents[record.filename], tmp_path.parent)
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


# Keras: real training ---------------------------------------------------------------------------

EPOCHS = 10


def frozen_backbone_model(seed=0):
    """A 256 -> 256 Dense "backbone", frozen, under a 256 -> 12 trainable head: 95.5% of the
    parameters frozen (65,792 of 68,876)."""
    import keras

    keras.utils.set_random_seed(seed)
    backbone = keras.layers.Dense(256, activation="relu", name="backbone")
    backbone.trainable = False
    model = keras.Sequential([keras.Input((256,)), backbone, keras.layers.Dense(12, name="head")])
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    return model


@pytest.fixture
def backbone_data():
    import numpy as np

    rng = np.random.default_rng(0)
    return rng.normal(size=(64, 256)).astype("float32"), rng.normal(size=(64, 12)).astype("float32")


def weights_of(model):
    return [v.numpy().copy() for v in model.weights] + [
        v.numpy().copy() for v in model.optimizer.variables
    ]


def assert_same(got, expected):
    import numpy as np

    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_array_equal(a, b)


def directory_bytes(directory):
    return sum(
        os.lstat(os.path.join(directory, name)).st_size
        for name in os.listdir(directory)
        if name != LOCK
    )


def test_frozen_backbone_is_stored_once_and_every_checkpoint_exports_to_plain_keras(
    tmp_path, backbone_data, capsys
):
    """The acceptance test of issue 17 item 4: 10 checkpoints of a model with 95% of its
    parameters frozen use at most 1.2 x one full checkpoint + 10 x the trainable part; each
    exports to a standard .weights.h5 that plain Keras loads, equal to that epoch's weights."""
    import keras

    import keras_ckpt
    from keras_ckpt import cli

    model = frozen_backbone_model()
    directory = tmp_path / "run"
    recorded = []
    checkpoint = keras_ckpt.IntervalCheckpoint(directory, save_weights_only=True, dedup=True)
    remember = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: recorded.append(weights_of(model))
    )
    x, y = backbone_data
    model.fit(x, y, epochs=EPOCHS, batch_size=32, verbose=0, callbacks=[checkpoint, remember])

    records = keras_ckpt.list_checkpoints(directory)
    assert len(records) == EPOCHS
    assert all(r.filename.endswith(".weights.dedup.json") for r in records)
    full = tmp_path / "full.weights.h5"
    model.save_weights(full)
    trainable = sum(v.numpy().nbytes for v in model.trainable_weights) + sum(
        v.numpy().nbytes for v in model.optimizer.variables
    )
    frozen = sum(v.numpy().nbytes for v in model.non_trainable_weights)
    assert frozen / (frozen + sum(v.numpy().nbytes for v in model.trainable_weights)) > 0.95
    used = directory_bytes(directory)
    budget = 1.2 * full.stat().st_size + EPOCHS * trainable
    # Measured (Keras 3.15, TensorFlow): 675,575 bytes on disk, the manifest included, against
    # a budget of 752,510 (one full checkpoint 318,592; the trainable part, the head's
    # variables and their Adam state, 37,020); ten plain .weights.h5 files take 3,185,920.
    assert used <= budget
    # The frozen kernel is one blob that all ten checkpoints list.
    shared = set.intersection(*(set(r.filenames[1:]) for r in records))
    assert len(shared) >= 2  # the backbone's kernel and bias (and the learning rate)

    for record in records:
        output = tmp_path / "out" / f"e{record.epoch}.weights.h5"
        code = cli.main(["export", str(directory), str(output), "--which", str(record.epoch)])
        assert code == 0, capsys.readouterr().err
        fresh = frozen_backbone_model(seed=1)
        fresh.optimizer.build(fresh.trainable_variables)
        fresh.load_weights(output)  # plain Keras, no keras_ckpt
        assert_same(weights_of(fresh), recorded[record.epoch - 1])
    # The last export is the very file model.save_weights writes.
    assert output.read_bytes() == full.read_bytes()
    # load_latest and load_checkpoint load directly.
    fresh = keras_ckpt.load_latest(directory, model=frozen_backbone_model(seed=2))
    assert_same(weights_of(fresh), recorded[-1])
    fresh = keras_ckpt.load_checkpoint(records[3], model=frozen_backbone_model(seed=2))
    assert_same(weights_of(fresh), recorded[3])
    assert cli.main(["verify", str(directory)]) == 0
    assert f"all {EPOCHS} checkpoints verified" in capsys.readouterr().out
    # The mean of the last three: the frozen backbone stays as it was.
    import numpy as np

    averaged = keras_ckpt.average_checkpoints(
        directory, "latest", k=3, model=frozen_backbone_model(seed=4)
    )
    head = np.mean([recorded[e][2] for e in (7, 8, 9)], axis=0)  # the head's kernel
    np.testing.assert_allclose(averaged.get_layer("head").kernel.numpy(), head, atol=1e-6)
    assert_same(averaged.get_layer("backbone").get_weights(), recorded[-1][:2])

    # keras-ckpt prune deletes checkpoints, never a blob a kept one lists, and counts each
    # file it deletes once.
    def checkpoint_bytes():
        return sum(p.stat().st_size for p in directory.iterdir() if p.name != MANIFEST_NAME)

    before = checkpoint_bytes()
    capsys.readouterr()
    assert cli.main(["prune", str(directory), "--keep-last", "3"]) == 0
    assert f"deleted {EPOCHS - 3} ({cli._size(before - checkpoint_bytes())})" in (
        capsys.readouterr().out
    )
    assert len(keras_ckpt.list_checkpoints(directory)) == 3
    assert_consistent(directory)
    fresh = keras_ckpt.load_latest(directory, model=frozen_backbone_model(seed=2))
    assert_same(weights_of(fresh), recorded[-1])


def test_retention_keeps_the_shared_blobs_and_best_loads(tmp_path, backbone_data):
    import keras_ckpt

    model = frozen_backbone_model()
    directory = tmp_path / "run"
    interval = keras_ckpt.IntervalCheckpoint(
        directory, save_weights_only=True, dedup=True, keep_last=2
    )
    best = keras_ckpt.BestCheckpoint(
        directory, monitor="loss", save_weights_only=True, dedup=True, top_k=2
    )
    x, y = backbone_data
    model.fit(x, y, epochs=5, batch_size=32, verbose=0, callbacks=[interval, best])
    assert_consistent(directory)  # no blob left that no checkpoint lists, none missing
    records = keras_ckpt.list_checkpoints(directory)
    assert len(records) <= 4
    backbone = model.get_layer("backbone").kernel.numpy()
    loaded = keras_ckpt.load_best(directory, model=frozen_backbone_model(seed=3))
    assert (loaded.get_layer("backbone").kernel.numpy() == backbone).all()
    latest = keras_ckpt.load_latest(directory, model=frozen_backbone_model(seed=3))
    assert_same([v.numpy() for v in latest.weights], [v.numpy() for v in model.weights])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"dedup": 1, "save_weights_only": True}, "Argument `dedup` must be True or False"),
        ({"dedup": True}, "pass `save_weights_only=True`"),
        (
            {"dedup": True, "save_weights_only": True, "max_shard_size": 1.0},
            "`dedup` and `max_shard_size` cannot be combined",
        ),
        (
            {"dedup": True, "save_weights_only": True, "filename": "e{epoch}.weights.h5"},
            "must end in `.weights.dedup.json`",
        ),
        ({"save_weights_only": True, "filename": "e{epoch}.weights.dedup.json"}, "`dedup=True`"),
    ],
)
@pytest.mark.parametrize("callback", ["IntervalCheckpoint", "BestCheckpoint"])
def test_dedup_arguments_are_checked_at_construction(tmp_path, callback, kwargs, message):
    import keras_ckpt

    with pytest.raises(ValueError, match=re.escape(message)):
        getattr(keras_ckpt, callback)(tmp_path / "run", **kwargs)


def test_dedup_at_a_url_is_refused(tmp_path):
    import keras_ckpt

    with pytest.raises(ValueError, match="local directories only"):
        keras_ckpt.IntervalCheckpoint("memory://run", save_weights_only=True, dedup=True)


def test_export_of_a_weights_only_checkpoint_without_blobs_copies_it(tmp_path, backbone_data):
    import keras_ckpt
    from keras_ckpt import cli

    model = frozen_backbone_model()
    directory = tmp_path / "run"
    checkpoint = keras_ckpt.IntervalCheckpoint(directory, save_weights_only=True)
    x, y = backbone_data
    model.fit(x, y, epochs=1, batch_size=32, verbose=0, callbacks=[checkpoint])
    output = tmp_path / "w.weights.h5"
    assert cli.main(["export", str(directory), str(output), "--which", "latest"]) == 0
    with open(keras_ckpt.list_checkpoints(directory)[0].path, "rb") as file:
        assert output.read_bytes() == file.read()


# Crash safety ----------------------------------------------------------------------------------

CRASH_CHILD = """
import os, signal, sys
sys.path.insert(0, sys.argv[3])
from test_dedup import FROZEN, commit
from keras_ckpt.store import CheckpointStore

store = CheckpointStore(sys.argv[1])
commit(store, "e1.weights.dedup.json", {"0": FROZEN, "1": b"hea1"}, epoch=1)
calls, kill_at = [0], int(sys.argv[2])
real_replace, real_remove = os.replace, os.remove

def counted(real):
    def call(*args, **kwargs):
        calls[0] += 1
        if calls[0] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)
    return call

os.replace, os.remove = counted(real_replace), counted(real_remove)
commit(store, "e2.weights.dedup.json", {"0": FROZEN, "1": b"hea2", "2": b"new!"}, epoch=2)
store.release("A", ["e1.weights.dedup.json"])
print("finished")
"""


def test_a_kill_at_any_rename_or_delete_leaves_every_checkpoint_whole(tmp_path):
    """A process killed (SIGKILL) at each rename or delete of a dedup commit that shares a
    blob, then of the release of the older checkpoint: reopening the directory leaves each
    checkpoint whole or absent (e1 until its release commits, e2 once its commit does), and
    no blob that no checkpoint lists."""
    import signal
    import subprocess
    import sys

    tests = os.path.dirname(os.path.abspath(__file__))
    outcomes = set()
    for kill_at in range(1, 40):
        directory = tmp_path / f"kill{kill_at}"
        child = subprocess.run(
            [sys.executable, "-c", CRASH_CHILD, str(directory), str(kill_at), tests],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        )
        store = CheckpointStore(directory)  # recovery
        names = [record.filename for record in store.records()]
        assert_consistent(directory)
        outcomes.add(tuple(names))
        if child.returncode == 0:
            assert "finished" in child.stdout
            assert names == ["e2.weights.dedup.json"]
            break
        assert child.returncode == -signal.SIGKILL, child.stderr
        assert names in (
            ["e1.weights.dedup.json"],
            ["e1.weights.dedup.json", "e2.weights.dedup.json"],
            ["e2.weights.dedup.json"],
        )
        store.close()
    else:
        pytest.fail("the child never finished")
    assert len(outcomes) == 3  # kills before, between and after the two commits


def test_a_blob_replaced_by_a_link_is_never_followed(tmp_path):
    outside = tmp_path / "outside.bin"
    outside.write_bytes(FROZEN)
    directory = tmp_path / "run"
    store = CheckpointStore(directory)
    record = commit(store, "e1.weights.dedup.json", {"0": FROZEN})
    blob = directory / blob_of(FROZEN)
    blob.unlink()
    blob.symlink_to(outside)
    with pytest.raises(CheckpointCorruptedError, match="symbolic link"):
        verify(record)
    with pytest.raises(CheckpointCorruptedError, match="symbolic link"):
        read_dedup_index(record)
    store.release("A", [record.filename])
    assert outside.read_bytes() == FROZEN  # the link went, never what it points at
    assert not os.path.lexists(blob)


def test_resume_from_dedup_checkpoints_equals_an_uninterrupted_run(tmp_path, backbone_data):
    import keras_ckpt

    x, y = backbone_data

    def train(directory, epochs, model=None):
        model = model or frozen_backbone_model()
        resume = keras_ckpt.ResumeFromLatest(directory, dedup=True, keep_last=2)
        model.fit(x, y, epochs=epochs, batch_size=32, shuffle=False, verbose=0, callbacks=[resume])
        return model

    whole = train(tmp_path / "whole", 4, frozen_backbone_model())
    train(tmp_path / "cut", 2)
    resumed = train(tmp_path / "cut", 4)  # a fresh model: everything comes from the directory
    assert_same(weights_of(resumed), weights_of(whole))
    records = keras_ckpt.list_checkpoints(tmp_path / "cut")
    assert len(records) >= 2  # keep_last, and the checkpoint the rerun resumed from
    assert all(r.filename.endswith(".weights.dedup.json") for r in records)
    assert_consistent(tmp_path / "cut")


def test_bfloat16_and_integer_variables_round_trip_to_the_same_file(tmp_path):
    import keras
    import numpy as np

    import keras_ckpt
    from keras_ckpt import cli

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(3, dtype="bfloat16"),
            keras.layers.Dense(2),
        ]
    )
    model.compile(optimizer="adam", loss="mse")  # iterations: an int64 variable
    x, y = np.ones((8, 4), "float32"), np.zeros((8, 2), "float32")
    directory = tmp_path / "run"
    checkpoint = keras_ckpt.IntervalCheckpoint(directory, save_weights_only=True, dedup=True)
    model.fit(x, y, epochs=1, verbose=0, callbacks=[checkpoint])
    output = tmp_path / "out.weights.h5"
    assert cli.main(["export", str(directory), str(output), "--which", "1"]) == 0
    model.save_weights(tmp_path / "keras.weights.h5")
    assert output.read_bytes() == (tmp_path / "keras.weights.h5").read_bytes()
    (record,) = keras_ckpt.list_checkpoints(directory)
    dtypes = {item.dtype for item in read_dedup_index(record) if hasattr(item, "dtype")}
    # The optimizer's counter is int64 on TensorFlow, int32 on JAX (without x64) and PyTorch.
    counter = keras.backend.standardize_dtype(model.optimizer.iterations.dtype)
    assert counter.startswith("int")
    assert {"bfloat16", "float32", counter} <= dtypes


def test_model_checkpoint_replacing_one_dedup_file_leaves_only_its_blobs(tmp_path, backbone_data):
    import keras_ckpt

    model = frozen_backbone_model()
    directory = tmp_path / "run"
    checkpoint = keras_ckpt.ModelCheckpoint(
        str(directory / "model.weights.dedup.json"), save_weights_only=True, dedup=True
    )
    x, y = backbone_data
    model.fit(x, y, epochs=3, batch_size=32, verbose=0, callbacks=[checkpoint])
    (record,) = keras_ckpt.list_checkpoints(directory)
    assert_consistent(directory)  # the heads of epochs 1 and 2 went with their index
    loaded = keras_ckpt.load_checkpoint(record, model=frozen_backbone_model(seed=5))
    assert_same(weights_of(loaded), weights_of(model))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"filepath": "d/e{epoch}.weights.h5", "dedup": True}, "must end in `.weights.dedup"),
        ({"filepath": "d/e{epoch}.weights.dedup.json"}, "needs `dedup=True`"),
        ({"filepath": "memory://d/e.weights.dedup.json", "dedup": True}, "local directories"),
    ],
)
def test_model_checkpoint_dedup_arguments(tmp_path, kwargs, message):
    import keras_ckpt

    with pytest.raises(ValueError, match=re.escape(message)):
        keras_ckpt.ModelCheckpoint(save_weights_only=True, **kwargs)
