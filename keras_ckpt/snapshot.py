"""A model's saved state, copied to host memory now and written in Keras's own formats later.

``take_snapshot`` runs on the training thread. It finds what ``model.save_weights`` /
``model.save`` would write with Keras's own saving traversal (recorded once and reused while
the model has the same variables), then takes a copy of each variable that training cannot
change (``snapshot_copy``: a read on TensorFlow, a copy on the device on JAX; on the CPU, for
JAX and PyTorch, a copy into host buffers reused between saves). That is the stall.
``ModelSnapshot.write`` runs anywhere, the background writer included: it writes the copies in
the HDF5 layout of Keras's ``.weights.h5`` (the bytes equal those of ``model.save_weights``; the
test suite checks it), inside a ``.keras`` archive for a whole model, so plain
``keras.saving.load_model`` / ``model.load_weights`` open the files.

The traversal and the model config come from Keras internals, reached through
``keras_ckpt.keras_adapter``. Where the file is a legacy ``.h5`` / ``.hdf5`` file, or the Keras
version lacks those internals (then with one warning), ``take_snapshot`` returns ``None`` and
the callers save synchronously with ``write_now``.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import threading
import time
import weakref
import zipfile
import zlib
from collections.abc import Iterator
from typing import Any, BinaryIO

import h5py
import keras
import numpy as np

from keras_ckpt import ema, keras_adapter
from keras_ckpt.records import (
    DEDUP_DTYPES,
    CheckpointRecord,
    DedupDataset,
    DedupGroup,
    blob_filename,
    dedup_index_json,
)
from keras_ckpt.store import CheckpointCorruptedError, open_regular, read_dedup_index

_COPY_CHUNK = 1 << 20

# Kept for callers of earlier versions; ``take_snapshot`` reads the adapter's probe.
SUPPORTED = keras_adapter.SAVING_SUPPORTED


class ModelSnapshot:
    """Host copies of a model's variables (and, for a whole model, its config and assets)."""

    def __init__(
        self,
        calls: list[tuple[str, Any, Any]],
        config_json: str | None = None,
        metadata_json: str | None = None,
        assets: Any = None,
        max_shard_size: float | None = None,
        dedup_known: set[str] | None = None,
        buffers: _HostBuffers | None = None,
    ):
        self._calls = calls
        self._config_json = config_json
        self._metadata_json = metadata_json
        self._assets = assets
        self._max_shard_size = max_shard_size
        self._dedup_known = dedup_known
        self._buffers = buffers

    def write(self, path: str) -> None:
        """Writes the snapshot to ``path``: a ``.keras`` archive for a whole model, sharded
        weights (``path`` the ``.weights.json`` index, the shards beside it) with a
        ``max_shard_size``, otherwise a ``.weights.h5`` file. Any thread may call it, once."""
        try:
            if self._dedup_known is not None:
                _write_dedup(path, self._calls, self._dedup_known)
            elif self._max_shard_size is not None:
                calls = [(op, key, on_host(v) if op == "set" else v) for op, key, v in self._calls]
                keras_adapter.write_sharded_weights(path, calls, self._max_shard_size)
            # The config and metadata are both there (a whole model) or both absent (weights).
            elif self._config_json is None or self._metadata_json is None:
                _write_h5(path, self._calls)
            else:
                self._write_model(path, self._config_json, self._metadata_json)
        finally:
            self.discard()

    def discard(self) -> None:
        """Frees the copies (host buffers go back to the model's pool for the next snapshot)
        and the assets' temporary directory."""
        self._calls = []
        if self._buffers is not None:
            self._buffers.give_back()
            self._buffers = None
        if self._assets is not None:
            self._assets.close()
            self._assets = None

    def _write_model(self, path: str, config_json: str, metadata_json: str) -> None:
        _write_archive(path, self._calls, config_json, metadata_json, self._assets)


# The weights entry of a ``.keras`` archive is written in place: the HDF5 file is made inside
# the archive file, after a user block (space HDF5 leaves alone at the start of a file, a power
# of two of at least 512 bytes) that then takes the entry's zip header. The weights are written
# once, with no second file to copy them from.
_USER_BLOCK = 512
# The extra field that pads the entry's local header to the user block's size: the id that
# Android's zipalign uses for padding; readers skip extra fields they do not know.
_PADDING_EXTRA_ID = 0xD935


def _write_archive(
    path: str,
    calls: list[tuple[str, Any, Any]],
    config_json: str,
    metadata_json: str,
    assets: Any,
) -> None:
    """Writes Keras's ``.keras`` archive of ``calls``: the weights entry
    (``model.weights.h5``, stored), then the metadata, the config and the assets.

    Keras's own archives put the weights after the config; readers find entries through the
    central directory, so the order does not matter to them (plain ``keras.saving.load_model``
    opens the archive; the test suite checks it, and that every entry's CRC holds).
    """
    with h5py.File(path, "w", userblock_size=_USER_BLOCK) as file:
        _fill_h5(file, _h5_layout(calls))
    with open(path, "r+b") as file:
        weights = _stored_entry(file, keras_adapter.ARCHIVE_WEIGHTS_NAME)
        with zipfile.ZipFile(file, "w") as archive:  # goes on after the weights
            # The entry written in place goes first in the central directory, as it does in
            # the file (``filelist`` is the list ``infolist()`` returns).
            archive.filelist.insert(0, weights)
            archive.NameToInfo[weights.filename] = weights
            archive.writestr(keras_adapter.ARCHIVE_METADATA_NAME, metadata_json)
            archive.writestr(keras_adapter.ARCHIVE_CONFIG_NAME, config_json)
            if assets is not None:
                keras_adapter.zip_assets(archive, assets.working_dir)


def _stored_entry(file: BinaryIO, name: str, zip64: bool | None = None) -> zipfile.ZipInfo:
    """Makes the data after the first ``_USER_BLOCK`` bytes of ``file`` (open for reading and
    writing) the stored zip entry ``name``: writes its local header, padded to fill the user
    block, and returns its ``ZipInfo`` for the central directory, ``file`` positioned after
    the data. ``zip64`` forces (or, ``False``, forbids) zip64 sizes; by default they are used
    where zipfile's central directory uses them."""
    size = file.seek(0, os.SEEK_END) - _USER_BLOCK
    file.seek(_USER_BLOCK)
    crc = 0
    while chunk := file.read(_COPY_CHUNK):
        crc = zlib.crc32(chunk, crc)
    info = zipfile.ZipInfo(name, date_time=time.localtime(time.time())[:6])
    info.compress_type = zipfile.ZIP_STORED
    info.external_attr = 0o600 << 16  # as ``ZipFile.open(name, "w")`` sets it
    info.file_size = info.compress_size = size
    info.CRC = crc
    info.header_offset = 0
    if zip64 is None:
        zip64 = size > zipfile.ZIP64_LIMIT
    padding = _USER_BLOCK - len(info.FileHeader(zip64)) - 4
    info.extra = struct.pack("<HH", _PADDING_EXTRA_ID, padding) + bytes(padding)
    header = info.FileHeader(zip64)
    info.extra = b""  # the padding belongs to the local header only
    if len(header) != _USER_BLOCK:  # pragma: no cover - the name is Keras's, 16 characters
        raise AssertionError(f"zip header of {len(header)} bytes for a {_USER_BLOCK}-byte block")
    file.seek(0)
    file.write(header)
    file.seek(_USER_BLOCK + size)
    return info


def _write_h5(path: str, calls: list[tuple[str, Any, Any]]) -> None:
    """Writes recorded saving calls in the HDF5 layout of Keras's ``.weights.h5``: a group
    ``<path>/vars`` per object (its ``name`` as an attribute), a dataset per variable.

    The copies are written as they are (Keras's own store would copy each once more); the test
    suite checks that the bytes equal those of ``model.save_weights``.
    """
    _write_layout(path, _h5_layout(calls))


def _h5_layout(calls: list[tuple[str, Any, Any]]) -> Iterator[tuple[str, str, Any]]:
    """The groups (``("group", path, metadata)``) and datasets (``("dataset", key, array)``)
    of the ``.weights.h5`` file of ``calls``, in the order Keras makes them."""
    made, group_path = True, ""
    for op, key, value in calls:
        if op == "make":
            group_path, made = key, False
            # With metadata (or a Keras before 3.10) the group is made at once, else at
            # its first variable.
            if value or not keras_adapter.H5_GROUPS_DEFERRED:
                made = True
                yield "group", group_path, value
            continue
        if not made:
            made = True
            yield "group", group_path, None
        yield "dataset", key, on_host(value)


def _write_layout(path: str, layout: Any) -> None:
    """Writes ``_h5_layout``'s groups and datasets as a ``.weights.h5`` file."""
    with h5py.File(path, "w") as file:
        _fill_h5(file, layout)


def _fill_h5(file: Any, layout: Any) -> None:
    """Makes ``_h5_layout``'s groups and datasets in the open HDF5 ``file``."""
    group: Any = None  # a dataset always follows its group (``_h5_layout``)
    for kind, key, value in layout:
        if kind == "group":
            group = _vars_group(file, key, value)
        elif keras.backend.standardize_dtype(value.dtype) == "bfloat16":
            group.create_dataset(key, data=value).attrs["dtype"] = "bfloat16"
        else:
            group[key] = value


def _write_dedup(path: str, calls: list[tuple[str, Any, Any]], known: set[str]) -> None:
    """Writes a dedup checkpoint: ``path`` the index (``.weights.dedup.json``: the layout of
    the ``.weights.h5`` file, each variable by the blob of its bytes) and, beside it, the blobs
    that are not ``known`` (committed in the directory already): those are shared, not written
    again. Each variable is hashed here, on the writer thread."""
    folder = os.path.dirname(path)
    layout: list[DedupGroup | DedupDataset] = []
    written: set[str] = set()
    for kind, key, value in _h5_layout(calls):
        if kind == "group":
            layout.append(DedupGroup(path=key, attrs=_json_attrs(value)))
            continue
        array = np.asarray(value)
        if not array.flags.c_contiguous:  # (``ascontiguousarray`` would make a 0-d array 1-d)
            array = np.array(array, order="C")
        dtype = keras.backend.standardize_dtype(array.dtype)
        if dtype not in DEDUP_DTYPES:
            raise ValueError(
                f"dedup=True cannot store the variable {key!r} of dtype {dtype!r}; it stores "
                f"{sorted(DEDUP_DTYPES)}."
            )
        raw = array.reshape(-1).view(np.uint8).data  # the bytes, not a copy
        name = blob_filename(hashlib.sha256(raw).hexdigest())
        if name not in known and name not in written:
            with open(os.path.join(folder, name), "xb") as file:
                file.write(raw)
            written.add(name)
        layout.append(DedupDataset(key=key, blob=name, dtype=dtype, shape=tuple(array.shape)))
    with open(path, "w", encoding="utf-8") as file:
        json.dump(dedup_index_json(layout), file, indent=0)


def _json_attrs(metadata: dict[str, Any] | None) -> dict[str, Any]:
    """A group's attributes as JSON values (Keras gives strings and numbers)."""
    attrs = {}
    for name, value in (metadata or {}).items():
        attrs[str(name)] = value.item() if isinstance(value, np.generic) else value
    json.dumps(attrs)  # a value JSON cannot hold is an error now, not a corrupt index
    return attrs


def _blob_dtype(name: str) -> np.dtype[Any]:
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def assemble_weights(record: CheckpointRecord, path: str) -> None:
    """Writes the dedup checkpoint ``record`` as the standard ``.weights.h5`` file ``path``,
    which plain ``model.load_weights`` opens: the same groups and datasets in the same order as
    the file ``model.save_weights`` writes, each variable read from its blob.

    The index is checked as untrusted input (``store.read_dedup_index``): only blobs among the
    record's parts, each a regular file of the variable's size, are read.

    Raises:
        CheckpointCorruptedError: If the index or a blob is not what the record says.
    """
    layout = read_dedup_index(record)
    directory = os.path.dirname(record.path)

    def items() -> Iterator[tuple[str, str, Any]]:
        for item in layout:
            if isinstance(item, DedupGroup):
                yield "group", item.path, item.attrs
                continue
            with os.fdopen(open_regular(os.path.join(directory, item.blob)), "rb") as file:
                raw = file.read(item.size + 1)
            if len(raw) != item.size:
                raise CheckpointCorruptedError(
                    f"Checkpoint {record.path}: the blob {item.blob!r} has {len(raw)} bytes, "
                    f"not the {item.size} of {item.key!r}."
                )
            array = np.frombuffer(raw, dtype=_blob_dtype(item.dtype)).reshape(item.shape)
            yield "dataset", item.key, array

    _write_layout(path, items())


def _vars_group(file: Any, path: str, metadata: dict[str, Any] | None) -> Any:
    group = file.create_group("vars") if not path else file.create_group(path).create_group("vars")
    for name, value in (metadata or {}).items():
        group.attrs[name] = value
    return group


def host_copy(variable: Any) -> np.ndarray:
    """A NumPy copy of a variable's current value that training cannot change afterwards.

    One copy per variable, in the way each backend allows: TensorFlow's ``numpy()`` copies; a
    PyTorch tensor is cloned (on the CPU, where ``numpy()`` would share the memory that the
    optimizer updates in place) or moved to the host; other values go through NumPy.
    """
    value = getattr(variable, "value", variable)
    backend = keras.backend.backend()
    if backend == "tensorflow" and hasattr(value, "numpy"):
        return value.numpy()
    if backend == "torch" and hasattr(value, "detach") and "bfloat16" not in str(value.dtype):
        tensor = value.detach()
        tensor = tensor.clone() if tensor.device.type == "cpu" else tensor.cpu()
        return tensor.numpy()  # the memory of a tensor nothing else holds
    array = keras.ops.convert_to_numpy(value)
    if not array.flags.owndata:  # a view could change under us while training goes on
        array = np.array(array, copy=True)
    return array


def snapshot_copy(variable: Any) -> Any:
    """A copy of a variable's current value that training cannot change afterwards, taken as
    cheaply as the backend allows; ``on_host`` makes it a NumPy array later, on any thread.

    On TensorFlow (outside a distribution strategy) a read of the variable on its own device:
    TensorFlow copies the variable's buffer before the next in-place update while the read is
    alive (``keras_adapter.tensorflow_reads_hold`` checks that it does), so the copy happens
    only for variables that change, inside the training step's update, and the transfer to the
    host (none on a CPU) happens on the writer. On JAX a copy on the variable's device, queued
    there (JAX dispatches asynchronously), moved to the host by the writer. Elsewhere
    (PyTorch, whose optimizers update tensors in place) ``host_copy``.
    """
    value = getattr(variable, "value", variable)
    backend = keras.backend.backend()
    if backend == "tensorflow":
        read = keras_adapter.tensorflow_read(value)
        if read is not None:
            return read
    elif backend == "jax" and getattr(value, "is_fully_addressable", False):
        import jax.numpy as jnp

        # Training donates the variables' buffers to the next step: hold a copy, not the
        # value. The copy is queued on the device; it runs there while training goes on.
        return jnp.copy(value)
    return host_copy(variable)


def _host_memory(value: Any) -> np.ndarray | None:
    """The host memory of a variable's value that lives on the CPU, as a NumPy array without a
    copy (JAX and PyTorch on the CPU); ``None`` for any other value."""
    value = getattr(value, "value", value)
    backend = keras.backend.backend()
    if backend == "jax" and getattr(value, "is_fully_addressable", False):
        if all(device.platform == "cpu" for device in value.devices()):
            return np.asarray(value)
    elif backend == "torch" and hasattr(value, "detach") and value.device.type == "cpu":
        if "bfloat16" not in str(value.dtype):  # (NumPy has no bfloat16 of its own)
            return value.detach().numpy()
    return None


class _HostBuffers:
    """Host arrays that snapshots of a model copy its CPU values into, reused between saves.

    JAX and PyTorch on the CPU copy a snapshot on the training thread. Copying into memory
    touched before is about 1.7 times faster than into fresh memory, whose pages the system
    must first map and clear (569 MB: 88 ms against 150 ms). A snapshot borrows the model's free
    buffers and gives them back once written; while a save is in flight the next snapshot finds
    none and allocates. ``release`` (at the end of ``fit``) frees them.
    """

    _pools: weakref.WeakKeyDictionary[Any, dict[int, np.ndarray]] = weakref.WeakKeyDictionary()
    # Per model, how many times its buffers were released: a snapshot borrowed before a
    # release drops its buffers when written instead of pooling them again.
    _releases: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()
    _lock = threading.Lock()

    def __init__(self, model: Any, available: dict[int, np.ndarray], releases: int):
        self._model = weakref.ref(model)
        self._available = available
        self._released_before = releases
        self._used: dict[int, np.ndarray] = {}

    @classmethod
    def borrow(cls, model: Any) -> _HostBuffers:
        """The model's free buffers (none if a snapshot in flight holds them)."""
        with cls._lock:
            return cls(model, cls._pools.pop(model, {}), cls._releases.get(model, 0))

    @classmethod
    def release(cls, model: Any) -> None:
        """Frees the model's buffers; a snapshot in flight frees its own once written."""
        with cls._lock:
            cls._pools.pop(model, None)
            cls._releases[model] = cls._releases.get(model, 0) + 1

    def copy(self, index: int, value: Any) -> Any:
        """``snapshot_copy(value)``; a CPU value is copied into buffer ``index`` instead."""
        memory = _host_memory(value)
        if memory is None:
            return snapshot_copy(value)
        buffer = self._available.pop(index, None)
        if buffer is None or buffer.shape != memory.shape or buffer.dtype != memory.dtype:
            buffer = np.empty_like(memory)
        np.copyto(buffer, memory)
        self._used[index] = buffer
        return buffer

    def give_back(self) -> None:
        """Makes the buffers used free for the next snapshot of the model."""
        model = self._model()
        if model is not None and self._used:
            with self._lock:
                if type(self)._releases.get(model, 0) == self._released_before:
                    type(self)._pools[model] = self._used
        self._used = {}


def release_host_buffers(model: Any) -> None:
    """Frees the host buffers that snapshots of ``model`` reuse between saves (once no save is
    in flight, all of them); a later snapshot allocates again."""
    _HostBuffers.release(model)


def on_host(value: Any) -> np.ndarray:
    """``value`` from ``snapshot_copy`` as a NumPy array (the same memory where it is on the
    host already)."""
    return value if isinstance(value, np.ndarray) else np.asarray(value)


class _RecordingStore(keras_adapter.H5StoreBase):
    """Takes the calls Keras's saving traversal makes, keeping the values as given."""

    def __init__(self) -> None:  # no file: nothing of H5IOStore's own state is needed
        self.mode = "w"
        self.archive = None
        self.calls: list[tuple[str, Any, Any]] = []

    def __bool__(self) -> bool:
        return True

    def make(self, path: str, metadata: dict[str, Any] | None = None) -> _RecordingStore:
        self.calls.append(("make", path, metadata))
        return self

    def __setitem__(self, key: str, value: Any) -> None:
        self.calls.append(("set", key, value))

    def close(self) -> None:
        pass


# The traversal walks every attribute of every layer (milliseconds of pure Python). When all it
# finds are variables, its result is reused for as long as the model has the same variables:
# per model, (variables' ids, calls, whether any object wrote assets: None if not asked yet).
_plans: weakref.WeakKeyDictionary[Any, tuple[tuple[int, ...], list[Any], bool | None]] = (
    weakref.WeakKeyDictionary()
)


def _variables_signature(model: keras.Model) -> tuple[int, ...]:
    optimizer = getattr(model, "optimizer", None)
    variables = list(model.variables) + list(getattr(optimizer, "variables", []) or [])
    return tuple(id(v) for v in variables)


def _saving_calls(model: keras.Model, with_assets: bool) -> tuple[list[Any], Any]:
    """The calls Keras's saving traversal makes, and the assets store (or ``None``)."""
    signature = _variables_signature(model)
    cached = _plans.get(model)
    if (
        cached is not None
        and cached[0] == signature
        and not (with_assets and cached[2] is not False)
    ):
        return cached[1], None
    recorder = _RecordingStore()
    # Assets (vocabularies and the like) are small and rare: written to a temporary directory
    # now, zipped by the writer.
    assets = keras_adapter.new_assets_store() if with_assets else None
    try:
        keras_adapter.walk_saved_state(model, weights_store=recorder, assets_store=assets)
    except BaseException:
        if assets is not None:
            assets.close()
        raise
    has_assets = None
    if assets is not None:
        has_assets = bool(os.listdir(assets.working_dir))
        if not has_assets:  # nothing to zip: Keras writes no assets entry either
            assets.close()
            assets = None
    elif cached is not None and cached[0] == signature:
        has_assets = cached[2]
    plan = _with_optimizer_variables(model, recorder.calls)
    if keras_adapter.saved_by_keras_code_alone(model) and all(
        isinstance(v, keras.Variable) for op, _, v in plan if op == "set"
    ):
        _plans[model] = (signature, plan, has_assets)
    else:
        _plans.pop(model, None)
    return recorder.calls, assets


def _with_optimizer_variables(
    model: keras.Model, calls: list[tuple[str, Any, Any]]
) -> list[tuple[str, Any, Any]]:
    """``calls`` with the optimizer's values replaced by its variables.

    Keras's optimizers save ``variable.numpy()`` for each of ``optimizer.variables`` in order,
    under the path ``optimizer``; knowing the variables lets a later snapshot copy them without
    walking the model again. Anything else is left as it is (and is then walked every time).
    """
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None or not keras_adapter.optimizer_saves_like_keras(optimizer):
        return calls
    variables = list(optimizer.variables)
    plan, group = [], None
    for op, key, value in calls:
        if op == "make":
            group = key
        elif group == "optimizer" and key.isdigit() and int(key) < len(variables):
            variable = variables[int(key)]
            if tuple(np.shape(value)) == tuple(variable.shape):
                value = variable
        plan.append((op, key, value))
    return plan


def take_snapshot(
    model: keras.Model,
    filepath: str,
    weights_only: bool,
    max_shard_size: float | None = None,
    dedup_known: set[str] | None = None,
) -> ModelSnapshot | None:
    """Copies what ``model.save_weights(filepath)`` / ``model.save(filepath)`` would write
    (``model.save_weights(filepath, max_shard_size=...)`` for sharded ``.weights.json``).
    With ``dedup_known`` (weights stored once), the snapshot writes a dedup index
    (``.weights.dedup.json``) and the blobs not among ``dedup_known``.

    Returns ``None`` where the file must be written synchronously by Keras: a legacy ``.h5`` /
    ``.hdf5`` model or weights file, or a Keras without the saving internals used here (probe
    ``keras_adapter.SAVING_SUPPORTED``; then with one warning per process; for sharded weights
    also ``keras_adapter.SHARDED_SNAPSHOT_SUPPORTED``).
    """
    if not keras_adapter.can_snapshot():
        return None
    if weights_only:
        if dedup_known is not None:
            pass  # written by ``_write_dedup`` from the copies
        elif max_shard_size is not None:
            if not keras_adapter.SHARDED_SNAPSHOT_SUPPORTED:
                return None
        elif not filepath.endswith(".weights.h5"):
            return None
        if not model.built:
            raise ValueError(
                "You are saving a model that has not yet been built. Try building the model "
                "first by calling it on some data or by using `build()`."
            )
    elif not filepath.endswith(".keras"):
        return None
    config_json = metadata_json = None
    if not weights_only:
        config_json, metadata_json = keras_adapter.model_config_json(model)
    calls, assets = _saving_calls(model, with_assets=not weights_only)
    try:
        calls = _raw_weights_and_averages(model, calls)
        buffers = _HostBuffers.borrow(model)
        copies = [
            (op, key, buffers.copy(index, value) if op == "set" else value)
            for index, (op, key, value) in enumerate(calls)
        ]
    except BaseException:
        if assets is not None:
            assets.close()
        raise
    return ModelSnapshot(
        copies,
        config_json,
        metadata_json,
        assets,
        max_shard_size if weights_only else None,
        dedup_known if weights_only else None,
        buffers,
    )


def _raw_weights_and_averages(
    model: keras.Model, calls: list[tuple[str, Any, Any]]
) -> list[tuple[str, Any, Any]]:
    """``calls`` reading the raw weights for the model's variables and the moving averages for
    the optimizer's slots, wherever ``SwapEMAWeights`` or the end of ``fit`` has put them now
    (``ema.saved_sources``): a checkpoint of an EMA run always resumes from the raw weights."""
    sources = ema.saved_sources(model)
    if not sources:
        return calls
    optimizer_variables = list(getattr(model.optimizer, "variables", []) or [])
    found, result, group = set(), [], None
    for op, key, value in calls:
        if op == "make":
            group = key
        elif op == "set":
            variable = value
            if (
                not isinstance(value, keras.Variable)
                and group == "optimizer"
                and key.isdigit()
                and int(key) < len(optimizer_variables)
            ):
                variable = optimizer_variables[int(key)]  # Keras saved a copy of its value
            if id(variable) in sources:
                found.add(id(variable))
                value = sources[id(variable)]
        result.append((op, key, value))
    if len(found) != len(sources):
        raise RuntimeError(
            f"keras_ckpt: Keras {keras.__version__} saved {len(found)} of the {len(sources)} "
            "model and moving-average variables where keras_ckpt looks for them; the checkpoint "
            "would hold the averages as the model's weights, so it is not written."
        )
    return result


def write_now(
    model: keras.Model, path: str, weights_only: bool, max_shard_size: float | None = None
) -> None:
    """Keras's own synchronous save, for files ``take_snapshot`` does not handle.

    Weights to a legacy ``.h5`` / ``.hdf5`` name (which Keras 3's ``save_weights`` refuses)
    are written in the legacy layout ``model.load_weights`` reads there; a whole model to such
    a name is Keras's legacy HDF5 model (``model.save`` writes it). With ``max_shard_size``,
    sharded weights (``path`` the ``.weights.json`` index).
    """
    with ema.raw_weights_in_model(model):
        if weights_only and max_shard_size is not None:
            model.save_weights(path, overwrite=True, max_shard_size=max_shard_size)
        elif weights_only and not path.endswith(".weights.h5"):
            keras_adapter.save_legacy_h5_weights(model, path)
        elif weights_only:
            model.save_weights(path, overwrite=True)
        else:
            model.save(path, overwrite=True)


__all__ = [
    "ModelSnapshot",
    "SUPPORTED",
    "assemble_weights",
    "host_copy",
    "on_host",
    "release_host_buffers",
    "snapshot_copy",
    "take_snapshot",
    "write_now",
]


# Callbacks' arrays beside the variables ----------------------------------------------------

# The group of a resume checkpoint's ``.weights.h5`` that holds the NumPy arrays of callback
# states (a running average of the weights, say), one dataset per array named by its index.
# Keras's loading walks the model's own objects only, so plain ``load_weights`` passes it by.
CALLBACK_ARRAYS_GROUP = "keras_ckpt_callback_arrays"


def append_arrays(path: str, arrays: list[np.ndarray]) -> None:
    """Adds ``arrays`` to the written ``.weights.h5`` at ``path``, in ``CALLBACK_ARRAYS_GROUP``."""
    with h5py.File(path, "a") as file:
        group = file.create_group(CALLBACK_ARRAYS_GROUP)
        for index, array in enumerate(arrays):
            group.create_dataset(str(index), data=array)


def read_arrays(path: str) -> list[np.ndarray]:
    """The arrays ``append_arrays`` added to the file at ``path`` (none: ``[]``).

    Raises:
        ValueError: If the group holds anything but datasets named 0, 1, ...
    """
    with h5py.File(path, "r") as file:
        group = file.get(CALLBACK_ARRAYS_GROUP)
        if group is None:
            return []
        names = sorted(group.keys(), key=lambda name: (len(name), name))
        if names != [str(index) for index in range(len(names))] or not all(
            isinstance(group[name], h5py.Dataset) for name in names
        ):
            raise ValueError(f"{path}: {CALLBACK_ARRAYS_GROUP} holds {names[:5]}")
        return [np.asarray(group[name][()]) for name in names]
