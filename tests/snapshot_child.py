"""A snapshot holds the moment it was taken, on another Keras backend: run by test_async.py.

Usage: python snapshot_child.py BACKEND DIRECTORY
Prints "max_diff=<float> same_bytes=<bool>", then "overlapping=<float> reused=<bool>
released=<bool>".
"""

import hashlib
import os
import sys

os.environ["KERAS_BACKEND"] = sys.argv[1]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from resume_setup import make_resume_model, resume_data  # noqa: E402

import keras_ckpt  # noqa: E402
from keras_ckpt.snapshot import _HostBuffers, release_host_buffers, take_snapshot  # noqa: E402

directory = sys.argv[2]
x, y = resume_data()
model = make_resume_model()
model.fit(x, y, batch_size=16, epochs=1, verbose=0)


def written_weights(snapshot, name):
    snapshot.write(os.path.join(directory, name))
    restored = make_resume_model()
    restored.load_weights(os.path.join(directory, name))
    return restored.get_weights()


def max_diff(weights, expected):
    return max(float(np.abs(a - b).max()) for a, b in zip(weights, expected, strict=True))


take_snapshot(model, "x.weights.h5", weights_only=True).discard()  # the walk; then copies only
before = [w.copy() for w in model.get_weights()]
snapshot = take_snapshot(model, "x.weights.h5", weights_only=True)
model.fit(x, y, batch_size=16, epochs=2, verbose=0)  # updates the variables in place on torch
difference = max_diff(written_weights(snapshot, "ours.weights.h5"), before)
model.save_weights(os.path.join(directory, "keras.weights.h5"))
take_snapshot(model, "x.weights.h5", weights_only=True).write(
    os.path.join(directory, "now.weights.h5")
)
digests = {
    hashlib.sha256(open(os.path.join(directory, name), "rb").read()).hexdigest()
    for name in ("keras.weights.h5", "now.weights.h5")
}
print(f"max_diff={difference} same_bytes={len(digests) == 1}", flush=True)

# Host buffers reused between saves: a snapshot taken while another is unwritten does not take
# its buffers, and a written snapshot's buffers serve the next one.
first_moment = [w.copy() for w in model.get_weights()]
first = take_snapshot(model, "x.weights.h5", weights_only=True)
model.fit(x, y, batch_size=16, epochs=1, verbose=0)
second_moment = [w.copy() for w in model.get_weights()]
second = take_snapshot(model, "x.weights.h5", weights_only=True)
model.fit(x, y, batch_size=16, epochs=1, verbose=0)
overlapping = max(
    max_diff(written_weights(second, "second.weights.h5"), second_moment),
    max_diff(written_weights(first, "first.weights.h5"), first_moment),
)


def buffers(snapshot):
    """The host buffers the snapshot copied into (values that Keras hands over as NumPy copies
    already, as Keras 3.5 does with the optimizer's, are not among them)."""
    return list(snapshot._buffers._used.values())


third = take_snapshot(model, "x.weights.h5", weights_only=True)
third_buffers = buffers(third)
third.discard()
fourth = take_snapshot(model, "x.weights.h5", weights_only=True)  # gets the third's buffers
reused = len(third_buffers) >= len(model.weights) and all(
    a is b for a, b in zip(third_buffers, buffers(fourth), strict=True)
)
fourth.discard()
model.fit(
    x,
    y,
    batch_size=16,
    epochs=1,
    verbose=0,
    callbacks=[
        keras_ckpt.ModelCheckpoint(os.path.join(directory, "m.weights.h5"), save_weights_only=True)
    ],
)
released = model not in _HostBuffers._pools
# A snapshot borrowed before a release frees its buffers once written; they are not pooled.
fifth = take_snapshot(model, "x.weights.h5", weights_only=True)
release_host_buffers(model)
fifth.discard()
released = released and model not in _HostBuffers._pools
print(f"overlapping={overlapping} reused={reused} released={released}", flush=True)
