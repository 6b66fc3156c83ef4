"""Checkpoints under distribution engines in one process (2 CPU devices), in subprocesses.

What is checked for each engine: an interrupted run resumes exactly under the engine; a
single-device checkpoint resumes under it (within float tolerance); the files it wrote load in
this plain single-device process.
"""

import json
import re

import keras
import numpy as np
import pytest
from conftest import assert_weights_equal, run_child_script

import keras_ckpt


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["mirrored", "jax-data-parallel"])
def test_checkpoints_under_a_distribution(tmp_path, engine):
    result = run_child_script("distribution_child.py", engine, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    values = dict(
        re.findall(r"^(replicas|exact max_diff|cross max_diff)=(\S+)$", result.stdout, re.M)
    )
    assert values["replicas"] == "2", result.stdout
    assert float(values["exact max_diff"]) == 0.0
    assert float(values["cross max_diff"]) < 1e-6
    # Written under the engine, read here on one device with plain Keras.
    best = keras.saving.load_model(tmp_path / "exact-best" / "best.keras")
    with np.load(tmp_path / "best_weights.npz") as saved:
        assert_weights_equal(best.get_weights(), [saved[f"arr_{i}"] for i in range(len(saved))])
    latest = keras_ckpt.list_checkpoints(tmp_path / "exact")[-1]
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(8), keras.layers.Dropout(0.2), keras.layers.Dense(1)]
    )
    model.compile(optimizer="adam", loss="mse")
    keras_ckpt.load_checkpoint(latest, model)
    assert int(model.optimizer.iterations) == 16  # 4 epochs of 4 batches

    # The task callbacks take the same decisions under the engine as on one device.
    behaviours = dict(re.findall(r"^behaviour (single|engine)=(.*)$", result.stdout, re.M))
    single, engine = (json.loads(behaviours[where]) for where in ("single", "engine"))
    assert engine["epochs"] == single["epochs"] == [0, 1, 2, 3]  # EarlyStopping after epoch 4
    assert engine["best"] == single["best"] and engine["interval"] == single["interval"]
    assert engine["learning_rate"] == pytest.approx(single["learning_rate"], rel=1e-6)
    assert engine["val_loss"] == pytest.approx(single["val_loss"], rel=1e-5)
    for a, b in zip(engine["weights"], single["weights"], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
