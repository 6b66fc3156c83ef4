"""The checkpoint directory is untrusted input (runs are downloaded and shared).

Nothing a manifest or a file name in the directory says may make keras_ckpt read, write, link
or delete anything outside the directory, or run code. Each test builds a hostile directory
``tmp_path/run`` beside ``tmp_path/outside``, which holds sentinels (real Keras checkpoints of
another model), runs the readers, stores and callbacks on it, and checks that everything outside
the directory is as it was: same bytes, same inode, no new hard link, nothing added. Every call
either works, leaving the hostile thing alone, or raises a clear error (a ``ValueError`` such as
``ManifestError`` or ``CheckpointCorruptedError``, or ``FileNotFoundError``) naming the entry
or the file.

The command line's refusal of damaged manifests is tested in ``test_cli.py``; here are the
library, the stores and the callbacks.
"""

import hashlib
import json
import os
import shutil
import stat
import sys
import warnings

import keras
import numpy as np
import pytest
from conftest import assert_weights_equal

import keras_ckpt
from keras_ckpt import cli
from keras_ckpt.store import (
    CheckpointCorruptedError,
    CheckpointStore,
    FollowerStore,
    ManifestError,
)

# The logs of one epoch, for callbacks driven through their hooks.
EPOCH_LOGS = {"loss": 1.0, "mae": 0.8, "val_loss": 0.5, "val_mae": 0.6}
# Errors that say something went wrong deep inside instead of naming the hostile entry.
UNCLEAR = (TypeError, KeyError, AttributeError, IndexError, IsADirectoryError, NotADirectoryError)


def tiny_model(seed):
    """The model of conftest's ``make_model``, for fixtures wider than one test."""
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(1)]
    )
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse", metrics=["mae"])
    return model


def training_data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, 4)).astype("float32")
    return x, x.sum(axis=1, keepdims=True)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Real directories, copied by each test: ``run`` (BestCheckpoint top 1 and
    IntervalCheckpoint last 2, whole models) and ``resume`` (ResumeFromLatest), from 2 epochs;
    and ``outside``: ``victim.keras`` and ``victim.weights.h5``, checkpoints of another model."""
    root = tmp_path_factory.mktemp("trained")
    x, y = training_data()
    tiny_model(0).fit(
        x,
        y,
        validation_data=(x[:32], y[:32]),
        epochs=2,
        batch_size=32,
        verbose=0,
        callbacks=[
            keras_ckpt.BestCheckpoint(root / "run"),
            keras_ckpt.IntervalCheckpoint(root / "run", keep_last=2),
            keras_ckpt.ResumeFromLatest(root / "resume"),
        ],
    )
    other = tiny_model(7)
    other.fit(x, y, epochs=1, batch_size=32, verbose=0)
    (root / "outside").mkdir()
    other.save(root / "outside" / "victim.keras")
    other.save_weights(root / "outside" / "victim.weights.h5")
    return root


@pytest.fixture(scope="module")
def shared_model():
    """A trained model (its optimizer built) for callbacks driven through their hooks."""
    model = tiny_model(1)
    x, y = training_data()
    model.fit(x, y, epochs=1, batch_size=32, verbose=0)
    return model


class Outside:
    """The sentinels beside the hostile directory, and what everything outside it was."""

    def __init__(self, root, trained):
        self.root = root
        self.folder = root / "outside"
        shutil.copytree(trained / "outside", self.folder)
        self.victim = self.folder / "victim.keras"
        self.victim_weights = self.folder / "victim.weights.h5"
        self.before = None

    def remember(self):
        """Call once the hostile directory is built: what ``assert_untouched`` compares with."""
        self.before = outside_state(self.root)

    def assert_untouched(self):
        after = outside_state(self.root)
        assert sorted(after) == sorted(self.before), "something was created or removed outside"
        for name, (kind, *details) in self.before.items():
            if kind == "file":
                content, inode, links = details
                now_kind, now_content, now_inode, now_links = after[name]
                assert (now_kind, now_content, now_inode) == (kind, content, inode), name
                # A hard link planted in the directory may be replaced (fewer links), never added.
                assert now_links <= links, f"{name} got a new hard link"
            else:
                assert after[name] == self.before[name], name


def outside_state(root):
    """Everything under ``root`` but the checkpoint directory ``run``: each file's SHA-256,
    inode and link count, each link's target, each folder."""
    state = {}
    for folder, folders, files in os.walk(root):
        if os.path.abspath(folder) == os.path.abspath(root):
            folders[:] = [name for name in folders if name != "run"]
            files = [name for name in files if name != "run"]
        for name in folders + files:
            path = os.path.join(folder, name)
            info = os.lstat(path)
            key = os.path.relpath(path, root)
            if stat.S_ISLNK(info.st_mode):
                state[key] = ("link", os.readlink(path))
            elif stat.S_ISDIR(info.st_mode):
                state[key] = ("folder",)
            else:
                with open(path, "rb") as file:
                    digest = hashlib.sha256(file.read()).hexdigest()
                state[key] = ("file", digest, info.st_ino, info.st_nlink)
    return state


@pytest.fixture
def outside(tmp_path, trained):
    return Outside(tmp_path, trained)


def copy_run(trained, tmp_path, which="run"):
    directory = tmp_path / "run"
    shutil.copytree(trained / which, directory)
    return directory


def read_json(directory):
    with open(directory / "keras_ckpt.json", encoding="utf-8") as file:
        return json.load(file)


def write_json(directory, manifest):
    path = directory / "keras_ckpt.json"
    os.remove(path)  # never write through whatever the test planted under that name
    path.write_text(json.dumps(manifest), encoding="utf-8")


def sha256_of(path):
    with open(path, "rb") as file:
        return hashlib.sha256(file.read()).hexdigest()


def link_record_outside(directory, filename, target):
    """Replaces checkpoint ``filename`` by a symbolic link to ``target`` and records the
    target's true size and SHA-256: only the refusal of links stops it from being loaded."""
    os.remove(directory / filename)
    os.symlink(target, directory / filename)
    manifest = read_json(directory)
    for entry in manifest["checkpoints"]:
        if entry["file"] == filename:
            entry["size"] = os.path.getsize(target)
            entry["sha256"] = sha256_of(target)
    write_json(directory, manifest)


def drive(callback, model, save=True):
    """Runs ``callback``'s hooks as ``fit`` would for one epoch (tier 2: scripted logs)."""
    callback.set_model(model)
    callback.set_params({"epochs": 1, "steps": 3, "verbose": 0})
    callback.on_train_begin({})
    if save:
        callback.on_epoch_begin(0, {})
        callback.on_epoch_end(0, dict(EPOCH_LOGS))
    callback.on_train_end({})


def open_store(directory):
    CheckpointStore(directory).close()


# Every reader, store and callback, each given the directory and a model.
OPERATIONS = {
    "list_checkpoints": lambda d, m: keras_ckpt.list_checkpoints(d),
    "best_checkpoint": lambda d, m: keras_ckpt.best_checkpoint(d),
    "latest_checkpoint": lambda d, m: keras_ckpt.latest_checkpoint(d),
    "load_best": lambda d, m: keras_ckpt.load_best(d),
    "load_best into a model": lambda d, m: keras_ckpt.load_best(d, model=m),
    "load_latest": lambda d, m: keras_ckpt.load_latest(d),
    "load_latest into a model": lambda d, m: keras_ckpt.load_latest(d, model=m),
    "CheckpointStore": lambda d, m: open_store(d),
    "FollowerStore": lambda d, m: FollowerStore(d),
    "BestCheckpoint": lambda d, m: drive(keras_ckpt.BestCheckpoint(d), m),
    "IntervalCheckpoint": lambda d, m: drive(keras_ckpt.IntervalCheckpoint(d, keep_last=2), m),
    "ResumeFromLatest": lambda d, m: drive(keras_ckpt.ResumeFromLatest(d, handle_signals=False), m),
    "BackupAndRestore": lambda d, m: drive(keras_ckpt.BackupAndRestore(d), m),
    "ModelCheckpoint": lambda d, m: drive(
        keras_ckpt.ModelCheckpoint(os.path.join(d, "mc-{epoch:02d}.keras")), m
    ),
    "EarlyStopping": lambda d, m: drive(keras_ckpt.EarlyStopping(restore_best_weights=d), m),
}


# 1. Manifests whose names lead out of the directory: refused whole, nothing acted on ----------

TEMPORARY = ".keras_ckpt-tmp-0123456789ab-epoch009.keras"


def first_record(manifest):
    return manifest["checkpoints"][0]


def set_first_file(name):
    def change(manifest, directory, outside):
        first_record(manifest)["file"] = str(outside.victim) if name is None else name
        return manifest

    return change


def set_trash(name):
    def change(manifest, directory, outside):
        manifest["trash"] = [str(outside.victim) if name is None else name]
        return manifest

    return change


def set_aliases(aliases):
    def change(manifest, directory, outside):
        target = manifest["aliases"]["best"]
        manifest["aliases"] = {
            alias: (target if value is ... else str(outside.victim) if value is None else value)
            for alias, value in aliases.items()
        }
        return manifest

    return change


def set_pending(temp, file):
    """A pending commit; ``None`` for the outside sentinel's absolute path."""

    def change(manifest, directory, outside):
        planted = outside.folder / TEMPORARY
        shutil.copyfile(outside.victim, planted)  # what following the entry would find
        record = dict(first_record(manifest))
        record["file"] = str(outside.victim) if file is None else file
        manifest["pending"] = {"temp": str(planted) if temp is None else temp, "record": record}
        return manifest

    return change


def link_manifest_outside(manifest, directory, outside):
    """The manifest a link to a valid manifest outside, which lists this directory's files."""
    (outside.folder / "keras_ckpt.json").write_text(json.dumps(manifest), encoding="utf-8")
    os.remove(directory / "keras_ckpt.json")
    os.symlink(outside.folder / "keras_ckpt.json", directory / "keras_ckpt.json")
    return None


def set_first_field(key, value):
    def change(manifest, directory, outside):
        first_record(manifest)[key] = value
        return manifest

    return change


REFUSED = {
    "trash up and out": (set_trash("../outside/victim.keras"), ["trash[0]", "../outside"]),
    "trash absolute": (set_trash(None), ["trash[0]", "name='/"]),
    "trash with a backslash": (set_trash("..\\outside\\victim.keras"), ["trash[0]"]),
    "trash dot-dot": (set_trash(".."), ["trash[0]"]),
    "trash the manifest": (set_trash("keras_ckpt.json"), ["trash[0]", "keras_ckpt.json"]),
    "trash the lock": (set_trash(".keras_ckpt.lock"), ["trash[0]", ".keras_ckpt.lock"]),
    "trash a number": (set_trash(3), ["trash[0]"]),
    "alias name up and out": (
        set_aliases({"../../outside/victim": ...}),
        ["aliases", "../../outside/victim"],
    ),
    "alias name with a slash": (set_aliases({"best/../x": ...}), ["aliases", "best/../x"]),
    "alias target up and out": (
        set_aliases({"best": "../outside/victim.keras"}),
        ["aliases['best']", "../outside/victim.keras"],
    ),
    "alias target absolute": (set_aliases({"best": None}), ["aliases['best']", "target='/"]),
    "alias target in a subfolder": (set_aliases({"latest": "sub/x.keras"}), ["aliases['latest']"]),
    "alias target with a NUL": (set_aliases({"best": "x\x00.keras"}), ["aliases['best']"]),
    "alias target a list": (set_aliases({"best": ["x.keras"]}), ["aliases['best']"]),
    "record absolute": (set_first_file(None), ["checkpoints[0]", "file='/"]),
    "record up and out": (
        set_first_file("../outside/victim.keras"),
        ["checkpoints[0]", "../outside/victim.keras"],
    ),
    "record dot-dot": (set_first_file(".."), ["checkpoints[0]"]),
    "record dot": (set_first_file("."), ["checkpoints[0]"]),
    "record empty": (set_first_file(""), ["checkpoints[0]"]),
    "record with a NUL": (set_first_file("x.keras\x00/../../victim.keras"), ["checkpoints[0]"]),
    "record with a newline": (set_first_file("epoch\n001.keras"), ["checkpoints[0]"]),
    "record the lock": (set_first_file(".keras_ckpt.lock"), ["checkpoints[0]"]),
    "record a temporary": (set_first_file(TEMPORARY), ["checkpoints[0]", TEMPORARY]),
    "record kept_by a number": (set_first_field("kept_by", [3]), ["checkpoints[0]", "kept_by"]),
    "record state a string": (set_first_field("state", "resume"), ["checkpoints[0]", "state"]),
    "pending temp outside": (
        set_pending(f"../outside/{TEMPORARY}", "epoch009.keras"),
        ["pending", "temp"],
    ),
    "pending temp absolute": (set_pending(None, "epoch009.keras"), ["pending", "temp"]),
    "pending temp not a temporary": (
        set_pending("epoch009.keras", "epoch009.keras"),
        ["pending", "temp"],
    ),
    "pending record outside": (
        set_pending(TEMPORARY, "../outside/victim.keras"),
        ["pending.record", "../outside/victim.keras"],
    ),
    "pending record absolute": (set_pending(TEMPORARY, None), ["pending.record", "file='/"]),
    "the manifest a link outside": (
        link_manifest_outside,
        ["keras_ckpt.json", "symbolic link"],
    ),
}


@pytest.mark.parametrize("operation", OPERATIONS)
@pytest.mark.parametrize("case", REFUSED)
def test_a_manifest_naming_anything_outside_is_refused_whole(
    tmp_path, trained, outside, shared_model, case, operation
):
    change, fragments = REFUSED[case]
    directory = copy_run(trained, tmp_path)
    manifest = change(read_json(directory), directory, outside)
    if manifest is not None:
        write_json(directory, manifest)
    outside.remember()
    inside = outside_state(directory)
    weights = shared_model.get_weights()
    with pytest.raises(ManifestError) as refusal:
        OPERATIONS[operation](str(directory), shared_model)
    message = str(refusal.value)
    assert "keras_ckpt.json" in message
    for fragment in fragments:
        assert fragment in message, message
    outside.assert_untouched()
    # Nothing was deleted, linked or loaded because of it (a writer may have taken its lock).
    after = outside_state(directory)
    after.pop(".keras_ckpt.lock", None)
    inside.pop(".keras_ckpt.lock", None)
    assert after == inside
    assert_weights_equal(shared_model.get_weights(), weights)


# 2. Files that are links, folders, pipes or gone, under names a valid manifest gives ----------


def aliased(directory):
    """The file names the best and latest aliases point at."""
    aliases = read_json(directory)["aliases"]
    return aliases["best"], aliases["latest"]


def checkpoints_link_outside(directory, outside):
    best, latest = aliased(directory)
    link_record_outside(directory, best, outside.victim)
    link_record_outside(directory, latest, outside.victim)
    return best, latest


def best_deleted(directory, outside):
    best, _ = aliased(directory)
    os.remove(directory / best)
    return (best,)


def best_a_folder(directory, outside):
    best, _ = aliased(directory)
    os.remove(directory / best)
    (directory / best).mkdir()
    (directory / best / "inside.txt").write_bytes(b"stays")
    return (best,)


def best_a_pipe(directory, outside):
    best, _ = aliased(directory)
    os.remove(directory / best)
    os.mkfifo(directory / best)
    return (best,)


def alias_files_link_outside(directory, outside):
    os.remove(directory / "best.keras")
    os.symlink(outside.victim, directory / "best.keras")
    os.remove(directory / "latest.keras")
    os.symlink(outside.folder, directory / "latest.keras")
    return None


def alias_file_hard_linked_outside(directory, outside):
    os.remove(directory / "best.keras")
    os.link(outside.victim, directory / "best.keras")
    return None


def alias_files_folders(directory, outside):
    for name in ("best.keras", "latest.keras"):
        os.remove(directory / name)
        (directory / name).mkdir()
        (directory / name / "inside.txt").write_bytes(b"stays")
    return None


def trash_links_outside(directory, outside):
    os.symlink(outside.victim, directory / "evil.keras")
    os.symlink(outside.folder, directory / "evil")
    os.link(outside.victim_weights, directory / "hard.weights.h5")
    manifest = read_json(directory)
    manifest["trash"] = ["evil.keras", "evil", "hard.weights.h5"]
    write_json(directory, manifest)
    return None


def trash_a_folder(directory, outside):
    (directory / "notes").mkdir()
    (directory / "notes" / "inside.txt").write_bytes(b"stays")
    manifest = read_json(directory)
    manifest["trash"] = ["notes"]
    write_json(directory, manifest)
    return None


def pending_record_links_outside(directory, outside):
    """A commit whose rename 'happened': its temporary is gone and its file, a link to a valid
    checkpoint outside, matches the recorded size and checksum."""
    os.symlink(outside.victim, directory / "epoch009.keras")
    manifest = read_json(directory)
    record = {**manifest["checkpoints"][-1], "file": "epoch009.keras", "epoch": 9}
    record.update(size=os.path.getsize(outside.victim), sha256=sha256_of(outside.victim))
    manifest["pending"] = {"temp": TEMPORARY, "record": record}
    write_json(directory, manifest)
    return None


def pending_temp_links_outside(directory, outside):
    os.symlink(outside.victim, directory / TEMPORARY)
    manifest = read_json(directory)
    record = {**manifest["checkpoints"][-1], "file": "epoch009.keras", "epoch": 9}
    manifest["pending"] = {"temp": TEMPORARY, "record": record}
    write_json(directory, manifest)
    return None


# name -> (damage(directory, outside), which returns the names of the checkpoints it damaged,
#          the operations that must refuse because they would read one of those files)
LOADERS = {"load_best", "load_best into a model", "EarlyStopping"}
DAMAGED = {
    "checkpoints links to a valid checkpoint outside": (
        checkpoints_link_outside,
        LOADERS | {"load_latest", "load_latest into a model"},
    ),
    "best checkpoint deleted by hand": (best_deleted, LOADERS),
    "best checkpoint a folder": (best_a_folder, LOADERS),
    "best checkpoint a named pipe": (best_a_pipe, LOADERS),
    "alias files links outside": (alias_files_link_outside, set()),
    "alias file hard-linked outside": (alias_file_hard_linked_outside, set()),
    "alias files folders": (alias_files_folders, set()),
    "trash links outside": (trash_links_outside, set()),
    "trash a folder": (trash_a_folder, set()),
    "pending record links outside": (pending_record_links_outside, set()),
    "pending temporary links outside": (pending_temp_links_outside, set()),
}


@pytest.mark.parametrize("operation", OPERATIONS)
@pytest.mark.parametrize("case", DAMAGED)
def test_links_folders_and_gaps_in_the_directory_never_reach_outside(
    tmp_path, trained, outside, shared_model, case, operation
):
    damage, refusing = DAMAGED[case]
    directory = copy_run(trained, tmp_path)
    culprits = damage(directory, outside)
    outside.remember()
    weights = shared_model.get_weights()
    error = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            OPERATIONS[operation](str(directory), shared_model)
        except Exception as caught:  # judged below
            error = caught
    outside.assert_untouched()
    if operation in refusing:
        assert isinstance(error, CheckpointCorruptedError), repr(error)
        assert any(name in str(error) for name in culprits), error
        assert_weights_equal(shared_model.get_weights(), weights)  # nothing was loaded
    elif error is not None:
        assert not isinstance(error, UNCLEAR), repr(error)
        assert isinstance(error, (ValueError, FileNotFoundError)), repr(error)
    # Whatever happened, no name in the directory is the outside sentinel, unless the case
    # planted that hard link and the operation only read.
    victim = os.stat(outside.victim)
    for name in os.listdir(directory):
        info = os.lstat(directory / name)
        if (info.st_dev, info.st_ino) == (victim.st_dev, victim.st_ino):
            assert case == "alias file hard-linked outside" and name == "best.keras"
    # What a trash entry named and keras_ckpt must not delete is still there.
    for folder in ("notes", "best.keras", "latest.keras"):
        if case in ("trash a folder", "alias files folders") and os.path.isdir(directory / folder):
            assert (directory / folder / "inside.txt").read_bytes() == b"stays"
    if case.startswith("pending") and error is None:
        names = [record.filename for record in keras_ckpt.list_checkpoints(directory)]
        assert "epoch009.keras" not in names  # never completed from a link or a lost temporary


LINK_LOADERS = {
    "load_best": lambda d, m: keras_ckpt.load_best(d),
    "load_best into a model": lambda d, m: keras_ckpt.load_best(d, model=m),
    "load_latest": lambda d, m: keras_ckpt.load_latest(d),
    "load_latest into a model": lambda d, m: keras_ckpt.load_latest(d, model=m),
    "load_checkpoint": lambda d, m: keras_ckpt.load_checkpoint(keras_ckpt.best_checkpoint(d)),
    "load_checkpoint into a model": lambda d, m: keras_ckpt.load_checkpoint(
        keras_ckpt.latest_checkpoint(d), m
    ),
    "load_best without the checksum": lambda d, m: keras_ckpt.load_best(
        d, model=m, verify_checksum=False
    ),
    "load_checkpoint without the checksum": lambda d, m: keras_ckpt.load_checkpoint(
        keras_ckpt.best_checkpoint(d), verify_checksum=False
    ),
}


@pytest.mark.parametrize("loader", LINK_LOADERS)
def test_a_link_to_a_valid_checkpoint_outside_is_never_loaded(
    tmp_path, trained, outside, make_model, loader
):
    """The link's target is a real checkpoint whose size and SHA-256 the manifest records, so
    only the refusal of links keeps it out, with or without the checksum."""
    directory = copy_run(trained, tmp_path)
    checkpoints_link_outside(directory, outside)
    outside.remember()
    model = make_model(seed=3)
    weights = model.get_weights()
    with pytest.raises(CheckpointCorruptedError, match="symbolic link"):
        LINK_LOADERS[loader](str(directory), model)
    assert_weights_equal(model.get_weights(), weights)
    outside.assert_untouched()


# Real training on hostile directories ---------------------------------------------------------


def weights_of(path, make_model):
    model = make_model(seed=11)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an unbuilt optimizer skips its saved variables
        model.load_weights(path)
    return model.get_weights()


def assert_weights_differ(actual, other):
    assert any(not np.array_equal(a, o) for a, o in zip(actual, other, strict=True))


@pytest.mark.parametrize("damage", ["link outside", "deleted by hand"])
def test_best_and_interval_train_on_after_their_aliased_checkpoints_went_bad(
    tmp_path, trained, outside, make_model, data, capsys, damage
):
    directory = copy_run(trained, tmp_path)
    best, latest = aliased(directory)
    for name in (best, latest):
        if damage == "link outside":
            link_record_outside(directory, name, outside.victim)
        else:
            os.remove(directory / name)
    outside.remember()
    if damage == "deleted by hand":
        code = cli.main(["prune", str(directory), "--keep-last", "1"])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and "is missing" in err, err
    x, y = data
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make_model(seed=4).fit(
            x,
            y,
            validation_data=(x[:32], y[:32]),
            epochs=1,
            batch_size=32,
            verbose=0,
            callbacks=[
                keras_ckpt.BestCheckpoint(directory),
                keras_ckpt.IntervalCheckpoint(directory, keep_last=2),
            ],
        )
    said = [str(w.message) for w in caught]
    for alias, name in (("best", best), ("latest", latest)):
        assert any(f"dropping the {alias!r} alias" in m and name in m for m in said), said
    outside.assert_untouched()
    victim = os.stat(outside.victim)
    assert victim.st_nlink == 1
    for alias in ("best.keras", "latest.keras"):
        info = os.lstat(directory / alias)
        assert stat.S_ISREG(info.st_mode), alias
        assert (info.st_dev, info.st_ino) != (victim.st_dev, victim.st_ino), alias
    new_best = keras_ckpt.best_checkpoint(directory)
    assert new_best.filename not in (best, latest)
    keras_ckpt.load_best(directory)  # the new best is a regular file that loads


@pytest.mark.parametrize("damage", ["link outside", "deleted by hand"])
def test_resume_skips_a_newest_checkpoint_that_is_a_link_or_gone(
    tmp_path, trained, outside, make_model, data, damage
):
    directory = copy_run(trained, tmp_path, "resume")
    previous, newest = [record.filename for record in keras_ckpt.list_checkpoints(directory)]
    if damage == "link outside":
        link_record_outside(directory, newest, outside.victim_weights)
    else:
        os.remove(directory / newest)
    outside.remember()
    expected = weights_of(directory / previous, make_model)

    class WeightsAtBegin(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.weights = self.model.get_weights()

    seen = WeightsAtBegin()
    x, y = data
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make_model(seed=5).fit(
            x,
            y,
            epochs=2,
            batch_size=32,
            verbose=0,
            callbacks=[keras_ckpt.ResumeFromLatest(directory, handle_signals=False), seen],
        )
    said = [str(w.message) for w in caught]
    assert any(m.startswith("ResumeFromLatest: skipping") and newest in m for m in said), said
    assert_weights_equal(seen.weights, expected)
    assert_weights_differ(seen.weights, weights_of(outside.victim_weights, make_model))
    outside.assert_untouched()
    assert os.stat(outside.victim_weights).st_nlink == 1
    assert not os.path.islink(directory / newest)  # the rerun's save replaced the link itself


def test_early_stopping_never_restores_weights_from_outside(
    tmp_path, trained, outside, make_model, data, weights_by_epoch
):
    directory = copy_run(trained, tmp_path)
    best, _ = aliased(directory)
    link_record_outside(directory, best, outside.victim)
    outside.remember()
    model = make_model(seed=6)
    epochs = weights_by_epoch()
    x, y = data
    with pytest.raises(CheckpointCorruptedError, match=f"{best}.*symbolic link"):
        model.fit(
            x,
            y,
            validation_data=(x[:32], y[:32]),
            epochs=1,
            batch_size=32,
            verbose=0,
            callbacks=[epochs, keras_ckpt.EarlyStopping(restore_best_weights=str(directory))],
        )
    assert_weights_equal(model.get_weights(), epochs.weights[1])
    outside.assert_untouched()


@pytest.mark.parametrize("plant", ["symbolic link", "hard link"])
def test_planted_alias_files_are_replaced_not_followed(tmp_path, outside, make_model, data, plant):
    """``best.keras`` and ``latest.weights.h5`` planted in a new directory, leading to the
    sentinels; a real run replaces them and the sentinels keep their bytes and link count."""
    directory = tmp_path / "run"
    directory.mkdir()
    make_link = os.symlink if plant == "symbolic link" else os.link
    make_link(outside.victim, directory / "best.keras")
    make_link(outside.victim_weights, directory / "latest.weights.h5")
    outside.remember()
    x, y = data
    make_model(seed=8).fit(
        x,
        y,
        validation_data=(x[:32], y[:32]),
        epochs=2,
        batch_size=32,
        verbose=0,
        callbacks=[
            keras_ckpt.BestCheckpoint(directory),
            keras_ckpt.IntervalCheckpoint(directory, save_weights_only=True, keep_last=1),
        ],
    )
    outside.assert_untouched()
    for alias, sentinel, record in [
        ("best.keras", outside.victim, keras_ckpt.best_checkpoint(directory)),
        ("latest.weights.h5", outside.victim_weights, keras_ckpt.latest_checkpoint(directory)),
    ]:
        info, target = os.lstat(directory / alias), os.stat(sentinel)
        assert stat.S_ISREG(info.st_mode)
        assert (info.st_dev, info.st_ino) != (target.st_dev, target.st_ino)
        assert target.st_nlink == 1
        assert os.path.samefile(directory / alias, record.path)


# 4. The writer's lock file --------------------------------------------------------------------


def plant_lock(directory, outside, plant):
    lock = directory / ".keras_ckpt.lock"
    os.remove(lock)
    if plant == "symbolic link":
        os.symlink(outside.victim, lock)
    elif plant == "dangling link":
        os.symlink(outside.folder / "created.lock", lock)
    else:
        os.link(outside.victim, lock)


LOCK_WRITERS = {
    "CheckpointStore": lambda d, m: open_store(d),
    "BestCheckpoint": lambda d, m: drive(keras_ckpt.BestCheckpoint(d), m),
    "ResumeFromLatest": lambda d, m: drive(keras_ckpt.ResumeFromLatest(d, handle_signals=False), m),
}


@pytest.mark.parametrize("writer", LOCK_WRITERS)
@pytest.mark.parametrize("plant", ["symbolic link", "dangling link", "hard link"])
def test_a_lock_file_leading_outside_is_never_written_through(
    tmp_path, trained, outside, shared_model, plant, writer
):
    directory = copy_run(trained, tmp_path)
    plant_lock(directory, outside, plant)
    outside.remember()
    sentinel = outside.victim.read_bytes()
    assert len(keras_ckpt.list_checkpoints(directory)) == 3  # a reader takes no lock
    try:
        LOCK_WRITERS[writer](str(directory), shared_model)
    except ManifestError as error:
        assert ".keras_ckpt.lock" in str(error)
    else:
        assert plant == "hard link", "a writer followed the link of its lock file"
    now = outside.victim.read_bytes()
    assert now == sentinel, f"the writer wrote into the sentinel through its lock: {now[:60]!r}"
    outside.assert_untouched()
    assert not os.path.lexists(outside.folder / "created.lock")


def test_model_checkpoint_replaces_a_link_planted_at_its_file_path(tmp_path, outside, shared_model):
    directory = tmp_path / "run"
    directory.mkdir()
    os.symlink(outside.victim, directory / "model.keras")
    outside.remember()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "replacing a file this run did not write"
        drive(keras_ckpt.ModelCheckpoint(str(directory / "model.keras")), shared_model)
    outside.assert_untouched()
    assert stat.S_ISREG(os.lstat(directory / "model.keras").st_mode)
    assert [r.filename for r in keras_ckpt.list_checkpoints(directory)] == ["model.keras"]


# 5b. The resume state a manifest carries is data from the directory too ----------------------


def set_state(**fields):
    def change(state):
        for key, value in fields.items():
            if value is DROP:
                del state[key]
            else:
                state[key] = value

    return change


DROP = object()
STATE_DAMAGES = {
    "no epoch": set_state(epoch=DROP),
    "batch a list": set_state(batch=[1]),
    "variables a string": set_state(variables="dense"),
    "history a number": set_state(history=5),
    "a callback state a string": set_state(callbacks={"EarlyStopping#0": "patience"}),
}


@pytest.mark.parametrize("damage", STATE_DAMAGES)
def test_a_damaged_resume_state_is_a_clear_error_or_skipped(
    tmp_path, trained, outside, make_model, data, damage
):
    """The newest resume checkpoint's file is intact, its ``state`` is not what keras_ckpt
    writes: ResumeFromLatest falls back to the previous one with a warning, or raises a
    ValueError naming the checkpoint; never a TypeError or KeyError from deep inside."""
    directory = copy_run(trained, tmp_path, "resume")
    manifest = read_json(directory)
    newest = manifest["checkpoints"][-1]
    newest["state"]["finished"] = None  # so that a rerun with more epochs restores everything
    STATE_DAMAGES[damage](newest["state"])
    write_json(directory, manifest)
    outside.remember()
    resume = keras_ckpt.ResumeFromLatest(directory, handle_signals=False)
    x, y = data
    error = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            make_model(seed=9).fit(
                x,
                y,
                epochs=3,
                batch_size=32,
                verbose=0,
                callbacks=[resume, keras_ckpt.EarlyStopping(monitor="loss", patience=5)],
            )
        except Exception as caught_error:  # judged below
            error = caught_error
    outside.assert_untouched()
    if error is None:
        assert resume.resumed_from.filename != newest["file"]
        assert any(newest["file"] in str(w.message) for w in caught)
    else:
        assert not isinstance(error, UNCLEAR), repr(error)
        assert isinstance(error, ValueError), repr(error)
        assert newest["file"] in str(error), error


# 6. Only keras_ckpt's own temporaries are removed ---------------------------------------------

LEFTOVERS = {
    ".keras_ckpt-tmp-0123456789ab-epoch009.keras": False,  # False: recovery removes it
    ".keras_ckpt-tmp-probe-epoch009.keras": False,
    ".keras_ckpt-tmp-notes.txt": True,  # True: not of the pattern, left alone
    ".keras_ckpt-tmp-0123456789AB-epoch009.keras": True,
    ".keras_ckpt-tmp-0123456789a-epoch009.keras": True,
    ".keras_ckpt-tmp-0123456789abc": True,
    ".keras_ckpt-tmp-": True,
    "keras_ckpt-tmp-0123456789ab-epoch009.keras": True,
}


def plant_leftovers(directory, outside):
    for name in LEFTOVERS:
        (directory / name).write_bytes(b"leftover")
    folder = directory / ".keras_ckpt-tmp-0123456789ab-folder"
    folder.mkdir()
    (folder / "inside.txt").write_bytes(b"stays")
    os.symlink(outside.victim, directory / ".keras_ckpt-tmp-0123456789ab-link.keras")
    os.symlink(outside.folder, directory / ".keras_ckpt-tmp-0123456789ab-folderlink")


OPENERS = {
    "CheckpointStore": lambda d, m: open_store(d),
    "BestCheckpoint": lambda d, m: drive(keras_ckpt.BestCheckpoint(d), m, save=False),
    "ResumeFromLatest": lambda d, m: drive(
        keras_ckpt.ResumeFromLatest(d, handle_signals=False), m, save=False
    ),
    "list_checkpoints": lambda d, m: keras_ckpt.list_checkpoints(d),
    "FollowerStore": lambda d, m: FollowerStore(d),
}


@pytest.mark.parametrize("opener", OPENERS)
def test_recovery_removes_only_names_of_the_temporary_pattern(
    tmp_path, trained, outside, shared_model, opener
):
    directory = copy_run(trained, tmp_path)
    plant_leftovers(directory, outside)
    outside.remember()
    OPENERS[opener](str(directory), shared_model)
    writes = opener in ("CheckpointStore", "BestCheckpoint", "ResumeFromLatest")
    for name, stays in LEFTOVERS.items():
        assert os.path.exists(directory / name) == (stays or not writes), name
        if stays:
            assert (directory / name).read_bytes() == b"leftover"
    assert (directory / ".keras_ckpt-tmp-0123456789ab-folder" / "inside.txt").read_bytes() == (
        b"stays"
    )
    for link in ("link.keras", "folderlink"):
        assert os.path.lexists(directory / f".keras_ckpt-tmp-0123456789ab-{link}") != writes
    outside.assert_untouched()
    assert len(keras_ckpt.list_checkpoints(directory)) == 3


# 7. A checkpoint with a Lambda layer never runs its code -------------------------------------

# Set by the saved lambda whenever it runs; the lambda finds this module by its name, a constant
# of its bytecode, because a deserialized function has Keras's globals, not this module's.
PAYLOAD_RAN = []
PAYLOAD = f"lambda x: (__import__('sys').modules[{__name__!r}].PAYLOAD_RAN.append(1), x)[1]"


def lambda_model(payload):
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(1, name="dense"),
            keras.layers.Lambda(payload, name="payload"),
        ]
    )
    model.compile(optimizer="adam", loss="mse")
    return model


@pytest.fixture(scope="module")
def lambda_run(tmp_path_factory):
    """A BestCheckpoint and IntervalCheckpoint directory of a model whose Lambda sets
    ``PAYLOAD_RAN``; training ran it, so the flag is cleared afterwards."""
    assert sys.modules[__name__].PAYLOAD_RAN is PAYLOAD_RAN
    root = tmp_path_factory.mktemp("lambda")
    x, y = training_data()
    lambda_model(eval(PAYLOAD)).fit(
        x,
        y,
        validation_data=(x[:32], y[:32]),
        epochs=1,
        batch_size=32,
        verbose=0,
        callbacks=[keras_ckpt.BestCheckpoint(root), keras_ckpt.IntervalCheckpoint(root)],
    )
    assert PAYLOAD_RAN, "the payload does not run, so the tests below could not see it run"
    PAYLOAD_RAN.clear()
    return root


def harmless_model():
    """The lambda model's architecture with a Lambda of our own (same variables)."""
    return lambda_model(lambda x: x)


LAMBDA_LOADERS = {
    "load_best": lambda d: keras_ckpt.load_best(d),
    "load_latest": lambda d: keras_ckpt.load_latest(d),
    "load_checkpoint": lambda d: keras_ckpt.load_checkpoint(keras_ckpt.best_checkpoint(d)),
    "load_best into a model": lambda d: keras_ckpt.load_best(d, model=harmless_model()),
    "EarlyStopping": lambda d: drive(
        keras_ckpt.EarlyStopping(restore_best_weights=d), harmless_model(), save=False
    ),
    "keras-ckpt show": lambda d: cli.main(["show", str(d), "best"]),
    "keras-ckpt verify": lambda d: cli.main(["verify", str(d)]),
}


@pytest.mark.parametrize("loader", LAMBDA_LOADERS)
def test_no_loader_runs_a_saved_lambda_by_default(lambda_run, capsys, loader):
    PAYLOAD_RAN.clear()
    try:
        LAMBDA_LOADERS[loader](lambda_run)
    except ValueError as error:
        assert "safe_mode" in str(error)
    capsys.readouterr()
    assert PAYLOAD_RAN == []


def test_resume_from_a_lambda_model_file_never_runs_it(tmp_path, lambda_run, data):
    """A hand-written resume record naming the Lambda model's ``.keras`` file: ResumeFromLatest
    reads its weights only."""
    directory = tmp_path / "run"
    directory.mkdir()
    source = keras_ckpt.best_checkpoint(lambda_run)
    name = "resume-epoch0001-step00000003.keras"
    shutil.copyfile(source.path, directory / name)
    entry = {
        **source.to_json(),
        "file": name,
        "kept_by": ["ResumeFromLatest"],
        "state": {"version": 1, "epoch": 1, "batch": 0, "finished": None, "start_batches": 0},
    }
    manifest = {
        "format": "keras_ckpt.manifest",
        "version": 1,
        "checkpoints": [entry],
        "aliases": {},
        "pending": None,
        "trash": [],
    }
    (directory / "keras_ckpt.json").write_text(json.dumps(manifest), encoding="utf-8")
    PAYLOAD_RAN.clear()
    model = harmless_model()
    resume = keras_ckpt.ResumeFromLatest(directory, handle_signals=False)
    x, y = data
    model.fit(x, y, epochs=2, batch_size=32, verbose=0, callbacks=[resume])
    assert resume.resumed_from is not None and resume.resumed_from.filename == name
    assert PAYLOAD_RAN == []
    # The control: loading the file with safe_mode=False does run it.
    keras_ckpt.load_best(lambda_run, safe_mode=False).predict(x[:2], verbose=0)
    assert PAYLOAD_RAN
    PAYLOAD_RAN.clear()
