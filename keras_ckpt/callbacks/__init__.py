"""The Keras callbacks. Importing this package imports Keras."""

from keras_ckpt.callbacks.best_checkpoint import BestCheckpoint
from keras_ckpt.callbacks.interval_checkpoint import IntervalCheckpoint
from keras_ckpt.callbacks.model_checkpoint import ModelCheckpoint

__all__ = ["BestCheckpoint", "IntervalCheckpoint", "ModelCheckpoint"]
