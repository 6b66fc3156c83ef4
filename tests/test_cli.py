"""The `keras-ckpt` command line."""

import json
import os
import shutil
import subprocess
import sys

import pytest

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


def keras_ckpt_command(*args, cwd=None):
    path = os.pathsep.join(p for p in (SOURCE_ROOT, os.environ.get("PYTHONPATH")) if p)
    return subprocess.run(
        [sys.executable, "-m", "keras_ckpt", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": path},
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A directory with BestCheckpoint (top 2) and IntervalCheckpoint (last 3) whole models, and
    one with ResumeFromLatest weights, from 6 epochs of real training."""
    import keras
    import numpy as np

    root = tmp_path_factory.mktemp("trained")
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
        epochs=6,
        batch_size=16,
        verbose=0,
        callbacks=[
            keras_ckpt.BestCheckpoint(root / "run", top_k=2),
            keras_ckpt.IntervalCheckpoint(root / "run", keep_last=3),
            keras_ckpt.ResumeFromLatest(root / "resume"),
        ],
    )
    return root, x


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
    assert set(os.listdir(copy)) == {*left, "best.keras", "latest.keras", "keras_ckpt.json"}
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


@pytest.mark.parametrize("command", ["ls", "show", "verify", "prune", "export", "plot", "demo"])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "--help"])
    assert exit_info.value.code == 0
    assert f"usage: keras-ckpt {command}" in capsys.readouterr().out


def run_in_process(capsys, argv):
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


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
