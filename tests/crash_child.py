"""Trains into a checkpoint directory and is killed with SIGKILL: run by test_crash.py.

Usage: python crash_child.py DIRECTORY KILL_POINT
  KILL_POINT  N > 0: SIGKILL right after the N-th manifest replacement of the run, which walks
                     through every step of a commit, an alias update and a deletion;
              N < 0: SIGKILL while the |N|-th checkpoint file is written (before it is hashed);
              0:     no self-kill (the parent kills at a random moment).
"""

import os
import signal
import sys
import threading

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_ckpt  # noqa: E402
from keras_ckpt import store  # noqa: E402

directory, kill_point = sys.argv[1], int(sys.argv[2])
calls = {"manifest": 0, "file": 0}


def die(counter):
    # Saves are written by the background writer: the kill lands in the middle of one.
    print(f"killed during {counter} on {threading.current_thread().name}", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


def die_after(counter, limit, function):
    def wrapped(*args, **kwargs):
        calls[counter] += 1
        if counter == "file" and calls[counter] == limit:
            die(counter)
        result = function(*args, **kwargs)
        if counter == "manifest" and calls[counter] == limit:
            die(counter)
        return result

    return wrapped


if kill_point > 0:
    store.CheckpointStore._write_manifest = die_after(
        "manifest", kill_point, store.CheckpointStore._write_manifest
    )
elif kill_point < 0:
    store._fsync_and_hash = die_after("file", -kill_point, store._fsync_and_hash)


class NoisyValidation(keras.callbacks.Callback):
    """Scripted val_loss that improves with noise, so the top-k set churns."""

    def on_epoch_end(self, epoch, logs=None):
        logs["val_loss"] = 1.0 / (epoch + 1) + 0.3 * np.random.default_rng(epoch).random()


keras.utils.set_random_seed(0)
x = np.random.default_rng(0).normal(size=(64, 4)).astype("float32")
y = x.sum(axis=1, keepdims=True)
model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8), keras.layers.Dense(1)])
model.compile(optimizer="adam", loss="mse")
print("training", flush=True)
model.fit(
    x,
    y,
    epochs=200,
    batch_size=16,
    verbose=0,
    callbacks=[
        NoisyValidation(),
        keras_ckpt.BestCheckpoint(directory, top_k=2),
        keras_ckpt.ModelCheckpoint(os.path.join(directory, "latest.keras")),
    ],
)
