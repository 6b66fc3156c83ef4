"""``keras_ckpt.SwapEMAWeights``: Keras's callback, exact, and known to the checkpoints."""

from __future__ import annotations

from typing import Any

import keras

from keras_ckpt import ema
from keras_ckpt.keras_adapter import fit_callbacks


class SwapEMAWeights(keras.callbacks.Callback):
    """Puts the optimizer's moving averages into the model for evaluation (and, with
    ``swap_on_epoch=True``, from each epoch's end to the next epoch's start).

    A drop-in for ``keras.callbacks.SwapEMAWeights`` with its argument; the optimizer must set
    ``use_ema=True``. Unlike Keras's callback:

    - the exchange is exact: values are copied and assigned (Keras's TensorFlow path adds and
      subtracts, which changes the raw weights by rounding at every swap, ~1e-7);
    - keras_ckpt's checkpoints know where the raw weights are, so a checkpoint saved while the
      model holds the averages still holds the raw weights as the model's weights and the
      averages in the optimizer, and a resume is exact;
    - ``predict`` swaps back at its end (Keras's callback leaves the averages in the model);
    - when ``fit`` stops before its last epoch (``EarlyStopping``) with ``swap_on_epoch=True``,
      the model still ends with the averages (Keras's ends with the raw weights there).

    As in Keras, after ``fit`` the model holds the averages.

    Args:
        swap_on_epoch: Also swap at ``on_epoch_end`` and back at ``on_epoch_begin``, so that
            the callbacks after this one see the averages at the epoch's end. Defaults to
            ``False``.

    Example:
        >>> import keras, keras_ckpt
        >>> swap = keras_ckpt.SwapEMAWeights(swap_on_epoch=True)
    """

    swaps_ema_weights = True  # how keras_ckpt.ema recognises it

    def __init__(self, swap_on_epoch: bool = False):
        super().__init__()
        self.swap_on_epoch = swap_on_epoch

    @property
    def _ema_weights_in_model(self) -> bool:
        # Keras's attribute name, for code that reads it; kept per model by keras_ckpt.ema.
        return self.model is not None and ema.swapped_by_keras_ckpt(self.model)

    def _swap_to(self, averages: bool) -> None:
        if ema.swapped_by_keras_ckpt(self.model) != averages:
            ema.swap(self.model)

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        ema.watch(self.model, fit_callbacks(self))

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if self.swap_on_epoch:
            self._swap_to(averages=False)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        # At the end of fit, the averages the model then holds are copied into the slots too
        # (keras_ckpt.ema, before Keras copies the slots into the model), as Keras's callback
        # does at the last epoch.
        if self.swap_on_epoch:
            self._swap_to(averages=True)

    def on_test_begin(self, logs: dict[str, Any] | None = None) -> None:
        self._swap_to(averages=True)

    def on_test_end(self, logs: dict[str, Any] | None = None) -> None:
        self._swap_to(averages=False)

    def on_predict_begin(self, logs: dict[str, Any] | None = None) -> None:
        self._swap_to(averages=True)

    def on_predict_end(self, logs: dict[str, Any] | None = None) -> None:
        self._swap_to(averages=False)
