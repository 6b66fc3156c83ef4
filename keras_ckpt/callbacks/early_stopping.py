"""``keras_ckpt.EarlyStopping``: Keras's EarlyStopping with thresholds, reasons, resumable state."""

from __future__ import annotations

import warnings
from typing import Any

import keras

from keras_ckpt import decisions, validation
from keras_ckpt.callbacks._monitor import LazyMode, plain_metrics, set_keras_monitor_attributes
from keras_ckpt.callbacks._state import Resumable
from keras_ckpt.keras_adapter import print_message, uses_ema


class EarlyStopping(LazyMode, Resumable, keras.callbacks.Callback):
    """Stops training when a monitored metric stops improving; a drop-in for Keras's class.

    Takes every argument of ``keras.callbacks.EarlyStopping`` with the same defaults and
    behaviour, and adds:

    - ``stopping_threshold``: stop as soon as the metric is better than this.
    - ``divergence_threshold``: stop as soon as the metric is worse than this.
    - ``check_finite`` (default ``True``): stop as soon as the metric is NaN or infinite. Keras
      has no such check (a NaN simply never improves); pass ``False`` for Keras's behaviour.
    - ``stopping_reason``: ``None`` while training goes on, else ``"patience"``,
      ``"stopping_threshold"``, ``"divergence_threshold"`` or ``"non_finite"``.
    - ``restore_best_weights`` may name a ``BestCheckpoint`` directory (or be the callback):
      the best weights are then loaded from its best checkpoint at the end instead of being held
      in memory. They are that callback's best, by its own ``monitor``.
    - ``state_dict()`` / ``load_state_dict()``: a resumed run continues ``wait`` and ``best``.

    Args:
        monitor: The metric to watch.
        min_delta: Minimum change that counts as an improvement.
        patience: Epochs without improvement after which training stops.
        verbose: 0 is silent; 1 prints when the callback acts.
        mode: ``"auto"``, ``"min"`` or ``"max"`` (unknown values warn and use auto, as in Keras).
        baseline: Training stops unless the metric beats this within ``patience`` epochs.
        restore_best_weights: ``False``, ``True`` (hold the best weights in memory, as Keras),
            or a ``BestCheckpoint`` or its directory (with ``use_ema=True``, the best
            checkpoint's moving averages, as a model holds them after ``fit``).
        start_from_epoch: Epochs to wait before monitoring starts.
        stopping_threshold: Stop once the metric is better than this.
        divergence_threshold: Stop once the metric is worse than this.
        check_finite: Stop once the metric is NaN or infinite.

    Raises:
        ValueError: On an invalid added argument.

    Example:
        >>> import keras_ckpt
        >>> stop = keras_ckpt.EarlyStopping(patience=3, stopping_threshold=0.01)
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        min_delta: float = 0,
        patience: int = 0,
        verbose: int = 0,
        mode: str = "auto",
        baseline: float | None = None,
        restore_best_weights: Any = False,
        start_from_epoch: int = 0,
        *,
        stopping_threshold: float | None = None,
        divergence_threshold: float | None = None,
        check_finite: bool = True,
    ):
        super().__init__()
        mode = validation.keras_mode(type(self).__name__, mode)  # Keras warns, falls back
        self.monitor = monitor
        self.mode = mode
        self.min_delta = abs(min_delta)  # negative once the mode is "min", as in Keras
        # Keras's comparison (keras.ops.less or greater), set once the mode is settled.
        self.monitor_op: Any = None
        self.patience = patience
        self.verbose = verbose
        self.baseline = baseline
        self.start_from_epoch = start_from_epoch
        self.stopping_threshold = validation.optional_float(
            "stopping_threshold", stopping_threshold
        )
        self.divergence_threshold = validation.optional_float(
            "divergence_threshold", divergence_threshold
        )
        self.check_finite = validation.boolean("check_finite", check_finite)
        self._best_directory = validation.restore_best_weights(restore_best_weights)
        self.restore_best_weights = (
            restore_best_weights if self._best_directory else bool(restore_best_weights)
        )
        self._reset()

    def _reset(self) -> None:
        self._set_state(decisions.StoppingState())
        self.best_weights: list[Any] | None = None

    # Hooks -------------------------------------------------------------------------------

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self._reset()
        self._begin_training()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        rule = self._rule()  # settles the mode first, raising as Keras does if it cannot
        current = self._monitor_value(logs)
        if current is None:
            return
        state, reason = decisions.decide_stop(self._state(), epoch, current, rule)
        self._set_state(state)
        if state.new_best and self.restore_best_weights is True:
            self.best_weights = self.model.get_weights()
        if reason is not None:
            self.model.stop_training = True

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        self._end_training()
        if self.stopped_epoch > 0 and self.verbose > 0:
            print_message(
                f"Epoch {self.stopped_epoch + 1}: early stopping ({self.stopping_reason})"
            )
        if self._best_directory is not None:
            from keras_ckpt.loading import load_best

            if self.verbose > 0:
                print_message(
                    f"Restoring model weights from the best checkpoint in {self._best_directory}."
                )
            # As fit ends, a use_ema=True model holds the moving averages (Keras puts them
            # there): the best checkpoint's, then.
            weights = "ema" if uses_ema(self.model) else "raw"
            load_best(self._best_directory, model=self.model, weights=weights)
        elif (
            self.restore_best_weights is True
            and self.best_weights is None
            and self.best is not None
        ):
            warnings.warn(
                "EarlyStopping: the best weights (epoch "
                f"{self.best_epoch + 1}) were seen before the resume and are not in memory; the "
                "model keeps its last weights. Pass restore_best_weights=<BestCheckpoint> to "
                "restore them from disk across resumes.",
                stacklevel=2,
            )
        elif self.restore_best_weights is True and self.best_weights is not None:
            if self.verbose > 0:
                print_message(
                    "Restoring model weights from the end of the best epoch: "
                    f"{self.best_epoch + 1}."
                )
            self.model.set_weights(self.best_weights)

    # State -------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Counters a resumed run needs (not the in-memory best weights)."""
        return self._state().state_dict()

    def _apply_state(self, state: dict[str, Any]) -> None:
        self._set_state(decisions.StoppingState.from_state_dict(state))

    # Internals ---------------------------------------------------------------------------

    def _rule(self) -> decisions.StoppingRule:
        # Built at every epoch from the attributes, which a user may change between fits.
        mode = self._mode()
        set_keras_monitor_attributes(self, mode)
        return decisions.StoppingRule(
            mode=mode,
            min_delta=abs(self.min_delta),
            patience=self.patience,
            baseline=self.baseline,
            start_from_epoch=self.start_from_epoch,
            stopping_threshold=self.stopping_threshold,
            divergence_threshold=self.divergence_threshold,
            check_finite=self.check_finite,
        )

    def _state(self) -> decisions.StoppingState:
        return decisions.StoppingState(
            wait=self.wait,
            best=self.best,
            best_epoch=self.best_epoch,
            stopped_epoch=self.stopped_epoch,
            stopping_reason=self.stopping_reason,
        )

    def _set_state(self, state: decisions.StoppingState) -> None:
        # Kept as plain attributes: Keras's EarlyStopping has them, and code reads them.
        self.wait = state.wait
        self.best = state.best
        self.best_epoch = state.best_epoch
        self.stopped_epoch = state.stopped_epoch
        self.stopping_reason = state.stopping_reason

    def _monitor_value(self, logs: dict[str, Any] | None) -> float | None:
        metrics = plain_metrics(logs)
        if self.monitor not in metrics:
            warnings.warn(
                f"Early stopping conditioned on metric `{self.monitor}` which is not available. "
                f"Available metrics are: {','.join(list((logs or {}).keys()))}",
                stacklevel=3,
            )
            return None
        return metrics[self.monitor]
