"""``keras_ckpt.ModelCheckpoint``: Keras's ModelCheckpoint, crash-safe, with a manifest."""

from __future__ import annotations

import math
import os
import posixpath
import warnings
from typing import Any

import keras
import numpy as np

from keras_ckpt import naming, processes, ranking, remote, validation
from keras_ckpt.callbacks._base import StoreCallback, dedup_argument, sharded_weights_size
from keras_ckpt.callbacks._batches import enable_batch_hook
from keras_ckpt.callbacks._monitor import LazyMode, plain_metrics
from keras_ckpt.callbacks._state import Resumable
from keras_ckpt.keras_adapter import print_message
from keras_ckpt.policies import KeepBest
from keras_ckpt.records import DEDUP_EXTENSION, CheckpointRecord
from keras_ckpt.store import Store
from keras_ckpt.triggers import IntervalTrigger


class ModelCheckpoint(LazyMode, Resumable, StoreCallback):
    """Saves the model or its weights during ``fit``; a drop-in for Keras's ModelCheckpoint.

    Takes every argument of ``keras.callbacks.ModelCheckpoint`` with the same defaults and
    meaning, and adds:

    - Atomic saves: a checkpoint is written under a temporary name and renamed into place, so a
      crash or a failed save never leaves a half-written file where a good one was.
    - A manifest (``keras_ckpt.json``) in the target directory recording epoch, step, metrics,
      size and SHA-256 of every file (see ``keras_ckpt.list_checkpoints``).
    - ``save_top_k``: keep the k best files by ``monitor``; a new file commits before a worse one
      is deleted.
    - ``best_path`` and ``best_value``.

    Where Keras 3.15 misbehaves this class does not (each listed in the README): an integer
    ``save_freq`` works with ``save_best_only``; an epoch without the monitored metric does not
    overwrite the best file once one exists; ``save_freq`` must be ``"epoch"`` or a positive int;
    the best value restarts with every ``fit`` call; NaN is never "best".

    Args:
        filepath: Path template of the files, e.g. ``"ckpt/{epoch:02d}-{val_loss:.2f}.keras"``;
            filled from ``epoch`` (1-based), ``batch`` and the logs. Must end in ``.weights.h5``
            when ``save_weights_only=True``, else in ``.keras``; or, for Keras 2 code, in
            ``.h5`` / ``.hdf5``: the legacy HDF5 format that ``keras.saving.load_model`` and
            ``model.load_weights`` read (written synchronously, with one warning recommending
            ``.keras``; weights-only files hold no optimizer state, as in tf.keras 2).
        monitor: The metric compared for ``save_best_only`` and ``save_top_k``.
        verbose: 0 is silent; 1 prints a line when the callback acts.
        save_best_only: Save only when ``monitor`` improves on the best so far.
        save_weights_only: Save ``model.save_weights`` files instead of whole models.
        mode: ``"auto"``, ``"min"`` or ``"max"``. An unknown mode warns and falls back to auto,
            as in Keras.
        save_freq: ``"epoch"``, or a positive number of batches between saves.
        initial_value_threshold: A value the monitored metric must beat before anything is saved
            under ``save_best_only`` or ``save_top_k``.
        save_top_k: If set, keep only the ``save_top_k`` best files by ``monitor``; the template
            must then name a field (``{epoch}``, a metric, ...) so that files differ.
        async_save: Copy the variables to host memory on the training thread and write the
            file in the background (at most one save in flight; a failure is raised at the next
            save or at the end of training; when ``fit`` returns every file is on disk).
            ``False`` writes before training goes on, as Keras does. Legacy ``.h5`` models are
            always written synchronously.
        period: tf.keras 2's deprecated argument, kept so its code runs: save only every
            ``period``-th epoch end this callback sees (counted across ``fit`` calls, as
            tf.keras counted), with a ``FutureWarning``. Ignored with an integer
            ``save_freq``, as in tf.keras. Use ``save_freq`` or ``IntervalCheckpoint``.
        options: tf.keras 2's ``tf.train.CheckpointOptions`` / ``tf.saved_model.SaveOptions``;
            accepted with a ``FutureWarning`` and ignored (Keras 3 saves have no such options).
        max_shard_size: Save Keras's sharded weights: the largest shard file in GB, as
            ``model.save_weights`` takes it. Needs ``save_weights_only=True``, a ``filepath``
            ending in ``.weights.json`` (required there: no default) and Keras 3.10 or newer;
            local directories only. The index and its shards
            (``<stem>_00000.weights.h5``, ...) are one checkpoint: committed together,
            verified and deleted together; ``model.load_weights(<index>)`` loads them.
        dedup: Store weights once: a ``filepath`` ending in ``.weights.dedup.json`` (required
            there), ``save_weights_only=True``, a local directory. Each checkpoint is an index
            naming one content-addressed blob per variable; a variable whose bytes an earlier
            checkpoint of the directory holds (a frozen backbone) is not written again. Load
            with ``keras_ckpt.load_checkpoint`` / ``load_latest``, or
            ``keras-ckpt export DIR OUT.weights.h5`` for a standard file.

    Raises:
        ValueError: On a bad ``save_freq``, ``save_top_k``, ``period``, ``max_shard_size`` or
            ``initial_value_threshold``, a ``filepath`` extension that does not match
            ``save_weights_only`` (or ``max_shard_size``), or a ``filepath`` that cannot be
            filled in (a format spec such as ``{epoch:s}`` that does not apply, a NUL, a name the
            checkpoint store keeps for itself).
        AttributeError: On a ``filepath`` that is not a ``str`` or ``os.PathLike``, as in Keras
            (the error is also a ``ValueError`` and a ``TypeError``).

    Example:
        >>> import keras_ckpt
        >>> checkpoint = keras_ckpt.ModelCheckpoint(
        ...     "ckpt/{epoch:02d}.keras", monitor="val_loss", save_top_k=3)
    """

    def __init__(
        self,
        filepath: str | os.PathLike[str],
        monitor: str = "val_loss",
        verbose: int = 0,
        save_best_only: bool = False,
        save_weights_only: bool = False,
        mode: str = "auto",
        save_freq: str | int = "epoch",
        initial_value_threshold: float | None = None,
        save_top_k: int | None = None,
        *,
        async_save: bool = True,
        period: int | None = None,
        options: Any = None,
        max_shard_size: float | None = None,
        dedup: bool = False,
    ):
        super().__init__(save_weights_only=save_weights_only, async_save=async_save)
        mode = validation.keras_mode(type(self).__name__, mode)  # Keras warns, falls back
        self.filepath = validation.path(
            "filepath", filepath, what="a file path template", type_error=_FilepathTypeError
        )
        if remote.is_url(self.filepath):  # a bad URL or a missing file system fails here
            remote.check_url("filepath", self.filepath.rsplit("/", 1)[0])
        self.monitor = monitor
        self.mode = mode
        self.verbose = verbose
        self.save_best_only = save_best_only
        self.save_freq = save_freq
        self.initial_value_threshold = validation.optional_float(
            "initial_value_threshold", initial_value_threshold
        )
        self.save_top_k = (
            None if save_top_k is None else validation.positive_int("save_top_k", save_top_k)
        )
        if self.save_top_k is not None:  # ours, so strict: it ranks by `monitor`
            validation.non_empty_str("monitor", monitor)
        validation.save_freq(save_freq, keras_class="ModelCheckpoint")
        self.max_shard_size = sharded_weights_size(max_shard_size, self.filepath, "filepath")
        self.dedup = dedup_argument(dedup, self.max_shard_size, self.filepath, "filepath")
        if self.dedup or self.filepath.endswith(DEDUP_EXTENSION):
            naming.dedup_template(self.filepath, self.save_weights_only, self.dedup, "filepath")
        elif self.max_shard_size is not None or self.filepath.endswith(
            naming.SHARDED_WEIGHTS_EXTENSION
        ):
            naming.sharded_template(
                self.filepath, "filepath", self.save_weights_only, self.max_shard_size is not None
            )
        else:
            validation.keras_filepath_extension(self.filepath, self.save_weights_only)
        self.period = validation.optional(validation.positive_int, "period", period)
        self.options = options
        naming.check_renders(self.filepath, "filepath")
        fields = naming.template_fields(self.filepath, "filepath")
        if self.save_top_k is not None and self.save_top_k > 1 and not fields:
            raise ValueError(
                "Argument `filepath` must contain a field such as {epoch} when `save_top_k` > 1, "
                f"or every save would overwrite the last. Received: filepath={self.filepath!r}"
            )
        self.best = self.initial_value_threshold
        # Keras's count: batches since the last due save, kept across fit calls as in Keras.
        self._batch_trigger = (
            IntervalTrigger(every_steps=save_freq, step_counting="since_last")
            if isinstance(save_freq, int)
            else None
        )
        if self._batch_trigger is not None:
            # Only a batch-frequency checkpoint needs the batch hook (why: enable_batch_hook).
            enable_batch_hook(self, "on_train_batch_end", self._on_train_batch_end_saving)
        # tf.keras 2's `period`: due at every period-th epoch end this instance sees (counted
        # across fit calls), which is tf.keras's count of epochs since the last due save.
        self._epoch_trigger = (
            None if self.period is None else IntervalTrigger(every_epochs=self.period)
        )
        self._epochs_seen = 0
        self._warn_about_keras_2_arguments()
        self._current_epoch = 0
        # One store per directory the template resolves to, opened (and recovered) once a run.
        self._stores: dict[str, Store] = {}
        self._has_saved = False
        self._warned_replaced: set[str] = set()
        self._best_if_saved: float | None = None
        # The names each directory held when this run opened it: what an earlier run wrote.
        self._names_before: dict[str, set[str]] = {}

    # Hooks -------------------------------------------------------------------------------

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        if not processes.trains_alone() and validation.legacy_hdf5(
            self.filepath, self.save_weights_only
        ):
            # A legacy file is written by Keras on process 0 alone, and Keras's saving may
            # enter collectives that the other processes would never join.
            raise ValueError(
                f"ModelCheckpoint cannot save filepath={self.filepath!r} (legacy HDF5) in a "
                "multi-process run. End `filepath` in '.keras' or '.weights.h5'."
            )
        self._settle()
        self._watch_ema()
        self._begin_run(continue_run=False)
        self.best = self.initial_value_threshold
        self._forget_mode()
        self._has_saved = False
        self._warned_replaced = set()
        self._names_before = {}
        self._stores = {}
        self._begin_training()

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        self._end_training()
        self._finish_training(announce=False)  # when fit returns, every checkpoint is on disk

    def state_dict(self) -> dict[str, Any]:
        """The run and Keras's ``best``, so a resumed run continues ``save_best_only`` (and
        the epochs counted for ``period``)."""
        return {
            **StoreCallback.state_dict(self),
            "best": self.best,
            "epochs_seen": self._epochs_seen,
        }

    def _apply_state(self, state: dict[str, Any]) -> None:
        StoreCallback.load_state_dict(self, state)
        best = state.get("best", self.best)
        # The manifest stores a non-finite best (an initial_value_threshold of inf) as text.
        self.best = None if best is None else float(best)
        self._epochs_seen = int(state.get("epochs_seen", self._epochs_seen))

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._current_epoch = epoch

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        # Keras settles the direction of `monitor` here, raising for an unknown metric in
        # "auto" mode whether or not it is needed; a drop-in raises the same.
        self._mode()
        self._epochs_seen += 1
        if self.save_freq == "epoch" and self._period_due():
            self._save_model(epoch, None, logs or {})

    def _period_due(self) -> bool:
        if self._epoch_trigger is None:
            return True
        return self._epoch_trigger.due_at_epoch_end(self._epochs_seen, step=0, now=0.0)

    def _on_train_batch_end_saving(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        assert self._batch_trigger is not None
        if self._batch_trigger.due_after_batch(batch):
            self._save_model(self._current_epoch, batch, logs or {})

    # Results -----------------------------------------------------------------------------

    @property
    def best_value(self) -> float | None:
        """The best monitored value among the files this run has on disk (``None`` if none)."""
        best = self._best_record()
        return None if best is None else best.metrics[self.monitor]

    @property
    def best_path(self) -> str | None:
        """The file holding ``best_value``."""
        best = self._best_record()
        return None if best is None else best.path

    def _best_record(self) -> CheckpointRecord | None:
        mode = self._mode_if_known()
        if mode is None:
            return None
        candidates = [
            record
            for store in self._stores.values()
            for record in self._own_records(store)
            if math.isfinite(record.metrics.get(self.monitor, math.nan))
        ]
        if not candidates:
            return None
        order = ranking.ranked([r.metrics[self.monitor] for r in candidates], mode)
        return candidates[order[0]]

    # Saving ------------------------------------------------------------------------------

    def _save_model(self, epoch: int, batch: int | None, logs: dict[str, Any]) -> None:
        self._settle()
        filepath = self._format_path(epoch, batch, logs)
        metrics = plain_metrics(logs)
        if remote.is_url(filepath):
            directory, filename = posixpath.split(filepath)
        else:
            directory, filename = os.path.split(os.path.abspath(remote.local_path(filepath)))
        if not filename:
            raise OSError(
                "Please specify a non-directory filepath for ModelCheckpoint. "
                f"Filepath used is an existing directory: {filepath}"
            )
        store = self._stores.get(directory)
        if store is None:
            store = self._stores[directory] = self._open_store(directory)
            self._names_before[directory] = store.names_in_use()
        if not self._should_save(epoch, logs, metrics, filepath, store):
            if self._best_if_saved is not None:  # a best kept out by top-k or the threshold
                self.best, self._best_if_saved = self._best_if_saved, None
            return
        earlier = filename in self._names_before[directory]
        if earlier and store.is_directory(filename):
            raise OSError(
                "Please specify a non-directory filepath for ModelCheckpoint. "
                f"Filepath used is an existing directory: {filepath}"
            )
        if earlier:
            self._warn_if_replacing_earlier_file(store, filename)
        dropped: list[str] = []
        if self.save_top_k is not None:
            _, dropped = self._retention_plan(
                store,
                KeepBest(self.save_top_k, self.monitor, self._mode()),
                filename,
                epoch=epoch,
                batch=batch,
                metrics=metrics,
            )

        def tidy(record: CheckpointRecord) -> None:
            store.release(self.keeper, dropped)
            if self.verbose > 0:
                print_message(f"\nEpoch {epoch + 1}: finished saving model to {filepath}")

        best_if_saved, self._best_if_saved = self._best_if_saved, None
        if not self._commit(store, filename, epoch=epoch, batch=batch, metrics=metrics, then=tidy):
            return  # a non-finite training loss: nothing saved
        self._has_saved = True
        if best_if_saved is not None:
            self.best = best_if_saved

    def _format_path(self, epoch: int, batch: int | None, logs: dict[str, Any]) -> str:
        values = {**logs, "epoch": epoch + 1}
        if batch is not None and "batch" not in logs:
            values["batch"] = batch + 1
        return naming.format_filename(self.filepath, values)

    def _should_save(
        self,
        epoch: int,
        logs: dict[str, Any],
        metrics: dict[str, float],
        filepath: str,
        store: Store,
    ) -> bool:
        if not (self.save_best_only or self.save_top_k is not None):
            if self.verbose > 0:
                print_message(f"\nEpoch {epoch + 1}: saving model to {filepath}")
            return True
        current = logs.get(self.monitor)
        if current is None:
            warnings.warn(f"Can save best model only with {self.monitor} available.", stacklevel=3)
            # Keras saves anyway; that lets an unvalidated epoch replace the best file. Save
            # only while this run has nothing saved, which keeps Keras's first-epoch behaviour.
            return not self._has_saved
        if np.ndim(keras.ops.convert_to_numpy(current)) > 0:
            warnings.warn(
                "Can save best model only when `monitor` is a scalar value. "
                f"Received: {current}. Falling back to `save_best_only=False`.",
                stacklevel=3,
            )
            return True
        value = metrics[self.monitor]
        mode = self._mode()
        new_best = ranking.is_improvement(value, self.best, mode)
        if self.save_top_k is None:
            improved = new_best
        else:
            filename = os.path.basename(filepath)
            others = [r for r in self._own_records(store) if r.filename != filename]
            kept = [r.metrics.get(self.monitor, math.nan) for r in others]
            improved = (
                ranking.enters_top_k(kept, value, self.save_top_k, mode)
                and ranking.is_improvement(value, self.initial_value_threshold, mode)
                and not self._replaces_a_better_own_file(store, filename, self.monitor, value, mode)
            )
        if self.verbose > 0:
            best_text = "None" if self.best is None else f"{self.best:.5f}"
            if improved:
                print_message(
                    f"\nEpoch {epoch + 1}: {self.monitor} improved from {best_text} to "
                    f"{value:.5f}, saving model to {filepath}"
                )
            else:
                print_message(
                    f"\nEpoch {epoch + 1}: {self.monitor} did not improve from {best_text}"
                )
        # Taken as the best once the save commits (a save refused for a non-finite training
        # loss leaves the best as it was).
        self._best_if_saved = value if new_best else None
        return improved

    def _warn_about_keras_2_arguments(self) -> None:
        """Keras 2 code runs with the import swapped; each leftover gets a warning, once per
        instance (here, at construction). ``stacklevel`` points at the caller's line."""
        if validation.legacy_hdf5(self.filepath, self.save_weights_only):
            if self.save_weights_only:
                what = "legacy HDF5 weights format (no optimizer state)"
                instead = "'.weights.h5' (or '.keras', with save_weights_only=False)"
            else:
                what, instead = "legacy HDF5 format", "'.keras'"
            warnings.warn(
                f"ModelCheckpoint saves filepath={self.filepath!r} in Keras's {what}, which "
                "Keras 3 reads but no longer recommends, and writes it synchronously. End "
                f"`filepath` in {instead} for Keras's native format.",
                UserWarning,
                stacklevel=3,
            )
        if self.period is not None:
            warnings.warn(
                "`period` argument is deprecated. Please use `save_freq` to specify the "
                "frequency in number of batches seen. (keras_ckpt saves every "
                f"{self.period}-th epoch, as tf.keras did. Received: period={self.period!r})",
                FutureWarning,
                stacklevel=3,
            )
        if self.options is not None:
            warnings.warn(
                "`options` argument is ignored: Keras 3 saves take no "
                "tf.train.CheckpointOptions / tf.saved_model.SaveOptions. Remove it. "
                f"Received: options={self.options!r}",
                FutureWarning,
                stacklevel=3,
            )

    def _warn_if_replacing_earlier_file(self, store: Store, filename: str) -> None:
        path = store.path(filename)
        if path in self._warned_replaced:
            return
        record = store.manifest().find(filename)
        if record is not None and record.run == self._run:
            return
        self._warned_replaced.add(path)
        warnings.warn(
            f"ModelCheckpoint is replacing {path}, which an earlier run wrote (as Keras's "
            "ModelCheckpoint would). Put {epoch} in `filepath`, or use a new directory, to keep "
            "both.",
            stacklevel=4,
        )


class _FilepathTypeError(validation.ArgumentTypeError, AttributeError):
    """A ``filepath`` that is not a path. Keras 3.15's ModelCheckpoint raises ``AttributeError``
    there (it calls ``filepath.endswith``), so the clearer error is one too."""
