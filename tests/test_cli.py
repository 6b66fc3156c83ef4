"""The `keras-ckpt` command line."""

import os
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
    assert "usage: keras-ckpt" in capsys.readouterr().err
