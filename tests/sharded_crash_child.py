"""Trains sharded checkpoints and is killed with SIGKILL mid-save: run by test_sharded.py.

Usage: python sharded_crash_child.py DIRECTORY KILL_POINT
  hash:N    SIGKILL as the N-th file of the run is about to be fsynced and hashed: the save in
            flight has some shards written and others not yet checked, nothing renamed.
  rename:N  SIGKILL in the N-th commit, after the manifest marked it pending and two of its
            shards were renamed into place (the others still in the temporary folder).
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

directory, kill_point = sys.argv[1], sys.argv[2]
kind, limit = kill_point.split(":")
calls = {"hash": 0, "rename": 0}


def die(what):
    print(f"killed during {what} on {threading.current_thread().name}", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


original_hash, original_move = store._fsync_and_hash, store._move_out


def hash_or_die(path):
    calls["hash"] += 1
    if kind == "hash" and calls["hash"] == int(limit):
        die("hash")
    return original_hash(path)


def move_or_die(folder, target, record):
    calls["rename"] += 1
    if kind == "rename" and calls["rename"] == int(limit):
        for name in record.filenames[1:3]:  # what a kill between two renames leaves
            os.replace(os.path.join(folder, name), os.path.join(target, name))
        die("rename")
    return original_move(folder, target, record)


store._fsync_and_hash, store._move_out = hash_or_die, move_or_die

keras.utils.set_random_seed(0)
x = np.random.default_rng(0).normal(size=(64, 4)).astype("float32")
y = x.sum(axis=1, keepdims=True)
model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8), keras.layers.Dense(1)])
model.compile(optimizer="adam", loss="mse")
print("training", flush=True)
model.fit(
    x,
    y,
    epochs=20,
    batch_size=16,
    verbose=0,
    callbacks=[
        keras_ckpt.IntervalCheckpoint(
            directory, keep_last=2, save_weights_only=True, max_shard_size=2e-7
        )
    ],
)
print("not killed", flush=True)
