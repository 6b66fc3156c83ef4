"""keras_ckpt: crash-safe checkpointing callbacks for Keras 3.

The callbacks import Keras; the pure modules (``keras_ckpt.policies``, ``ranking``, ``naming``,
``triggers``, ``records``, ``store``) do not, so the public names below load on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0.dev0"

_EXPORTS = {
    "BackupAndRestore": "keras_ckpt.callbacks.backup_and_restore",
    "BestCheckpoint": "keras_ckpt.callbacks.best_checkpoint",
    "CheckpointCorruptedError": "keras_ckpt.store",
    "CheckpointRecord": "keras_ckpt.records",
    "CheckpointStore": "keras_ckpt.store",
    "EarlyStopping": "keras_ckpt.callbacks.early_stopping",
    "IntervalCheckpoint": "keras_ckpt.callbacks.interval_checkpoint",
    "LearningRateScheduler": "keras_ckpt.callbacks.learning_rate",
    "ModelCheckpoint": "keras_ckpt.callbacks.model_checkpoint",
    "ReduceLROnPlateau": "keras_ckpt.callbacks.learning_rate",
    "ResumeFromLatest": "keras_ckpt.callbacks.resume",
    "RollbackOnDivergence": "keras_ckpt.callbacks.rollback",
    "StochasticWeightAveraging": "keras_ckpt.callbacks.swa",
    "SwapEMAWeights": "keras_ckpt.callbacks.swap_ema_weights",
    "average_checkpoints": "keras_ckpt.averaging",
    "best_checkpoint": "keras_ckpt.loading",
    "latest_checkpoint": "keras_ckpt.loading",
    "list_checkpoints": "keras_ckpt.loading",
    "load_best": "keras_ckpt.loading",
    "load_checkpoint": "keras_ckpt.loading",
    "load_latest": "keras_ckpt.loading",
    "plot_schedule": "keras_ckpt.schedules",
}

__all__ = [
    "BackupAndRestore",
    "BestCheckpoint",
    "CheckpointCorruptedError",
    "CheckpointRecord",
    "CheckpointStore",
    "EarlyStopping",
    "IntervalCheckpoint",
    "LearningRateScheduler",
    "ModelCheckpoint",
    "ReduceLROnPlateau",
    "ResumeFromLatest",
    "RollbackOnDivergence",
    "StochasticWeightAveraging",
    "SwapEMAWeights",
    "average_checkpoints",
    "best_checkpoint",
    "latest_checkpoint",
    "list_checkpoints",
    "load_best",
    "load_checkpoint",
    "load_latest",
    "plot_schedule",
]

if TYPE_CHECKING:
    from keras_ckpt.averaging import average_checkpoints
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
    from keras_ckpt.loading import (
        best_checkpoint,
        latest_checkpoint,
        list_checkpoints,
        load_best,
        load_checkpoint,
        load_latest,
    )
    from keras_ckpt.records import CheckpointRecord
    from keras_ckpt.schedules import plot_schedule
    from keras_ckpt.store import CheckpointCorruptedError, CheckpointStore


# The public submodules, reachable as attributes after a plain ``import keras_ckpt``
# (``keras_ckpt.schedules.WarmupCosine(...)``), loaded on first use like the names above.
_SUBMODULES = (
    "averaging",
    "callbacks",
    "loading",
    "plots",
    "policies",
    "processes",
    "schedules",
    "store",
    "swa",
    "triggers",
)


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"keras_ckpt.{name}")
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'keras_ckpt' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
