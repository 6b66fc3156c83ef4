"""Reading a checkpoint directory back: list what it holds, load the best."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import tempfile
import zipfile
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from keras_ckpt import processes, ranking, remote, validation
from keras_ckpt.records import (
    BEST_ALIAS,
    DEDUP_EXTENSION,
    KIND_WEIGHTS,
    LATEST_ALIAS,
    CheckpointRecord,
    Manifest,
)
from keras_ckpt.store import (
    CheckpointCorruptedError,
    check_regular_file,
    check_sharded_index,
    local_file,
    open_regular,
    read_committed,
    verify,
)
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
    return committed_manifest(directory)[1].records


def committed_manifest(directory: str | os.PathLike[str]) -> tuple[str, Manifest]:
    """``directory``'s absolute path (or normalized URL) and its committed manifest (for
    loaders built on this module, such as ``averaging``).

    Raises:
        FileNotFoundError: If ``directory`` does not exist.
        ValueError: If ``directory`` is not a non-empty path without NUL.
    """
    text = validation.directory("directory", directory)
    if remote.is_url(text):
        url = remote.check_url("directory", text)
        manifest = read_committed(url)
        if not manifest.records and not manifest.aliases and not remote.list_names(url):
            raise FileNotFoundError(f"No checkpoint directory at {url}.")
        return url, manifest
    path = os.path.abspath(remote.local_path(text))
    if not os.path.isdir(path):
        raise FileNotFoundError(f"No checkpoint directory at {path}.")
    return path, read_committed(path)


def _aliased(
    directory: str | os.PathLike[str], alias: str, writer: str, hint: str = ""
) -> CheckpointRecord:
    path, manifest = committed_manifest(directory)
    target = manifest.aliases.get(alias)
    record = None if target is None else manifest.find(target)
    if record is None:
        raise FileNotFoundError(
            f"{path} has no {alias} checkpoint (no {writer} saved there){hint}."
        )
    return record


def best_checkpoint(
    directory: str | os.PathLike[str], monitor: str | None = None, mode: str = "auto"
) -> CheckpointRecord:
    """The best checkpoint of ``directory``: the one its ``best`` alias points at
    (``BestCheckpoint`` keeps it), or with ``monitor`` the one with the best value of that metric
    (for directories without the alias, such as ``ModelCheckpoint``'s).

    Args:
        directory: The checkpoint directory.
        monitor: Rank the committed checkpoints by this metric instead of following the alias.
            Checkpoints without it, or with a NaN, are never the best; ties go to the older.
        mode: ``"min"``, ``"max"``, or ``"auto"`` (from the metric's name, as the callbacks do).

    Raises:
        FileNotFoundError: If the directory has no best checkpoint (no alias, or with
            ``monitor`` no checkpoint with the metric).
        ValueError: On a bad ``monitor`` or ``mode``, or ``mode="auto"`` for a metric whose
            name does not tell whether higher is better.
    """
    if monitor is None:
        validation.one_of("mode", mode, ranking.MODES)
        hint = "; pass `monitor` to pick the best checkpoint by a metric"
        return _aliased(directory, BEST_ALIAS, "BestCheckpoint", hint)
    validation.non_empty_str("monitor", monitor)
    resolved = ranking.resolve_mode(monitor, validation.one_of("mode", mode, ranking.MODES))
    if resolved is None:
        raise ValueError(
            f"Argument `mode` is 'auto', and the name {monitor!r} does not tell whether higher "
            "is better. Pass mode='min' or mode='max'."
        )
    path, manifest = committed_manifest(directory)
    candidates = [
        record
        for record in manifest.records
        if monitor in record.metrics and not math.isnan(record.metrics[monitor])
    ]
    if not candidates:
        raise FileNotFoundError(f"{path} has no checkpoint with the metric {monitor!r}.")
    order = ranking.ranked([record.metrics[monitor] for record in candidates], resolved)
    return candidates[order[0]]


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
    monitor: str | None = None,
    mode: str = "auto",
    weights: str = "raw",
) -> keras.Model:
    """Loads the best checkpoint of ``directory`` (written by ``BestCheckpoint``, or by any
    saving callback when ``monitor`` is given).

    Args:
        directory: A directory written by ``BestCheckpoint`` (its ``best`` alias), or with
            ``monitor`` any checkpoint directory (``ModelCheckpoint``'s, for example).
        model: If given, the best weights are loaded into it (and it is returned); needed when
            the checkpoints hold weights only. A compiled model gets its optimizer state too.
        verify_checksum: Check the file against the SHA-256 in the manifest before loading.
        safe_mode: Passed to ``keras.saving.load_model`` for a whole-model checkpoint. ``True``
            (the default) refuses to deserialize a ``Lambda`` layer, whose saved bytecode would
            run on loading; pass ``False`` only for a checkpoint you trust.
        custom_objects: Passed to ``keras.saving.load_model`` for a whole-model checkpoint:
            name -> class or function, for custom layers, losses and metrics that are not
            registered with ``keras.saving.register_keras_serializable``.
        monitor: Load the checkpoint with the best value of this metric instead of the one
            the ``best`` alias names (see ``best_checkpoint``).
        mode: ``"min"``, ``"max"`` or ``"auto"``, for ``monitor``.
        weights: ``"raw"`` (the default): the model's weights as saved, the raw ones of a
            ``use_ema=True`` run. ``"ema"``: the optimizer's moving averages are copied over
            them, giving the model to evaluate or export (its optimizer keeps the averages).

    Under ``safe_mode=True`` the archive's ``config.json`` is read first, and a checkpoint
    whose config names a module outside Keras (``keras``, ``keras_hub``, ``keras_cv``,
    ``keras_nlp``) for an object that is neither in ``custom_objects`` nor registered is
    refused before Keras sees it: Keras before 3.9 imports any module a config names, even in
    safe mode (CVE-2025-1550), and importing a module runs its code.

    In a run of several processes (JAX's ``keras.distribution.initialize``), a whole-model
    checkpoint is built outside the distribution, on this process's own device: any one
    process may load it (``if jax.process_index() == 0: load_best(directory)``), and gets a
    plain model, as for exporting or evaluating. Building it under the distribution would be a
    collective that the other processes never join. The same holds for a ``model`` whose
    variables are all on this process's devices (one built with the distribution unset). A
    ``model`` built under the distribution spans every process: loading into it is a
    collective, so every process must call the loader at the same point (as
    ``EarlyStopping(restore_best_weights=<BestCheckpoint>)`` does). The processes first meet at
    a barrier; one that waits there ``LOAD_BARRIER_SECONDS`` (300 s) for the others raises
    ``DistributedLoadError`` instead of waiting in the collective for ever.

    Returns:
        The loaded model.

    Raises:
        FileNotFoundError: If the directory has no best checkpoint.
        keras_ckpt.CheckpointCorruptedError: If the file does not match its manifest entry,
            or a whole-model file is not a ``.keras`` archive with a readable ``config.json``.
        ValueError: If the best checkpoint holds weights only and no ``model`` is given, if
            ``safe_mode`` is not a bool or ``custom_objects`` is not a dict or None, if
            ``weights`` is not ``"raw"`` or ``"ema"``, or is ``"ema"`` and the checkpoint (or
            the ``model`` given) has no moving averages, when the
            config names a module outside Keras under ``safe_mode=True`` (see above), or when
            Keras refuses the model (a ``Lambda`` layer under ``safe_mode=True``, say).
        keras_ckpt.loading.DistributedLoadError: If ``model`` spans several processes and not
            every one of them called the loader within ``LOAD_BARRIER_SECONDS`` (a
            ``RuntimeError``).

    Example:
        After ``keras-ckpt demo``: ``model = keras_ckpt.load_best("runs/demo")``.
    """
    check_load_options(safe_mode, custom_objects)
    validation.weights(weights)
    return load_record(
        "load_best",
        best_checkpoint(directory, monitor, mode),
        model,
        verify_checksum=verify_checksum,
        safe_mode=safe_mode,
        custom_objects=custom_objects,
        weights=weights,
    )


def load_latest(
    directory: str | os.PathLike[str],
    model: keras.Model | None = None,
    *,
    verify_checksum: bool = True,
    safe_mode: bool = True,
    custom_objects: dict[str, Any] | None = None,
    weights: str = "raw",
) -> keras.Model:
    """Loads the newest checkpoint of ``directory`` (written by ``IntervalCheckpoint``).

    Arguments (``safe_mode`` and ``custom_objects`` included), return value and errors as for
    ``load_best``.
    """
    check_load_options(safe_mode, custom_objects)
    validation.weights(weights)
    return load_record(
        "load_latest",
        latest_checkpoint(directory),
        model,
        verify_checksum=verify_checksum,
        safe_mode=safe_mode,
        custom_objects=custom_objects,
        weights=weights,
    )


def load_checkpoint(
    record: CheckpointRecord,
    model: keras.Model | None = None,
    *,
    verify_checksum: bool = True,
    safe_mode: bool = True,
    custom_objects: dict[str, Any] | None = None,
    weights: str = "raw",
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
        weights: ``"raw"`` or ``"ema"``, as for ``load_best``.

    Modules named in the config and several processes: as for ``load_best``.

    Returns:
        The loaded model.

    Raises:
        keras_ckpt.CheckpointCorruptedError: As for ``load_best``.
        ValueError: As for ``load_best``.
        keras_ckpt.loading.DistributedLoadError: As for ``load_best``.
    """
    check_load_options(safe_mode, custom_objects)
    validation.weights(weights)
    return load_record(
        "load_checkpoint",
        record,
        model,
        verify_checksum=verify_checksum,
        safe_mode=safe_mode,
        custom_objects=custom_objects,
        weights=weights,
    )


@contextlib.contextmanager
def checkpoint_file(record: CheckpointRecord, verify_checksum: bool = True) -> Iterator[str]:
    """A local file of the checkpoint that plain Keras opens, for as long as the block runs.

    The file itself (``store.local_file``: a verified download for a remote directory), or for
    weights stored once (``dedup=True``) a standard ``.weights.h5`` assembled from the blobs
    in a temporary folder and deleted afterwards (``snapshot.assemble_weights``).

    Args:
        record: A committed checkpoint.
        verify_checksum: Check every file's size and SHA-256 first.

    Raises:
        CheckpointCorruptedError: If a file does not match its record.
    """
    if not record.filename.endswith(DEDUP_EXTENSION):
        with local_file(record, verify_checksum) as path:
            yield path
        return
    from keras_ckpt.snapshot import assemble_weights

    if verify_checksum or remote.is_url(record.path):  # a URL: refused, several files
        verify(record)
    with tempfile.TemporaryDirectory(prefix="keras_ckpt-") as folder:
        path = os.path.join(folder, record.filename[: -len(DEDUP_EXTENSION)] + ".weights.h5")
        assemble_weights(record, path)
        yield path


def load_record(
    caller: str,
    record: CheckpointRecord,
    model: keras.Model | None,
    *,
    verify_checksum: bool,
    safe_mode: bool,
    custom_objects: dict[str, Any] | None,
    weights: str = "raw",
) -> keras.Model:
    """``load_checkpoint`` (arguments checked already), for the public loader ``caller``,
    named in its errors."""
    model = _load_as_saved(
        caller,
        record,
        model,
        verify_checksum=verify_checksum,
        safe_mode=safe_mode,
        custom_objects=custom_objects,
    )
    if weights == "ema":
        from keras_ckpt import ema  # imports Keras

        ema.averages_into_model(model, record.path)
    return model


def _load_as_saved(
    caller: str,
    record: CheckpointRecord,
    model: keras.Model | None,
    *,
    verify_checksum: bool,
    safe_mode: bool,
    custom_objects: dict[str, Any] | None,
) -> keras.Model:
    import keras

    if remote.is_url(record.path) and record.parts:
        verify(record)  # refused: a checkpoint of several files is kept in local directories only
    if remote.is_url(record.path):  # Keras opens local files: a verified download, then that
        with remote.local_copy(record, verify_checksum) as path:
            return _load_as_saved(
                caller,
                dataclasses.replace(record, path=path),
                model,
                verify_checksum=False,
                safe_mode=safe_mode,
                custom_objects=custom_objects,
            )
    if verify_checksum:
        verify(record)
    else:
        check_regular_file(record.path)  # never a link that leads out of the directory
        check_sharded_index(record)  # nor a shard name that does
    if record.filename.endswith(DEDUP_EXTENSION):  # weights stored once: a standard file first
        with checkpoint_file(record, verify_checksum=False) as path:
            return load_record(
                caller,
                dataclasses.replace(record, path=path, parts=()),
                model,
                verify_checksum=False,
                safe_mode=safe_mode,
                custom_objects=custom_objects,
            )
    if model is None:
        if record.kind == KIND_WEIGHTS:
            raise ValueError(
                f"The checkpoint {record.path} holds weights only; pass the model to load "
                "them into, e.g. load_best(directory, model=model)."
            )
        if safe_mode:
            check_config_modules(record.path, custom_objects)
        with _outside_distribution():
            return keras.saving.load_model(
                record.path, custom_objects=custom_objects, safe_mode=safe_mode
            )
    if _spans_other_processes(model):
        _meet_to_load(caller, model)
        load_weights(model, record.path)  # a collective: every process loads together
    else:
        with _outside_distribution():  # the optimizer's variables, if built, stay local too
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
    from keras_ckpt import ema  # imports Keras

    ema.loaded(model)


def check_load_options(safe_mode: Any, custom_objects: Any) -> None:
    """Checks the ``safe_mode`` and ``custom_objects`` arguments of a loader."""
    boolean("safe_mode", safe_mode)
    if custom_objects is not None and not isinstance(custom_objects, dict):
        raise ValueError(
            "Argument `custom_objects` must be a dict (name -> class or function) or None. "
            f"Received: custom_objects={custom_objects!r}"
        )


# Several processes ---------------------------------------------------------------------------


@contextlib.contextmanager
def _outside_distribution() -> Iterator[None]:
    """Runs the body with no ``keras.distribution`` set, in a run of several processes.

    Variables created under a distribution that spans several processes are laid out over all
    their devices, which is a collective: on one process alone it never returns. Keras keeps
    the distribution per thread, so unsetting it here leaves other threads alone. With one
    process nothing changes (a distribution over its own devices is no collective).
    """
    import keras

    current = keras.distribution.distribution()
    if current is None or processes.process_count() == 1:
        yield
        return
    keras.distribution.set_distribution(None)
    try:
        yield
    finally:
        keras.distribution.set_distribution(current)


LOAD_BARRIER_SECONDS = 300.0
"""How long a loader waits for every process before it loads into a model that spans them.

Where the processes call a loader together (``EarlyStopping(restore_best_weights=<dir>)`` at
the end of training), the others may wait here while process 0 finishes writing the last
checkpoint, which for a large model on a network file system can take minutes: a timeout
shorter than that would fail a correct run. Where one process calls it alone (a mistake),
this is how long it takes to say so. 300 s is JAX's own default for processes that wait for
each other when they start and when they shut down."""


class DistributedLoadError(RuntimeError):
    """A loader was called to load into a model distributed over several processes, and the
    other processes did not call it too (loading into such a model is a collective)."""


def _meet_to_load(caller: str, model: keras.Model) -> None:
    """Waits for every process before loading into ``model``, which spans them all, so that a
    call on one process alone raises instead of waiting in the collective for ever."""
    missing = processes.wait_for_every_process("load", LOAD_BARRIER_SECONDS)
    if missing is None:
        return
    count = processes.process_count()
    raise DistributedLoadError(
        f"{caller}: the model is distributed over {count} processes (built under a "
        "keras.distribution that spans them), so loading into it is a collective, and not "
        f"every process called {caller} within {LOAD_BARRIER_SECONDS:g} s (JAX: {missing}). "
        f"Call {caller} on every process at the same point; to load on one process alone, "
        f"pass no model ({caller} then builds one outside the distribution, from a whole-model "
        "checkpoint) or a model built outside the distribution "
        "(after keras.distribution.set_distribution(None))."
    )


def _spans_other_processes(model: keras.Model) -> bool:
    """Whether some variable of ``model`` lives partly on another process's devices (a JAX
    array that is not fully addressable): assigning to it is then a collective."""
    if processes.process_count() == 1:
        return False
    return any(
        not getattr(variable.value, "is_fully_addressable", True) for variable in model.variables
    )


# Modules named in a .keras config ------------------------------------------------------------

KERAS_PACKAGES = frozenset({"keras", "keras_hub", "keras_cv", "keras_nlp"})
"""The packages whose modules a config may name: those Keras 3.9+ itself imports from."""

MAX_CONFIG_BYTES = 64 * 1024 * 1024
"""The largest ``config.json`` read from an archive (a model's config is kilobytes)."""

_CONFIG_NAME = "config.json"  # saving_lib._CONFIG_FILENAME, in every Keras 3 release


class UnknownModuleError(ValueError, TypeError):
    """A checkpoint's configuration names a module outside Keras for an object that is neither
    in ``custom_objects`` nor registered. A ``ValueError`` (keras_ckpt refuses the file) and a
    ``TypeError``, the class of Keras's own error for an object it cannot find."""


def check_config_modules(path: str, custom_objects: dict[str, Any] | None = None) -> None:
    """Refuses a ``.keras`` archive whose ``config.json`` names a module outside Keras (or a
    legacy HDF5 model whose ``model_config`` or ``training_config`` does, or that holds a
    ``Lambda`` layer).

    Keras before 3.9 imports every module a config names (``"module": "x"``) to find a class
    or function there, even with ``safe_mode=True`` (CVE-2025-1550), and importing runs the
    module's code. An object Keras finds without importing (one in ``custom_objects``, in a
    ``keras.saving.custom_object_scope`` or registered with
    ``keras.saving.register_keras_serializable``, under the name Keras looks up) is allowed
    wherever its module is; so are modules of ``keras``, ``keras_hub``, ``keras_cv`` and
    ``keras_nlp`` (those Keras 3.9+ allows). The check runs with every Keras version. It does
    not repeat the later restrictions of Keras's safe mode within Keras's own modules (3.11 and
    later refuse some Keras functions as well): for checkpoints you did not write, use a
    current Keras.

    Args:
        path: The ``.keras``, ``.h5`` or ``.hdf5`` model file (a regular file; links are
            refused).
        custom_objects: As passed to ``keras.saving.load_model``.

    Raises:
        UnknownModuleError: Naming the checkpoint and the module, if one is refused (a
            ``ValueError``, and the ``TypeError`` Keras raises for an object it cannot find).
        ValueError: If a ``module`` is not a string.
        keras_ckpt.CheckpointCorruptedError: If the file is not what its name says, read as
            Keras reads it: a ``.keras`` zip archive with a ``config.json``, or an ``.h5`` /
            ``.hdf5`` legacy model with a ``model_config`` (and maybe a ``training_config``),
            each JSON of at most ``MAX_CONFIG_BYTES`` bytes; or if the name is neither.
    """
    # The format is told by the name, as keras.saving.load_model tells it, so the check reads
    # what Keras will read (a file can be an HDF5 file and a zip archive at once).
    if path.endswith(_LEGACY_EXTENSIONS):
        config = _read_legacy_configs(path)
        _refuse_lambda(path, config)
    elif path.endswith(".keras"):
        config = _read_config(path)
    else:
        raise CheckpointCorruptedError(
            f"Checkpoint {path} is a model, but its name ends in neither '.keras' nor "
            "'.h5'/'.hdf5', so Keras cannot load it."
        )
    for entry in _serialized_objects(config):
        module = entry.get("module")
        if module is None or module == "":
            continue
        if not isinstance(module, str):
            raise ValueError(
                f"The checkpoint {path} is refused: its config.json has a `module` that is not "
                f"a string ({module!r})."
            )
        if module.split(".", 1)[0] in KERAS_PACKAGES or _keras_builtin_function(module, entry):
            continue
        if _found_without_import(entry, custom_objects):
            continue
        name = entry.get("class_name")
        raise UnknownModuleError(
            f"The checkpoint {path} is refused: its config.json names the module {module!r} "
            f"(for {name!r}), which is not part of Keras, and {name!r} is neither in "
            "`custom_objects` nor registered with keras.saving.register_keras_serializable. "
            "Loading it could import that module and run its code (Keras before 3.9 does so "
            "even with safe_mode=True). Pass the class in `custom_objects` or register it "
            "if you trust it."
        )


_LEGACY_EXTENSIONS = (".h5", ".hdf5")

# What Keras's legacy loader parses as JSON: the model, and with compile=True (the default) the
# training configuration, whose decoding can deserialize objects (and import their modules).
_LEGACY_CONFIG_ATTRIBUTES = ("model_config", "training_config")


def _read_legacy_configs(path: str) -> list[Any]:
    """The parsed ``model_config`` and ``training_config`` of a legacy HDF5 model, each read
    within the size limit."""
    import h5py

    with os.fdopen(open_regular(path), "rb") as file:
        try:
            with h5py.File(file, "r") as hdf5:
                attributes = {
                    name: hdf5.attrs.get(name)
                    for name in _LEGACY_CONFIG_ATTRIBUTES
                    if name in hdf5.attrs
                }
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise CheckpointCorruptedError(
                f"Checkpoint {path} is not a legacy HDF5 model with a readable model_config "
                f"({type(error).__name__}: {error})."
            ) from None
    if "model_config" not in attributes:
        raise CheckpointCorruptedError(f"Checkpoint {path} is an HDF5 file without a model.")
    configs = []
    for name, attribute in attributes.items():
        # Keras writes these as strings; anything else (an integer, an array) is not its file.
        if isinstance(attribute, str):
            raw = attribute.encode()
        elif isinstance(attribute, bytes):
            raw = attribute
        else:
            raise CheckpointCorruptedError(
                f"Checkpoint {path}: its {name} is a {type(attribute).__name__}, not JSON text."
            )
        configs.append(_parse_config(path, name, raw))
    return configs


def _refuse_lambda(path: str, config: Any) -> None:
    """Refuses a legacy HDF5 model with a ``Lambda`` layer: its function is saved as Python
    bytecode, which building the model runs, and Keras's legacy loader has not always honoured
    ``safe_mode``."""
    if any(entry.get("class_name") == "Lambda" for entry in _every_object(config)):
        raise ValueError(
            f"The checkpoint {path} holds a Lambda layer, whose saved Python bytecode would run "
            "on loading. Pass safe_mode=False only for a checkpoint you trust."
        )


def _read_config(path: str) -> Any:
    """The parsed ``config.json`` of the archive at ``path``, read within the size limit."""
    with os.fdopen(open_regular(path), "rb") as file:
        try:
            with zipfile.ZipFile(file) as archive:
                info = archive.getinfo(_CONFIG_NAME)
                if info.file_size > MAX_CONFIG_BYTES:
                    raise CheckpointCorruptedError(
                        f"Checkpoint {path}: its {_CONFIG_NAME} is {info.file_size} bytes, over "
                        f"the {MAX_CONFIG_BYTES} keras_ckpt reads."
                    )
                with archive.open(info) as member:
                    raw = member.read(MAX_CONFIG_BYTES + 1)  # the size in the header may lie
        except (zipfile.BadZipFile, KeyError, NotImplementedError, OSError, EOFError) as error:
            raise CheckpointCorruptedError(
                f"Checkpoint {path} is not a .keras archive with a readable {_CONFIG_NAME} "
                f"({type(error).__name__}: {error})."
            ) from None
    return _parse_config(path, _CONFIG_NAME, raw)


def _parse_config(path: str, name: str, raw: bytes) -> Any:
    """``raw``, the configuration ``name`` of the checkpoint at ``path``, parsed as JSON within
    the size limit."""
    if len(raw) > MAX_CONFIG_BYTES:
        raise CheckpointCorruptedError(
            f"Checkpoint {path}: its {name} is over the {MAX_CONFIG_BYTES} bytes keras_ckpt reads."
        )
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as error:
        raise CheckpointCorruptedError(
            f"Checkpoint {path}: its {name} is not valid JSON ({type(error).__name__})."
        ) from None


def _every_object(config: Any) -> Iterator[dict[str, Any]]:
    """Every dict in ``config``, however deeply nested (no recursion: the depth is the
    file's to choose)."""
    pending = [config]
    while pending:
        value = pending.pop()
        if isinstance(value, dict):
            yield value
            pending.extend(value.values())
        elif isinstance(value, list):
            pending.extend(value)


def _serialized_objects(config: Any) -> Iterator[dict[str, Any]]:
    """Every dict in ``config`` that names a module."""
    return (entry for entry in _every_object(config) if "module" in entry)


# Where Keras looks up a function saved with the module "builtins" (how it saves its own
# losses, metrics and activations passed as functions) before it would import ``builtins``.
_KERAS_FUNCTION_MODULES = (
    "activations",
    "constraints",
    "initializers",
    "losses",
    "metrics",
    "optimizers",
    "regularizers",
)


def _keras_builtin_function(module: str, entry: dict[str, Any]) -> bool:
    """Whether ``entry`` is a Keras function saved under the module ``builtins``, which Keras
    finds in its own modules first (a Python builtin such as ``exec`` is not)."""
    import keras

    name = entry.get("config")
    if module != "builtins" or entry.get("class_name") != "function" or not isinstance(name, str):
        return False
    return any(
        getattr(getattr(keras, namespace, None), name, None) is not None
        for namespace in _KERAS_FUNCTION_MODULES
    )


def _found_without_import(entry: dict[str, Any], custom_objects: dict[str, Any] | None) -> bool:
    """Whether Keras finds the object of ``entry`` among custom or registered objects, which
    it looks up before importing anything, under the one name Keras looks up: a function's
    name (``config``), else the registered name (the class name where the key is absent)."""
    import keras

    class_name = entry.get("class_name")
    if class_name == "function":
        name = entry.get("config")
    else:
        name = entry.get("registered_name", class_name)
    return (
        isinstance(name, str)
        and keras.saving.get_registered_object(name, custom_objects=custom_objects) is not None
    )
