"""A model's saved state, copied to host memory now and written in Keras's own formats later.

``take_snapshot`` runs on the training thread: it walks the model with Keras's own saving
traversal, the one ``model.save_weights`` and ``model.save`` use, but stores a NumPy copy of each
variable instead of writing it. That copy is the whole stall. ``ModelSnapshot.write`` then runs
anywhere, the background writer included: it replays the same calls into Keras's own HDF5 store,
so the file has the layout, names and values that a synchronous Keras save of the same moment
would have, and plain ``keras.saving.load_model`` / ``model.load_weights`` open it.

The traversal and the stores are Keras internals (``keras.src.saving.saving_lib``). Where a
Keras version lacks them, or the file is a legacy ``.h5`` model, ``take_snapshot`` returns
``None`` and the callers save synchronously with ``model.save`` / ``model.save_weights``.
"""

from __future__ import annotations

import contextlib
import os
import zipfile
from typing import Any

import keras
import numpy as np

try:
    from keras.src.saving import saving_lib
except ImportError:  # pragma: no cover - a Keras without the internals this relies on
    saving_lib = None

_NEEDED = (
    "_save_state",
    "_serialize_model_as_json",
    "_write_to_zip_recursively",
    "H5IOStore",
    "DiskIOStore",
    "_CONFIG_FILENAME",
    "_METADATA_FILENAME",
    "_VARS_FNAME_H5",
    "_ASSETS_DIRNAME",
)

SUPPORTED = saving_lib is not None and all(hasattr(saving_lib, name) for name in _NEEDED)


class ModelSnapshot:
    """Host copies of a model's variables (and, for a whole model, its config and assets).

    Attributes:
        nbytes: Bytes of variable data held.
    """

    def __init__(
        self,
        calls: list[tuple[str, Any, Any]],
        config_json: str | None = None,
        metadata_json: str | None = None,
        assets: Any = None,
    ):
        self._calls = calls
        self._config_json = config_json
        self._metadata_json = metadata_json
        self._assets = assets
        self.nbytes = sum(value.nbytes for op, _, value in calls if op == "set")

    def write(self, path: str) -> None:
        """Writes the snapshot to ``path``: a ``.keras`` archive for a whole model, otherwise
        a ``.weights.h5`` file. Any thread may call it, once."""
        try:
            if self._config_json is None:
                self._write_weights(path)
            else:
                self._write_model(path)
        finally:
            self.discard()

    def discard(self) -> None:
        """Frees the copies (and the assets' temporary directory)."""
        self._calls = []
        if self._assets is not None:
            self._assets.close()
            self._assets = None

    def _write_weights(self, path: str) -> None:
        store = saving_lib.H5IOStore(path, mode="w")
        try:
            for op, key, value in self._calls:
                if op == "make":
                    store.make(key, metadata=value)
                else:
                    store[key] = value
        finally:
            store.close()

    def _write_model(self, path: str) -> None:
        # Keras's own .keras layout: metadata, config, the weights file, then the assets. The
        # weights go through a file beside the archive (as Keras does when memory is short),
        # so no second in-memory copy of the serialized weights is made.
        weights_path = path + ".weights.h5"
        try:
            with open(path, "wb") as file, zipfile.ZipFile(file, "w") as archive:
                with archive.open(saving_lib._METADATA_FILENAME, "w") as entry:
                    entry.write(self._metadata_json.encode())
                with archive.open(saving_lib._CONFIG_FILENAME, "w") as entry:
                    entry.write(self._config_json.encode())
                self._write_weights(weights_path)
                archive.write(weights_path, saving_lib._VARS_FNAME_H5)
                if self._assets is not None:
                    saving_lib._write_to_zip_recursively(
                        archive, self._assets.working_dir, saving_lib._ASSETS_DIRNAME
                    )
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(weights_path)


class _RecordingStore(saving_lib.H5IOStore if SUPPORTED else object):  # type: ignore[misc]
    """Takes the calls Keras's saving traversal makes and keeps host copies of the values."""

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
        array = keras.ops.convert_to_numpy(value)
        if not array.flags.owndata:  # a view could change under us while training goes on
            array = np.array(array, copy=True)
        self.calls.append(("set", key, array))

    def close(self) -> None:
        pass


def take_snapshot(model: keras.Model, filepath: str, weights_only: bool) -> ModelSnapshot | None:
    """Copies what ``model.save_weights(filepath)`` / ``model.save(filepath)`` would write.

    Returns ``None`` where the file must be written synchronously by Keras (a legacy ``.h5``
    model, or a Keras without the saving internals used here).
    """
    if not SUPPORTED:
        return None
    if weights_only:
        if not filepath.endswith(".weights.h5"):
            return None
        if not model.built:
            raise ValueError(
                "You are saving a model that has not yet been built. Try building the model "
                "first by calling it on some data or by using `build()`."
            )
    elif not filepath.endswith(".keras"):
        return None
    recorder = _RecordingStore()
    assets = None
    config_json = metadata_json = None
    try:
        if not weights_only:
            config_json, metadata_json = saving_lib._serialize_model_as_json(model)
            # Assets (vocabularies and the like) are small and rare: written to a temporary
            # directory now, zipped by the writer.
            assets = saving_lib.DiskIOStore(saving_lib._ASSETS_DIRNAME, mode="w")
        saving_lib._save_state(
            model,
            weights_store=recorder,
            assets_store=assets,
            inner_path="",
            visited_saveables=set(),
        )
    except BaseException:
        if assets is not None:
            assets.close()
        raise
    return ModelSnapshot(recorder.calls, config_json, metadata_json, assets)


def write_now(model: keras.Model, path: str, weights_only: bool) -> None:
    """Keras's own synchronous save, for files ``take_snapshot`` does not handle."""
    if weights_only:
        model.save_weights(path, overwrite=True)
    else:
        model.save(path, overwrite=True)


__all__ = ["ModelSnapshot", "SUPPORTED", "take_snapshot", "write_now"]
