"""What every saving callback shares: run identity, the global step, and one call into the store."""

from __future__ import annotations

import contextlib
import math
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import keras

from keras_ckpt import ema, naming, processes, ranking, remote, validation
from keras_ckpt.callbacks._monitor import (
    EVENT_PREFIX,
    batches_trained,
    log_learning_rates,
    training_loss,
)
from keras_ckpt.keras_adapter import check_sharded_weights, fit_callbacks, print_message
from keras_ckpt.policies import RetentionPolicy
from keras_ckpt.records import KIND_MODEL, KIND_WEIGHTS, CheckpointRecord, is_blob
from keras_ckpt.snapshot import append_arrays, release_host_buffers, take_snapshot, write_now
from keras_ckpt.store import Store, reserved_alias_filenames
from keras_ckpt.writer import WRITER


class StoreCallback(keras.callbacks.Callback):
    """Base of the saving callbacks: a thin adapter from ``fit``'s hooks to a checkpoint store.

    Which process writes, and what the processes of a multi-process run agree on, is
    ``keras_ckpt.processes``'s business: a callback holds the ``Store`` it opened for this
    process and asks it, never which kind it is.
    """

    # Logs keys "ckpt/<event_name>_<event>"; None logs nothing (the drop-ins, as in Keras).
    event_name: str | None = None
    # Set by a callback saving Keras's sharded weights (``.weights.json``), in GB.
    max_shard_size: float | None = None
    # Set by a callback storing weights once (``.weights.dedup.json`` and shared blobs).
    dedup: bool = False

    def __init__(self, save_weights_only: bool, async_save: bool = True):
        super().__init__()
        self.save_weights_only = save_weights_only
        self.async_save = validation.boolean("async_save", async_save)
        self._run: str | None = None
        self._start_batches = 0
        self._write_errors: list[BaseException] = []
        self._open_stores: list[Store] = []
        # Called with the file name on the training thread as each save begins (what
        # RollbackOnDivergence keeps beside a checkpoint that has no resume state).
        self._save_listeners: list[Callable[[str], None]] = []

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
        # One run id on every process: the others' records of the run are the chief's.
        self._run = processes.chief_text(uuid.uuid4().hex[:12])
        self._start_batches = batches_trained(self.model)

    def _open_store(self, directory: str) -> Store:
        """Only the chief (process 0) of a multi-process run writes; the others follow its
        directory in memory, taking the same decisions from the same state, and write nothing.
        """
        store = processes.open_store(directory)
        self._open_stores.append(store)
        return store

    def _finish_training(self, announce: bool = True) -> None:
        """The end of ``fit``: every checkpoint on disk, then the directories this callback
        opened are free for other processes to write into (a later save takes the lock again),
        and the host buffers that snapshots reused between saves are freed.
        """
        try:
            self._settle(announce=announce)
        finally:
            for store in self._open_stores:
                store.close()
            self._open_stores.clear()
            if self.model is not None:
                release_host_buffers(self.model)

    def _say(self, message: str, epoch: int | None = None) -> None:
        """One short line when ``verbose``: "Epoch 3: BestCheckpoint saved ..."."""
        if getattr(self, "verbose", 0) and processes.is_writer():  # the process that saves
            where = "" if epoch is None else f"Epoch {epoch + 1}: "
            print_message(f"\n{where}{type(self).__name__} {message}")

    def _settle(self, announce: bool = False) -> None:
        """Waits for the save in flight, and raises here what went wrong in the background.

        Every decision that reads the store (top-k, file names, retention) is taken after this,
        on the committed state. With ``announce`` (the end of training), a wait is announced.
        """
        if announce and WRITER.busy:
            self._say("is waiting for the save in flight to reach the disk ...")
            started = time.monotonic()
            WRITER.wait()
            self._say(f"done waiting ({time.monotonic() - started:.1f} s)")
        WRITER.wait()
        if self._write_errors:
            error = self._write_errors[0]
            self._write_errors.clear()
            raise error

    def _commit(
        self,
        store: Store,
        filename: str,
        *,
        epoch: int,
        batch: int | None,
        metrics: Mapping[str, float],
        state: Mapping[str, Any] | None = None,
        then: Callable[[CheckpointRecord], None] | None = None,
        arrays: list[Any] | None = None,
    ) -> bool:
        """Saves the model as of now; ``epoch`` and ``batch`` are 0-based as ``fit`` passes them.

        The variables are copied to host memory here, on the training thread. Writing,
        committing and ``then(record)`` (aliases, retention, messages) run on the background
        writer with ``async_save``, otherwise here; files are the same either way. ``arrays``
        (host arrays of callback states, not changed afterwards) go into the same
        ``.weights.h5``, beside the variables (``snapshot.append_arrays``).

        A step whose training loss is NaN or infinite is not saved: its weights are poisoned.
        A warning names the step and the file; the checkpoints before it stay as they are.

        Returns:
            Whether the checkpoint was saved (``False``: refused for a non-finite loss).
        """
        self._settle()
        model, weights_only = self.model, self.save_weights_only
        # Read here, when a save is due, never per batch: no device-to-host sync is added.
        loss = training_loss(model, metrics)
        if loss is not None and not math.isfinite(loss):
            warnings.warn(
                f"{type(self).__name__}: not saving {filename} at step {self._step()} "
                f"(epoch {epoch + 1}): the training loss is {loss}, so the weights may be "
                "NaN or infinite. The earlier checkpoints stay as they are.",
                stacklevel=4,
            )
            return False
        if arrays and self.dedup:
            raise ValueError(
                f"{type(self).__name__}(dedup=True) cannot store the arrays of callback states "
                "(StochasticWeightAveraging's running average): a dedup checkpoint holds the "
                "model's variables only. Use dedup=False for this run; nothing was saved."
            )
        for listener in self._save_listeners:
            listener(filename)
        max_shard_size = self.max_shard_size if weights_only else None
        # Weights stored once: the blobs committed already are shared, not written again.
        known = None
        if self.dedup:
            known = {p.filename for r in store.records() for p in r.parts if is_blob(p.filename)}
        snapshot = take_snapshot(model, filename, weights_only, max_shard_size, known)
        if snapshot is None and self.dedup:
            raise ValueError(
                f"{type(self).__name__}(dedup=True) needs Keras's saving internals, which "
                f"this Keras ({keras.__version__}) lacks (see the warning above)."
            )
        if not store.writes and snapshot is not None:
            # Not the chief, which writes this checkpoint: the store commits in memory only,
            # right here. The snapshot is still taken: Keras's saving walk may enter collectives
            # (it creates variables) that every process must enter.
            snapshot.discard()
            snapshot = None
        if snapshot is None:
            # A legacy .h5/.hdf5 file, or a Keras without the saving internals: Keras writes it now
            # (a store that does not write never calls ``write``).
            def write(path: str) -> None:
                write_now(model, path, weights_only, max_shard_size)
        else:
            write = snapshot.write
        if arrays:
            write_variables = write

            def write(path: str) -> None:
                write_variables(path)
                append_arrays(path, arrays)

        step, run = self._step(), self._run or ""
        # Where this thread's Keras messages go; Keras keeps it per thread, and ``then`` may
        # print from the writer's.
        interactive = keras.config.is_interactive_logging_enabled()

        def job() -> None:
            try:
                record = store.commit(
                    filename,
                    write,
                    epoch=epoch + 1,
                    batch=None if batch is None else batch + 1,
                    step=step,
                    metrics=metrics,
                    kind=KIND_WEIGHTS if weights_only else KIND_MODEL,
                    run=run,
                    keeper=self.keeper,
                    state=state,
                    multi_file=max_shard_size is not None or self.dedup,
                )
            finally:
                if snapshot is not None:
                    snapshot.discard()
            if then is not None:
                with _interactive_logging(interactive):
                    then(record)

        if self.async_save and snapshot is not None:
            WRITER.submit(job, on_error=self._write_errors.append)
        else:
            job()
        return True

    def _retention_plan(
        self,
        store: Store,
        policy: RetentionPolicy,
        filename: str,
        *,
        epoch: int,
        batch: int | None,
        metrics: Mapping[str, float],
    ) -> tuple[list[CheckpointRecord], list[str]]:
        """What ``policy`` keeps of this run's checkpoints once ``filename`` is committed, and
        the names it drops: decided now, on the training thread, from the committed state (the
        background writer carries it out after the commit)."""
        coming = CheckpointRecord(
            path=store.path(filename),
            epoch=epoch + 1,
            batch=None if batch is None else batch + 1,
            step=self._step(),
            metrics=dict(metrics),
            time=time.time(),
            size=0,
            sha256="",
            keras_version=keras.__version__,
            kind=KIND_WEIGHTS if self.save_weights_only else KIND_MODEL,
            run=self._run or "",
            kept_by=(self.keeper,),
        )
        # A same-named file is replaced, and the new record goes last (as the store does).
        own = [r for r in self._own_records(store) if r.filename != filename] + [coming]
        flags = policy.keep(own)
        kept = [record for record, keep in zip(own, flags, strict=True) if keep]
        dropped = [record.filename for record, keep in zip(own, flags, strict=True) if not keep]
        return kept, dropped

    def _log_events(self, logs: dict[str, Any] | None, **events: float) -> None:
        """Adds this epoch's checkpoint events to ``logs`` (callbacks later in the list, such as
        TensorBoard and History, see them)."""
        if self.event_name is None or logs is None:
            return
        for event, value in events.items():
            logs[f"{EVENT_PREFIX}{self.event_name}_{event}"] = float(value)
        if getattr(self.model, "optimizer", None) is not None and not any(
            name.startswith("learning_rate") for name in logs
        ):
            log_learning_rates(self.model, logs)  # unless a learning-rate callback did

    def _watch_ema(self) -> None:
        """With ``use_ema=True``, every checkpoint of this fit holds the raw weights as the
        model's and the moving averages in the optimizer, whatever a ``SwapEMAWeights`` or the
        end of ``fit`` does with them (``keras_ckpt.ema``)."""
        ema.watch(self.model, fit_callbacks(self))

    def _warn_if_tensorboard_comes_first(self) -> None:
        if self.event_name is None:
            return
        for callback in fit_callbacks(self):
            if callback is self:
                return
            if isinstance(callback, keras.callbacks.TensorBoard):
                warnings.warn(
                    f"TensorBoard is listed before {type(self).__name__}, so its event files "
                    f"will not show the checkpoint events ({EVENT_PREFIX}...); list it after.",
                    stacklevel=3,
                )
                return

    def _step(self) -> int:
        """Training batches completed in this run."""
        return batches_trained(self.model) - self._start_batches

    def _render_filename(
        self,
        store: Store,
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
        taken = (store.names_in_use() - own) | set(reserved_alias_filenames())
        return naming.next_free_name(filename, taken)

    def _replaces_a_better_own_file(
        self, store: Store, filename: str, monitor: str, value: float, mode: str
    ) -> bool:
        """Whether saving ``value`` as ``filename`` would overwrite one of this run's files that
        holds an equal or better value (a template like ``{epoch}`` with ``save_freq=N``)."""
        for record in self._own_records(store):
            if record.filename == filename:
                return not ranking.is_improvement(value, record.metrics.get(monitor), mode)
        return False

    def _after_rollback(self, batch: int, rollback_states: dict[str, Any], ahead: int = 0) -> None:
        """``RollbackOnDivergence`` restored one of this callback's checkpoints after batch
        ``batch`` of the current epoch, and reads the next ``ahead`` batches without training
        them; ``rollback_states`` is its state by its key, as ``callback_states`` gives it (the
        callbacks it restores from say what follows)."""

    def state_dict(self) -> dict[str, Any]:
        """The run this callback continues after a resume (its checkpoints are in the manifest)."""
        return {"run": self._run, "start_batches": self._start_batches}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continues the run ``state`` names; the next ``on_train_begin`` keeps it."""
        self._run = state.get("run") or None
        self._start_batches = int(state.get("start_batches", 0))

    def _own_records(self, store: Store) -> list[CheckpointRecord]:
        """This run's checkpoints that this callback keeps, oldest first."""
        WRITER.wait()  # as committed, with the save in flight
        return [r for r in store.records() if r.run == self._run and self.keeper in r.kept_by]


def sharded_weights_size(max_shard_size: Any, location: str, argument: str) -> float | None:
    """Validates a saving callback's ``max_shard_size`` (Keras's sharded weights, in GB).

    Args:
        max_shard_size: The argument as given: ``None`` (one file per checkpoint) or a number.
        location: Where the callback saves (its ``directory`` or ``filepath``).
        argument: The name of ``location``'s argument, for the message.

    Returns:
        The size as a float, or ``None``.

    Raises:
        ValueError: If it is not a finite number > 0, the installed Keras cannot write sharded
            weights (3.10 or newer can), or ``location`` is a remote URL (sharded checkpoints
            are several files, which keras_ckpt keeps in local directories only).
    """
    size = validation.max_shard_size(max_shard_size)
    if size is None:
        return None
    check_sharded_weights("max_shard_size", size)
    if remote.is_url(location):
        raise ValueError(
            "Argument `max_shard_size` saves sharded weights, several files per checkpoint, "
            "which keras_ckpt keeps in local directories only, not at a URL. Received: "
            f"{argument}={location!r}, max_shard_size={size!r}"
        )
    return size


def dedup_argument(dedup: Any, max_shard_size: float | None, location: str, argument: str) -> bool:
    """Validates a saving callback's ``dedup`` (weights stored once).

    Args:
        dedup: The argument as given.
        max_shard_size: The callback's validated ``max_shard_size``.
        location: Where the callback saves (its ``directory``).
        argument: The name of ``location``'s argument, for the message.

    Raises:
        ValueError: If it is not a bool, or with ``dedup=True``: ``max_shard_size`` is set (a
            checkpoint is either sharded or deduplicated), or ``location`` is a remote URL
            (blobs are files shared by checkpoints, kept in local directories only).
    """
    dedup = validation.boolean("dedup", dedup)
    if dedup and max_shard_size is not None:
        raise ValueError(
            "Arguments `dedup` and `max_shard_size` cannot be combined: a checkpoint is stored "
            "per variable (dedup) or in shards, not both. Received: dedup=True, "
            f"max_shard_size={max_shard_size!r}"
        )
    if dedup and remote.is_url(location):
        raise ValueError(
            "Argument `dedup=True` stores weights once in blobs that several checkpoints share, "
            "which keras_ckpt keeps in local directories only, not at a URL. Received: "
            f"{argument}={location!r}, dedup=True"
        )
    return dedup


@contextlib.contextmanager
def _interactive_logging(enabled: bool) -> Iterator[None]:
    """Keras's messages go to stdout (``enabled``) or to logging, in this thread, for a while:
    ``keras.config.disable_interactive_logging()`` holds only in the thread that called it."""
    before = keras.config.is_interactive_logging_enabled()
    if before == enabled:
        yield
        return
    _set_interactive_logging(enabled)
    try:
        yield
    finally:
        _set_interactive_logging(before)


def _set_interactive_logging(enabled: bool) -> None:
    if enabled:
        keras.config.enable_interactive_logging()
    else:
        keras.config.disable_interactive_logging()
