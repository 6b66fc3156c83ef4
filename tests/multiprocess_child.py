"""One of two JAX processes training together on 127.0.0.1: run by test_multiprocess.py.

Usage: python multiprocess_child.py PROCESS_ID PORT DIRECTORY MODE
  MODE  "train": 4 epochs with ResumeFromLatest(save_freq=3), BestCheckpoint and a
        ModelCheckpoint sharing its directory, an IntervalCheckpoint(every_seconds) whose clock
        says "due" at every check in process 1 and never in process 0, and a per-step
        WarmupCosine LearningRateScheduler;
        "kill0" / "kill1": the same, process 0 / 1 SIGKILLs itself before batch 11 (mid-epoch 3);
        "twice": fit(epochs=2), then fit(epochs=4) continues it; process 0 commits slowly;
        "signal": the same, and process 1 sends itself SIGTERM before batch 6;
        "stop": the same with EarlyStopping(patience=1) that no epoch after the first improves;
        "unshared": "train", but process 1 uses DIRECTORY-elsewhere (no shared file system);
        "load": "train", then process 0 alone loads the best and the latest whole models and
        the last resume checkpoint's weights into a model built outside the distribution;
        "load_alone": "train", then process 0 alone calls load_best, load_latest and
        load_checkpoint with the trained model, which spans both processes (a 2 s barrier);
        "load_together": "train" with EarlyStopping(restore_best_weights=<best directory>),
        then both processes load the same three checkpoints into the trained model.
Prints one line "report=<JSON>": commits per callback, calls that changed something under
DIRECTORY, epochs trained, the checkpoint resumed from, the sum of the weights' magnitudes,
History's checkpoint events and learning rates, (modes "load*") what was loaded or the errors
raised instead, what each wait for every process returned, and whether both processes still
agree afterwards.
"""

import builtins
import collections
import json
import os
import signal
import sys
import time

os.environ["KERAS_BACKEND"] = "jax"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
process_id, port, directory, mode = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
if mode == "unshared" and process_id == 1:
    directory += "-elsewhere"

import jax  # noqa: E402

jax.config.update("jax_cpu_collectives_implementation", "gloo")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_ckpt  # noqa: E402
from keras_ckpt import loading, processes, store  # noqa: E402
from keras_ckpt.schedules import WarmupCosine  # noqa: E402

keras.distribution.initialize(
    job_addresses=f"127.0.0.1:{port}", num_processes=2, process_id=process_id
)
distribution = keras.distribution.DataParallel(devices=jax.devices(), auto_shard_dataset=False)
keras.distribution.set_distribution(distribution)

commits = collections.Counter()
original_commit = store.CheckpointStore.commit


def counting_commit(self, *args, **kwargs):
    commits[kwargs["keeper"].split("[")[0]] += 1
    if mode == "twice":
        time.sleep(0.3)  # on the background writer: process 1 is ahead of what is on disk
    return original_commit(self, *args, **kwargs)


store.CheckpointStore.commit = counting_commit

# What each wait for every process (before a load into the distributed model) returned.
meetings = []
original_wait = processes.wait_for_every_process


def recorded_wait(*args, **kwargs):
    meetings.append(original_wait(*args, **kwargs))
    return meetings[-1]


processes.wait_for_every_process = recorded_wait
loading.LOAD_BARRIER_SECONDS = 2.0 if mode == "load_alone" else 30.0

# Every call that could change something under DIRECTORY, counted.
changes = [0]
inside = os.path.abspath(directory)


original_open = builtins.open


def counting(function, *path_arguments):
    def counted(*args, **kwargs):
        paths = [os.path.abspath(os.fspath(args[i])) for i in path_arguments if i < len(args)]
        if function is original_open:
            opened = kwargs.get("mode", args[1] if len(args) > 1 else "r")
            if not any(letter in opened for letter in "wax+"):
                paths = []  # read only
        if any(path.startswith(inside) for path in paths):
            changes[0] += 1
        return function(*args, **kwargs)

    return counted


for name, arguments in [
    ("replace", (0, 1)),
    ("rename", (0, 1)),
    ("link", (0, 1)),
    ("remove", (0,)),
    ("unlink", (0,)),
    ("rmdir", (0,)),
    ("mkdir", (0,)),
    ("makedirs", (0,)),
]:
    setattr(os, name, counting(getattr(os, name), *arguments))
builtins.open = counting(original_open, 0)


class Interrupt(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.batches = 0

    def on_train_batch_begin(self, batch, logs=None):
        self.batches += 1
        if mode == f"kill{process_id}" and self.batches == 11:
            os.kill(os.getpid(), signal.SIGKILL)
        if mode == "signal" and process_id == 1 and self.batches == 6:
            os.kill(os.getpid(), signal.SIGTERM)


class SkewedClock:
    """Process 1's clock jumps an hour at every reading; process 0's stands still."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        self.now += 3600.0 if process_id == 1 else 0.0
        return self.now


x = np.random.default_rng(0).normal(size=(128, 4)).astype("float32")
y = x.sum(axis=1, keepdims=True)
keras.utils.set_random_seed(0)
model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8), keras.layers.Dense(1)])
model.compile(optimizer="adam", loss="mse")
resume = keras_ckpt.ResumeFromLatest(os.path.join(directory, "resume"), save_freq=3)
callbacks = [
    resume,
    keras_ckpt.BestCheckpoint(os.path.join(directory, "best"), monitor="loss", top_k=2),
    # Opens its store (the same directory) at its first save, with BestCheckpoint's in flight.
    keras_ckpt.ModelCheckpoint(
        os.path.join(directory, "best", "model.weights.h5"),
        monitor="loss",
        save_best_only=True,
        save_weights_only=True,
    ),
    keras_ckpt.IntervalCheckpoint(
        os.path.join(directory, "interval"),
        every_seconds=3600,
        keep_last=2,
        clock=SkewedClock(),
    ),
    keras_ckpt.LearningRateScheduler(
        WarmupCosine(0.05, total_steps=16, warmup_steps=4), per="step"
    ),
    Interrupt(),
]
if mode == "stop":
    callbacks.append(keras_ckpt.EarlyStopping(monitor="loss", min_delta=1e9, patience=1))
if mode == "load_together":  # restores the best weights on both processes at the end
    best_directory = os.path.join(directory, "best")
    callbacks.append(keras_ckpt.EarlyStopping(monitor="loss", restore_best_weights=best_directory))
if mode == "twice":
    model.fit(x, y, batch_size=32, epochs=2, verbose=0, callbacks=callbacks)
history = model.fit(x, y, batch_size=32, epochs=4, verbose=0, callbacks=callbacks)
logged = {
    key: [round(float(value), 9) for value in values]
    for key, values in history.history.items()
    if key.startswith("ckpt/") or key == "learning_rate"
}
loaded = {}
if mode == "load" and process_id == 0:
    # What a user writes after training: only process 0 loads. Building a model under the
    # distribution would be a collective process 1 never joins.
    models = {
        "best": keras_ckpt.load_best(os.path.join(directory, "best")),
        "latest": keras_ckpt.load_latest(os.path.join(directory, "interval")),
    }
    keras.distribution.set_distribution(None)  # a model of this process alone
    local = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8), keras.layers.Dense(1)])
    local.compile(optimizer="adam", loss="mse")
    keras.distribution.set_distribution(distribution)
    last = keras_ckpt.list_checkpoints(os.path.join(directory, "resume"))[-1]
    models["resume"] = keras_ckpt.load_checkpoint(last, local)
    loaded = {
        key: {
            "weights": [w.tolist() for w in loaded_model.get_weights()],
            "iterations": int(loaded_model.optimizer.iterations),
            "local": all(v.value.is_fully_addressable for v in loaded_model.variables),
        }
        for key, loaded_model in models.items()
    }
    assert keras.distribution.distribution() is distribution  # set again after each load


def into_trained_model():
    """The three loaders, each into the trained model (built under the distribution)."""
    last = keras_ckpt.list_checkpoints(os.path.join(directory, "resume"))[-1]
    return {
        "best": lambda: keras_ckpt.load_best(os.path.join(directory, "best"), model=model),
        "latest": lambda: keras_ckpt.load_latest(os.path.join(directory, "interval"), model),
        "resume": lambda: keras_ckpt.load_checkpoint(last, model),
    }


def described(loaded_model):
    return {
        "weights": [w.tolist() for w in loaded_model.get_weights()],
        "iterations": int(loaded_model.optimizer.iterations),
        "local": all(v.value.is_fully_addressable for v in loaded_model.variables),
    }


raised = {}
if mode == "load_together":
    loaded["restored"] = described(model)  # by EarlyStopping, on both processes
    for key, load in into_trained_model().items():
        assert load() is model
        loaded[key] = described(model)
if mode == "load_alone" and process_id == 0:
    # The mistake: process 0 alone loads into a model whose variables span both processes.
    # Process 1 goes on to the end of the script meanwhile.
    for key, load in into_trained_model().items():
        started = time.monotonic()
        try:
            load()
        except Exception as error:
            raised[key] = {
                "type": type(error).__name__,
                "runtime": isinstance(error, RuntimeError),
                "message": str(error),
                "seconds": time.monotonic() - started,
            }
# One collective after the loads: the two processes still work together.
(agreed,) = processes.any_process(process_id == 0)
report = {
    "agreed": agreed,
    "meetings": meetings,
    "raised": raised,
    "loaded": loaded,
    "commits": dict(commits),
    "changes": changes[0],
    "epochs": history.epoch,
    "resumed": None if resume.resumed_from is None else resume.resumed_from.filename,
    "weights": round(sum(float(np.abs(w).sum()) for w in model.get_weights()), 6),
    "logged": logged,
}
print("report=" + json.dumps(report, sort_keys=True), flush=True)
