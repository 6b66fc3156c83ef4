"""Checkpoints under a distribution engine: run by test_distribution.py in a fresh process.

Usage: python distribution_child.py ENGINE DIRECTORY
  ENGINE  "mirrored": TensorFlow MirroredStrategy over 2 logical CPUs;
          "jax-data-parallel": keras.distribution.DataParallel over 2 JAX CPU devices.
Prints "replicas=<n>", then "exact max_diff=<float>" (interrupted and resumed under the engine,
against an uninterrupted run under it) and "cross max_diff=<float>" (interrupted on one device,
resumed under the engine, against an uninterrupted single-device run; no Dropout). Leaves the best
checkpoint's weights as loaded under the engine in DIRECTORY/best_weights.npz. Last, for
"single" and "engine", "behaviour <where>=<JSON>": what BestCheckpoint, IntervalCheckpoint, a
per-step WarmupCosine and EarlyStopping did in the same run on one device and under the engine.
"""

import json
import os
import shutil
import sys

engine, directory = sys.argv[1], sys.argv[2]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if engine == "mirrored":
    os.environ["KERAS_BACKEND"] = "tensorflow"
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    replicas = strategy.num_replicas_in_sync

    def distributed():
        return strategy.scope()
else:
    os.environ["KERAS_BACKEND"] = "jax"
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    import contextlib

    import jax
    import keras

    replicas = len(jax.devices())

    @contextlib.contextmanager
    def distributed():
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=jax.devices()))
        try:
            yield
        finally:
            keras.distribution.set_distribution(None)


import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_ckpt  # noqa: E402
from keras_ckpt.schedules import WarmupCosine  # noqa: E402

x = np.random.default_rng(0).normal(size=(128, 4)).astype("float32")
y = x.sum(axis=1, keepdims=True)


def make_model(dropout=0.2):
    # Dropout draws per replica under an engine, so only the exact check (same engine) has it.
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(8),
            keras.layers.Dropout(dropout),
            keras.layers.Dense(1),
        ]
    )
    model.compile(optimizer="adam", loss="mse")
    return model


class Crash(keras.callbacks.Callback):
    """Raises before the 11th batch: mid-epoch (4 batches an epoch), two batches after a save."""

    def __init__(self):
        super().__init__()
        self.batches = 0

    def on_train_batch_begin(self, batch, logs=None):
        self.batches += 1
        if self.batches == 11:
            raise RuntimeError("simulated crash")


def fit(model, run=None, crash=False):
    callbacks = []
    if run is not None:
        callbacks = [
            keras_ckpt.ResumeFromLatest(os.path.join(directory, run), save_freq=3),
            keras_ckpt.BestCheckpoint(os.path.join(directory, run + "-best")),
        ]
    if crash:
        callbacks.append(Crash())
    try:
        model.fit(
            x, y, batch_size=32, epochs=4, verbose=0, validation_data=(x, y), callbacks=callbacks
        )
    except RuntimeError:
        assert crash
    return model


def max_diff(a, b):
    return max(
        float(np.abs(p - q).max()) for p, q in zip(a.get_weights(), b.get_weights(), strict=True)
    )


shutil.rmtree(directory, ignore_errors=True)
print(f"replicas={replicas}", flush=True)
with distributed():
    reference = fit(make_model())
    fit(make_model(), "exact", crash=True)
    resumed = fit(make_model(), "exact")
    print(f"exact max_diff={max_diff(resumed, reference)}", flush=True)
    best = keras_ckpt.load_best(os.path.join(directory, "exact-best"))
    np.savez(os.path.join(directory, "best_weights.npz"), *best.get_weights())

single = fit(make_model(dropout=0.0))
fit(make_model(dropout=0.0), "cross", crash=True)  # one device
with distributed():
    resumed = fit(make_model(dropout=0.0), "cross")  # goes on under the engine
print(f"cross max_diff={max_diff(resumed, single)}", flush=True)


def behaviour(where):
    """One run with the task callbacks; the rate reaches 0 after epoch 3, so EarlyStopping
    (patience 1) stops after epoch 4, which cannot improve."""
    run = os.path.join(directory, "behaviour-" + where)
    model = make_model(dropout=0.0)
    history = model.fit(
        x,
        y,
        batch_size=32,
        epochs=8,
        verbose=0,
        validation_data=(x, y),
        callbacks=[
            keras_ckpt.BestCheckpoint(os.path.join(run, "best"), top_k=2),
            keras_ckpt.IntervalCheckpoint(
                os.path.join(run, "interval"), every_steps=3, keep_last=2
            ),
            keras_ckpt.LearningRateScheduler(WarmupCosine(0.05, 12, warmup_steps=2), per="step"),
            keras_ckpt.EarlyStopping(patience=1),
        ],
    )
    report = {
        "epochs": history.epoch,
        "learning_rate": history.history["learning_rate"],
        "val_loss": history.history["val_loss"],
        "best": [r.epoch for r in keras_ckpt.list_checkpoints(os.path.join(run, "best"))],
        "interval": [r.step for r in keras_ckpt.list_checkpoints(os.path.join(run, "interval"))],
        "weights": [w.tolist() for w in model.get_weights()],
    }
    print(f"behaviour {where}={json.dumps(report)}", flush=True)


behaviour("single")
with distributed():
    behaviour("engine")
