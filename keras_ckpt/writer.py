"""The background writer: save jobs run off the training thread, one at a time, in order.

Pure Python (no Keras). A job is a callable that writes, commits and tidies up one checkpoint.
``submit`` waits for the job in flight, so at most one save is in flight and commits happen in
the order of the saves. Each job runs on its own thread, which is not a daemon: when the
interpreter exits normally it finishes the save in flight first, and no idle thread lingers.

Example:
    >>> from keras_ckpt.writer import BackgroundWriter
    >>> writer, done = BackgroundWriter(), []
    >>> writer.submit(lambda: done.append(1), on_error=print)
    >>> writer.wait()
    >>> done
    [1]
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Callable

__all__ = ["BackgroundWriter", "WRITER"]


class BackgroundWriter:
    """Runs jobs on a background thread, at most one at a time.

    Args:
        name: The thread's name (shown by debuggers and ``py-spy``).
    """

    def __init__(self, name: str = "keras_ckpt-writer"):
        self.name = name
        self._submitting = threading.Lock()
        self._thread: threading.Thread | None = None

    @property
    def busy(self) -> bool:
        """Whether a job is running."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    def submit(self, job: Callable[[], None], on_error: Callable[[BaseException], None]) -> None:
        """Starts ``job`` once the job in flight has finished.

        An exception in ``job`` goes to ``on_error`` on the writer thread; the submitter
        raises it on its own thread later (the callbacks do so at their next save or at the end
        of training).
        """

        def run() -> None:
            _yield_to_training()
            try:
                job()
            except BaseException as error:  # noqa: BLE001 - handed to the submitter, never lost
                on_error(error)

        with self._submitting:
            self.wait()
            thread = threading.Thread(target=run, name=self.name, daemon=False)
            self._thread = thread
            thread.start()

    def wait(self) -> None:
        """Returns once no job is running."""
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()


# How much lower than the training threads the writer runs (Linux niceness, per thread: the
# threads it starts inherit it). A writer of equal priority on a CPU the training uses fully
# costs training more than its share (a PyTorch matmul loop on 2 cores ran 48% slower beside a
# hashing thread, 17% slower with this niceness); a lower one runs in what training leaves,
# and a save that finds it unfinished waits for it (the training threads then idle).
WRITER_NICENESS = 10


def _yield_to_training() -> None:
    """Lowers the calling thread's priority by ``WRITER_NICENESS`` (at most to the lowest, 19)
    where the system lets one thread do so (Linux); elsewhere it runs as it is."""
    if sys.platform.startswith("linux"):
        thread = threading.get_native_id()
        with contextlib.suppress(OSError):
            niceness = os.getpriority(os.PRIO_PROCESS, thread)
            os.setpriority(os.PRIO_PROCESS, thread, min(niceness + WRITER_NICENESS, 19))


# One writer for the process: a save waits for any save in flight, whichever callback made it,
# so a process holds at most one extra copy of the saved state at a time.
WRITER = BackgroundWriter()
