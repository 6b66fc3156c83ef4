"""Where a callback stands in ``fit``'s batch loop, and batch hooks only for callbacks that use
them.

``fit`` calls ``on_train_batch_begin(batch)`` when ``batch`` batches of the epoch are done. In an
epoch resumed midway, ResumeFromLatest has ``fit`` read the first batches again without training
them (see ``_replay``); every callback that counts steps or saves inside an epoch asks the same
``EpochPosition`` what a batch index means.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import keras

from keras_ckpt.callbacks._monitor import epoch_start_batches, replayed_batches

BATCH_HOOKS = (
    "on_batch_begin",
    "on_batch_end",
    "on_train_batch_begin",
    "on_train_batch_end",
    "on_test_batch_begin",
    "on_test_batch_end",
    "on_predict_batch_begin",
    "on_predict_batch_end",
)


@dataclasses.dataclass(frozen=True)
class EpochPosition:
    """The current epoch as seen from its batch hooks.

    Attributes:
        start_step: The step at which the epoch began (batch ``b`` ends at step
            ``start_step + b + 1``), also in an epoch resumed midway.
        replayed: How many of the epoch's first batches ``fit`` reads again without training
            (an epoch resumed midway; 0 otherwise).

    Example:
        >>> position = EpochPosition(start_step=15, replayed=3)  # resumed after batch 3
        >>> [position.is_replayed(b) for b in range(5)]
        [True, True, True, False, False]
        >>> [position.has_trained(b) for b in range(5)]
        [False, False, False, False, True]
        >>> position.step(4)
        19
    """

    start_step: int = 0
    replayed: int = 0

    @classmethod
    def current(cls, model: keras.Model | None, start_batches: int = 0) -> EpochPosition:
        """The position of the epoch that is beginning: call it from ``on_epoch_begin``.

        Args:
            model: The model being trained.
            start_batches: Subtracted from the step, to count the steps of one run only
                (``StoreCallback._start_batches``); 0 counts the optimizer's steps.
        """
        return cls(epoch_start_batches(model) - start_batches, replayed_batches(model))

    def step(self, batch: int) -> int:
        """The step when ``batch`` batches of this epoch are done."""
        return self.start_step + batch

    def is_replayed(self, batch: int) -> bool:
        """Whether batch ``batch`` is only read again, not trained. Its begin hook still sees the
        state that was resumed from; the hook of the first trained batch (``batch ==
        replayed``) is a real batch boundary, where a stop request must still be served."""
        return batch < self.replayed

    def has_trained(self, batch: int) -> bool:
        """Whether at least one batch of this epoch was trained before batch ``batch`` began,
        in this process. If not, the state at this boundary is one already saved: by the end
        of the previous epoch (batch 0) or in the checkpoint resumed from (``batch ==
        replayed``), so a periodic save there would only write it again."""
        return batch > self.replayed


def enable_batch_hook(
    callback: keras.callbacks.Callback, hook: str, method: Callable[..., Any]
) -> None:
    """Makes ``method`` the ``hook`` of this callback instance only (``"on_train_batch_end"``,
    say), for callbacks whose batch hooks are needed only with some arguments.

    Why not define the hook on the class: Keras's ``CallbackList`` dispatches the batch-end hooks
    asynchronously (JAX, PyTorch) only if no callback overrides them; ``Callback``'s own hooks
    are marked as defaults, an override on the class is not. So a class-level hook would make
    every ``fit`` with this callback convert its logs to Python and wait for every batch, even
    when the hook has nothing to do. Keras calls the begin hooks synchronously in any case; for
    them this keeps the per-batch call out of the runs that do not need it.

    Args:
        callback: The callback instance.
        hook: One of Keras's batch hook names.
        method: What ``fit`` calls in its place, with the hook's arguments.

    Raises:
        ValueError: If ``hook`` is not a batch hook name.
    """
    if hook not in BATCH_HOOKS:
        raise ValueError(f"Argument `hook` must be one of {BATCH_HOOKS}. Received: hook={hook!r}")
    setattr(callback, hook, method)
