"""Reading a checkpoint directory back: list what it holds, load the best."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from keras_ckpt import validation
from keras_ckpt.records import BEST_ALIAS, KIND_WEIGHTS, LATEST_ALIAS, CheckpointRecord
from keras_ckpt.store import read_committed, verify

if TYPE_CHECKING:
    import keras


def list_checkpoints(directory: str | os.PathLike[str]) -> list[CheckpointRecord]:
    """The committed checkpoints in ``directory``, oldest first.

    Each record has ``path``, ``epoch`` (1-based), ``step``, ``metrics``, ``time``, ``size``,
    ``sha256``, ``keras_version``, ``kind`` (``"model"`` or ``"weights"``) and ``run``. Files that
    a crash left uncommitted are not listed.

    Raises:
        FileNotFoundError: If ``directory`` does not exist.
        ValueError: If ``directory`` is not a non-empty path without NUL.
    """
    path = os.path.abspath(validation.directory("directory", directory))
    if not os.path.isdir(path):
        raise FileNotFoundError(f"No checkpoint directory at {path}.")
    return read_committed(path).records


def _aliased(directory: str | os.PathLike[str], alias: str, writer: str) -> CheckpointRecord:
    path = os.path.abspath(validation.directory("directory", directory))
    if not os.path.isdir(path):
        raise FileNotFoundError(f"No checkpoint directory at {path}.")
    manifest = read_committed(path)
    target = manifest.aliases.get(alias)
    record = None if target is None else manifest.find(target)
    if record is None:
        raise FileNotFoundError(f"{path} has no {alias} checkpoint (no {writer} saved there).")
    return record


def best_checkpoint(directory: str | os.PathLike[str]) -> CheckpointRecord:
    """The record the directory's ``best`` alias points at.

    Raises:
        FileNotFoundError: If the directory has no best checkpoint.
    """
    return _aliased(directory, BEST_ALIAS, "BestCheckpoint")


def latest_checkpoint(directory: str | os.PathLike[str]) -> CheckpointRecord:
    """The record the directory's ``latest`` alias points at.

    Raises:
        FileNotFoundError: If the directory has no latest checkpoint.
    """
    return _aliased(directory, LATEST_ALIAS, "IntervalCheckpoint")


def load_best(
    directory: str | os.PathLike[str],
    model: keras.Model | None = None,
    *,
    verify_checksum: bool = True,
) -> keras.Model:
    """Loads the best checkpoint of ``directory`` (written by ``BestCheckpoint``).

    Args:
        directory: A directory written by ``BestCheckpoint``.
        model: If given, the best weights are loaded into it (and it is returned); needed when
            the checkpoints hold weights only. A compiled model gets its optimizer state too.
        verify_checksum: Check the file against the SHA-256 in the manifest before loading.

    Returns:
        The loaded model.

    Raises:
        FileNotFoundError: If the directory has no best checkpoint.
        keras_ckpt.CheckpointCorruptedError: If the file does not match its manifest entry.
        ValueError: If the best checkpoint holds weights only and no ``model`` is given.

    Example:
        After ``keras-ckpt demo``: ``model = keras_ckpt.load_best("runs/demo")``.
    """
    return load_checkpoint(best_checkpoint(directory), model, verify_checksum=verify_checksum)


def load_latest(
    directory: str | os.PathLike[str],
    model: keras.Model | None = None,
    *,
    verify_checksum: bool = True,
) -> keras.Model:
    """Loads the newest checkpoint of ``directory`` (written by ``IntervalCheckpoint``).

    Arguments, return value and errors as for ``load_best``.
    """
    return load_checkpoint(latest_checkpoint(directory), model, verify_checksum=verify_checksum)


def load_checkpoint(
    record: CheckpointRecord, model: keras.Model | None = None, *, verify_checksum: bool = True
) -> keras.Model:
    """Loads one checkpoint record: the whole model, or its weights into ``model``."""
    import keras

    if verify_checksum:
        verify(record)
    if model is None:
        if record.kind == KIND_WEIGHTS:
            raise ValueError(
                f"The checkpoint {record.path} holds weights only; pass the model to load "
                "them into, e.g. load_best(directory, model=model)."
            )
        return keras.saving.load_model(record.path)
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None and not optimizer.built and model.built:
        # Without this Keras skips the optimizer's saved state ("Skipping variable loading").
        optimizer.build(model.trainable_variables)
    model.load_weights(record.path)
    return model
