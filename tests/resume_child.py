"""A training script that test_resume.py runs, kills and reruns.

Usage: python resume_child.py DIRECTORY OUTPUT.npz MODE [N]
  MODE plain: train to the end and write the final weights to OUTPUT.npz
       kill:  SIGKILL itself before global batch N
       save-kill: SIGKILL itself right after the N-th manifest replacement (inside a save)
       upload-kill: (DIRECTORY a URL) SIGKILL itself right after the N-th step of the remote
                    protocol: uploads and manifest writes counted together (inside a save)
       term:  send itself SIGTERM before global batch N (fit must return cleanly)
The same command without a kill is the rerun.
"""

import os
import signal
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from resume_setup import make_resume_model, resume_data  # noqa: E402

import keras_ckpt  # noqa: E402
from keras_ckpt import store  # noqa: E402

directory, output, mode = sys.argv[1], sys.argv[2], sys.argv[3]
point = int(sys.argv[4]) if len(sys.argv) > 4 else 0
tf.config.experimental.enable_op_determinism()


class Interrupt(keras.callbacks.Callback):
    step = 0

    def on_train_batch_begin(self, batch, logs=None):
        if Interrupt.step == point:
            os.kill(os.getpid(), signal.SIGKILL if mode == "kill" else signal.SIGTERM)
        Interrupt.step += 1


if mode == "save-kill":
    original = store.CheckpointStore._write_manifest
    writes = []

    def write_then_die(self, manifest):
        original(self, manifest)
        writes.append(1)
        if len(writes) == point:
            os.kill(os.getpid(), signal.SIGKILL)

    store.CheckpointStore._write_manifest = write_then_die

if mode == "upload-kill":
    from keras_ckpt import remote

    steps = []

    def then_die(function):
        def step(*args, **kwargs):
            result = function(*args, **kwargs)
            steps.append(1)
            if len(steps) == point:
                os.kill(os.getpid(), signal.SIGKILL)
            return result

        return step

    remote._write_manifest = then_die(remote._write_manifest)
    remote.RemoteStore._upload = then_die(remote.RemoteStore._upload)

x, y = resume_data()
model = make_resume_model()
callbacks = [keras_ckpt.ResumeFromLatest(directory, save_freq=3)]
if mode in ("kill", "term"):
    callbacks.append(Interrupt())
model.fit(x, y, batch_size=16, epochs=6, shuffle=False, verbose=0, callbacks=callbacks)
np.savez(output, *model.get_weights())
print("fit returned", flush=True)
