"""Exact resume on another Keras backend: run by test_resume.py in a fresh process.

Usage: python backend_child.py BACKEND DIRECTORY
Prints one line per case: "shuffle=<bool> epochs=<list> max_diff=<float>".
"""

import os
import shutil
import sys

os.environ["KERAS_BACKEND"] = sys.argv[1]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from resume_setup import make_resume_model, resume_data  # noqa: E402

import keras_ckpt  # noqa: E402

directory = sys.argv[2]
x, y = resume_data()
make_model = make_resume_model


class Crash(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.step = 0

    def on_train_batch_begin(self, batch, logs=None):
        if self.step == 13:  # mid-epoch, one batch after a save
            raise RuntimeError("simulated crash")
        self.step += 1


def fit(model, shuffle, callbacks):
    return model.fit(x, y, batch_size=16, epochs=5, shuffle=shuffle, verbose=0, callbacks=callbacks)


for shuffle in (False, True):
    reference = make_model()
    fit(reference, shuffle, [])
    shutil.rmtree(directory, ignore_errors=True)
    try:
        fit(make_model(), shuffle, [keras_ckpt.ResumeFromLatest(directory, save_freq=3), Crash()])
    except RuntimeError:
        pass
    model = make_model()
    history = fit(model, shuffle, [keras_ckpt.ResumeFromLatest(directory, save_freq=3)])
    difference = max(
        float(np.abs(a - b).max())
        for a, b in zip(model.get_weights(), reference.get_weights(), strict=True)
    )
    print(f"shuffle={shuffle} epochs={history.epoch} max_diff={difference}", flush=True)
