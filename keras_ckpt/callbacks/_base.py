"""What every saving callback shares: run identity, the global step, and one call into the store."""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping
from typing import Any

import keras
import numpy as np

from keras_ckpt import naming, ranking
from keras_ckpt.policies import RetentionPolicy
from keras_ckpt.records import KIND_MODEL, KIND_WEIGHTS, CheckpointRecord
from keras_ckpt.store import CheckpointStore, reserved_alias_filenames


def plain_metrics(logs: Mapping[str, Any] | None) -> dict[str, float]:
    """The scalar entries of ``logs`` as Python floats (tensors and arrays converted)."""
    metrics = {}
    for name, value in (logs or {}).items():
        try:
            array = np.asarray(keras.ops.convert_to_numpy(value))
        except Exception:  # A non-numeric log entry is not a metric.
            continue
        if array.size == 1 and np.issubdtype(array.dtype, np.number):
            metrics[name] = float(array.reshape(()))
    return metrics


def metric_direction(model: keras.Model | None, monitor: str) -> str | None:
    """``"up"`` or ``"down"`` if one of the model's compiled metrics named like ``monitor`` says."""
    name = monitor.removeprefix("val_")
    for metric in _flat_metrics(getattr(model, "metrics", None) or []):
        if metric.name == name and getattr(metric, "_direction", None) in ("up", "down"):
            return metric._direction
    return None


def _flat_metrics(metrics: list[Any]) -> list[Any]:
    flat = []
    for metric in metrics:
        inner = getattr(metric, "metrics", None)
        if isinstance(inner, list) and inner and inner is not metrics:
            flat.extend(_flat_metrics(inner))
        else:
            flat.append(metric)
    return flat


def resolve_mode_or_raise(
    callback_name: str, model: keras.Model | None, monitor: str, mode: str
) -> str:
    resolved = ranking.resolve_mode(monitor, mode, metric_direction(model, monitor))
    if resolved is None:
        raise ValueError(
            f"{callback_name} callback received monitor={monitor}, but Keras isn't able to "
            "automatically determine whether that metric should be maximized or minimized. "
            "Pass `mode='max'` in order to monitor based on the highest metric value, or pass "
            "`mode='min'` in order to use the lowest value."
        )
    return resolved


class StoreCallback(keras.callbacks.Callback):
    """Base of the saving callbacks: a thin adapter from ``fit``'s hooks to a CheckpointStore."""

    def __init__(self, save_weights_only: bool):
        super().__init__()
        self.save_weights_only = save_weights_only
        self._run: str | None = None
        self._start_batches = 0

    @property
    def keeper(self) -> str:
        """The name under which this callback keeps files in a shared directory."""
        return type(self).__name__

    def _begin_run(self, continue_run: bool) -> None:
        """Starts a run, or with ``continue_run`` goes on with this instance's current one.

        The native callbacks treat an instance as one run, so a loop of ``fit(epochs=1)`` calls
        keeps one top-k and one retention window; the drop-in ModelCheckpoint starts a run per
        ``fit``, as Keras resets per ``fit``.
        """
        if continue_run and self._run is not None:
            return
        self._run = uuid.uuid4().hex[:12]
        self._start_batches = self._batches_trained()

    def _batches_trained(self) -> int:
        """Training batches the model's optimizer has seen.

        ``optimizer.iterations`` counts updates, which with ``gradient_accumulation_steps=G`` is
        one per G batches; the raw counter behind it counts batches.
        """
        optimizer = getattr(self.model, "optimizer", None)
        if optimizer is None:
            return 0
        counter = getattr(optimizer, "_iterations", None)
        return int((optimizer.iterations if counter is None else counter).numpy())

    def _open_store(self, directory: str) -> CheckpointStore:
        return CheckpointStore(directory, keras_version=keras.__version__)

    def _write(self, path: str) -> None:
        if self.save_weights_only:
            self.model.save_weights(path, overwrite=True)
        else:
            self.model.save(path, overwrite=True)

    def _commit(
        self,
        store: CheckpointStore,
        filename: str,
        *,
        epoch: int,
        batch: int | None,
        metrics: Mapping[str, float],
    ) -> CheckpointRecord:
        """Saves the model now; ``epoch`` and ``batch`` are 0-based as ``fit`` passes them."""
        return store.commit(
            filename,
            self._write,
            epoch=epoch + 1,
            batch=None if batch is None else batch + 1,
            step=self._step(),
            metrics=metrics,
            kind=KIND_WEIGHTS if self.save_weights_only else KIND_MODEL,
            run=self._run or "",
            keeper=self.keeper,
        )

    def _step(self) -> int:
        """Training batches completed in this run."""
        return self._batches_trained() - self._start_batches

    def _render_filename(
        self,
        store: CheckpointStore,
        template: str,
        epoch: int,
        batch: int | None,
        metrics: Mapping[str, float],
    ) -> str:
        """Fills ``template`` (0-based ``epoch``/``batch`` in); never names another run's file.

        A clash with a file this callback did not write in this run gets ``-v1``, ``-v2``, ...
        """
        values: dict[str, Any] = {**metrics, "epoch": epoch + 1, "step": self._step()}
        if batch is not None:
            values["batch"] = batch + 1
        try:
            filename = naming.format_filename(template, values)
        except KeyError:
            unknown = [name for name in naming.template_fields(template) if name not in values]
            raise ValueError(
                f"Argument `filename` uses field(s) {unknown} that epoch {epoch + 1} does not "
                f"provide. Received: filename={template!r}. Fields available: {sorted(values)}"
            ) from None
        own = {record.filename for record in self._own_records(store)}
        taken = (set(os.listdir(store.directory)) - own) | set(reserved_alias_filenames())
        return naming.next_free_name(filename, taken)

    def _replaces_a_better_own_file(
        self, store: CheckpointStore, filename: str, monitor: str, value: float, mode: str
    ) -> bool:
        """Whether saving ``value`` as ``filename`` would overwrite one of this run's files that
        holds an equal or better value (a template like ``{epoch}`` with ``save_freq=N``)."""
        for record in self._own_records(store):
            if record.filename == filename:
                return not ranking.is_improvement(value, record.metrics.get(monitor), mode)
        return False

    def _partition(
        self, store: CheckpointStore, policy: RetentionPolicy
    ) -> tuple[list[CheckpointRecord], list[str]]:
        """This run's own checkpoints that ``policy`` keeps, and the file names it drops."""
        own = self._own_records(store)
        flags = policy.keep(own)
        kept = [record for record, keep in zip(own, flags, strict=True) if keep]
        dropped = [record.filename for record, keep in zip(own, flags, strict=True) if not keep]
        return kept, dropped

    def _own_records(self, store: CheckpointStore) -> list[CheckpointRecord]:
        """This run's checkpoints that this callback keeps, oldest first."""
        return [r for r in store.records() if r.run == self._run and self.keeper in r.kept_by]
