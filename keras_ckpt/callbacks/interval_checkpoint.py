"""``keras_ckpt.IntervalCheckpoint``: a checkpoint every N epochs, N steps or T seconds."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from keras_ckpt import naming, validation
from keras_ckpt.callbacks._base import StoreCallback, dedup_argument, sharded_weights_size
from keras_ckpt.callbacks._batches import EpochPosition, enable_batch_hook
from keras_ckpt.callbacks._monitor import plain_metrics
from keras_ckpt.policies import AnyOf, KeepAll, KeepEvery, KeepLatest, RetentionPolicy
from keras_ckpt.processes import agree_on_save
from keras_ckpt.records import LATEST_ALIAS, CheckpointRecord
from keras_ckpt.store import Store, check_directory_usable
from keras_ckpt.triggers import IntervalTrigger

DEFAULT_FILENAME = "epoch{epoch:03d}-step{step:06d}"


class IntervalCheckpoint(StoreCallback):
    """Saves at regular intervals and keeps what the retention rules say.

    Triggers combine: a save happens when any is due, once per step. With none given, every
    epoch. Step and time triggers are checked at batch boundaries, at the start of the next
    batch (``on_train_batch_begin``, which Keras always runs synchronously and which does not
    turn off asynchronous dispatch); a step that ends an epoch is saved at the epoch end, with
    that epoch's metrics. Without step or time triggers the callback has no batch hook at all.

    ``latest.keras`` (or ``latest.weights.h5``) is a hard link to the newest checkpoint.
    Checkpoints that the retention rules drop are deleted after the new one has committed, and
    only if no other callback sharing the directory keeps them.

    Args:
        directory: Where the checkpoints go; created at the start of training.
        every_epochs: Save every this many epochs.
        every_steps: Save every this many training batches (counted over the run).
        every_seconds: Save once this many seconds (monotonic clock) passed since the last save.
        keep_last: Keep the newest this many checkpoints; ``None`` keeps all.
        keep_every: With ``keep_last``, also keep for good each checkpoint whose epoch (with only
            the epoch trigger) or step (otherwise) is a multiple of this.
        save_weights_only: Save ``.weights.h5`` files instead of whole ``.keras`` models.
        save_on_train_end: Save the final state when training ends (also after early
            stopping), unless that step was just saved.
        filename: Template with ``{epoch}`` (1-based), ``{step}``, ``{batch}`` (mid-epoch
            saves) and, at epoch ends, the metrics. Default ``"epoch{epoch:03d}-step{step:06d}"``.
        verbose: 0 is silent; 1 prints a line per save.
        async_save: Copy the variables to host memory on the training thread and write the
            file in the background (at most one save in flight; a failure is raised at the next
            save or at the end of training). ``False`` writes before training goes on.
        retention: A retention policy of your own (an object with ``keep(records)``) instead of
            ``keep_last``/``keep_every``.
        clock: The monotonic clock of ``every_seconds``; tests pass a fake one.
        max_shard_size: Save Keras's sharded weights (``.weights.json`` plus shard files): the
            largest shard in GB, as ``model.save_weights`` takes it. Needs
            ``save_weights_only=True`` and Keras 3.10 or newer; a local ``directory``. The
            ``filename`` gets ``.weights.json`` if it has no extension. Each checkpoint's index
            and shards are committed, verified and deleted together. The ``latest`` alias then
            has no file (Keras opens an index's first shard by the index's own name, so a
            linked ``latest.weights.json`` would not load): the manifest names it, and
            ``load_latest`` / ``keras_ckpt.latest_checkpoint`` find it there.
        dedup: Store weights once: each checkpoint is a small index
            (``.weights.dedup.json``) naming one content-addressed blob per variable
            (``blob-<sha256>.bin``), and a variable whose bytes an earlier checkpoint of the
            directory holds already (a frozen backbone) is not written again. Needs
            ``save_weights_only=True`` and a local ``directory``; not with ``max_shard_size``.
            ``load_best`` / ``load_latest`` / ``load_checkpoint`` load such checkpoints
            directly, ``keras-ckpt export`` writes a standard ``.weights.h5``; retention deletes
            a blob only when no remaining checkpoint uses it. The ``latest`` alias has no file:
            the manifest names it.

    Raises:
        ValueError: On any invalid argument, naming it.

    Example:
        >>> import keras_ckpt
        >>> interval = keras_ckpt.IntervalCheckpoint(
        ...     "runs/interval", every_steps=500, keep_last=3, keep_every=5000)
    """

    event_name = "interval"

    def __init__(
        self,
        directory: str | os.PathLike[str],
        every_epochs: int | None = None,
        every_steps: int | None = None,
        every_seconds: float | None = None,
        keep_last: int | None = None,
        keep_every: int | None = None,
        save_weights_only: bool = False,
        save_on_train_end: bool = True,
        filename: str = DEFAULT_FILENAME,
        verbose: int = 0,
        async_save: bool = True,
        *,
        retention: RetentionPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
        max_shard_size: float | None = None,
        dedup: bool = False,
    ):
        super().__init__(
            validation.boolean("save_weights_only", save_weights_only), async_save=async_save
        )
        self.directory = check_directory_usable(directory, "directory")
        self.max_shard_size = sharded_weights_size(max_shard_size, self.directory, "directory")
        self.dedup = dedup_argument(dedup, self.max_shard_size, self.directory, "directory")
        self.every_epochs = validation.optional(
            validation.positive_int, "every_epochs", every_epochs
        )
        self.every_steps = validation.optional(validation.positive_int, "every_steps", every_steps)
        self.every_seconds = validation.optional(
            validation.positive_seconds, "every_seconds", every_seconds
        )
        self.keep_last = validation.optional(validation.positive_int, "keep_last", keep_last)
        self.keep_every = validation.optional(validation.positive_int, "keep_every", keep_every)
        self.save_on_train_end = validation.boolean("save_on_train_end", save_on_train_end)
        self.verbose = validation.one_of("verbose", verbose, (0, 1))
        if self.every_epochs is self.every_steps is self.every_seconds is None:
            self.every_epochs = 1
        if self.keep_every is not None and self.keep_last is None:
            raise ValueError(
                "Argument `keep_every` only matters together with `keep_last` (without it every "
                f"checkpoint is kept). Received: keep_every={keep_every!r}, keep_last=None"
            )
        if retention is not None and (self.keep_last or self.keep_every):
            raise ValueError(
                "Pass either `retention` or `keep_last`/`keep_every`, not both. "
                f"Received: retention={retention!r}, keep_last={keep_last!r}"
            )
        if retention is not None:
            validation.retention_policy("retention", retention)
        self.retention = retention if retention is not None else self._default_retention()
        self.filename = naming.checked_template(
            filename,
            self.save_weights_only,
            None,
            sharded=self.max_shard_size is not None,
            dedup=self.dedup,
        )
        self._check_filename_varies()
        self._trigger = IntervalTrigger(self.every_epochs, self.every_steps, self.every_seconds)
        self._clock = validation.function("clock", clock, what="returning seconds")
        if self.every_steps is not None or self.every_seconds is not None:
            enable_batch_hook(self, "on_train_batch_begin", self._check_mid_epoch)
        self._store: Store | None = None
        self._position = EpochPosition()
        self._current_epoch = 0
        self._last_saved_step: int | None = None
        self._last_metrics: dict[str, float] = {}
        self._epochs_ended = 0
        self._trigger_started = False
        self._kept = 0

    def _check_filename_varies(self) -> None:
        fields = set(naming.template_fields(self.filename))
        if self.every_steps is None and self.every_seconds is None:
            if not fields & {"epoch", "step"}:
                raise ValueError(
                    "Argument `filename` must contain {epoch} or {step}, or every save would "
                    f"overwrite the last. Received: filename={self.filename!r}"
                )
        elif "step" not in fields:
            raise ValueError(
                "Argument `filename` must contain {step} when saving by steps or seconds, or "
                "saves within an epoch would overwrite each other. "
                f"Received: filename={self.filename!r}"
            )

    def _default_retention(self) -> RetentionPolicy:
        if self.keep_last is None:
            return KeepAll()
        if self.keep_every is None:
            return KeepLatest(self.keep_last)
        only_epochs = self.every_steps is None and self.every_seconds is None
        by = "epoch" if only_epochs else "step"
        return AnyOf(KeepLatest(self.keep_last), KeepEvery(self.keep_every, by=by))

    # Hooks -------------------------------------------------------------------------------

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self._settle()
        self._watch_ema()
        self._warn_if_tensorboard_comes_first()
        self._store = self._open_store(self.directory)
        self._begin_run(continue_run=True)
        self._trigger_started = False
        self._last_saved_step = None
        self._last_metrics = {}
        self._epochs_ended = 0
        self._epoch_saves = self._epoch_deleted = 0

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if not self._trigger_started:
            # Counted from the first epoch of the fit, once every on_train_begin has run: a
            # ResumeFromLatest listed after this callback restores the step (and this
            # callback's run) in its own on_train_begin.
            self._trigger.start(now=self._clock(), step=self._step())
            assert self._store is not None, "on_train_begin opens the store"
            self._kept = len(self._own_records(self._store))
            self._trigger_started = True
        self._current_epoch = epoch
        self._epoch_saves = self._epoch_deleted = 0
        if self.every_steps is not None or self.every_seconds is not None:
            self._position = EpochPosition.current(self.model, self._start_batches)

    def _check_mid_epoch(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        # `batch` batches of this epoch are done; batch 0's state was handled at the epoch end.
        if not self._position.has_trained(batch):  # nothing new since the epoch end or resume
            return
        due = self._trigger.due_mid_epoch(self._position.step(batch), self._clock())
        if agree_on_save(self._trigger, due).due:
            self._save(self._current_epoch, batch - 1, {})

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._epochs_ended += 1
        self._last_metrics = plain_metrics(logs)
        due = self._trigger.due_at_epoch_end(epoch + 1, self._step(), self._clock())
        if agree_on_save(self._trigger, due).due:
            self._save(epoch, None, self._last_metrics)
        self._log_events(
            logs, saved=self._epoch_saves, kept=self._kept, deleted=self._epoch_deleted
        )

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        if (
            self.save_on_train_end
            and self._epochs_ended
            and (self._last_saved_step is None or self._step() != self._last_saved_step)
        ):
            self._save(self._current_epoch, None, self._last_metrics)
        self._finish_training()  # when fit returns, every checkpoint is on disk

    # Results -----------------------------------------------------------------------------

    @property
    def latest_path(self) -> str | None:
        """The newest checkpoint this run saved, or ``None``."""
        kept = [] if self._store is None else self._own_records(self._store)
        return kept[-1].path if kept else None

    # Internals ---------------------------------------------------------------------------

    def _after_rollback(self, batch: int, rollback_states: dict[str, Any], ahead: int = 0) -> None:
        """``RollbackOnDivergence`` restored a checkpoint after batch ``batch`` of this epoch,
        and will read the next ``ahead`` batches without training them: steps count on from the
        restored one, and the restored state is saved at once, its manifest record holding the
        rollbacks (``state["callbacks"]``, as ResumeFromLatest records them)."""
        done = batch + 1 + ahead  # batches of the epoch read, trained or skipped
        self._position = EpochPosition(self._step() - done, max(self._position.replayed, done))
        self._save(self._current_epoch, batch, {}, state={"callbacks": rollback_states})

    def _save(
        self,
        epoch: int,
        batch: int | None,
        metrics: dict[str, float],
        state: dict[str, Any] | None = None,
    ) -> None:
        store = self._store
        assert store is not None, "on_train_begin opens the store"
        self._settle()
        filename = self._render_filename(store, self.filename, epoch, batch, metrics)
        kept, dropped = self._retention_plan(
            store, self.retention, filename, epoch=epoch, batch=batch, metrics=metrics
        )
        # The newest checkpoint is never dropped: the latest alias must not name a lost file.
        dropped = [name for name in dropped if name != filename]

        def tidy(record: CheckpointRecord) -> None:
            store.set_alias(LATEST_ALIAS, record.filename)
            store.release(self.keeper, dropped)
            self._say(f"saved {record.filename} (step {record.step})", epoch)

        committed = self._commit(
            store, filename, epoch=epoch, batch=batch, metrics=metrics, state=state, then=tidy
        )
        # A save refused for a non-finite loss counts as the time trigger's save too: the loss
        # stays NaN until the epoch ends, and retrying at every batch would read it every batch.
        self._trigger.saved(self._clock())
        if not committed:
            return  # a non-finite training loss: nothing saved
        self._last_saved_step = self._step()
        self._epoch_saves += 1
        self._epoch_deleted += len(dropped)
        self._kept = len(kept) + (filename not in {r.filename for r in kept})
