"""A snapshot holds the moment it was taken, on another Keras backend: run by test_async.py.

Usage: python snapshot_child.py BACKEND DIRECTORY
Prints "max_diff=<float> same_bytes=<bool>".
"""

import hashlib
import os
import sys

os.environ["KERAS_BACKEND"] = sys.argv[1]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from resume_setup import make_resume_model, resume_data  # noqa: E402

from keras_ckpt.snapshot import take_snapshot  # noqa: E402

directory = sys.argv[2]
x, y = resume_data()
model = make_resume_model()
model.fit(x, y, batch_size=16, epochs=1, verbose=0)
take_snapshot(model, "x.weights.h5", weights_only=True).discard()  # the walk; then copies only
before = [w.copy() for w in model.get_weights()]
snapshot = take_snapshot(model, "x.weights.h5", weights_only=True)
model.fit(x, y, batch_size=16, epochs=2, verbose=0)  # updates the variables in place on torch
snapshot.write(os.path.join(directory, "ours.weights.h5"))
restored = make_resume_model()
restored.load_weights(os.path.join(directory, "ours.weights.h5"))
difference = max(
    float(np.abs(a - b).max()) for a, b in zip(restored.get_weights(), before, strict=True)
)
model.save_weights(os.path.join(directory, "keras.weights.h5"))
take_snapshot(model, "x.weights.h5", weights_only=True).write(
    os.path.join(directory, "now.weights.h5")
)
digests = {
    hashlib.sha256(open(os.path.join(directory, name), "rb").read()).hexdigest()
    for name in ("keras.weights.h5", "now.weights.h5")
}
print(f"max_diff={difference} same_bytes={len(digests) == 1}", flush=True)
