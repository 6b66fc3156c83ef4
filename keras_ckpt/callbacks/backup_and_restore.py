"""``keras_ckpt.BackupAndRestore``: Keras's BackupAndRestore arguments, ResumeFromLatest inside."""

from __future__ import annotations

import os
from typing import Any

from keras_ckpt import validation
from keras_ckpt.callbacks.resume import ResumeFromLatest


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

    Example:
        >>> import keras_ckpt
        >>> backup = keras_ckpt.BackupAndRestore("runs/backup", save_freq=100)
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
        if not backup_dir:  # before the directory checks, as in Keras
            raise ValueError("Empty `backup_dir` argument passed")
        # ResumeFromLatest checks the directory, then reads save_freq with _save_schedule.
        super().__init__(
            backup_dir,
            save_freq=save_freq,
            keep_last=2 if double_checkpoint else 1,
            # Keras saves every batch with save_freq=False; here only a signal saves.
            handle_signals=save_freq is False,
            async_save=async_save,
        )
        self.backup_dir = backup_dir
        self.double_checkpoint = double_checkpoint
        self.delete_checkpoint = delete_checkpoint
        # Keras's attribute, which code and Keras's own tests read: the epochs completed, i.e.
        # the 0-based epoch a restore continues at.
        self._current_epoch = 0

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        super().on_train_begin(logs)
        # Restored from the checkpoint (Keras's counter is not, which is its bug).
        resumed = self.resumed_from
        self._current_epoch = 0 if resumed is None else int((resumed.state or {})["epoch"])

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        super().on_epoch_end(epoch, logs)
        self._current_epoch = epoch + 1

    def _save_schedule(self, save_freq: Any) -> tuple[int | None, bool]:
        """Keras's values: ``"epoch"`` saves at epoch ends, an integer every this many batches
        (and not at epoch ends), ``False`` never periodically."""
        validation.save_freq(save_freq, keras_class="BackupAndRestore")
        if save_freq is False:
            return None, False
        if save_freq == "epoch":
            return None, True
        return save_freq, False

    def _after_finish(self) -> None:
        if not self.delete_checkpoint or self._store is None:
            return
        store = self._store
        store.release(self.keeper, [r.filename for r in self._own_records(store)])
        store.remove_if_empty()
