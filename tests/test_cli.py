"""The `keras-ckpt` command line."""

import hashlib
import json
import os
import shutil
import subprocess
import sys

import pytest
from conftest import another_process_writing

import keras_ckpt
from keras_ckpt import cli


def test_demo_keeps_the_best_checkpoints(tmp_path, capsys):
    directory = tmp_path / "demo"
    assert cli.main(["demo", "--directory", str(directory), "--epochs", "4", "--top-k", "2"]) == 0
    output = capsys.readouterr().out
    records = keras_ckpt.list_checkpoints(directory)
    assert len(records) == 2
    best = keras_ckpt.best_checkpoint(directory)
    assert f"Best model: {best.path}" in output
    for record in records:
        assert record.filename in output


@pytest.mark.slow
def test_module_entry_point_uses_runs_demo_by_default(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "keras_ckpt", "demo", "--epochs", "3"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "kept the 3 best checkpoints in runs/demo" in result.stdout
    assert os.path.exists(tmp_path / "runs" / "demo" / "best.keras")


@pytest.mark.parametrize("argv", [["demo", "--epochs", "0"], ["demo", "--top-k", "-1"], []])
def test_bad_command_lines(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("keras-ckpt") and ": error: " in err and "--help'" in err
    assert err.count("\n") == 1  # one line, as every other error


# The inspection commands, driven as a user would, on directories real training wrote ---------


# The checkout whose keras_ckpt these tests imported: the command runs that code, not whichever
# copy happens to be installed.
SOURCE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(keras_ckpt.__file__)))


def command_environment():
    path = os.pathsep.join(p for p in (SOURCE_ROOT, os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path}


def keras_ckpt_command(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "keras_ckpt", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
        env=command_environment(),
    )


def train_into(root, epochs, keep_last):
    """Trains a tiny model for ``epochs`` with validation data, into ``root/run`` (BestCheckpoint
    top 2 and IntervalCheckpoint last ``keep_last``, whole models) and ``root/resume``
    (ResumeFromLatest weights); ``root`` is a local path or a URL. Returns the training inputs."""
    import keras
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype("float32")
    y = x.sum(axis=1, keepdims=True)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8), keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    model.fit(
        x,
        y,
        validation_data=(x[:16], y[:16]),
        epochs=epochs,
        batch_size=16,
        verbose=0,
        callbacks=[
            keras_ckpt.BestCheckpoint(f"{root}/run", top_k=2),
            keras_ckpt.IntervalCheckpoint(f"{root}/run", keep_last=keep_last),
            keras_ckpt.ResumeFromLatest(f"{root}/resume"),
        ],
    )
    return x


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A directory with BestCheckpoint (top 2) and IntervalCheckpoint (last 3) whole models, and
    one with ResumeFromLatest weights, from 6 epochs of real training."""
    root = tmp_path_factory.mktemp("trained")
    return root, train_into(root, epochs=6, keep_last=3)


def test_ls_lists_every_checkpoint_with_best_and_latest_marked(trained):
    root, _ = trained
    records = keras_ckpt.list_checkpoints(root / "run")
    result = keras_ckpt_command("ls", root / "run")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[:6] == ["FILE", "EPOCH", "STEP", "SIZE", "AGE", "MARKS"]
    assert len(lines) == 1 + len(records)
    best = keras_ckpt.best_checkpoint(root / "run").filename
    latest = keras_ckpt.latest_checkpoint(root / "run").filename
    marks = {line.split()[0]: line.split()[6] for line in lines[1:]}
    assert "best" in marks[best].split(",") and "latest" in marks[latest].split(",")
    assert "val_loss=" in result.stdout


def test_ls_json_is_the_manifest_for_scripts(trained):
    root, _ = trained
    result = keras_ckpt_command("ls", root / "run", "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    records = keras_ckpt.list_checkpoints(root / "run")
    assert [row["path"] for row in rows] == [r.path for r in records]
    assert [row["epoch"] for row in rows] == [r.epoch for r in records]
    best = keras_ckpt.best_checkpoint(root / "run").filename
    assert [row["aliases"] for row in rows if row["file"] == best][0][0] == "best"


def test_show_prints_the_record_and_the_model_summary(trained):
    root, _ = trained
    best = keras_ckpt.best_checkpoint(root / "run")
    result = keras_ckpt_command("show", root / "run", "best")
    assert result.returncode == 0, result.stderr
    assert best.sha256 in result.stdout and best.filename in result.stdout
    assert "Total params" in result.stdout  # Keras's model summary
    resume = keras_ckpt_command("show", root / "resume")
    assert resume.returncode == 0, resume.stderr
    assert "finished after 6 epochs" in resume.stdout


def test_show_an_unknown_checkpoint_is_a_readable_error(trained):
    root, _ = trained
    result = keras_ckpt_command("show", root / "run", "99")
    assert result.returncode == 2
    assert "no checkpoint of epoch 99" in result.stderr
    assert "Traceback" not in result.stderr


def test_verify_passes_then_names_a_corrupted_file(trained, tmp_path):
    root, _ = trained
    ok = keras_ckpt_command("verify", root / "run")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert f"all {len(keras_ckpt.list_checkpoints(root / 'run'))} checkpoints verified" in ok.stdout
    copy = tmp_path / "copy"
    shutil.copytree(root / "run", copy)
    victim = keras_ckpt.list_checkpoints(copy)[0]
    os.remove(victim.path)  # break the hard link to the original before changing bytes
    shutil.copyfile(root / "run" / victim.filename, victim.path)
    with open(victim.path, "r+b") as file:
        file.seek(victim.size // 2)
        file.write(b"\0garbage\0")
    bad = keras_ckpt_command("verify", copy)
    assert bad.returncode == 1
    assert f"BAD {victim.filename}" in bad.stdout and "1 bad" in bad.stdout


def test_prune_dry_run_deletes_nothing_and_prune_keeps_what_it_says(trained, tmp_path):
    root, _ = trained
    copy = tmp_path / "copy"
    shutil.copytree(root / "run", copy)
    before = sorted(os.listdir(copy))
    dry = keras_ckpt_command("prune", copy, "--keep-last", "1", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "would delete" in dry.stdout and "nothing deleted" in dry.stdout
    assert sorted(os.listdir(copy)) == before
    records = keras_ckpt.list_checkpoints(copy)
    best = keras_ckpt.best_checkpoint(copy).filename
    result = keras_ckpt_command("prune", copy, "--keep-last", "1")
    assert result.returncode == 0, result.stderr
    left = [r.filename for r in keras_ckpt.list_checkpoints(copy)]
    # The newest stays, and the best, which the best alias points at.
    assert left == [r.filename for r in records if r.filename in {records[-1].filename, best}]
    assert set(os.listdir(copy)) == {
        *left,
        "best.keras",
        "latest.keras",
        "keras_ckpt.json",
        ".keras_ckpt.lock",
    }
    assert keras_ckpt_command("verify", copy).returncode == 0


def test_prune_keep_best_by_a_metric(trained, tmp_path):
    root, _ = trained
    copy = tmp_path / "copy"
    shutil.copytree(root / "run", copy)
    records = keras_ckpt.list_checkpoints(copy)
    lowest = min(records, key=lambda r: r.metrics["loss"]).filename
    result = keras_ckpt_command("prune", copy, "--keep-best", "1", "--monitor", "loss")
    assert result.returncode == 0, result.stderr
    left = {r.filename for r in keras_ckpt.list_checkpoints(copy)}
    aliased = {
        keras_ckpt.best_checkpoint(copy).filename,
        keras_ckpt.latest_checkpoint(copy).filename,
    }
    assert left == {lowest} | aliased


def test_export_writes_a_model_that_predicts_like_the_best(trained, tmp_path):
    import keras
    import numpy as np

    root, x = trained
    result = keras_ckpt_command("export", root / "run", tmp_path / "out" / "model.keras")
    assert result.returncode == 0, result.stderr
    exported = keras.saving.load_model(tmp_path / "out" / "model.keras")
    best = keras_ckpt.load_best(root / "run")
    np.testing.assert_array_equal(exported.predict(x, verbose=0), best.predict(x, verbose=0))
    weights_only = keras_ckpt_command(
        "export", root / "resume", tmp_path / "w.keras", "--which", "latest"
    )
    assert weights_only.returncode == 2 and "holds weights only" in weights_only.stderr
    assert not os.path.exists(tmp_path / "w.keras")


def test_plot_writes_a_png_of_the_history(trained, tmp_path):
    from keras_ckpt.plots import history_of
    from keras_ckpt.store import read_committed

    root, _ = trained
    for directory in ("run", "resume"):
        output = tmp_path / f"{directory}.png"
        result = keras_ckpt_command("plot", root / directory, "-o", output)
        assert result.returncode == 0, result.stderr
        with open(output, "rb") as file:
            assert file.read(8) == b"\x89PNG\r\n\x1a\n"
    # The resume checkpoint carries the whole History: every epoch, not only the kept ones.
    history = history_of(read_committed(str(root / "resume")))
    assert [epoch for epoch, _ in history["val_loss"]] == [1, 2, 3, 4, 5, 6]
    unknown = keras_ckpt_command("plot", root / "run", "-o", tmp_path / "x.png", "--metric", "acc")
    assert unknown.returncode == 2 and "no history of ['acc']" in unknown.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["ls", "{missing}"], "no directory at"),
        (["verify", "{empty}"], "holds no keras_ckpt.json"),
        (["prune", "{empty}"], "holds no keras_ckpt.json"),
    ],
)
def test_readable_errors_for_wrong_directories(tmp_path, args, message):
    (tmp_path / "empty").mkdir()
    args = [a.format(missing=tmp_path / "missing", empty=tmp_path / "empty") for a in args]
    result = keras_ckpt_command(*args)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_prune_needs_something_to_keep(trained):
    root, _ = trained
    result = keras_ckpt_command("prune", root / "run")
    assert result.returncode == 2 and "--keep-last N and/or --keep-best K" in result.stderr


@pytest.mark.parametrize(
    "command", ["ls", "show", "verify", "prune", "export", "average", "plot", "demo"]
)
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "--help"])
    assert exit_info.value.code == 0
    assert f"usage: keras-ckpt {command}" in capsys.readouterr().out


# Damaged and hostile directories: one line on stderr, exit status 2, nothing changed ------------

READ_COMMANDS = {
    "ls": ["ls", "{dir}"],
    "ls --json": ["ls", "{dir}", "--json"],
    "show": ["show", "{dir}"],
    "verify": ["verify", "{dir}"],
    "export": ["export", "{dir}", "{root}/exported.keras"],
    "average": ["average", "{dir}", "{root}/average.keras", "--latest", "2"],
    "prune": ["prune", "{dir}", "--keep-last", "1"],
    "plot": ["plot", "{dir}", "-o", "{root}/plot.png"],
}


def write_hand_made_directory(directory, change=None):
    """Three checkpoints (bytes that are no model, with their true sizes and checksums), a best
    alias and a manifest, all written by hand; ``change(manifest, directory)`` may damage the
    manifest and the files and returns what to write as the manifest (None: write nothing)."""
    directory.mkdir()
    records = []
    for epoch in (1, 2, 3):
        name, data = f"epoch{epoch:03d}.keras", f"checkpoint {epoch}".encode()
        (directory / name).write_bytes(data)
        records.append(
            {
                "file": name,
                "epoch": epoch,
                "batch": None,
                "step": 2 * epoch,
                "metrics": {"loss": 1.0 / epoch},
                "time": 1.7e9 + epoch,
                "size": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
                "keras_version": "3.15.1",
                "kind": "model",
                "run": "run-1",
                "kept_by": ["best"],
                "state": None,
            }
        )
    os.link(directory / "epoch003.keras", directory / "best.keras")
    manifest = {
        "format": "keras_ckpt.manifest",
        "version": 1,
        "checkpoints": records,
        "aliases": {"best": "epoch003.keras"},
        "pending": None,
        "trash": [],
    }
    if change is not None:
        manifest = change(manifest, directory)
    if isinstance(manifest, dict):
        manifest = json.dumps(manifest)
    if isinstance(manifest, str):
        manifest = manifest.encode()
    if manifest is not None:
        (directory / "keras_ckpt.json").write_bytes(manifest)


def snapshot(root):
    """Every name under ``root`` with what it is: the bytes of a file, the target of a link."""
    state = {}
    for folder, folders, files in os.walk(root):
        for name in folders + files:
            path = os.path.join(folder, name)
            if os.path.islink(path):
                state[os.path.relpath(path, root)] = ("link", os.readlink(path))
            elif os.path.isdir(path):
                state[os.path.relpath(path, root)] = ("folder",)
            elif not os.path.isfile(path):  # a pipe: reading it would wait for a writer
                state[os.path.relpath(path, root)] = ("special", os.stat(path).st_mode)
            else:
                with open(path, "rb") as file:
                    state[os.path.relpath(path, root)] = ("file", file.read())
    return state


def record(index, **fields):
    """A change that sets (or, for the value DROP, removes) fields of checkpoint ``index``."""

    def change(manifest, directory):
        for key, value in fields.items():
            if value is DROP:
                del manifest["checkpoints"][index][key]
            else:
                manifest["checkpoints"][index][key] = value
        return manifest

    return change


DROP = object()


def replace_file(name, make):
    def change(manifest, directory):
        os.remove(directory / name)
        make(directory / name)
        return manifest

    return change


def with_outside_victim(manifest, directory, **entries):
    (directory.parent / "victim.keras").write_bytes(b"not yours to delete")
    return {**manifest, **entries}


DAMAGED = {
    "a JSON list": lambda m, d: json.dumps([m]),
    "a JSON string": lambda m, d: json.dumps("keras_ckpt.manifest"),
    "another format": lambda m, d: {**m, "format": "something.else"},
    "no checkpoints": lambda m, d: {k: v for k, v in m.items() if k != "checkpoints"},
    "checkpoints null": lambda m, d: {**m, "checkpoints": None},
    "a record a string": lambda m, d: {**m, "checkpoints": ["epoch001.keras"]},
    "a record without sha256": record(0, sha256=DROP),
    "a record without epoch": record(1, epoch=DROP),
    "a file that is a number": record(0, file=5),
    "a file outside": record(0, file="../victim.keras"),
    "an absolute file": record(0, file="/etc/hostname"),
    "a file with a control character": record(0, file="epoch\x1b[2J.keras"),
    "a file listed twice": record(0, file="epoch002.keras"),
    "a size out of range": record(0, size=10**400),
    "a size that is text": record(0, size="big"),
    "an epoch that is true": record(0, epoch=True),
    "a time that is text": record(0, time="yesterday"),
    "metrics a list": record(0, metrics=[1.0]),
    "a metric that is text": record(0, metrics={"loss": "low"}),
    "kept_by a string": record(0, kept_by="best"),
    "state a list": record(0, state=[1]),
    "aliases a list": lambda m, d: {**m, "aliases": [["best", "epoch003.keras"]]},
    "an alias to a number": lambda m, d: {**m, "aliases": {"best": 3}},
    "an alias outside": lambda m, d: with_outside_victim(m, d, aliases={"../victim": "x.keras"}),
    "trash a string": lambda m, d: {**m, "trash": "epoch001.keras"},
    "trash null": lambda m, d: {**m, "trash": None},
    "trash outside": lambda m, d: with_outside_victim(m, d, trash=["../victim.keras"]),
    "trash the manifest": lambda m, d: {**m, "trash": ["keras_ckpt.json"]},
    "pending a list": lambda m, d: {**m, "pending": []},
    "pending outside": lambda m, d: {**m, "pending": {"temp": "../x", "record": {}}},
    "a record that is a directory": replace_file("epoch002.keras", os.mkdir),
    "a record that is a link": replace_file(
        "epoch001.keras", lambda path: os.symlink("/etc/hostname", path)
    ),
    "a record that is a pipe": replace_file("epoch001.keras", os.mkfifo),
    "an alias file that is a directory": replace_file("best.keras", os.mkdir),
    "the manifest a directory": lambda m, d: os.mkdir(d / "keras_ckpt.json"),
    "the manifest a link": lambda m, d: os.symlink("/dev/zero", d / "keras_ckpt.json"),
    "not UTF-8": lambda m, d: (
        json.dumps(m).replace("epoch001", "epoch\udc80").encode("utf-8", "surrogateescape")
    ),
    "not JSON": lambda m, d: json.dumps(m)[:-10],
    "deeply nested": lambda m, d: "[" * 100_000 + "]" * 100_000,
    "a number too long": lambda m, d: json.dumps(m).replace(
        '"epoch": 1,', '"epoch": 1' + "0" * 5000 + ","
    ),
    "an infinite size": lambda m, d: json.dumps(m).replace('"size": 12,', '"size": Infinity,', 1),
}


def run_in_process(capsys, argv):
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_error_line(command, code, out, err, expected_code=2):
    assert code == expected_code, out + err
    assert "Traceback" not in out + err
    assert err.startswith(f"keras-ckpt {command.split()[0]}: error: "), err
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert err.isprintable() or err[:-1].isprintable(), err  # no escape reaches the terminal


@pytest.mark.parametrize("command", READ_COMMANDS)
@pytest.mark.parametrize("damage", DAMAGED)
def test_a_damaged_directory_is_one_error_line_and_stays_as_it_was(
    tmp_path, capsys, damage, command
):
    directory = tmp_path / "run"
    write_hand_made_directory(directory, DAMAGED[damage])
    before = snapshot(tmp_path)
    argv = [a.format(dir=directory, root=tmp_path) for a in READ_COMMANDS[command]]
    code, out, err = run_in_process(capsys, argv)
    assert_one_error_line(command, code, out, err)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize(
    "damage", ["a JSON list", "a record that is a directory", "trash outside", "not UTF-8"]
)
def test_no_traceback_reaches_the_terminal(tmp_path, damage):
    directory = tmp_path / "run"
    write_hand_made_directory(directory, DAMAGED[damage])
    before = snapshot(tmp_path)
    for command, args in READ_COMMANDS.items():
        result = keras_ckpt_command(*[a.format(dir=directory, root=tmp_path) for a in args])
        assert_one_error_line(command, result.returncode, result.stdout, result.stderr)
    assert snapshot(tmp_path) == before


def test_the_hand_made_directory_itself_is_fine(tmp_path, capsys):
    """The damaged directories above differ from this one by the damage alone."""
    directory = tmp_path / "run"
    write_hand_made_directory(directory)
    for command in ("ls", "ls --json", "export"):
        argv = [a.format(dir=directory, root=tmp_path) for a in READ_COMMANDS[command]]
        assert run_in_process(capsys, argv)[0] == 0
    code, out, _ = run_in_process(capsys, ["verify", str(directory)])
    assert code == 1 and "does not open" in out  # its bytes are no model, but they are intact


@pytest.mark.parametrize("which", ["epoch001.keras", "epoch003.keras"])
def test_a_checkpoint_deleted_by_hand(tmp_path, capsys, which):
    directory = tmp_path / "run"
    write_hand_made_directory(directory)
    os.remove(directory / which)
    before = snapshot(tmp_path)
    code, out, err = run_in_process(capsys, ["prune", str(directory), "--keep-last", "1"])
    assert_one_error_line("prune", code, out, err)
    assert f"{which} is missing" in err and "Nothing deleted" in err
    assert snapshot(tmp_path) == before
    code, out, err = run_in_process(capsys, ["verify", str(directory)])
    assert code == 1 and f"BAD {which}" in out and not err
    assert run_in_process(capsys, ["ls", str(directory)])[0] == 0
    code, out, err = run_in_process(capsys, ["export", str(directory), str(tmp_path / "x.keras")])
    if which == "epoch003.keras":  # the best
        assert_one_error_line("export", code, out, err)
        assert "is missing" in err and not os.path.exists(tmp_path / "x.keras")
    else:
        assert code == 0


def test_prune_refuses_when_a_checkpoint_it_keeps_is_corrupted(tmp_path, capsys):
    directory = tmp_path / "run"
    write_hand_made_directory(directory)
    os.remove(directory / "best.keras")  # the alias shares the bytes; change only the checkpoint
    (directory / "epoch003.keras").write_bytes(b"checkpoint X")  # same size, other bytes
    before = snapshot(tmp_path)
    code, out, err = run_in_process(capsys, ["prune", str(directory), "--keep-last", "1"])
    assert_one_error_line("prune", code, out, err)
    assert "epoch003.keras does not match" in err
    assert snapshot(tmp_path) == before


def test_prune_deletes_records_no_callback_keeps(tmp_path, capsys):
    directory = tmp_path / "run"
    write_hand_made_directory(directory, record(0, kept_by=[]))
    code, out, _ = run_in_process(capsys, ["prune", str(directory), "--keep-last", "1"])
    assert code == 0 and "deleted 2" in out
    assert [r.filename for r in keras_ckpt.list_checkpoints(directory)] == ["epoch003.keras"]


def test_an_unreadable_manifest(tmp_path, capsys, monkeypatch):
    directory = tmp_path / "run"
    write_hand_made_directory(directory)

    def refuse(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    # Root reads a chmod 000 file, so the refusal is the store's opening of the manifest.
    monkeypatch.setattr(keras_ckpt.store, "open_regular", refuse)
    code, out, err = run_in_process(capsys, ["ls", str(directory)])
    assert_one_error_line("ls", code, out, err)
    assert "cannot read" in err and "Permission denied" in err


@pytest.mark.parametrize(
    "which, message",
    [
        ("99", "no checkpoint of epoch 99"),
        ("9" * 5000, "no checkpoint of epoch 99999"),
        ("\u00b2", "no checkpoint '\u00b2'"),  # a digit to str.isdigit, not to int()
        ("", "no checkpoint ''"),
        ("../keras_ckpt.json", "no checkpoint '../keras_ckpt.json'"),
        ("\x1b[2J", r"no checkpoint '\x1b[2J'"),
    ],
)
@pytest.mark.parametrize("command", ["show", "export"])
def test_odd_checkpoint_names(tmp_path, capsys, command, which, message):
    directory = tmp_path / "run"
    write_hand_made_directory(directory)
    argv = [command, str(directory), which]
    if command == "export":
        argv = [command, str(directory), str(tmp_path / "x.keras"), "--which", which]
    before = snapshot(tmp_path)
    code, out, err = run_in_process(capsys, argv)
    assert_one_error_line(command, code, out, err)
    assert message in err
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize(
    "state",
    [
        {"history": {"history": {"loss": 5}, "epoch": [0]}},
        {"history": {"history": {"loss": [1.0]}, "epoch": ["first"]}},
        {"history": ["loss"]},
    ],
)
def test_plot_of_a_damaged_history(tmp_path, capsys, state):
    """Only plot reads the History a resume checkpoint keeps; the other commands need not."""
    directory = tmp_path / "run"
    write_hand_made_directory(directory, record(2, state=state))
    before = snapshot(tmp_path)
    argv = ["plot", str(directory), "-o", str(tmp_path / "plot.png")]
    code, out, err = run_in_process(capsys, argv)
    assert_one_error_line("plot", code, out, err)
    assert "cannot read the history kept in" in err
    assert snapshot(tmp_path) == before
    assert run_in_process(capsys, ["ls", str(directory)])[0] == 0


def test_export_targets(tmp_path, capsys):
    directory = tmp_path / "run"
    write_hand_made_directory(directory)
    (tmp_path / "folder.keras").mkdir()
    (tmp_path / "a-file").write_bytes(b"")
    before = snapshot(tmp_path)
    for output, message in [
        (tmp_path / "folder.keras", "is a directory"),
        (directory / "epoch001.keras", "is a file of the checkpoint directory"),
        (directory / "best.keras", "is a file of the checkpoint directory"),
        (tmp_path / "a-file" / "x.keras", "cannot write"),
        (tmp_path / "x.h5", "must end in .keras"),
    ]:
        code, out, err = run_in_process(capsys, ["export", str(directory), str(output)])
        assert_one_error_line("export", code, out, err)
        assert message in err
    assert snapshot(tmp_path) == before
    # Missing folders on the way are created, as model.save does.
    code, out, err = run_in_process(
        capsys, ["export", str(directory), str(tmp_path / "new" / "deeper" / "x.keras")]
    )
    assert code == 0, err
    assert (tmp_path / "new" / "deeper" / "x.keras").read_bytes() == b"checkpoint 3"


def test_plot_targets(tmp_path, capsys):
    directory = tmp_path / "run"
    write_hand_made_directory(directory)
    (tmp_path / "folder.png").mkdir()
    before = snapshot(tmp_path)
    for output, message in [
        (tmp_path / "folder.png", "is a directory"),
        (tmp_path / "missing" / "x.png", "cannot write"),
    ]:
        code, out, err = run_in_process(capsys, ["plot", str(directory), "-o", str(output)])
        assert_one_error_line("plot", code, out, err)
        assert message in err
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize(
    "raised, code, message",
    [
        (ZeroDivisionError("division by zero"), 2, "error: unexpected ZeroDivisionError"),
        (KeyError("x\ny"), 2, "error: unexpected KeyError"),
        (KeyboardInterrupt(), 130, "interrupted"),
    ],
)
def test_the_last_line_of_defence(tmp_path, capsys, monkeypatch, raised, code, message):
    def broken(args):
        raise raised

    monkeypatch.setattr(cli, "_ls", broken)
    result = run_in_process(capsys, ["ls", str(tmp_path)])
    assert result[0] == code
    assert message in result[2] and result[2].count("\n") == 1 and "Traceback" not in result[2]


def test_a_reader_that_stops_early_gets_no_complaint(tmp_path):
    """`keras-ckpt ls DIR | head -1`: the command stops quietly when the pipe closes."""
    directory = tmp_path / "run"

    def many(manifest, directory):
        first = manifest["checkpoints"][0]
        extra = [{**first, "file": f"copy{i:05d}.keras"} for i in range(5000)]
        return {**manifest, "checkpoints": manifest["checkpoints"] + extra}

    write_hand_made_directory(directory, many)  # far more than a pipe holds
    process = subprocess.Popen(
        [sys.executable, "-m", "keras_ckpt", "ls", str(directory)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=command_environment(),
    )
    assert process.stdout.readline().startswith(b"FILE")
    process.stdout.close()
    err = process.stderr.read()
    assert process.wait(timeout=300) == 1
    assert err == b""


def test_prune_is_refused_while_another_process_writes_into_the_directory(tmp_path, capsys):
    directory = tmp_path / "run"
    write_hand_made_directory(directory)
    with another_process_writing(directory) as pid:
        before = snapshot(tmp_path)
        code, out, err = run_in_process(capsys, ["prune", str(directory), "--keep-last", "1"])
        assert_one_error_line("prune", code, out, err)
        assert "nothing deleted" in err and f"pid {pid}" in err and not out
        assert snapshot(tmp_path) == before
    code, out, _ = run_in_process(capsys, ["prune", str(directory), "--keep-last", "1"])
    assert code == 0 and "deleted 2" in out  # the lock went with its holder: epoch 3 stays
