"""Data and runs the rollback tests and their JAX child share (import after choosing the
backend).

``NaNData`` reads 6 unshuffled batches of 16 per epoch and makes the targets of chosen
``(epoch, batch)`` NaN (or huge): the ``epoch``-th read of batch index ``batch`` (>= 2: before
training, Keras reads the first batch or two once more to learn the data's shapes). Counting
reads per index keeps this right however far ahead Keras's pipeline reads.
``reference_weights`` trains the run that a rollback must equal: the same seeds and batches,
minus the skipped ones in one epoch only.
"""

import collections

import keras
import numpy as np
from resume_setup import make_resume_model

BATCHES, BATCH_SIZE = 6, 16
X = np.random.default_rng(0).normal(size=(BATCHES * BATCH_SIZE, 4)).astype("float32")
Y = X.sum(axis=1, keepdims=True)


class NaNData(keras.utils.PyDataset):
    def __init__(self, poisoned=(), value=float("nan"), batches=None):
        super().__init__()
        self.poisoned = {tuple(where) for where in poisoned}
        self.value = value
        self.batches = list(range(BATCHES)) if batches is None else list(batches)
        self.reads = collections.Counter()

    def __len__(self):
        return len(self.batches)

    def __getitem__(self, index):
        first = self.batches[index] * BATCH_SIZE
        y = Y[first : first + BATCH_SIZE].copy()
        if (self.reads[index], index) in self.poisoned:
            y[:] = self.value if np.isnan(self.value) else y * self.value
        self.reads[index] += 1
        return X[first : first + BATCH_SIZE], y


def reference_weights(epochs, skipped_epoch, skipped):
    """Weights after ``epochs`` epochs without the 0-based batches ``skipped`` of epoch
    ``skipped_epoch``, one fit per stretch (state carries over within the model)."""
    model = make_resume_model()
    if skipped_epoch:
        model.fit(NaNData(), epochs=skipped_epoch, verbose=0, shuffle=False)
    kept = [b for b in range(BATCHES) if b not in skipped]
    model.fit(
        NaNData(batches=kept),
        initial_epoch=skipped_epoch,
        epochs=skipped_epoch + 1,
        verbose=0,
        shuffle=False,
    )
    if skipped_epoch + 1 < epochs:
        model.fit(
            NaNData(), initial_epoch=skipped_epoch + 1, epochs=epochs, verbose=0, shuffle=False
        )
    return model.get_weights()


def skipped_of(rollback, bad_batch):
    """The 0-based batches of the bad batch's epoch that ``rollback``'s first rollback
    skipped."""
    skipped = rollback.rollbacks[0]["skipped_batches"]
    return list(range(bad_batch - skipped + 1, bad_batch + 1))


def max_difference(a, b):
    return max(float(np.abs(x - y).max()) for x, y in zip(a, b, strict=True))
