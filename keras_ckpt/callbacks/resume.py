"""``keras_ckpt.ResumeFromLatest``: rerun the same script and training goes on where it stopped."""

from __future__ import annotations

import base64
import copy
import os
import random
import signal
import threading
import time
import warnings
import weakref
from collections.abc import Callable
from typing import Any

import keras
import numpy as np

from keras_ckpt import validation
from keras_ckpt.callbacks._base import StoreCallback
from keras_ckpt.callbacks._monitor import (
    epoch_start_batches,
    plain_metrics,
    replayed_batches,
    set_replayed_batches,
)
from keras_ckpt.keras_adapter import (
    clear_fit_start_epoch,
    fit_callbacks,
    fit_epoch_iterator,
    fit_is_running,
    fit_shuffle,
    global_seed,
    reads_tf_dataset,
    replace_train_function,
    seed_generators,
    set_fit_start_epoch,
    skip_train_step,
)
from keras_ckpt.policies import KeepLatest
from keras_ckpt.processes import agree_on_save, is_writer
from keras_ckpt.records import LATEST_ALIAS, CheckpointRecord
from keras_ckpt.store import CheckpointCorruptedError, check_directory_usable, verify
from keras_ckpt.triggers import IntervalTrigger

FILENAME = "resume-epoch{epoch:04d}-step{step:08d}.weights.h5"
STATE_VERSION = 1


class ResumeFromLatest(StoreCallback):
    """Saves everything a run needs to continue, and continues from it when the script reruns.

    The first run trains and saves; a rerun of the same script, with the same ``model.fit``
    call, finds the newest valid checkpoint in ``directory`` and continues from it: model and
    optimizer variables (so ``optimizer.iterations`` and schedules continue), the epoch and the
    batch within it (the batches already trained are read from the data and not trained again),
    Keras seed-generator states (Dropout and other random layers), Python's and NumPy's random
    states, and the state of every callback in the same ``fit`` that has ``state_dict()`` /
    ``load_state_dict()`` (all of keras_ckpt's, and your own if they implement them).

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

    Raises:
        ValueError: On any invalid argument, naming it.

    Example:
        >>> import keras_ckpt
        >>> resume = keras_ckpt.ResumeFromLatest("runs/resume", save_freq=500)
    """

    event_name = "resume"
    filename_template = FILENAME
    _saves_at_epoch_end = True
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
    ):
        super().__init__(save_weights_only=True, async_save=async_save)
        self.directory = check_directory_usable(directory, self._directory_argument)
        if save_freq != "epoch":
            validation.positive_int("save_freq", save_freq)
        self.save_freq = save_freq
        if every_seconds is not None and (
            isinstance(every_seconds, bool)
            or not isinstance(every_seconds, (int, float))
            or not 0 < every_seconds < float("inf")
        ):
            raise ValueError(
                "Argument `every_seconds` must be a finite number > 0 or None. "
                f"Received: every_seconds={every_seconds!r}"
            )
        self.every_seconds = every_seconds
        self.keep_last = validation.positive_int("keep_last", keep_last)
        self.handle_signals = validation.boolean("handle_signals", handle_signals)
        self.verbose = validation.one_of("verbose", verbose, (0, 1))
        self._trigger = IntervalTrigger(
            every_epochs=1 if self._saves_at_epoch_end else None,
            every_steps=None if save_freq == "epoch" else int(save_freq),
            every_seconds=None if every_seconds is None else float(every_seconds),
        )
        self._clock = validation.function("clock", clock, what="returning seconds")
        if save_freq != "epoch" or every_seconds is not None or handle_signals:
            self.on_train_batch_begin = self._on_batch_begin
        self._store = None
        self._epoch = 0
        self._epoch_start_step = 0
        self._replayed = 0
        self._end_replay: Callable[[], None] = lambda: None
        self._signal_received = threading.Event()
        self._signal_fit: weakref.ref[Any] | None = None  # the fit whose signals it handles
        self._previous_handlers: dict[int, Any] = {}
        self._stopped_by_signal = False
        self._epochs_done = 0
        self._trained = False
        self._epoch_begin_generators: dict[str, Any] = {}
        self._history_to_restore: dict[str, Any] | None = None
        self._epoch_end_metrics: dict[str, float] | None = None
        self.resumed_from: CheckpointRecord | None = None

    # Hooks -------------------------------------------------------------------------------

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self._settle()
        self._warn_if_tensorboard_comes_first()
        self._check_alone_in_fit()
        self._end_replay()  # of an earlier fit that failed during its replay
        self._store = self._open_store(self.directory)
        self._stopped_by_signal = False
        self._epoch_saves = 0
        self._signal_received.clear()
        self._epochs_done = 0
        self._trained = False
        self._epoch_end_metrics = None
        self.resumed_from = self._newest_valid()
        if self.resumed_from is None:
            self._begin_run(continue_run=False)
        else:
            self._restore(self.resumed_from)
        self._trigger.start(now=self._clock(), step=self._step())
        if self.handle_signals:
            self._install_signal_handlers()

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if self._epoch_end_metrics is not None:
            # The epoch-boundary save waits until now, so that every callback after this one in
            # the list (and History) has finished its on_epoch_end and its state is current.
            self._save(epoch, 0, metrics=self._epoch_end_metrics)
            self._epoch_end_metrics = None
        self._epoch_saves = 0  # the save above was counted in the epoch that scheduled it
        if self._history_to_restore:
            _restore_history(_sibling_callbacks(self), self._history_to_restore)
        self._history_to_restore = None
        self._epoch = epoch
        self._epoch_start_step = epoch_start_batches(self.model) - self._start_batches
        self._replayed = replayed_batches(self.model)
        # Python's and NumPy's generators as the epoch starts, before the data pipeline draws
        # from them (JAX and PyTorch shuffle NumPy inputs with np.random; a PyDataset may augment
        # with either). A mid-epoch resume restores these, and the pipeline then replays the
        # epoch's draws while its first batches are read and skipped.
        self._epoch_begin_generators = _host_generators()

    def _on_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if batch < self._replayed:
            return  # read again without training: the state is still the one resumed from
        # None: no signal is watched, so none is agreed on.
        signalled = self._signal_received.is_set() if self.handle_signals else None
        due = batch > self._replayed and self._trigger.due_mid_epoch(
            self._epoch_start_step + batch, self._clock()
        )
        # What one process alone sees (a signal, its clock), all processes agree on, so they
        # save and stop at the same batch: one gather, only with several processes.
        due, signalled = agree_on_save(self._trigger, due, signalled)
        if signalled and not self._stopped_by_signal:
            self._stopped_by_signal = True
            self._save(self._epoch, batch)
            self._epoch_saves += 1
            self.model.stop_training = True
            self._say("received a signal: saved, stopping", self._epoch)
        elif due:
            self._save(self._epoch, batch)
            self._epoch_saves += 1

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
        self._restore_signal_handlers()
        # Keras's BackupAndRestore leaves this set, so a later plain fit starts midway.
        clear_fit_start_epoch(self.model)
        self._end_replay()  # a fit that stopped during the replay
        if self._trained and not self._stopped_by_signal:
            self._save(self._epochs_done, 0, metrics=self._epoch_end_metrics, finished=True)
            self._epoch_end_metrics = None
            self._settle(announce=True)
            self._after_finish()
        self._finish_training()  # when fit returns, every checkpoint is on disk

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
    ) -> None:
        """Saves the state after ``batch`` batches of 0-based ``epoch`` (batch 0: its start)."""
        store = self._store
        assert store is not None
        self._settle()
        state = {
            "version": STATE_VERSION,
            "epoch": epoch,
            "batch": batch,
            # A finished run remembers how many epochs fit asked for: asking for more trains on.
            "finished": self.params.get("epochs", epoch) if finished else None,
            "start_batches": self._start_batches,
            "variables": _variable_signature(self.model),
            "random": _random_state(
                self.model, self._epoch_begin_generators if batch else _host_generators()
            ),
            "callbacks": _callback_states(_sibling_callbacks(self)),
            "history": _history_state(_sibling_callbacks(self)),
        }
        # Records name the epoch a checkpoint was taken in: an epoch-boundary save belongs to
        # the epoch that just ended.
        record_epoch = epoch - 1 if batch == 0 else epoch
        filename = self._render_filename(
            store, self.filename_template, max(record_epoch, 0), None, metrics or {}
        )
        batch_index = None if batch == 0 else batch - 1
        _, dropped = self._retention_plan(
            store,
            KeepLatest(self.keep_last),
            filename,
            epoch=max(record_epoch, 0),
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

        self._commit(
            store,
            filename,
            epoch=max(record_epoch, 0),
            batch=batch_index,
            metrics=metrics or {},
            state=state,
            then=tidy,
        )
        self._trigger.saved(self._clock())

    # Restoring ---------------------------------------------------------------------------

    def _newest_valid(self) -> CheckpointRecord | None:
        store = self._store
        assert store is not None
        candidates = [
            r for r in store.records() if r.state is not None and self.keeper in r.kept_by
        ]
        for record in reversed(candidates):
            try:
                verify(record)
            except CheckpointCorruptedError as error:
                warnings.warn(f"ResumeFromLatest: skipping {record.path}: {error}", stacklevel=3)
                continue
            problem = state_problem(record.state)
            if problem is not None:  # the manifest is data from the directory, like the file
                warnings.warn(
                    f"ResumeFromLatest: skipping {record.path}: its resume state {problem}.",
                    stacklevel=3,
                )
                continue
            return record
        return None

    def _restore(self, record: CheckpointRecord) -> None:
        state = record.state or {}
        _check_architecture(self.model, state.get("variables", []), record.path)
        try:
            _load_weights(self.model, record.path)
        except Exception as error:  # an unreadable file that still matched its checksum
            raise ValueError(f"ResumeFromLatest could not load {record.path}: {error}") from error
        self._run = record.run
        self._start_batches = int(state.get("start_batches", 0))
        _set_random_state(self.model, state.get("random", {}))
        epochs = self.params.get("epochs")
        epoch = int(state["epoch"])
        finished = state.get("finished")
        if finished is not None and epochs is not None and epochs <= finished:
            if is_writer():
                print(
                    f"ResumeFromLatest: training in {self.directory} already finished "
                    f"({epoch} epochs); restored the final weights and not training again."
                )
            set_fit_start_epoch(self.model, epochs)
            self._epochs_done = epoch
            return
        set_fit_start_epoch(self.model, epoch)
        batch = int(state.get("batch", 0))
        _warn_if_order_is_not_replayed(batch)
        if batch:
            torch_now = state.get("random", {}).get("torch_now")
            self._end_replay = _replay_trained_batches(
                self.model,
                batch,
                on_done=(lambda: _set_torch_generators(torch_now)) if torch_now else lambda: None,
            )
        _load_callback_states(_sibling_callbacks(self), state.get("callbacks", {}), record.path)
        # History resets in its own on_train_begin, which runs after this one: refill it when
        # the first epoch begins.
        self._history_to_restore = state.get("history")
        where = f"epoch {epoch + 1}" + (f", batch {batch + 1}" if batch else "")
        self._say(f"resuming at {where} from {record.filename}")

    # Signals -----------------------------------------------------------------------------

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        self._restore_signal_handlers()  # of an earlier fit that raised
        running = fit_epoch_iterator()
        self._signal_fit = None if running is None else weakref.ref(running)
        for signum in (signal.SIGTERM, signal.SIGINT):
            self._previous_handlers[signum] = signal.signal(signum, self._on_signal)

    def _restore_signal_handlers(self) -> None:
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)
        self._previous_handlers = {}

    def _on_signal(self, signum: int, frame: Any) -> None:
        # A fit that raises never calls on_train_end, which puts the handlers back; so the
        # handler checks that its fit still runs (it is on the stack this signal interrupted).
        running = None if self._signal_fit is None else self._signal_fit()
        fit_ended = self._signal_fit is not None and (
            running is None or not fit_is_running(running)
        )
        if not self._signal_received.is_set() and not fit_ended:
            self._signal_received.set()
            return
        # A second signal, or one after the fit ended: hand it to whoever handled it before.
        previous = self._previous_handlers.get(signum, signal.SIG_DFL)
        self._restore_signal_handlers()
        if callable(previous):
            previous(signum, frame)
        else:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)


# Helpers -------------------------------------------------------------------------------


def _load_weights(model: keras.Model, path: str) -> None:
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None and not optimizer.built:
        optimizer.build(model.trainable_variables)
    model.load_weights(path)


def _variable_signature(model: keras.Model) -> list[list[Any]]:
    return [[variable.path, list(variable.shape)] for variable in model.weights]


def _check_architecture(model: keras.Model, saved: list[list[Any]], path: str) -> None:
    current = _variable_signature(model)
    if not saved or [shape for _, shape in current] == [shape for _, shape in saved]:
        return
    for index, (mine, theirs) in enumerate(zip(current, saved, strict=False)):
        if list(mine[1]) != list(theirs[1]):
            detail = f"variable {index} is {mine[0]} {mine[1]} here but {theirs[0]} {theirs[1]}"
            break
    else:
        detail = f"the model has {len(current)} variables, the checkpoint {len(saved)}"
    raise ValueError(
        f"ResumeFromLatest: {path} was saved from a different architecture ({detail}). "
        "Nothing was loaded or overwritten; use a new directory for a new model."
    )


def _host_generators() -> dict[str, Any]:
    version, python_state, gauss = random.getstate()
    name, keys, position, has_gauss, cached = np.random.get_state()
    generators = {
        "python": [version, list(python_state), gauss],
        "numpy": [name, keys.tolist(), int(position), int(has_gauss), float(cached)],
    }
    if keras.backend.backend() == "torch":
        generators["torch"] = _torch_generators()
    return generators


def _torch_generators() -> dict[str, Any]:
    """PyTorch's global generators: its DataLoader shuffles NumPy inputs with the CPU one, and
    Keras's unseeded Dropout draws from the one of the device it runs on."""
    import torch

    def encode(state: Any) -> str:
        return base64.b64encode(state.numpy().tobytes()).decode("ascii")

    states = {"cpu": encode(torch.get_rng_state())}
    if torch.cuda.is_available():
        states["cuda"] = [encode(s) for s in torch.cuda.get_rng_state_all()]
    return states


def _set_torch_generators(states: dict[str, Any]) -> None:
    import torch

    def decode(text: str) -> Any:
        return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8)

    torch.set_rng_state(decode(states["cpu"]))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([decode(s) for s in states["cuda"]])


def _random_state(model: keras.Model, host_generators: dict[str, Any]) -> dict[str, Any]:
    state = {
        **host_generators,
        "seed_generators": [
            keras.ops.convert_to_numpy(g.state.value).tolist() for g in seed_generators(model)
        ],
    }
    if keras.backend.backend() == "torch":
        # Training draws from these too (Dropout): a mid-epoch resume replays the pipeline from
        # the epoch-start states above, then continues training from these.
        state["torch_now"] = _torch_generators()
    return state


def _set_random_state(model: keras.Model, state: dict[str, Any]) -> None:
    if "python" in state:
        version, python_state, gauss = state["python"]
        random.setstate((version, tuple(python_state), gauss))
    if "numpy" in state:
        name, keys, position, has_gauss, cached = state["numpy"]
        np.random.set_state((name, np.array(keys, dtype=np.uint32), position, has_gauss, cached))
    if "torch" in state and keras.backend.backend() == "torch":
        _set_torch_generators(state["torch"])
    generators = seed_generators(model)
    saved = state.get("seed_generators", [])
    if len(saved) == len(generators):
        for generator, value in zip(generators, saved, strict=True):
            generator.state.assign(np.array(value, dtype=generator.state.dtype))


def _sibling_callbacks(callback: keras.callbacks.Callback) -> list[Any]:
    """The other callbacks of the running ``fit``."""
    return [c for c in fit_callbacks(callback) if c is not callback]


def _warn_if_order_is_not_replayed(batch: int) -> None:
    """Says once when the resumed run cannot see the data in the original order."""
    iterator = fit_epoch_iterator()
    if iterator is not None and reads_tf_dataset(iterator):
        # A tf.data shuffle order depends on how often this process iterated the pipeline.
        warnings.warn(
            "ResumeFromLatest: training reads a tf.data.Dataset. The epoch and step are resumed "
            "exactly, but a shuffled Dataset is not replayed in the same order after a restart, "
            "so results differ from an uninterrupted run. See the README on exact resume.",
            stacklevel=3,
        )
        return
    shuffle = fit_shuffle()
    if batch and shuffle and keras.backend.backend() == "tensorflow" and global_seed() is None:
        # TensorFlow shuffles NumPy inputs with its own seeded op: replayable only when seeded.
        warnings.warn(
            "ResumeFromLatest: resuming mid-epoch with shuffle=True and no global seed; the "
            "rest of this epoch sees the data in another order (some samples twice, some not "
            "at all). Call keras.utils.set_random_seed(...) at the top of the script for an "
            "exact resume.",
            stacklevel=3,
        )


def _history_state(callbacks: list[Any]) -> dict[str, Any] | None:
    for callback in callbacks:
        if isinstance(callback, keras.callbacks.History):
            history = {
                name: [float(v) for v in values] for name, values in callback.history.items()
            }
            return {"epoch": list(callback.epoch), "history": history}
    return None


def _restore_history(callbacks: list[Any], state: dict[str, Any]) -> None:
    for callback in callbacks:
        if isinstance(callback, keras.callbacks.History) and not callback.epoch:
            callback.epoch = list(state.get("epoch", []))
            # float(): the manifest stores a NaN or infinite loss as the text "nan", "inf".
            callback.history = {
                k: [float(value) for value in v] for k, v in state.get("history", {}).items()
            }


def _callback_keys(callbacks: list[Any]) -> list[tuple[str, Any]]:
    """Stable names for callbacks with state: class name and occurrence (``EarlyStopping#0``)."""
    seen: dict[str, int] = {}
    keyed = []
    for callback in callbacks:
        if not (hasattr(callback, "state_dict") and hasattr(callback, "load_state_dict")):
            continue
        name = type(callback).__name__
        index = seen.get(name, 0)
        seen[name] = index + 1
        keyed.append((f"{name}#{index}", callback))
    return keyed


def _callback_states(callbacks: list[Any]) -> dict[str, Any]:
    return {key: callback.state_dict() for key, callback in _callback_keys(callbacks)}


def _load_callback_states(callbacks: list[Any], states: dict[str, Any], path: str) -> None:
    for key, callback in _callback_keys(callbacks):
        if key in states:
            try:
                # A copy: manifest records are shared read-only between reads of the manifest.
                callback.load_state_dict(copy.deepcopy(states[key]))
            except (TypeError, ValueError, KeyError, AttributeError) as error:
                raise ValueError(
                    f"ResumeFromLatest: the state of {key} in {path} cannot be loaded "
                    f"({type(error).__name__}: {error}); keras_ckpt did not write it so."
                ) from None


def state_problem(state: Any) -> str | None:
    """What is wrong with a resume ``state`` read from a manifest, or ``None``: its fields are
    checked before anything of it is applied. Keras-free."""

    def count(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= 0

    def number(value: Any) -> bool:
        return (isinstance(value, (int, float)) and not isinstance(value, bool)) or value in (
            "nan",
            "inf",
            "-inf",
        )

    def list_of(value: Any, check: Callable[[Any], bool]) -> bool:
        return isinstance(value, list) and all(check(item) for item in value)

    if not isinstance(state, dict):
        return "is not an object"
    if count(state.get("version")) and state["version"] > STATE_VERSION:
        return f"has version {state['version']} (a newer keras_ckpt wrote it)"
    checks: dict[str, tuple[bool, Callable[[Any], bool], str]] = {
        "epoch": (True, count, "an integer >= 0"),
        "batch": (False, count, "an integer >= 0"),
        "start_batches": (False, count, "an integer >= 0"),
        "finished": (False, lambda v: v is None or count(v), "null or an integer >= 0"),
        "variables": (
            False,
            lambda v: list_of(
                v,
                lambda x: (
                    isinstance(x, list)
                    and len(x) == 2
                    and isinstance(x[0], str)
                    and list_of(x[1], count)
                ),
            ),
            "a list of [path, shape]",
        ),
        "random": (
            False,
            lambda v: isinstance(v, dict) and _random_state_fits(v),
            "generator states",
        ),
        "callbacks": (
            False,
            lambda v: isinstance(v, dict) and all(isinstance(s, dict) for s in v.values()),
            "an object of callback states (objects)",
        ),
        "history": (
            False,
            lambda v: (
                v is None
                or (
                    isinstance(v, dict)
                    and list_of(v.get("epoch", []), count)
                    and isinstance(v.get("history", {}), dict)
                    and all(list_of(values, number) for values in v.get("history", {}).values())
                )
            ),
            "null or a History (epochs, lists of numbers)",
        ),
    }
    for key, (required, fits, expected) in checks.items():
        if key not in state:
            if required:
                return f"has no {key!r}"
            continue
        if not fits(state[key]):
            shown = repr(state[key])
            shown = shown if len(shown) <= 60 else shown[:57] + "..."
            return f"has {key}={shown}, expected {expected}"
    return None


def _random_state_fits(random_state: dict[str, Any]) -> bool:
    """Whether the generator states have the shapes ``_set_random_state`` takes."""
    python = random_state.get("python", [3, [0], None])
    numpy = random_state.get("numpy", ["MT19937", [0], 0, 0, 0.0])
    generators = random_state.get("seed_generators", [])
    return (
        isinstance(python, list)
        and len(python) == 3
        and isinstance(python[1], list)
        and all(isinstance(n, int) for n in python[1])
        and isinstance(numpy, list)
        and len(numpy) == 5
        and isinstance(numpy[1], list)
        and all(isinstance(n, int) for n in numpy[1])
        and isinstance(generators, list)
        and all(isinstance(g, list) for g in generators)
    )


def _replay_trained_batches(
    model: keras.Model, batches: int, on_done: Callable[[], None] = lambda: None
) -> Callable[[], None]:
    """Makes the next training steps of ``fit`` read their batches without training.

    ``fit`` runs one step per execution of ``steps_per_execution`` batches; the replacement
    step consumes the same data and returns no logs, then puts the real one back and calls
    ``on_done``. Until then ``replayed_batches`` tells the other callbacks. Returns what ends
    the replay early (a fit that stops during it). Called from another ``fit`` (this one raised
    during the replay), the replacement ends the replay and trains.
    """
    per_execution = max(int(getattr(model, "steps_per_execution", 1) or 1), 1)
    remaining = [-(-batches // per_execution)]  # executions to skip
    this_fit = fit_epoch_iterator()
    restores: list[Callable[[], None]] = []  # puts the real train step back

    def end() -> None:
        set_replayed_batches(model, 0)
        for restore in restores:
            restore()

    def replacement(original: Callable[..., Any]) -> Callable[..., Any]:
        def skip(*args: Any) -> Any:
            if this_fit is not None and not fit_is_running(this_fit):
                end()
                return original(*args)
            remaining[0] -= 1
            if remaining[0] <= 0:
                end()
                on_done()
            return skip_train_step(args, per_execution)

        return skip

    restores.append(replace_train_function(model, replacement))
    set_replayed_batches(model, batches)
    return end


class BackupAndRestore(ResumeFromLatest):
    """A drop-in for ``keras.callbacks.BackupAndRestore``, built on ResumeFromLatest.

    Same arguments and defaults as Keras's class. Underneath it is a ResumeFromLatest, so it
    resumes mid-epoch at the saved batch, restores random and callback states, writes atomically
    with a manifest, and falls back to the previous checkpoint when the newest is damaged.
    Differences from Keras 3.15, each a Keras bug:

    - The epoch counter is restored from the checkpoint, so a second interruption in a new
      process does not restart from epoch 0; the interrupted epoch continues at the saved batch
      instead of restarting from batch 0; batch counts are right with ``steps_per_execution``.
    - ``save_freq=False`` saves no periodic checkpoints, only on SIGTERM/SIGINT (Keras saves
      every batch); with ``"epoch"`` or an integer, signals are left alone as in Keras.
    - The model's initial epoch is cleared at the end of ``fit``, so a later plain ``fit``
      starts at epoch 0; the model need not be built before ``fit``.
    - ``delete_checkpoint=True`` deletes this callback's checkpoints when training completes
      (and the directory if nothing else is left in it), not the whole directory.
    - ``double_checkpoint`` keeps the two newest checkpoints (the previous one is the fallback).

    Args:
        backup_dir: Where the checkpoints go.
        save_freq: ``"epoch"``, an integer number of batches, or ``False``.
        double_checkpoint: Keep the previous checkpoint too.
        delete_checkpoint: Delete the checkpoints once training completes.
        async_save: Write checkpoints in the background (see ``ResumeFromLatest``).

    Raises:
        ValueError: On an empty ``backup_dir`` or an invalid ``save_freq`` (Keras's messages), or
            a ``backup_dir`` that cannot be a directory (a NUL in it, a file in the way).
        TypeError: On a ``backup_dir`` that is not a ``str`` or ``os.PathLike``, as in Keras
            (the error is also a ``ValueError``).
    """

    filename_template = "backup-epoch{epoch:04d}-step{step:08d}.weights.h5"
    event_name = None  # Keras's BackupAndRestore adds nothing to the logs
    _directory_argument = "backup_dir"

    def __init__(
        self,
        backup_dir: str | os.PathLike[str],
        save_freq: str | int | bool = "epoch",
        double_checkpoint: bool = False,
        delete_checkpoint: bool = True,
        *,
        async_save: bool = True,
    ):
        if not backup_dir:
            raise ValueError("Empty `backup_dir` argument passed")
        if save_freq is not False and (
            save_freq != "epoch"
            and (isinstance(save_freq, bool) or not isinstance(save_freq, int) or save_freq < 1)
        ):
            raise ValueError(
                "Invalid value for argument `save_freq`. "
                f"Received: save_freq={save_freq}. "
                "Expected either 'epoch', a positive integer or False."
            )
        self._saves_at_epoch_end = save_freq == "epoch"
        super().__init__(
            backup_dir,
            save_freq=save_freq if save_freq not in (False, "epoch") else "epoch",
            keep_last=2 if double_checkpoint else 1,
            handle_signals=save_freq is False,
            async_save=async_save,
        )
        self.backup_dir = backup_dir
        self.save_freq = save_freq
        self.double_checkpoint = double_checkpoint
        self.delete_checkpoint = delete_checkpoint

    def _after_finish(self) -> None:
        if not self.delete_checkpoint or self._store is None:
            return
        store = self._store
        store.release(self.keeper, [r.filename for r in self._own_records(store)])
        store.remove_if_empty()
