"""The Keras callbacks. Importing this package imports Keras."""

from keras_ckpt.callbacks.backup_and_restore import BackupAndRestore
from keras_ckpt.callbacks.best_checkpoint import BestCheckpoint
from keras_ckpt.callbacks.early_stopping import EarlyStopping
from keras_ckpt.callbacks.interval_checkpoint import IntervalCheckpoint
from keras_ckpt.callbacks.learning_rate import LearningRateScheduler, ReduceLROnPlateau
from keras_ckpt.callbacks.model_checkpoint import ModelCheckpoint
from keras_ckpt.callbacks.resume import ResumeFromLatest
from keras_ckpt.callbacks.rollback import RollbackOnDivergence
from keras_ckpt.callbacks.swa import StochasticWeightAveraging
from keras_ckpt.callbacks.swap_ema_weights import SwapEMAWeights

__all__ = [
    "BackupAndRestore",
    "BestCheckpoint",
    "EarlyStopping",
    "IntervalCheckpoint",
    "LearningRateScheduler",
    "ModelCheckpoint",
    "ReduceLROnPlateau",
    "ResumeFromLatest",
    "RollbackOnDivergence",
    "StochasticWeightAveraging",
    "SwapEMAWeights",
]
