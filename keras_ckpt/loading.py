"""Reading a checkpoint directory back: list what it holds, load the best."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from keras_ckpt import validation
from keras_ckpt.records import BEST_ALIAS, KIND_WEIGHTS, LATEST_ALIAS, CheckpointRecord
from keras_ckpt.store import check_regular_file, read_committed, verify
from keras_ckpt.validation import boolean

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
    safe_mode: bool = True,
    custom_objects: dict[str, Any] | None = None,
) -> keras.Model:
    """Loads the best checkpoint of ``directory`` (written by ``BestCheckpoint``).

    Args:
        directory: A directory written by ``BestCheckpoint``.
        model: If given, the best weights are loaded into it (and it is returned); needed when
            the checkpoints hold weights only. A compiled model gets its optimizer state too.
        verify_checksum: Check the file against the SHA-256 in the manifest before loading.
        safe_mode: Passed to ``keras.saving.load_model`` for a whole-model checkpoint. ``True``
            (the default) refuses to deserialize a ``Lambda`` layer, whose saved bytecode would
            run on loading; pass ``False`` only for a checkpoint you trust.
        custom_objects: Passed to ``keras.saving.load_model`` for a whole-model checkpoint:
            name -> class or function, for custom layers, losses and metrics that are not
            registered with ``keras.saving.register_keras_serializable``.

    Returns:
        The loaded model.

    Raises:
        FileNotFoundError: If the directory has no best checkpoint.
        keras_ckpt.CheckpointCorruptedError: If the file does not match its manifest entry.
        ValueError: If the best checkpoint holds weights only and no ``model`` is given, if
            ``safe_mode`` is not a bool or ``custom_objects`` is not a dict or None, or when
            Keras refuses the model (a ``Lambda`` layer under ``safe_mode=True``, say).

    Example:
        After ``keras-ckpt demo``: ``model = keras_ckpt.load_best("runs/demo")``.
    """
    _check_load_options(safe_mode, custom_objects)
    return load_checkpoint(
        best_checkpoint(directory),
        model,
        verify_checksum=verify_checksum,
        safe_mode=safe_mode,
        custom_objects=custom_objects,
    )


def load_latest(
    directory: str | os.PathLike[str],
    model: keras.Model | None = None,
    *,
    verify_checksum: bool = True,
    safe_mode: bool = True,
    custom_objects: dict[str, Any] | None = None,
) -> keras.Model:
    """Loads the newest checkpoint of ``directory`` (written by ``IntervalCheckpoint``).

    Arguments (``safe_mode`` and ``custom_objects`` included), return value and errors as for
    ``load_best``.
    """
    _check_load_options(safe_mode, custom_objects)
    return load_checkpoint(
        latest_checkpoint(directory),
        model,
        verify_checksum=verify_checksum,
        safe_mode=safe_mode,
        custom_objects=custom_objects,
    )


def load_checkpoint(
    record: CheckpointRecord,
    model: keras.Model | None = None,
    *,
    verify_checksum: bool = True,
    safe_mode: bool = True,
    custom_objects: dict[str, Any] | None = None,
) -> keras.Model:
    """Loads one checkpoint record: the whole model, or its weights into ``model``.

    Args:
        record: A record from ``list_checkpoints``, ``best_checkpoint`` or
            ``latest_checkpoint``.
        model: If given, the checkpoint's weights are loaded into it (and it is returned).
        verify_checksum: Check the file against the SHA-256 in the manifest before loading.
        safe_mode: For a whole-model checkpoint, passed to ``keras.saving.load_model``; keep
            the default ``True`` unless you trust the file (see ``load_best``).
        custom_objects: For a whole-model checkpoint, passed to ``keras.saving.load_model``.

    Returns:
        The loaded model.

    Raises:
        keras_ckpt.CheckpointCorruptedError: If the file does not match its manifest entry.
        ValueError: As for ``load_best``.
    """
    import keras

    _check_load_options(safe_mode, custom_objects)
    if verify_checksum:
        verify(record)
    else:
        check_regular_file(record.path)  # never a link that leads out of the directory
    if model is None:
        if record.kind == KIND_WEIGHTS:
            raise ValueError(
                f"The checkpoint {record.path} holds weights only; pass the model to load "
                "them into, e.g. load_best(directory, model=model)."
            )
        return keras.saving.load_model(
            record.path, custom_objects=custom_objects, safe_mode=safe_mode
        )
    load_weights(model, record.path)
    return model


def load_weights(model: keras.Model, path: str) -> None:
    """Loads a ``.weights.h5`` (or ``.keras``) file's variables into ``model``, its optimizer's
    included: a compiled model whose optimizer has not trained yet has it built first.

    Without that, Keras skips the optimizer's saved state with only a warning ("Skipping
    variable loading for optimizer"), and training would go on with fresh moments and
    ``iterations`` at 0. An unbuilt model is left to Keras (its optimizer would be built over
    no variables).

    Args:
        model: The model to load into.
        path: The checkpoint file.
    """
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None and not optimizer.built and model.built:
        optimizer.build(model.trainable_variables)
    model.load_weights(path)


def _check_load_options(safe_mode: Any, custom_objects: Any) -> None:
    boolean("safe_mode", safe_mode)
    if custom_objects is not None and not isinstance(custom_objects, dict):
        raise ValueError(
            "Argument `custom_objects` must be a dict (name -> class or function) or None. "
            f"Received: custom_objects={custom_objects!r}"
        )
