"""``keras_ckpt.RollbackOnDivergence``: on a NaN loss or a loss spike, go back to the last good
checkpoint in the same process, skip the batches that led there, and train on."""

from __future__ import annotations

import collections
import math
import os
import warnings
from typing import Any

import keras

from keras_ckpt import decisions, validation
from keras_ckpt.callbacks._base import StoreCallback
from keras_ckpt.callbacks._callback_states import (
    callback_states,
    load_callback_states,
    states_with_arrays,
)
from keras_ckpt.callbacks._monitor import (
    EVENT_PREFIX,
    batches_trained,
    learning_rate_optimizers,
    replayed_batches,
)
from keras_ckpt.callbacks._random_state import (
    random_state,
    set_seed_generators,
    set_torch_generators,
)
from keras_ckpt.callbacks._replay import replay_trained_batches
from keras_ckpt.callbacks._state import Resumable
from keras_ckpt.callbacks._training_state import load_variables
from keras_ckpt.callbacks.interval_checkpoint import IntervalCheckpoint
from keras_ckpt.callbacks.resume import ResumeFromLatest
from keras_ckpt.keras_adapter import (
    fit_callbacks,
    optimizer_schedule,
    print_message,
    rebuild_train_function,
    set_optimizer_schedule,
)
from keras_ckpt.loading import checkpoint_file
from keras_ckpt.processes import is_writer, trains_alone
from keras_ckpt.records import CheckpointRecord
from keras_ckpt.schedules import Scaled
from keras_ckpt.store import CheckpointCorruptedError, verify

# How many checkpoints of an IntervalCheckpoint source the callback keeps states for in memory.
_STATES_KEPT = 8


class RollbackOnDivergence(Resumable, keras.callbacks.Callback):
    """Rolls training back to the last good checkpoint when the loss turns NaN or spikes.

    After a training batch whose loss is NaN or infinite, or, with ``spike_threshold``, larger
    than ``spike_threshold`` times the median loss of the last ``window`` batches, the callback
    restores in the same process the newest checkpoint of ``source`` committed before that
    batch, and training goes on with the next batch. So the batches from the checkpoint's
    position through the bad one are skipped: the data was already read past them. The
    restore puts back the model's and the optimizer's variables (``optimizer.iterations``
    included), the model's seed-generator states (Dropout) and the states of the other
    callbacks (those that are not checkpoint callbacks: their files are not undone).

    Python's and NumPy's global generators are deliberately not rewound: the data pipeline is
    not rewound either (it draws from them to shuffle and augment), so the run is the same as
    one fed the same batches minus the skipped ones. With deterministic ops and ``lr_factor=1``
    its final weights are bit-identical to such a run.

    ``source`` is a ``ResumeFromLatest`` (exact: its checkpoints hold the random and callback
    states; after a rollback it saves at once, so that a rerun resumes past the skipped
    batches with the rollback counted), an ``IntervalCheckpoint`` (the random and callback
    states are kept in memory as each of its saves begins; a checkpoint from an earlier
    process restores variables only), or the directory of one of them in the same ``fit``.

    The loss is read from ``logs`` after every batch, which makes Keras run the batch-end hooks
    synchronously (on JAX and PyTorch: a device-to-host transfer per batch); detecting a NaN
    means looking at every batch. Keras logs the epoch's running mean loss; a batch's own loss
    is recovered from two consecutive means (exact for batches of equal size). After a
    rollback the metrics restart, so the epoch's logged metrics cover the batches trained
    after it.

    The logs get ``ckpt/rollbacks`` (the rollbacks so far) at each epoch end, and with
    ``verbose=1`` each rollback prints a line naming the bad step and the checkpoint used. The
    rollbacks (epoch, batch, step, reason, loss, checkpoint, batches skipped) are in
    ``rollbacks`` and in ``state_dict()``, which ``ResumeFromLatest`` saves in the manifest
    record of each checkpoint (``state["callbacks"]``), the one taken right after a rollback
    included (an ``IntervalCheckpoint`` also saves right after a rollback, and its record
    holds them the same way). An epoch whose last batch was rolled back logs the metrics of
    no batch: Keras reports 0 for them.
    A divergence before any checkpoint got past the one the last rollback restored goes
    back one checkpoint further: a batch's loss is computed before its update, so a checkpoint
    saved right after a bad update (a learning-rate spike) can hold damaged weights with a
    finite loss. After ``max_rollbacks`` rollbacks, the next divergence stops training with
    ``stopping_reason="rollback_limit"``; with no checkpoint to go back to, a NaN loss stops
    training with ``stopping_reason="non_finite"`` (a spike only warns).

    Args:
        source: The ``ResumeFromLatest`` or ``IntervalCheckpoint`` of the same ``fit`` to
            restore from, or its directory.
        spike_threshold: A number > 1: also roll back after a batch loss larger than this many
            times the median of the last ``window``. ``None`` (default): NaN and infinite only.
        window: Batch losses the median is taken over (at least 1); no spike is called before
            that many batches were seen.
        lr_factor: Multiply the learning rate by this (in (0, 1]) at each rollback. With a
            ``LearningRateSchedule`` the schedule is scaled, in this process only.
        max_rollbacks: Rollbacks allowed (at least 1).
        skip_batches: ``None`` (default): skip the batches from the restored position through
            the bad one. An integer n >= 1: also read the n - 1 batches after the bad one
            without training them (so n batches are skipped, from the bad one on, besides
            those between the checkpoint and the bad one).
        verbose: 0 is silent; 1 prints a line per rollback.

    Raises:
        ValueError: On any invalid argument, naming it.

    Example:
        >>> import keras_ckpt
        >>> resume = keras_ckpt.ResumeFromLatest("runs/resume", save_freq=100)
        >>> rollback = keras_ckpt.RollbackOnDivergence(resume, spike_threshold=10.0)
    """

    def __init__(
        self,
        source: ResumeFromLatest | IntervalCheckpoint | str | os.PathLike[str],
        spike_threshold: float | None = None,
        window: int = 20,
        lr_factor: float = 1.0,
        max_rollbacks: int = 3,
        skip_batches: int | None = None,
        verbose: int = 0,
    ):
        super().__init__()
        if isinstance(source, (ResumeFromLatest, IntervalCheckpoint)):
            self.source: StoreCallback | None = source
            self.directory = source.directory
        elif isinstance(source, (str, os.PathLike)) and not isinstance(source, StoreCallback):
            self.source = None
            self.directory = validation.directory("source", source)
        else:
            raise validation.ArgumentTypeError(
                "Argument `source` must be a ResumeFromLatest or IntervalCheckpoint instance, "
                f"or the directory of one. Received: source={source!r}"
            )
        self._rule = decisions.DivergenceRule(
            spike_threshold=decisions.spike_threshold(spike_threshold),
            window=validation.positive_int("window", window),
            max_rollbacks=validation.positive_int("max_rollbacks", max_rollbacks),
        )
        self.spike_threshold = self._rule.spike_threshold
        self.window = self._rule.window
        self.max_rollbacks = self._rule.max_rollbacks
        self.lr_factor = validation.fraction("lr_factor", lr_factor)
        self.skip_batches = validation.optional(
            validation.positive_int, "skip_batches", skip_batches
        )
        self.verbose = validation.one_of("verbose", verbose, (0, 1))
        self.rollbacks: list[dict[str, Any]] = []
        self.stopping_reason: str | None = None
        self._recent: collections.deque[float] = collections.deque(maxlen=self.window)
        self._source: StoreCallback | None = None
        self._siblings: list[Any] = []
        self._captured: dict[str, dict[str, Any]] = {}
        self._epoch = 0
        self._last_mean = 0.0
        self._last_counted = 0
        self._mean_starts_after = 0

    # Hooks -------------------------------------------------------------------------------

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self.rollbacks = []
        self.stopping_reason = None
        self._recent.clear()
        self._captured = {}
        if not trains_alone():
            raise ValueError(
                "RollbackOnDivergence restores in one process only: in a run of several "
                "processes each would have to restore the same checkpoint together, which it "
                "does not do yet. Remove it, or train in one process."
            )
        self._siblings = [c for c in fit_callbacks(self) if c is not self]
        self._source = self._find_source()
        if isinstance(self._source, IntervalCheckpoint):
            self._source._save_listeners.append(self._capture)
        self._begin_training()

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._epoch = epoch
        self._reset_epoch()
        # An epoch resumed midway: Keras's running means start after the batches read again.
        self._mean_starts_after = replayed_batches(self.model)

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if not logs or "loss" not in logs:
            return  # a batch read without training (a resumed or skipped one)
        mean = float(keras.ops.convert_to_numpy(logs["loss"]))
        counted = batch + 1 - self._mean_starts_after
        loss = decisions.batch_loss(mean, self._last_mean, counted, self._last_counted)
        self._last_mean, self._last_counted = mean, counted
        reason = decisions.divergence_reason(loss, self._recent, self._rule)
        if reason is None:
            self._recent.append(loss)
            return
        self._diverged(batch, loss, reason)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if logs is not None:
            logs[f"{EVENT_PREFIX}rollbacks"] = float(len(self.rollbacks))

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        if self._source is not None and self._capture in self._source._save_listeners:
            self._source._save_listeners.remove(self._capture)
        if self.stopping_reason is not None and is_writer():
            print_message(f"RollbackOnDivergence stopped training ({self.stopping_reason}).")
        self._siblings = []
        self._end_training()

    # State -------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The rollbacks so far and the recent batch losses, so a rerun counts on."""
        return {"rollbacks": [dict(r) for r in self.rollbacks], "recent": list(self._recent)}

    def _apply_state(self, state: dict[str, Any]) -> None:
        """Takes back ``state_dict()``; read from a manifest, so every value is checked."""

        def number(value: Any) -> bool:
            return isinstance(value, (int, float)) and not isinstance(value, bool)

        def count(value: Any) -> bool:
            return isinstance(value, int) and not isinstance(value, bool) and value >= 0

        rollbacks = state.get("rollbacks", [])
        if not isinstance(rollbacks, list) or not all(
            isinstance(r, dict)
            and number(r.get("checkpoint_time", 0.0))
            and count(r.get("checkpoint_step", 0))
            for r in rollbacks
        ):
            raise ValueError(
                "rollbacks must be a list of objects with a numeric checkpoint_time and an "
                f"integer checkpoint_step >= 0, not {rollbacks!r}"
            )
        recent = state.get("recent", [])
        if not isinstance(recent, list) or not all(
            number(loss) and math.isfinite(loss) for loss in recent
        ):
            raise ValueError(f"recent must be a list of finite numbers, not {recent!r}")
        self.rollbacks = [dict(r) for r in rollbacks]
        self._recent.clear()
        self._recent.extend(float(loss) for loss in recent)

    # Internals ---------------------------------------------------------------------------

    def _reset_epoch(self) -> None:
        self._last_mean = 0.0
        self._last_counted = 0
        self._mean_starts_after = 0  # batches of the epoch before the metrics last restarted

    def _find_source(self) -> StoreCallback:
        if self.source is not None:
            if self.source not in self._siblings:
                raise ValueError(
                    f"RollbackOnDivergence: its source {type(self.source).__name__}"
                    f"({self.directory!r}) must be among the callbacks of the same fit."
                )
            return self.source
        for callback in self._siblings:
            if isinstance(callback, (ResumeFromLatest, IntervalCheckpoint)) and (
                os.path.abspath(callback.directory) == os.path.abspath(self.directory)
            ):
                return callback
        raise ValueError(
            "RollbackOnDivergence: no ResumeFromLatest or IntervalCheckpoint saving into "
            f"{self.directory!r} is among the callbacks of this fit. Received: "
            f"source={self.directory!r}"
        )

    def _capture(self, filename: str) -> None:
        """Keeps the random and callback states as an IntervalCheckpoint save begins."""
        self._captured[filename] = {
            "random": random_state(self.model, {}),
            "callbacks": callback_states(self._restored_callbacks()),
        }
        while len(self._captured) > _STATES_KEPT:
            del self._captured[next(iter(self._captured))]

    def _restored_callbacks(self) -> list[Any]:
        """The callbacks whose states a rollback puts back: not checkpoint callbacks (files are
        not undone) and not this one (its count goes on)."""
        return [c for c in self._siblings if not isinstance(c, StoreCallback)]

    def _diverged(self, batch: int, loss: float, reason: str) -> None:
        source = self._source
        assert source is not None, "on_train_begin finds the source"
        model = self.model  # on JAX: the training state synced into the variables
        source._settle()  # the save in flight lands (or raises) before the choice
        step = source._step()
        count, action = decisions.decide_rollback(len(self.rollbacks), self._rule)
        record = self._last_good(source, step)
        if action == decisions.ROLLBACK_LIMIT or record is None:
            if action == decisions.ROLLBACK_LIMIT:
                self._stop(decisions.ROLLBACK_LIMIT, batch, loss, reason)
            elif reason == decisions.NON_FINITE:
                self._stop(decisions.NON_FINITE, batch, loss, reason)
            else:
                warnings.warn(
                    f"RollbackOnDivergence: a loss spike ({loss:.5g}) at step {step}, but no "
                    f"checkpoint in {self.directory} to roll back to; training goes on.",
                    stacklevel=2,
                )
                self._recent.append(loss)
            return
        restored_step = self._restore(model, record)
        skipped = (step - restored_step) + (self.skip_batches or 1) - 1
        self.rollbacks.append(
            {
                "epoch": self._epoch + 1,
                "batch": batch + 1,
                "step": step,
                "reason": reason,
                "loss": loss if reason != decisions.NON_FINITE else str(loss),
                "checkpoint": record.filename,
                "checkpoint_step": record.step,
                "checkpoint_time": record.time,
                "skipped_batches": skipped,
            }
        )
        assert count == len(self.rollbacks)
        if self.verbose and is_writer():
            print_message(
                f"\nEpoch {self._epoch + 1}: RollbackOnDivergence: {reason} loss {loss:.5g} at "
                f"step {step} (batch {batch + 1}); rolled back to {record.filename} (step "
                f"{record.step}), skipping {skipped} batches "
                f"(rollback {count} of {self.max_rollbacks})."
            )
        # Keras's metrics hold the bad batch in their running means: they restart here.
        model.reset_metrics()
        self._mean_starts_after = batch + 1
        self._last_mean, self._last_counted = 0.0, 0
        if self.lr_factor != 1.0:
            self._lower_learning_rate(model)
        ahead = (self.skip_batches or 1) - 1  # batches after the bad one, read untrained
        source._after_rollback(batch, callback_states([self]), ahead)
        if ahead:
            replay_trained_batches(model, ahead)
            self._mean_starts_after += ahead

    def _last_good(self, source: StoreCallback, step: int) -> CheckpointRecord | None:
        """The newest of ``source``'s checkpoints of this run committed before ``step``, with
        a finite training loss and a sound file.

        If training diverged again before any checkpoint got past the one the last rollback
        restored, that checkpoint is passed over too, and an older one is used: a step's loss
        is computed before its update, so a checkpoint saved right after a bad update (a
        learning-rate spike, say) has a finite loss and damaged weights.
        """
        store = getattr(source, "_store", None)
        if store is None:
            return None
        candidates = [
            r
            for r in store.records()
            if source.keeper in r.kept_by and r.run == source._run and r.step < step
        ]
        if self.rollbacks:
            last = self.rollbacks[-1]
            restored_time = float(last.get("checkpoint_time", -math.inf))
            restored_step = int(last.get("checkpoint_step", 0))
            since = [r for r in candidates if r.time > restored_time]
            if all(r.step <= restored_step for r in since):
                candidates = [r for r in candidates if r.time < restored_time]
        for record in reversed(candidates):
            if not math.isfinite(record.metrics.get("loss", 0.0)):
                continue
            try:
                verify(record)
            except CheckpointCorruptedError as error:
                warnings.warn(
                    f"RollbackOnDivergence: skipping {record.path}: {error}", stacklevel=3
                )
                continue
            return record
        return None

    def _restore(self, model: keras.Model, record: CheckpointRecord) -> int:
        """Puts back what ``record`` saved; returns its step (the run's steps restart there)."""
        # What this process kept as the save began (random states, other callbacks' states),
        # under what the record itself holds (an IntervalCheckpoint's records hold little).
        captured = self._captured.get(record.filename, {})
        state = {**captured, **(record.state or {})}
        state["callbacks"] = {
            **captured.get("callbacks", {}),
            **(record.state or {}).get("callbacks", {}),
        }
        callbacks = state["callbacks"]
        with checkpoint_file(record, verify_checksum=False) as path:  # verified when chosen
            load_variables(model, path, state.get("variables", []))
            callbacks = states_with_arrays(callbacks, path, "RollbackOnDivergence", record.path)
        random = state.get("random", {})
        set_seed_generators(model, random.get("seed_generators", []))
        if random.get("torch_now") and keras.backend.backend() == "torch":
            set_torch_generators(random["torch_now"])
        load_callback_states(self._restored_callbacks(), callbacks, record.path)
        return record.step

    def _lower_learning_rate(self, model: keras.Model) -> None:
        for optimizer in learning_rate_optimizers(model):
            schedule = optimizer_schedule(optimizer)
            if isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule):
                scale = self.lr_factor
                if isinstance(schedule, Scaled):
                    schedule, scale = schedule.schedule, schedule.scale * scale
                set_optimizer_schedule(optimizer, Scaled(schedule, scale))
                rebuild_train_function(model)
            else:
                current = float(keras.ops.convert_to_numpy(optimizer.learning_rate))
                optimizer.learning_rate = current * self.lr_factor

    def _stop(self, why: str, batch: int, loss: float, reason: str) -> None:
        self.stopping_reason = why
        self.model.stop_training = True
        steps = batches_trained(self.model)
        detail = (
            f"after {len(self.rollbacks)} rollbacks (max_rollbacks={self.max_rollbacks})"
            if why == decisions.ROLLBACK_LIMIT
            else f"and no checkpoint in {self.directory} to roll back to"
        )
        warnings.warn(
            f"RollbackOnDivergence: {reason} loss {loss} at epoch {self._epoch + 1}, batch "
            f"{batch + 1} (optimizer step {steps}) {detail}; training stops.",
            stacklevel=3,
        )
