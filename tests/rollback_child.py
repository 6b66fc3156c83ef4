"""Exact rollback on another Keras backend: run by test_rollback.py in a fresh process.

Usage: python rollback_child.py BACKEND DIRECTORY
Prints one line per case: "case <name> rollbacks=<n> max_diff=<float>".
"""

import os
import sys

os.environ["KERAS_BACKEND"] = sys.argv[1]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from resume_setup import make_resume_model  # noqa: E402
from rollback_setup import NaNData, max_difference, reference_weights, skipped_of  # noqa: E402

import keras_ckpt  # noqa: E402

directory = sys.argv[2]
# (name, save_freq, the poisoned batch of epoch 1)
for name, save_freq, bad_batch in (("epoch", "epoch", 2), ("mid", 3, 4)):
    resume = keras_ckpt.ResumeFromLatest(os.path.join(directory, name), save_freq=save_freq)
    rollback = keras_ckpt.RollbackOnDivergence(resume)
    model = make_resume_model()
    data = NaNData(poisoned=[(1, bad_batch)])
    model.fit(data, epochs=3, verbose=0, shuffle=False, callbacks=[resume, rollback])
    expected = reference_weights(3, 1, skipped_of(rollback, bad_batch))
    difference = max_difference(model.get_weights(), expected)
    print(f"case {name} rollbacks={len(rollback.rollbacks)} max_diff={difference}", flush=True)
