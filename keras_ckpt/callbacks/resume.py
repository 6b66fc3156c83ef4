"""``keras_ckpt.ResumeFromLatest``: rerun the same script and training goes on where it stopped."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import keras

from keras_ckpt import ema, validation
from keras_ckpt.callbacks._base import StoreCallback, dedup_argument
from keras_ckpt.callbacks._batches import EpochPosition, enable_batch_hook
from keras_ckpt.callbacks._callback_states import (
    load_callback_states,
    split_arrays,
    states_with_arrays,
)
from keras_ckpt.callbacks._monitor import plain_metrics
from keras_ckpt.callbacks._random_state import host_generators, set_random_state
from keras_ckpt.callbacks._replay import continue_epoch
from keras_ckpt.callbacks._signals import StopRequests
from keras_ckpt.callbacks._training_state import (
    capture_state,
    load_variables,
    newest_resumable,
    restore_history,
)
from keras_ckpt.keras_adapter import (
    clear_fit_start_epoch,
    fit_callbacks,
    print_message,
    set_fit_start_epoch,
)
from keras_ckpt.loading import checkpoint_file
from keras_ckpt.policies import KeepLatest
from keras_ckpt.processes import agree_on_save, is_writer
from keras_ckpt.records import DEDUP_EXTENSION, LATEST_ALIAS, CheckpointRecord
from keras_ckpt.store import Store, check_directory_usable
from keras_ckpt.triggers import IntervalTrigger

FILENAME = "resume-epoch{epoch:04d}-step{step:08d}.weights.h5"


class ResumeFromLatest(StoreCallback):
    """Saves everything a run needs to continue, and continues from it when the script reruns.

    The first run trains and saves; a rerun of the same script, with the same ``model.fit``
    call, finds the newest valid checkpoint in ``directory`` and continues from it: model and
    optimizer variables (so ``optimizer.iterations`` and schedules continue), the epoch and the
    batch within it (the batches already trained are read from the data and not trained again),
    Keras seed-generator states (Dropout and other random layers), Python's and NumPy's random
    states, and the state of every callback in the same ``fit`` that has ``state_dict()`` /
    ``load_state_dict()`` (all of keras_ckpt's, and your own if they implement them). Each
    callback's state is found by its class and configuration (``monitor``, ``mode``,
    ``directory``, ``filepath``), not by its place in the list.

    With deterministic ops and a data order that depends only on the epoch (unshuffled NumPy
    inputs, a ``PyDataset`` whose order is a function of the epoch), the final weights are
    bit-identical to those of an uninterrupted run, after a kill at an epoch boundary or
    mid-epoch.

    A newest checkpoint that fails its checksum or cannot be read is skipped with a warning, and
    the next valid one is used. A checkpoint of another architecture is an error naming the first
    variable that differs. When training completes, the run is marked finished: rerunning the
    finished script restores the final weights and does not train again (it says so), unless
    ``fit`` is asked for more epochs.

    With ``handle_signals=True``, SIGTERM and SIGINT make the callback save at the next batch
    boundary and stop training cleanly, so ``fit`` returns; a second signal goes to the handler
    that was installed before (by default: exit at once).

    Args:
        directory: Where the resume checkpoints go (a checkpoint store like any other:
            ``list_checkpoints`` describes it).
        save_freq: ``"epoch"``, or also every this many batches (mid-epoch).
        every_seconds: Also save once this many seconds passed since the last save.
        keep_last: How many resume checkpoints to keep (at least 1; the default 2 leaves one to
            fall back on if the newest is damaged).
        handle_signals: Save and stop cleanly on SIGTERM/SIGINT.
        verbose: 0 is silent; 1 prints what is restored and saved.
        async_save: Copy the variables (and the random and callback states) on the training
            thread and write the checkpoint in the background (at most one save in flight; a
            failure is raised at the next save or at the end of training). ``False`` writes
            before training goes on.
        dedup: Store weights once: each checkpoint is an index
            (``.weights.dedup.json``) naming one content-addressed blob per variable, and a
            variable whose bytes an earlier checkpoint of the directory holds (a frozen
            backbone) is not written again (see ``IntervalCheckpoint``). A local
            ``directory`` only.

    Raises:
        ValueError: On any invalid argument, naming it.

    Example:
        >>> import keras_ckpt
        >>> resume = keras_ckpt.ResumeFromLatest("runs/resume", save_freq=500)
    """

    event_name: str | None = "resume"
    filename_template = FILENAME
    _directory_argument = "directory"  # the argument name that errors about the directory use

    def __init__(
        self,
        directory: str | os.PathLike[str],
        save_freq: str | int = "epoch",
        every_seconds: float | None = None,
        keep_last: int = 2,
        handle_signals: bool = True,
        verbose: int = 0,
        async_save: bool = True,
        *,
        clock: Callable[[], float] = time.monotonic,
        dedup: bool = False,
    ):
        super().__init__(save_weights_only=True, async_save=async_save)
        self.directory = check_directory_usable(directory, self._directory_argument)
        self.dedup = dedup_argument(dedup, None, self.directory, self._directory_argument)
        if self.dedup:
            self.filename_template = FILENAME[: -len(".weights.h5")] + DEDUP_EXTENSION
        every_steps, at_epoch_end = self._save_schedule(save_freq)
        self.save_freq = save_freq
        self.every_seconds = validation.optional(
            validation.positive_seconds, "every_seconds", every_seconds
        )
        self.keep_last = validation.positive_int("keep_last", keep_last)
        self.handle_signals = validation.boolean("handle_signals", handle_signals)
        self.verbose = validation.one_of("verbose", verbose, (0, 1))
        self._trigger = IntervalTrigger(
            every_epochs=1 if at_epoch_end else None,
            every_steps=every_steps,
            every_seconds=self.every_seconds,
        )
        self._clock = validation.function("clock", clock, what="returning seconds")
        if every_steps is not None or every_seconds is not None or handle_signals:
            enable_batch_hook(self, "on_train_batch_begin", self._on_batch_begin)
        self._store: Store | None = None
        self._epoch = 0
        self._position = EpochPosition()
        self._end_replay: Callable[[], None] = lambda: None
        self._stop_requests = StopRequests()
        self._stopped_by_signal = False
        self._epochs_done = 0
        self._trained = False
        self._epoch_begin_generators: dict[str, Any] = {}
        self._history_to_restore: dict[str, Any] | None = None
        self._epoch_end_metrics: dict[str, float] | None = None
        self._siblings: list[Any] = []
        self.resumed_from: CheckpointRecord | None = None

    def _save_schedule(self, save_freq: Any) -> tuple[int | None, bool]:
        """Checks ``save_freq``; returns the interval in batches of the mid-epoch saves
        (``None``: none) and whether each epoch end saves."""
        validation.save_freq(save_freq)
        return (None if save_freq == "epoch" else int(save_freq)), True

    # Hooks -------------------------------------------------------------------------------

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self._settle()
        # Found once per fit. Reading fit's locals again at each save would keep what they held
        # at the save before (the previous epoch's data iterator) alive until then, and free it
        # inside the save: seconds on TensorFlow, where deleting an iterator waits for its
        # threads.
        self._siblings = _sibling_callbacks(self)
        ema.watch(self.model, self._siblings)  # before the restore: it forgets the last fit's end
        self._warn_if_tensorboard_comes_first()
        self._check_alone_in_fit()
        self._end_replay()  # of an earlier fit that failed during its replay
        self._store = self._open_store(self.directory)
        self._stopped_by_signal = False
        self._epoch_saves = 0
        self._stop_requests.received.clear()
        self._epochs_done = 0
        self._trained = False
        self._epoch_end_metrics = None
        self.resumed_from = newest_resumable(
            [r for r in self._store.records() if r.state is not None and self.keeper in r.kept_by]
        )
        if self.resumed_from is None:
            self._begin_run(continue_run=False)
        else:
            self._restore(self.resumed_from)
        self._trigger.start(now=self._clock(), step=self._step())
        if self.handle_signals:
            self._stop_requests.install()

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if self._epoch_end_metrics is not None:
            # The epoch-boundary save waits until now, so that every callback after this one in
            # the list (and History) has finished its on_epoch_end and its state is current.
            self._save(epoch, 0, metrics=self._epoch_end_metrics)
            self._epoch_end_metrics = None
        self._epoch_saves = 0  # the save above was counted in the epoch that scheduled it
        if self._history_to_restore:
            restore_history(self._siblings, self._history_to_restore)
        self._history_to_restore = None
        self._epoch = epoch
        self._position = EpochPosition.current(self.model, self._start_batches)
        # Python's and NumPy's generators as the epoch starts, before the data pipeline draws
        # from them (JAX and PyTorch shuffle NumPy inputs with np.random; a PyDataset may augment
        # with either). A mid-epoch resume restores these, and the pipeline then replays the
        # epoch's draws while its first batches are read and skipped.
        self._epoch_begin_generators = host_generators()

    def _on_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if self._position.is_replayed(batch):
            return  # read again without training: the state is still the one resumed from
        # None: no signal is watched, so none is agreed on.
        signalled = self._stop_requests.received.is_set() if self.handle_signals else None
        due = self._position.has_trained(batch) and self._trigger.due_mid_epoch(
            self._position.step(batch), self._clock()
        )
        # What one process alone sees (a signal, its clock), all processes agree on, so they
        # save and stop at the same batch: one gather, only with several processes.
        due, signalled = agree_on_save(self._trigger, due, signalled)
        if signalled and not self._stopped_by_signal:
            self._stopped_by_signal = True
            saved = self._save(self._epoch, batch)
            self._epoch_saves += saved
            self.model.stop_training = True
            what = "saved" if saved else "not saved (a non-finite loss)"
            self._say(f"received a signal: {what}, stopping", self._epoch)
        elif due:
            self._epoch_saves += self._save(self._epoch, batch)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._epochs_done = epoch + 1
        self._trained = True
        # The epoch was cut short by a signal: the mid-epoch save is the one to resume from.
        due = self._trigger.due_at_epoch_end(epoch + 1, self._step(), self._clock())
        if not self._stopped_by_signal and agree_on_save(self._trigger, due).due:
            self._epoch_end_metrics = plain_metrics(logs)
            self._epoch_saves += 1  # taken as the next epoch begins (or as training ends)
        resumed = self.resumed_from
        self._log_events(
            logs, saved=self._epoch_saves, resumed_from_step=0 if resumed is None else resumed.step
        )

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        self._stop_requests.uninstall()
        # Keras's BackupAndRestore leaves this set, so a later plain fit starts midway.
        clear_fit_start_epoch(self.model)
        self._end_replay()  # a fit that stopped during the replay
        if self._trained and not self._stopped_by_signal:
            self._save(self._epochs_done, 0, metrics=self._epoch_end_metrics, finished=True)
            self._epoch_end_metrics = None
            self._settle(announce=True)
            self._after_finish()
        self._finish_training()  # when fit returns, every checkpoint is on disk
        self._siblings = []

    def _check_alone_in_fit(self) -> None:
        others = [
            type(c).__name__
            for c in fit_callbacks(self)
            if isinstance(c, ResumeFromLatest) and c is not self
        ]
        if others:
            raise ValueError(
                "Only one ResumeFromLatest or BackupAndRestore may train in a fit: each restores "
                "the model and replays the batches already trained. Received callbacks: "
                f"{[type(self).__name__, *others]}"
            )

    def _after_finish(self) -> None:
        """What happens to the checkpoints once training completed (BackupAndRestore deletes)."""

    # Saving ------------------------------------------------------------------------------

    def _save(
        self,
        epoch: int,
        batch: int,
        metrics: dict[str, float] | None = None,
        finished: bool = False,
    ) -> bool:
        """Saves the state after ``batch`` batches of 0-based ``epoch`` (batch 0: its start).

        Returns:
            Whether it was saved (not for a non-finite training loss).
        """
        store = self._store
        assert store is not None
        self._settle()
        state = capture_state(
            self.model,
            self._siblings,
            epoch=epoch,
            batch=batch,
            # A finished run remembers how many epochs fit asked for: asking for more trains on.
            finished=self.params.get("epochs", epoch) if finished else None,
            start_batches=self._start_batches,
            host=self._epoch_begin_generators if batch else host_generators(),
        )
        # Arrays of callback states (SWA's running average) go into the checkpoint's weights
        # file, which stays one plain Keras loads; the manifest keeps a reference to each.
        arrays: list[Any] = []
        state["callbacks"] = split_arrays(state["callbacks"], arrays)
        # Records name the epoch a checkpoint was taken in: an epoch-boundary save belongs to
        # the epoch that just ended.
        record_epoch = max(epoch - 1 if batch == 0 else epoch, 0)
        filename = self._render_filename(
            store, self.filename_template, record_epoch, None, metrics or {}
        )
        batch_index = None if batch == 0 else batch - 1
        _, dropped = self._retention_plan(
            store,
            KeepLatest(self.keep_last),
            filename,
            epoch=record_epoch,
            batch=batch_index,
            metrics=metrics or {},
        )
        protected = {filename}
        if self.resumed_from is not None:
            protected.add(self.resumed_from.filename)  # never rotated out from under a rerun
        dropped = [name for name in dropped if name not in protected]

        def tidy(record: CheckpointRecord) -> None:
            store.set_alias(LATEST_ALIAS, record.filename)
            store.release(self.keeper, dropped)
            self._say(f"saved {record.filename} (step {record.step})", record.epoch - 1)

        committed = self._commit(
            store,
            filename,
            epoch=record_epoch,
            batch=batch_index,
            metrics=metrics or {},
            state=state,
            then=tidy,
            arrays=arrays,
        )
        # A save refused for a non-finite loss counts as the time trigger's save too: the loss
        # stays NaN until the epoch ends, and retrying at every batch would read it every batch.
        self._trigger.saved(self._clock())
        return committed

    def _after_rollback(self, batch: int, rollback_states: dict[str, Any], ahead: int = 0) -> None:
        """``RollbackOnDivergence`` restored a checkpoint after batch ``batch`` of this epoch,
        and will read the next ``ahead`` batches without training them (``skip_batches``).

        Steps count on from the restored one, and the restored state is saved at once at the
        position after the skipped batches (unless the epoch ends there, which saves anyway): a
        rerun then resumes past every skipped batch, with the rollback counted (the saved state
        holds every other callback's, ``rollback_states`` included).
        """
        done = batch + 1 + ahead  # batches of the epoch read, trained or skipped
        self._position = EpochPosition(self._step() - done, max(self._position.replayed, done))
        steps = self.params.get("steps") if self.params else None
        if steps is None or done < steps:
            if self._save(self._epoch, done):
                self._epoch_saves += 1

    # Restoring ---------------------------------------------------------------------------

    def _restore(self, record: CheckpointRecord) -> None:
        state = record.state or {}
        callbacks = state.get("callbacks", {})
        with checkpoint_file(record, verify_checksum=False) as path:  # verified when chosen
            load_variables(self.model, path, state.get("variables", []))
            callbacks = states_with_arrays(callbacks, path, "ResumeFromLatest", record.path)
        self._run = record.run
        self._start_batches = int(state.get("start_batches", 0))
        set_random_state(self.model, state.get("random", {}))
        epochs = self.params.get("epochs")
        epoch = int(state["epoch"])
        finished = state.get("finished")
        if finished is not None and epochs is not None and epochs <= finished:
            if is_writer():
                print_message(
                    f"ResumeFromLatest: training in {self.directory} already finished "
                    f"({epoch} epochs); restored the final weights and not training again."
                )
            set_fit_start_epoch(self.model, epochs)
            self._epochs_done = epoch
            return
        set_fit_start_epoch(self.model, epoch)
        batch = int(state.get("batch", 0))
        self._end_replay = continue_epoch(self.model, batch, state.get("random", {}))
        load_callback_states(self._siblings, callbacks, record.path)
        # History resets in its own on_train_begin, which runs after this one: refill it when
        # the first epoch begins.
        self._history_to_restore = state.get("history")
        where = f"epoch {epoch + 1}" + (f", batch {batch + 1}" if batch else "")
        self._say(f"resuming at {where} from {record.filename}")


def _sibling_callbacks(callback: keras.callbacks.Callback) -> list[Any]:
    """The other callbacks of the running ``fit``."""
    return [c for c in fit_callbacks(callback) if c is not callback]
