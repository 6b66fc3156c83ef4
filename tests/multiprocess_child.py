"""One of two JAX processes training together on 127.0.0.1: run by test_multiprocess.py.

Usage: python multiprocess_child.py PROCESS_ID PORT DIRECTORY MODE
  MODE  "train": 4 epochs with ResumeFromLatest(save_freq=3) and BestCheckpoint;
        "crash": the same, raising before batch 11 (mid-epoch 3) in both processes;
        "signal": the same, and process 1 sends itself SIGTERM before batch 6.
Prints "commits=<n> epochs=<list> resumed=<file or None> weights=<sum>".
"""

import os
import signal
import sys

os.environ["KERAS_BACKEND"] = "jax"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
process_id, port, directory, mode = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]

import jax  # noqa: E402

jax.config.update("jax_cpu_collectives_implementation", "gloo")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_ckpt  # noqa: E402
from keras_ckpt import store  # noqa: E402

keras.distribution.initialize(
    job_addresses=f"127.0.0.1:{port}", num_processes=2, process_id=process_id
)
keras.distribution.set_distribution(
    keras.distribution.DataParallel(devices=jax.devices(), auto_shard_dataset=False)
)

commits = [0]
original_commit = store.CheckpointStore.commit


def counting_commit(self, *args, **kwargs):
    commits[0] += 1
    return original_commit(self, *args, **kwargs)


store.CheckpointStore.commit = counting_commit


class Interrupt(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.batches = 0

    def on_train_batch_begin(self, batch, logs=None):
        self.batches += 1
        if mode == "crash" and self.batches == 11:
            raise RuntimeError("simulated crash")
        if mode == "signal" and process_id == 1 and self.batches == 6:
            os.kill(os.getpid(), signal.SIGTERM)


x = np.random.default_rng(0).normal(size=(128, 4)).astype("float32")
y = x.sum(axis=1, keepdims=True)
keras.utils.set_random_seed(0)
model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8), keras.layers.Dense(1)])
model.compile(optimizer="adam", loss="mse")
resume = keras_ckpt.ResumeFromLatest(os.path.join(directory, "resume"), save_freq=3)
callbacks = [resume, keras_ckpt.BestCheckpoint(os.path.join(directory, "best"), monitor="loss")]
try:
    history = model.fit(
        x, y, batch_size=32, epochs=4, verbose=0, callbacks=[*callbacks, Interrupt()]
    )
    epochs = history.epoch
except RuntimeError:
    epochs = "crashed"
resumed = None if resume.resumed_from is None else resume.resumed_from.filename
weights = sum(float(np.abs(w).sum()) for w in model.get_weights())
print(f"commits={commits[0]} epochs={epochs} resumed={resumed} weights={weights:.6f}", flush=True)
