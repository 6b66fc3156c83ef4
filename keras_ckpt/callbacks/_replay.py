"""Continuing an epoch midway: ``fit`` reads the batches the interrupted run trained again,
without training them, so that the data pipeline (and the random draws it makes) is where the
interrupted run left it."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import keras

from keras_ckpt.callbacks._monitor import set_replayed_batches
from keras_ckpt.callbacks._random_state import set_torch_generators
from keras_ckpt.keras_adapter import (
    fit_epoch_iterator,
    fit_is_running,
    fit_shuffle,
    global_seed,
    reads_tf_dataset,
    replace_train_function,
    skip_train_step,
)


def continue_epoch(
    model: keras.Model, batch: int, random_state: dict[str, Any]
) -> Callable[[], None]:
    """Continues an epoch that a checkpoint saved after ``batch`` of its batches.

    Warns if the data cannot come in the original order, and has ``fit`` read those batches
    again without training them (``replay_trained_batches``). The checkpoint's generator states
    as of the epoch's start were restored, so that the data pipeline draws as the interrupted
    run did; once the batches were read, PyTorch's generators are set to their state at the
    save (``random_state["torch_now"]``), which training (Dropout) goes on drawing from.

    Returns:
        What ends the replay at once (does nothing without a replay).
    """
    warn_if_order_is_not_replayed(batch)
    if not batch:
        return lambda: None
    torch_now = random_state.get("torch_now")
    on_done = (lambda: set_torch_generators(torch_now)) if torch_now else lambda: None
    return replay_trained_batches(model, batch, on_done=on_done)


def replay_trained_batches(
    model: keras.Model, batches: int, on_done: Callable[[], None] = lambda: None
) -> Callable[[], None]:
    """Makes the next training steps of ``fit`` read their batches without training.

    ``fit`` runs one step per execution of ``steps_per_execution`` batches; the replacement
    step consumes the same data and returns no logs, then puts the real one back and calls
    ``on_done``. Until then ``replayed_batches`` tells the other callbacks. Returns what ends
    the replay early (a fit that stops during it). Called from another ``fit`` (this one raised
    during the replay), the replacement ends the replay and trains.

    Args:
        model: The model ``fit`` trains.
        batches: How many batches to read without training.
        on_done: Called once the last of them was read.

    Returns:
        A function that ends the replay at once (does nothing once it ended).
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


def warn_if_order_is_not_replayed(batch: int) -> None:
    """Says once when the resumed run cannot see the data in the original order: a tf.data
    pipeline, or (resuming at ``batch`` > 0) a TensorFlow shuffle without a global seed."""
    iterator = fit_epoch_iterator()
    if iterator is not None and reads_tf_dataset(iterator):
        # A tf.data shuffle order depends on how often this process iterated the pipeline.
        warnings.warn(
            "ResumeFromLatest: training reads a tf.data.Dataset. The epoch and step are resumed "
            "exactly, but a shuffled Dataset is not replayed in the same order after a restart, "
            "so results differ from an uninterrupted run. See the README on exact resume.",
            stacklevel=4,
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
            stacklevel=4,
        )
