"""The package's public surface: what ``import keras_ckpt`` alone gives."""

import subprocess
import sys

import pytest

import keras_ckpt


def test_public_submodules_are_attributes_after_a_plain_import():
    # A fresh interpreter: in this one the test suite has imported the submodules already.
    code = (
        "import keras_ckpt\n"
        "print(keras_ckpt.schedules.WarmupCosine.__name__, keras_ckpt.policies.KeepBest.__name__,"
        " keras_ckpt.store.CheckpointStore.__name__, keras_ckpt.callbacks.BestCheckpoint.__name__)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == [
        "WarmupCosine",
        "KeepBest",
        "CheckpointStore",
        "BestCheckpoint",
    ]


def test_an_unknown_attribute_is_an_attribute_error():
    with pytest.raises(AttributeError, match="has no attribute 'schedule'"):
        keras_ckpt.schedule  # noqa: B018
