"""The model and data the resume tests and their child scripts share (Keras must be imported
after the backend is chosen, so import this module after setting KERAS_BACKEND)."""

import keras
import numpy as np


def resume_data():
    """80 samples: 5 batches of 16 per epoch."""
    x = np.random.default_rng(0).normal(size=(80, 4)).astype("float32")
    return x, x.sum(axis=1, keepdims=True)


def make_resume_model(seed=0):
    """A small model with Dropout, so the seed-generator state matters for exactness."""
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dropout(0.3),
            keras.layers.Dense(1),
        ]
    )
    model.compile(optimizer="adam", loss="mse")
    return model
