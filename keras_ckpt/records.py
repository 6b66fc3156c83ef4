"""Checkpoint records and the manifest's JSON form. Pure Python: no Keras import.

A record describes one committed checkpoint file. The manifest (``keras_ckpt.json`` in the
checkpoint directory) is the commit record of a directory: a file that it does not list is not a
checkpoint, whatever its name.
"""

from __future__ import annotations

import math
import numbers
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

MANIFEST_NAME = "keras_ckpt.json"
MANIFEST_FORMAT = "keras_ckpt.manifest"
MANIFEST_VERSION = 1
# The advisory lock a writing process holds on its directory (see keras_ckpt.store).
LOCK_NAME = ".keras_ckpt.lock"
# Files keras_ckpt is writing right now; only names of this pattern are ever removed as leftovers.
TEMP_PREFIX = ".keras_ckpt-tmp-"
TEMP_PATTERN = re.compile(re.escape(TEMP_PREFIX) + r"(?:[0-9a-f]{12}-|probe-)")

BEST_ALIAS = "best"
LATEST_ALIAS = "latest"
ALIASES = (BEST_ALIAS, LATEST_ALIAS)

KIND_MODEL = "model"
KIND_WEIGHTS = "weights"

# Keras's sharded weights: an index (``<stem>.weights.json``) naming its shard files.
SHARDED_EXTENSION = ".weights.json"

# Weights stored once (``dedup=True``): an index (``<stem>.weights.dedup.json``) naming
# content-addressed blobs, ``blob-<sha256 of the bytes>.bin``, which several checkpoints share.
DEDUP_EXTENSION = ".weights.dedup.json"
DEDUP_FORMAT = "keras_ckpt.dedup"
DEDUP_VERSION = 1
BLOB_PATTERN = re.compile(r"blob-[0-9a-f]{64}\.bin")
# Bytes per element of each dtype a dedup index may name (NumPy's names; bfloat16 via
# ml_dtypes, as Keras has it).
DEDUP_DTYPES = {
    "bool": 1,
    "int8": 1,
    "uint8": 1,
    "int16": 2,
    "uint16": 2,
    "int32": 4,
    "uint32": 4,
    "int64": 8,
    "uint64": 8,
    "float16": 2,
    "bfloat16": 2,
    "float32": 4,
    "float64": 8,
    "complex64": 8,
    "complex128": 16,
}


def blob_filename(sha256: str) -> str:
    """The file name of the blob whose bytes have the hex SHA-256 ``sha256``.

    Example:
        >>> blob_filename("ab" * 32) == "blob-" + "ab" * 32 + ".bin"
        True
    """
    name = f"blob-{sha256}.bin"
    if not BLOB_PATTERN.fullmatch(name):
        raise ValueError(f"Not a hex SHA-256: {sha256!r}")
    return name


def first_shard_name(index_filename: str) -> str:
    """The shard Keras opens first for a sharded index, whatever the index lists: Keras names
    shards after the index's name without ``.json`` and with every ``.weights`` removed.

    Example:
        >>> first_shard_name("e3.weights.json"), first_shard_name("a.weights.b.weights.json")
        ('e3_00000.weights.h5', 'a.b_00000.weights.h5')
    """
    return shard_base_name(index_filename) + "_00000.weights.h5"


def shard_base_name(index_filename: str) -> str:
    """What Keras puts before ``_<5 digits>.weights.h5`` in the shards of ``index_filename``."""
    return index_filename.removesuffix(".json").replace(".weights", "")


def is_blob(name: str) -> bool:
    """Whether ``name`` is a content-addressed blob, a file several checkpoints may share."""
    return BLOB_PATTERN.fullmatch(name) is not None


def unreferenced(names: list[str], remaining: list[CheckpointRecord]) -> list[str]:
    """``names`` (the files of dropped checkpoints) less those a ``remaining`` record still
    lists: a blob shared with a checkpoint that stays is not deleted.

    Example:
        >>> kept = CheckpointRecord("d/b.weights.dedup.json", 2, 2, {}, 0.0, 1, "", "", "weights",
        ...     "", parts=(CheckpointPart("blob-" + "0" * 64 + ".bin", 4, "0" * 64),))
        >>> unreferenced(["a.weights.dedup.json", "blob-" + "0" * 64 + ".bin"], [kept])
        ['a.weights.dedup.json']
    """
    listed = {name for record in remaining for name in record.filenames}
    return [name for name in names if name not in listed]


class ManifestError(ValueError):
    """A manifest that keras_ckpt cannot trust: refused whole, nothing is acted on because of it.

    Checkpoint directories are untrusted input (downloaded, shared), so every name a manifest
    gives must be a plain file name inside the directory, and every field must have its type.
    """


def name_problem(name: Any) -> str | None:
    """Why ``name`` is not a plain file name inside a directory, or ``None`` if it is one.

    Example:
        >>> name_problem("epoch003.keras") is None
        True
        >>> name_problem("../victim.txt")
        'has a path separator'
    """
    if not isinstance(name, str):
        return f"is a {type(name).__name__}, not a string"
    if name in ("", ".", ".."):
        return "is not a file name"
    if not name.isprintable():  # a NUL, a newline, an escape sequence for the terminal
        return "has a control character"
    # Both separators everywhere: a manifest written on one system is read on others.
    if "/" in name or "\\" in name or os.path.isabs(name) or os.path.splitdrive(name)[0]:
        return "has a path separator"
    if name in (MANIFEST_NAME, LOCK_NAME):
        return "is a name keras_ckpt reserves for itself"
    return None


@dataclass(frozen=True)
class CheckpointPart:
    """One more file of a checkpoint that is several files (a shard of Keras's sharded weights).

    Attributes:
        filename: A plain file name in the checkpoint's directory.
        size: Its size in bytes.
        sha256: Hex SHA-256 of it.
    """

    filename: str
    size: int
    sha256: str

    def to_json(self) -> dict[str, Any]:
        return {"file": self.filename, "size": self.size, "sha256": self.sha256}


@dataclass(frozen=True)
class CheckpointRecord:
    """One committed checkpoint.

    Attributes:
        path: Absolute path of the checkpoint file.
        epoch: 1-based epoch the checkpoint was taken in, as Keras formats ``{epoch}``.
        step: Training batches completed in the run when the checkpoint was taken.
        metrics: The logs of that epoch (or batch) as plain floats.
        time: Wall-clock time of the commit (seconds since the epoch).
        size: Size of the file in bytes.
        sha256: Hex SHA-256 of the file.
        keras_version: Version of Keras that wrote the file.
        kind: ``"model"`` (a whole model, ``keras.saving.load_model``) or ``"weights"``
            (``model.load_weights``).
        run: Identifier of the training run (one ``fit`` call) that wrote it.
        kept_by: Names of the callbacks whose retention keeps this file. A file is deleted only
            when no callback keeps it.
        batch: 1-based batch within the epoch for checkpoints taken mid-epoch, else ``None``.
        state: What a resume needs beyond the file (epoch position, callback and random
            states), for checkpoints written by ResumeFromLatest; else ``None``.
        parts: The checkpoint's other files, for one that is several files (Keras's sharded
            weights: ``path`` is the ``.weights.json`` index, the parts are its shards); they
            are committed, verified and deleted together with ``path``. Empty for one file.
            For weights stored once (``path`` a ``.weights.dedup.json`` index) the parts are
            blobs, which other records may list too: a blob goes with the last of them.

    Records are read-only: reads of an unchanged manifest share them, dictionaries included.
    """

    path: str
    epoch: int
    step: int
    metrics: dict[str, float]
    time: float
    size: int
    sha256: str
    keras_version: str
    kind: str
    run: str
    kept_by: tuple[str, ...] = ()
    batch: int | None = None
    state: dict[str, Any] | None = None
    parts: tuple[CheckpointPart, ...] = ()

    @property
    def filename(self) -> str:
        return os.path.basename(self.path)

    @property
    def filenames(self) -> tuple[str, ...]:
        """Every file of the checkpoint: ``filename``, then its parts'."""
        return (self.filename, *(part.filename for part in self.parts))

    @property
    def total_size(self) -> int:
        """Bytes of every file of the checkpoint (``size`` plus its parts')."""
        return self.size + sum(part.size for part in self.parts)

    def without_keeper(self, keeper: str) -> CheckpointRecord:
        return replace(self, kept_by=tuple(k for k in self.kept_by if k != keeper))

    def to_json(self) -> dict[str, Any]:
        return {
            "file": self.filename,
            "epoch": self.epoch,
            "batch": self.batch,
            "step": self.step,
            "metrics": {name: encode_float(value) for name, value in self.metrics.items()},
            "time": self.time,
            "size": self.size,
            "sha256": self.sha256,
            "keras_version": self.keras_version,
            "kind": self.kind,
            "run": self.run,
            "kept_by": list(self.kept_by),
            "state": None if self.state is None else encode_non_finite(self.state),
            # Only where there are parts: a one-file record reads as before this field existed.
            **({"parts": [part.to_json() for part in self.parts]} if self.parts else {}),
        }

    @classmethod
    def from_json(cls, data: Any, directory: str, where: str = "a checkpoint") -> CheckpointRecord:
        """The record of a manifest entry, checked field by field.

        Raises:
            ManifestError: If the entry is not an object, its ``file`` is not a plain file name
                (a path separator, ``..``, a NUL, a reserved or temporary name), or a field has
                the wrong type. The message names the entry and the field.
        """
        entry = _Entry(data, where)
        filename = entry.name("file")
        if filename.startswith(TEMP_PREFIX) or is_blob(filename):
            raise ManifestError(
                f"{where} has file={filename!r}: a temporary name or a blob, not a checkpoint"
            )
        entry.where = f"{where} ({filename!r})"
        kept_by = entry.get("kept_by", list, [])
        metrics = entry.get("metrics", dict, {})
        return cls(
            path=os.path.join(directory, filename),
            epoch=entry.integer("epoch"),
            batch=entry.integer("batch", optional=True),
            step=entry.integer("step"),
            metrics={
                str(name): entry.number(f"metrics.{name}", value) for name, value in metrics.items()
            },
            time=entry.finite("time"),
            size=entry.integer("size"),
            sha256=entry.get("sha256", str),
            keras_version=entry.get("keras_version", str, "unknown"),
            kind=entry.choice("kind", (KIND_MODEL, KIND_WEIGHTS), KIND_MODEL),
            run=entry.get("run", str, ""),
            kept_by=tuple(entry.text(f"kept_by[{i}]", keeper) for i, keeper in enumerate(kept_by)),
            state=entry.get("state", dict, None),
            parts=_parts(entry, filename),
        )


def _parts(entry: _Entry, filename: str) -> tuple[CheckpointPart, ...]:
    """The ``parts`` of a manifest entry: each a plain, non-temporary file name in the
    directory, other than the entry's own file, listed once."""
    parts = []
    seen = {filename}
    for index, item in enumerate(entry.get("parts", list, [])):
        part = _Entry(item, f"{entry.where} parts[{index}]")
        name = part.name("file")
        if name.startswith(TEMP_PREFIX) or name in seen:
            raise part.fail("file", name, "a checkpoint file listed once, not a temporary name")
        seen.add(name)
        sha256 = part.get("sha256", str)
        if is_blob(name) and sha256 != name[len("blob-") : -len(".bin")]:
            raise part.fail("sha256", sha256, f"the SHA-256 its name {name!r} gives")
        parts.append(CheckpointPart(filename=name, size=part.integer("size"), sha256=sha256))
    return tuple(parts)


@dataclass(frozen=True)
class DedupGroup:
    """A ``vars`` group of Keras's ``.weights.h5`` layout: ``path`` (``""`` for the top-level
    ``vars``) and its attributes."""

    path: str
    attrs: dict[str, Any]


@dataclass(frozen=True)
class DedupDataset:
    """A variable in the current group: its key, the blob holding its bytes, dtype and shape."""

    key: str
    blob: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def size(self) -> int:
        """Bytes of the variable (so of its blob)."""
        count = 1
        for dimension in self.shape:
            count *= dimension
        return count * DEDUP_DTYPES[self.dtype]


def dedup_index_layout(data: Any, where: str) -> list[DedupGroup | DedupDataset]:
    """The layout a dedup index (``.weights.dedup.json``) gives, every field checked.

    The index is untrusted input like a manifest: each blob must be a blob name (a plain file
    name of the pattern ``blob-<sha256>.bin``), each dtype a known one, each shape a list of
    integers.

    Args:
        data: The parsed JSON of the index.
        where: The index, as the error names it.

    Raises:
        ManifestError: Naming the entry and the field that is wrong.

    Example:
        >>> layout = dedup_index_layout({"format": "keras_ckpt.dedup", "version": 1, "layout": [
        ...     {"group": "layers/dense", "attrs": {}},
        ...     {"dataset": "0", "blob": "blob-" + "0" * 64 + ".bin", "dtype": "float32",
        ...      "shape": [2, 3]}]}, "e1")
        >>> layout[1].size
        24
    """
    top = _Entry(data, where)
    if data.get("format") != DEDUP_FORMAT:
        raise top.fail("format", data.get("format"), repr(DEDUP_FORMAT))
    if data.get("version") != DEDUP_VERSION:
        raise top.fail("version", data.get("version"), f"{DEDUP_VERSION} (a newer keras_ckpt?)")
    layout: list[DedupGroup | DedupDataset] = []
    for index, item in enumerate(top.get("layout", list)):
        entry = _Entry(item, f"{where} layout[{index}]")
        if "group" in item:
            path = entry.get("group", str)
            if not path.isprintable():
                raise entry.fail("group", path, "a printable HDF5 group path")
            attrs = dict(entry.get("attrs", dict, {}))
            for name, value in attrs.items():
                if not isinstance(value, (str, int, float)) or (
                    isinstance(value, str) and not value.isprintable()
                ):
                    raise entry.fail(f"attrs.{name}", value, "a number or a printable string")
            layout.append(DedupGroup(path=path, attrs=attrs))
            continue
        key = entry.get("dataset", str)
        if not key.isprintable() or not key or "/" in key:
            raise entry.fail("dataset", key, "a printable dataset name without '/'")
        blob = entry.name("blob")
        if not is_blob(blob):
            raise entry.fail("blob", blob, "a blob name, blob-<sha256>.bin")
        dtype = entry.get("dtype", str)
        if dtype not in DEDUP_DTYPES:
            raise entry.fail("dtype", dtype, f"one of {sorted(DEDUP_DTYPES)}")
        shape = entry.get("shape", list)
        if len(shape) > 64:
            raise entry.fail("shape", shape, "at most 64 dimensions")
        dimensions = tuple(entry.integer_value(f"shape[{i}]", d) for i, d in enumerate(shape))
        layout.append(DedupDataset(key=key, blob=blob, dtype=dtype, shape=dimensions))
    if layout and not isinstance(layout[0], DedupGroup):
        raise top.fail("layout", data["layout"][0], "a group first")
    return layout


def dedup_index_json(layout: list[DedupGroup | DedupDataset]) -> dict[str, Any]:
    """The JSON form of ``layout`` that ``dedup_index_layout`` reads back."""
    entries: list[dict[str, Any]] = []
    for item in layout:
        if isinstance(item, DedupGroup):
            entries.append({"group": item.path, "attrs": item.attrs})
        else:
            entries.append(
                {"dataset": item.key, "blob": item.blob, "dtype": item.dtype, "shape": item.shape}
            )
    return {"format": DEDUP_FORMAT, "version": DEDUP_VERSION, "layout": entries}


def sharded_index_shards(data: Any, where: str) -> list[str]:
    """The shard file names that a Keras sharded-weights index (``.weights.json``) names.

    Keras opens each name of the index's ``weight_map`` beside the index, so an index is
    untrusted input like a manifest: every name must be a plain file name.

    Args:
        data: The parsed JSON of the index.
        where: The index, as the error names it.

    Raises:
        ManifestError: If the index is not an object with a ``weight_map`` object whose values
            are plain file names (or lists of them).

    Example:
        >>> sharded_index_shards({"weight_map": {"/vars": "m_00000.weights.h5"}}, "m")
        ['m_00000.weights.h5']
    """
    weight_map = _Entry(data, where).get("weight_map", dict)
    names: dict[str, None] = {}
    for key, value in weight_map.items():
        for item in value if isinstance(value, list) else [value]:
            _Entry({"file": item}, f"{where} weight_map[{key!r}]").name("file")
            names[item] = None
    return list(names)


class _Entry:
    """Reads the fields of one manifest object, raising ``ManifestError`` naming what is wrong."""

    def __init__(self, data: Any, where: str):
        if not isinstance(data, dict):
            raise ManifestError(f"{where} is a {type(data).__name__}, not an object")
        self.data, self.where = data, where

    def fail(self, field_name: str, value: Any, expected: str) -> ManifestError:
        shown = repr(value)
        shown = shown if len(shown) <= 80 else shown[:77] + "..."
        return ManifestError(f"{self.where} has {field_name}={shown}: expected {expected}")

    def get(self, key: str, kind: Any, default: Any = ...) -> Any:
        if key not in self.data:
            if default is ...:
                raise ManifestError(f"{self.where} has no {key!r} field")
            return default
        value = self.data[key]
        if value is None and default is None:
            return None
        if kind is object:
            return value
        if not isinstance(value, kind) or isinstance(value, bool):
            expected = {dict: "an object", list: "a list", str: "a string"}.get(kind, "a number")
            raise self.fail(key, value, expected)
        return value

    def name(self, key: str) -> str:
        value = self.get(key, object)
        problem = name_problem(value)
        if problem is not None:
            raise self.fail(key, value, f"a plain file name in the directory (it {problem})")
        return str(value)  # name_problem refuses anything but a str

    def text(self, field_name: str, value: Any) -> str:
        if not isinstance(value, str):
            raise self.fail(field_name, value, "a string")
        return value

    def integer(self, key: str, optional: bool = False) -> Any:
        value = self.get(key, object, None if optional else ...)
        if value is None and optional:
            return None
        return self.integer_value(key, value)

    def integer_value(self, field_name: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
            raise self.fail(field_name, value, "an integer from 0 to 2**63 - 1")
        return value

    def number(self, field_name: str, value: Any) -> float:
        if isinstance(value, str) and value in ("nan", "inf", "-inf"):
            return float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.fail(field_name, value, "a number (or 'nan', 'inf', '-inf')")
        return float(value)

    def finite(self, key: str) -> float:
        value = self.get(key, object)
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
        ):
            raise self.fail(key, value, "a finite number")
        return float(value)

    def choice(self, key: str, allowed: tuple[str, ...], default: str) -> str:
        value: str = self.get(key, str, default)
        if value not in allowed:
            raise self.fail(key, value, f"one of {allowed}")
        return value


def encode_float(value: float) -> float | str:
    """JSON has no NaN or infinity; store those as the strings ``float()`` reads back."""
    if math.isfinite(value):
        return value
    return str(value)  # "nan", "inf", "-inf"


def encode_non_finite(value: Any) -> Any:
    """``value`` (JSON-like data) with every NaN or infinite float as the string ``float()``
    reads back, so that no state can make the manifest unwritable (JSON has no NaN).

    Example:
        >>> encode_non_finite({"loss": [0.5, float("nan")], "best": float("inf")})
        {'loss': [0.5, 'nan'], 'best': 'inf'}
    """
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):
        return encode_float(float(value))
    if isinstance(value, Mapping):
        return {key: encode_non_finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [encode_non_finite(item) for item in value]
    return value


@dataclass
class Manifest:
    """The committed state of one checkpoint directory.

    ``pending`` holds a commit in flight: a temporary file that is about to be renamed over
    ``record.path``. ``trash`` holds files that are no longer checkpoints and are being deleted.
    Both are finished or undone when the directory is next opened.
    """

    records: list[CheckpointRecord] = field(default_factory=list)
    aliases: dict[str, str] = field(default_factory=dict)
    pending: dict[str, Any] | None = None
    trash: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": MANIFEST_FORMAT,
            "version": MANIFEST_VERSION,
            "checkpoints": [record.to_json() for record in self.records],
            "aliases": dict(self.aliases),
            "pending": self.pending,
            "trash": list(self.trash),
        }

    @classmethod
    def from_json(cls, data: Any, directory: str) -> Manifest:
        """The manifest of ``directory`` from its parsed JSON, every entry checked.

        Raises:
            ManifestError: If anything in it is not what keras_ckpt writes: the message names
                the manifest, the entry and the field. Nothing is deleted, linked or loaded
                because of a manifest that is refused.
        """
        path = os.path.join(directory, MANIFEST_NAME)
        try:
            return cls._checked(data, directory)
        except ManifestError as error:
            raise ManifestError(
                f"The manifest {path} is refused: {error}. keras_ckpt wrote no such entry, so "
                "the directory was changed by something else; nothing was read, deleted or "
                "linked because of it."
            ) from None

    @classmethod
    def _checked(cls, data: Any, directory: str) -> Manifest:
        top = _Entry(data, "the manifest")
        if data.get("format") != MANIFEST_FORMAT:
            raise ManifestError(f"it is not a keras_ckpt manifest (format={data.get('format')!r})")
        if data.get("version", MANIFEST_VERSION) != MANIFEST_VERSION:
            raise top.fail(
                "version", data.get("version"), f"{MANIFEST_VERSION} (a newer keras_ckpt?)"
            )
        entries = top.get("checkpoints", list)
        records = [
            CheckpointRecord.from_json(item, directory, f"checkpoints[{index}]")
            for index, item in enumerate(entries)
        ]
        seen: set[str] = set()
        for record in records:
            # No file belongs to two checkpoints, but a blob (weights stored once) may.
            for name in record.filenames:
                if name in seen and not is_blob(name):
                    raise top.fail("checkpoints", name, "each file listed once")
                seen.add(name)
        aliases = top.get("aliases", dict, {})
        for alias, target in aliases.items():
            if alias not in ALIASES:
                raise top.fail("aliases", alias, f"an alias among {ALIASES}")
            _Entry({"target": target}, f"aliases[{alias!r}]").name("target")
        pending = top.get("pending", dict, None)
        if pending is not None:
            entry = _Entry(pending, "pending")
            temporary = entry.name("temp")
            if not TEMP_PATTERN.match(temporary):
                raise entry.fail("temp", temporary, f"a temporary name ({TEMP_PREFIX}...)")
            CheckpointRecord.from_json(entry.get("record", dict), directory, "pending.record")
        trash = top.get("trash", list, [])
        for index, name in enumerate(trash):
            _Entry({"name": name}, f"trash[{index}]").name("name")
        return cls(records=records, aliases=dict(aliases), pending=pending, trash=list(trash))

    def owner(self, filename: str) -> CheckpointRecord | None:
        """The checkpoint that ``filename`` is a file of (its index or a part), if any."""
        for record in self.records:
            if filename in record.filenames:
                return record
        return None

    def find(self, filename: str) -> CheckpointRecord | None:
        for record in self.records:
            if record.filename == filename:
                return record
        return None
