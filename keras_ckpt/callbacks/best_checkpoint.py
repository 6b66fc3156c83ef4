"""``keras_ckpt.BestCheckpoint``: keep the top-k best models of a run, safely."""

from __future__ import annotations

import math
import os
import warnings
from typing import Any

from keras_ckpt import ema, naming, ranking, validation
from keras_ckpt.callbacks._base import StoreCallback, dedup_argument, sharded_weights_size
from keras_ckpt.callbacks._monitor import LazyMode, plain_metrics
from keras_ckpt.keras_adapter import fit_callbacks, uses_ema
from keras_ckpt.policies import KeepBest
from keras_ckpt.records import BEST_ALIAS, CheckpointRecord
from keras_ckpt.store import Store, check_directory_usable


class BestCheckpoint(LazyMode, StoreCallback):
    """Keeps the ``top_k`` best checkpoints of a training run by a monitored metric.

    At the end of each epoch whose ``monitor`` value would rank among the ``top_k`` best of the
    run, the model is saved (atomically, with a manifest entry); then checkpoints that fell out of
    the top k are deleted, and ``best.keras`` (or ``best.weights.h5``) is pointed at the best one
    by a hard link, which costs no second write.

    An epoch without validation (``validation_freq > 1``) is skipped. A ``monitor`` that is not
    in the logs although validation ran is an error listing the metrics that exist. A NaN or
    infinite value is never saved.

    A directory that already holds checkpoints from earlier runs keeps them: this run ranks only
    its own checkpoints, never deletes or overwrites another run's files (a clashing name gets a
    ``-v1`` suffix), and moves the ``best`` alias to its own best.

    Args:
        directory: Where the checkpoints go; created at the start of training.
        monitor: The metric to rank by, e.g. ``"val_loss"`` or ``"val_accuracy"``.
        mode: ``"min"``, ``"max"``, or ``"auto"`` (from the metric, as Keras infers it).
        top_k: How many of the best checkpoints to keep.
        min_delta: How much a value must beat the worst kept value (the best, with
            ``top_k=1``) to count as better.
        save_weights_only: Save ``.weights.h5`` files instead of whole ``.keras`` models.
        filename: File name template with fields ``{epoch}`` (1-based), ``{step}`` and the
            metrics of the epoch; the extension is added if missing. Defaults to
            ``"epoch{epoch:03d}-<monitor>{<monitor>:.4f}"``.
        verbose: 0 is silent; 1 prints a line per save or skip.
        async_save: Copy the variables to host memory on the training thread and write the
            file in the background (at most one save in flight; a failure is raised at the next
            save or at the end of training). ``False`` writes before training goes on.
        weights: ``"raw"`` (the default) ranks by the metrics as ``fit`` reports them.
            ``"ema"``, for an optimizer with ``use_ema=True``, ranks by the metrics of the
            model holding the moving averages: a ``SwapEMAWeights`` (keras_ckpt's or Keras's)
            must be among the callbacks of ``fit``, which validates with the averages. Either
            way each file holds the raw weights as the model's weights and the averages in the
            optimizer (so it resumes); ``load_best(directory, weights="ema")`` and
            ``keras-ckpt export --weights ema`` give the model holding the averages.
        max_shard_size: Save Keras's sharded weights (``.weights.json`` plus shard files): the
            largest shard in GB, as ``model.save_weights`` takes it. Needs
            ``save_weights_only=True`` and Keras 3.10 or newer; a local ``directory``. The
            ``filename`` gets ``.weights.json`` if it has no extension. Each checkpoint's index
            and shards are committed, verified and deleted together. The ``best`` alias then
            has no file (Keras opens an index's first shard by the index's own name, so a
            linked ``best.weights.json`` would not load): the manifest names it, and
            ``load_best`` / ``keras_ckpt.best_checkpoint`` find it there.
        dedup: Store weights once: each checkpoint is a small index
            (``.weights.dedup.json``) naming one content-addressed blob per variable
            (``blob-<sha256>.bin``), and a variable whose bytes an earlier checkpoint of the
            directory holds already (a frozen backbone) is not written again. Needs
            ``save_weights_only=True`` and a local ``directory``; not with ``max_shard_size``.
            ``load_best`` / ``load_latest`` / ``load_checkpoint`` load such checkpoints
            directly, ``keras-ckpt export`` writes a standard ``.weights.h5``; retention deletes
            a blob only when no remaining checkpoint uses it. The ``best`` alias has no file:
            the manifest names it.

    Raises:
        ValueError: On any invalid argument, naming it; as training begins, with
            ``weights="ema"`` if the optimizer has no ``use_ema=True`` or no
            ``SwapEMAWeights`` is in the ``fit``, and with ``weights="raw"`` if a
            ``SwapEMAWeights`` is (the validation metrics are then the averages').

    Example:
        >>> import keras_ckpt
        >>> best = keras_ckpt.BestCheckpoint("runs/best", monitor="val_loss", top_k=3)
    """

    event_name = "best"

    def __init__(
        self,
        directory: str | os.PathLike[str],
        monitor: str = "val_loss",
        mode: str = "auto",
        top_k: int = 1,
        min_delta: float = 0.0,
        save_weights_only: bool = False,
        filename: str | None = None,
        verbose: int = 0,
        async_save: bool = True,
        weights: str = "raw",
        *,
        max_shard_size: float | None = None,
        dedup: bool = False,
    ):
        super().__init__(
            save_weights_only=validation.boolean("save_weights_only", save_weights_only),
            async_save=async_save,
        )
        self.directory = check_directory_usable(directory, "directory")
        self.max_shard_size = sharded_weights_size(max_shard_size, self.directory, "directory")
        self.dedup = dedup_argument(dedup, self.max_shard_size, self.directory, "directory")
        self.monitor = validation.non_empty_str("monitor", monitor)
        self.mode = validation.one_of("mode", mode, ranking.MODES)
        self.top_k = validation.positive_int("top_k", top_k)
        self.min_delta = validation.non_negative_float("min_delta", min_delta)
        self.verbose = validation.one_of("verbose", verbose, (0, 1))
        self.weights = validation.weights(weights)
        self.filename = naming.checked_template(
            naming.default_best_template(monitor) if filename is None else filename,
            self.save_weights_only,
            varying_reason="`top_k` > 1" if self.top_k > 1 else None,
            sharded=self.max_shard_size is not None,
            dedup=self.dedup,
        )
        self._store: Store | None = None
        self._epochs_without_validation = 0

    @property
    def keeper(self) -> str:
        return f"BestCheckpoint[{self.monitor}]"

    # Hooks -------------------------------------------------------------------------------

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self._settle()
        self._watch_ema()
        self._check_weights()
        self._warn_if_tensorboard_comes_first()
        self._store = self._open_store(self.directory)
        self._begin_run(continue_run=True)
        self._forget_mode()
        self._epochs_without_validation = 0
        earlier = [r for r in self._store.records() if r.run != self._run]
        if earlier:
            self._say(
                f"found {len(earlier)} checkpoint(s) of earlier runs in {self.directory}; they "
                "are kept and not ranked with this run's."
            )

    def _check_weights(self) -> None:
        """The validation metrics are the averages' exactly when a SwapEMAWeights is in fit."""
        swapping = any(ema.is_swap_callback(c) for c in fit_callbacks(self))
        if self.weights == "ema" and not uses_ema(self.model):
            optimizer = getattr(self.model, "optimizer", None)
            raise ValueError(
                "BestCheckpoint(weights='ema') ranks by the moving averages' metrics, but the "
                "optimizer keeps none. Set `use_ema=True` on the optimizer. Received: "
                f"use_ema={getattr(optimizer, 'use_ema', None)}"
            )
        if self.weights == "ema" and not swapping:
            raise ValueError(
                "BestCheckpoint(weights='ema') ranks by the metrics of the model holding the "
                "moving averages: add keras_ckpt.SwapEMAWeights() to the callbacks of fit, so "
                "that validation runs with them."
            )
        if self.weights == "raw" and swapping:
            raise ValueError(
                "BestCheckpoint: a SwapEMAWeights in this fit validates with the moving "
                "averages, so the metrics are theirs. Pass weights='ema' to rank by them. "
                "Received: weights='raw'"
            )

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        store = self._require_store()
        self._settle()
        saved, kept, deleted = self._save_if_among_the_best(store, epoch, plain_metrics(logs))
        self._log_events(logs, saved=saved, kept=kept, deleted=deleted)

    def _save_if_among_the_best(
        self, store: Store, epoch: int, metrics: dict[str, float]
    ) -> tuple[int, int, int]:
        """Saves when the epoch ranks among the top k. Returns how many checkpoints were saved,
        are kept once the save commits, and are deleted then."""
        own = self._own_records(store)
        unchanged = (0, len(own), 0)
        if self.monitor not in metrics:
            self._handle_missing_monitor(epoch, metrics)
            return unchanged
        value = metrics[self.monitor]
        if not math.isfinite(value):
            warnings.warn(
                f"BestCheckpoint: {self.monitor}={value} at epoch {epoch + 1} is not finite; "
                "nothing saved.",
                stacklevel=3,
            )
            return unchanged
        mode = self._mode()
        if not ranking.enters_top_k(
            [r.metrics[self.monitor] for r in own], value, self.top_k, mode, self.min_delta
        ):
            self._say(f"skipped: {self.monitor}={value:.5g} is not among the best", epoch)
            return unchanged
        filename = self._render_filename(store, self.filename, epoch, None, metrics)
        if self._replaces_a_better_own_file(store, filename, self.monitor, value, mode):
            return unchanged  # e.g. filename="{val_loss:.1f}": an equal name holds a better one
        kept, dropped = self._retention_plan(
            store,
            KeepBest(self.top_k, self.monitor, mode),
            filename,
            epoch=epoch,
            batch=None,
            metrics=metrics,
        )
        best_record = self._best_record(kept, mode)
        assert best_record is not None, "kept holds the new checkpoint, which has the metric"
        best = best_record.filename

        def tidy(record: CheckpointRecord) -> None:
            # The alias moves before anything is deleted, so it never names a missing file.
            store.set_alias(BEST_ALIAS, best)
            store.release(self.keeper, dropped)
            self._say(f"saved {record.filename} ({self.monitor}={value:.5g})", epoch)

        if not self._commit(store, filename, epoch=epoch, batch=None, metrics=metrics, then=tidy):
            return unchanged  # a non-finite training loss
        return 1, len(kept), len(dropped)

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        self._finish_training()  # when fit returns, every checkpoint is on disk
        if self._epochs_without_validation and not self.kept:
            warnings.warn(
                f"BestCheckpoint saved nothing: {self.monitor!r} never appeared in the logs of "
                f"{self._epochs_without_validation} epoch(s) without validation. Pass "
                "`validation_data` (or `validation_split`) to `fit`.",
                stacklevel=2,
            )

    # Results -----------------------------------------------------------------------------

    @property
    def kept(self) -> list[CheckpointRecord]:
        """This run's kept checkpoints, oldest first (empty before training)."""
        return [] if self._store is None else self._own_records(self._store)

    @property
    def best_path(self) -> str | None:
        """Path of the best checkpoint this run kept, or ``None``."""
        best = self._best_record(self.kept)
        return None if best is None else best.path

    @property
    def best_value(self) -> float | None:
        """The monitored value of ``best_path``, or ``None``."""
        best = self._best_record(self.kept)
        return None if best is None else best.metrics[self.monitor]

    # Internals ---------------------------------------------------------------------------

    def _require_store(self) -> Store:
        if self._store is None:
            raise RuntimeError("BestCheckpoint is used before on_train_begin.")
        return self._store

    def _best_record(
        self, records: list[CheckpointRecord], mode: str | None = None
    ) -> CheckpointRecord | None:
        if not records:
            return None
        order = ranking.ranked([r.metrics[self.monitor] for r in records], mode or self._mode())
        return records[order[0]]

    def _handle_missing_monitor(self, epoch: int, metrics: dict[str, float]) -> None:
        validated = any(name.startswith("val_") for name in metrics)
        if self.monitor.startswith("val_") and not validated:
            self._epochs_without_validation += 1
            self._say("skipped: no validation this epoch", epoch)
            return
        raise ValueError(
            f"BestCheckpoint: argument `monitor` names a metric that epoch {epoch + 1} did not "
            f"produce. Received: monitor={self.monitor!r}. Metrics available: {sorted(metrics)}"
        )
