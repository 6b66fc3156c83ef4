"""SIGTERM and SIGINT while ``fit`` runs: remembered, so that a callback can save at the next
batch boundary and stop training cleanly; a second signal goes where it went before."""

from __future__ import annotations

import os
import signal
import threading
import weakref
from typing import Any

from keras_ckpt.keras_adapter import fit_epoch_iterator, fit_is_running

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequests:
    """Catches SIGTERM and SIGINT for the ``fit`` that is running when ``install`` is called.

    The first signal sets ``received``; a second one, or one that arrives after that ``fit``
    ended (a ``fit`` that raised never calls ``on_train_end``, which ``uninstall`` would run
    from), puts the earlier handlers back and is handled by them (by default: exit at once).
    """

    def __init__(self) -> None:
        self.received = threading.Event()
        self._fit: weakref.ref[Any] | None = None  # the fit whose signals are caught
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        """Catches the signals from now on (only the main thread can; elsewhere nothing)."""
        if threading.current_thread() is not threading.main_thread():
            return
        self.uninstall()  # of an earlier fit that raised
        running = fit_epoch_iterator()
        self._fit = None if running is None else weakref.ref(running)
        for signum in SIGNALS:
            self._previous[signum] = signal.signal(signum, self._on_signal)

    def uninstall(self) -> None:
        """Puts back the handlers that were installed before."""
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def _on_signal(self, signum: int, frame: Any) -> None:
        # The handler checks that its fit still runs: it is on the stack this signal interrupted.
        running = None if self._fit is None else self._fit()
        fit_ended = self._fit is not None and (running is None or not fit_is_running(running))
        if not self.received.is_set() and not fit_ended:
            self.received.set()
            return
        # A second signal, or one after the fit ended: hand it to whoever handled it before.
        previous = self._previous.get(signum, signal.SIG_DFL)
        self.uninstall()
        if callable(previous):
            previous(signum, frame)
        else:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
