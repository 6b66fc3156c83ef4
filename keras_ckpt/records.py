"""Checkpoint records and the manifest's JSON form. Pure Python: no Keras import.

A record describes one committed checkpoint file. The manifest (``keras_ckpt.json`` in the
checkpoint directory) is the commit record of a directory: a file that it does not list is not a
checkpoint, whatever its name.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, replace
from typing import Any

MANIFEST_NAME = "keras_ckpt.json"
MANIFEST_FORMAT = "keras_ckpt.manifest"
MANIFEST_VERSION = 1

BEST_ALIAS = "best"
LATEST_ALIAS = "latest"

KIND_MODEL = "model"
KIND_WEIGHTS = "weights"


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

    @property
    def filename(self) -> str:
        return os.path.basename(self.path)

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
            "state": self.state,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], directory: str) -> CheckpointRecord:
        return cls(
            path=os.path.join(directory, data["file"]),
            epoch=int(data["epoch"]),
            batch=data.get("batch"),
            step=int(data["step"]),
            metrics={name: float(value) for name, value in data.get("metrics", {}).items()},
            time=float(data["time"]),
            size=int(data["size"]),
            sha256=data["sha256"],
            keras_version=data.get("keras_version", "unknown"),
            kind=data.get("kind", KIND_MODEL),
            run=data.get("run", ""),
            kept_by=tuple(data.get("kept_by", ())),
            state=data.get("state"),
        )


def encode_float(value: float) -> float | str:
    """JSON has no NaN or infinity; store those as the strings ``float()`` reads back."""
    if math.isfinite(value):
        return value
    return str(value)  # "nan", "inf", "-inf"


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
    def from_json(cls, data: dict[str, Any], directory: str) -> Manifest:
        if data.get("format") != MANIFEST_FORMAT:
            raise ValueError(
                f"{os.path.join(directory, MANIFEST_NAME)} is not a keras_ckpt manifest "
                f"(format={data.get('format')!r})."
            )
        return cls(
            records=[CheckpointRecord.from_json(item, directory) for item in data["checkpoints"]],
            aliases=dict(data.get("aliases", {})),
            pending=data.get("pending"),
            trash=list(data.get("trash", [])),
        )

    def find(self, filename: str) -> CheckpointRecord | None:
        for record in self.records:
            if record.filename == filename:
                return record
        return None
