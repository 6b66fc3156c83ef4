"""The processes training together, behind one seam: who they are, who writes, what they agree on.

A run is one process (with any number of devices: TensorFlow's strategies, JAX on one host) or
several (JAX's multi-process runs through ``keras.distribution.initialize``; a
``torch.distributed`` rank is known by its index, but nothing is agreed across ranks). Only
process 0, the chief, writes checkpoints; every other process follows the chief's directory in
memory and takes the same decisions from the same state. Callbacks ask this module their
questions ("does this process write?", "is a save due everywhere?") and hold the ``Store`` that
``open_store`` gives them, never checking which kind it is.

With one process every answer is local and no collective runs:

Example:
    >>> from keras_ckpt import processes
    >>> processes.process_count(), processes.is_writer()
    (1, True)
    >>> processes.any_process(True, False)
    (True, False)
"""

from __future__ import annotations

import itertools
import threading
import warnings
from collections.abc import Iterator
from typing import Any, NamedTuple

import keras
import numpy as np

from keras_ckpt import remote
from keras_ckpt.store import CheckpointStore, FollowerStore, Store, contents_digest
from keras_ckpt.triggers import IntervalTrigger
from keras_ckpt.writer import WRITER

__all__ = [
    "SaveAgreement",
    "agree_on_save",
    "any_process",
    "chief_text",
    "is_writer",
    "open_store",
    "process_count",
    "process_index",
    "trains_alone",
    "wait_for_every_process",
]


def process_index() -> int:
    """This process's index among those training together; 0, the chief, alone writes
    checkpoints. One process (TensorFlow's strategies in one process included) is 0."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return int(jax.process_index())
    if backend == "torch":
        import torch.distributed

        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return int(torch.distributed.get_rank())
    return 0


def process_count() -> int:
    """How many processes train together (JAX's multi-process runs; otherwise 1)."""
    if keras.backend.backend() == "jax":
        import jax

        return int(jax.process_count())
    return 1


def is_writer() -> bool:
    """Whether this process writes checkpoints (and prints what it saved): the chief alone."""
    return process_index() == 0


def trains_alone() -> bool:
    """Whether this process is the only one training (nothing to agree on with others)."""
    return process_count() == 1


def any_process(*flags: bool) -> tuple[bool, ...]:
    """Each flag as set in any process training together: for decisions taken from something
    each process sees on its own (a signal, its clock), so that all take them alike.

    With several processes this is one collective: every process calls it at the same point.
    """
    if process_count() == 1:
        return tuple(bool(flag) for flag in flags)
    from jax.experimental import multihost_utils

    gathered = multihost_utils.process_allgather(np.array(flags, dtype=np.int32))
    return tuple(bool(flag) for flag in np.any(np.asarray(gathered).reshape(-1, len(flags)), 0))


def chief_text(text: str) -> str:
    """``text`` (ASCII, the same length on every process) as process 0 has it: one collective
    with several processes."""
    if process_count() == 1:
        return text
    from jax.experimental import multihost_utils

    codes = np.frombuffer(text.encode("ascii"), dtype=np.uint8).astype(np.int32)
    chief = np.asarray(multihost_utils.broadcast_one_to_all(codes))
    return bytes(chief.astype(np.uint8)).decode("ascii")


# Barriers with a timeout ---------------------------------------------------------------------
#
# JAX's collectives (``multihost_utils``) wait for the other processes for ever. Its
# coordination service has barriers with a timeout, but publishes no function for them: they
# are reached through the private ``jax._src.distributed.global_state.client``, whose
# ``wait_at_barrier(barrier_id, timeout_in_ms)`` is the same from JAX 0.4.31 to 0.10.2. A
# barrier id serves once: JAX 0.4.31 refuses a second wait at an id ("should not be called
# with the same id more than once"), later releases count the waits at an id per process. A
# process that reaches a barrier after it timed out gets the timeout at once.

_meetings: dict[str, Iterator[int]] = {}
_meetings_lock = threading.Lock()


def _coordination_client() -> Any | None:
    """JAX's distributed runtime client, if it has ``wait_at_barrier`` (the probe); None on
    another backend, or where this JAX has no such client where keras_ckpt looks."""
    if keras.backend.backend() != "jax":
        return None
    try:
        from jax._src import distributed
    except ImportError:  # pragma: no cover - a JAX that moved its distributed runtime
        return None
    client = getattr(getattr(distributed, "global_state", None), "client", None)
    return client if callable(getattr(client, "wait_at_barrier", None)) else None


_warned_without_barrier = False


def wait_for_every_process(purpose: str, timeout_seconds: float) -> str | None:
    """Waits until every process training together has called this for ``purpose`` as often
    as this one, or until ``timeout_seconds`` have passed since the first of them arrived.

    Each call is one barrier, identified by ``purpose`` and how many times this process
    called this for it before, so every process must make the same calls in the same order.
    A process that arrived alone and gave up has counted that call, and the others have not:
    their next wait for the same ``purpose`` fails too (at once or at its timeout), never
    hangs. With one process nothing is waited for.

    Where JAX has no ``wait_at_barrier`` where keras_ckpt looks (the probe fails), this warns
    once per process and returns at once, as if every process had arrived: what the caller
    does next then joins the others as JAX's own collectives do, waiting for them for ever.

    Args:
        purpose: What the processes meet for (part of the barrier's id).
        timeout_seconds: How long to wait for the others.

    Returns:
        None once every process has arrived (or nothing could be waited for); otherwise why
        not, in JAX's words (its first sentence: a timeout, or a coordination service gone).
    """
    global _warned_without_barrier
    if process_count() == 1:
        return None
    client = _coordination_client()
    if client is None:
        if not _warned_without_barrier:
            _warned_without_barrier = True
            import jax

            warnings.warn(
                f"keras_ckpt: JAX {jax.__version__} has no barrier with a timeout where "
                "keras_ckpt looks (jax._src.distributed.global_state.client.wait_at_barrier), "
                f"so it cannot check that every process arrived to {purpose}: called on one "
                "process alone, that waits for the others for ever, as JAX's collectives do.",
                stacklevel=3,
            )
        return None
    with _meetings_lock:
        count = next(_meetings.setdefault(purpose, itertools.count()))
    try:
        client.wait_at_barrier(
            f"keras_ckpt/{purpose}/{count}", max(1, round(timeout_seconds * 1000))
        )
    except RuntimeError as error:  # JaxRuntimeError (XlaRuntimeError in older JAX releases)
        # The first sentence ("DEADLINE_EXCEEDED: Barrier timed out"); the rest is advice
        # about the coordination service's own logs.
        first = str(error).strip().split(". ", 1)[0].splitlines()
        return first[0].rstrip(".") if first else type(error).__name__
    return None


class SaveAgreement(NamedTuple):
    """What every process decides at one check: save now, and stop for a signal."""

    due: bool
    signalled: bool


def agree_on_save(
    trigger: IntervalTrigger, due: bool, signalled: bool | None = None
) -> SaveAgreement:
    """Whether a save is due and a stop signal came, the same on every process.

    Epoch and step counts are the same everywhere, so a verdict from them stands as it is. A
    time trigger (``every_seconds``) reads each process's own clock, and a signal reaches one
    process: those are agreed, so that all processes save (and stop) at the same batch when any
    one of them says so. With several processes that is one collective, entered by every
    process at the same point; with one, nothing runs.

    Args:
        trigger: The trigger whose verdict ``due`` is.
        due: Whether ``trigger`` says a save is due in this process.
        signalled: Whether this process received a stop signal; None when the callback does
            not watch for signals (then nothing is gathered for it).

    Returns:
        The agreed ``due`` and ``signalled`` (False when ``signalled`` is None).

    Example:
        >>> agree_on_save(IntervalTrigger(every_seconds=60.0), True, signalled=False)
        SaveAgreement(due=True, signalled=False)
    """
    if signalled is None:
        if trigger.every_seconds is None:
            return SaveAgreement(due=bool(due), signalled=False)
        (due,) = any_process(due)
        return SaveAgreement(due=due, signalled=False)
    # One gather for both: a callback that watches signals gathers before every batch anyway.
    due, signalled = any_process(due, signalled)
    return SaveAgreement(due=due, signalled=signalled)


_UNOPENED = "-" * 64  # in place of a contents digest: the directory could not be opened


def _checkpoints(digest: str) -> str:
    count = int(digest[:8])
    return f"{count} checkpoint" + ("" if count == 1 else "s")


def open_store(directory: str) -> Store:
    """``directory`` as this process uses it: the chief's ``CheckpointStore``, which writes, or
    for any other process a ``FollowerStore``, which takes the chief's changes in memory.

    Every process of a multi-process run must call this at the same point of ``fit`` (it
    agrees with the others there). The chief's saves in flight reach the disk first, so the
    directory is read as committed.

    Raises:
        RuntimeError: In a multi-process run, if process 0 cannot open the directory or this
            process sees other checkpoints there than process 0 does; every process raises.
        DirectoryLockedError: If another program writes into the directory (the chief).
        ManifestError: If the manifest is damaged (the chief; in a multi-process run, the
            process that could not read it).
    """
    if process_count() > 1:
        return _open_together(directory, chief=is_writer())
    if not is_writer():  # a torch.distributed rank: nothing is agreed (see the README)
        return FollowerStore(directory, keras_version=keras.__version__)
    WRITER.wait()
    return _writing_store(directory)


def _writing_store(directory: str) -> Store:
    """The store that writes ``directory``: a ``RemoteStore`` for a URL, else a
    ``CheckpointStore``."""
    if remote.is_url(directory):
        return remote.RemoteStore(directory, keras_version=keras.__version__)
    return CheckpointStore(directory, keras_version=keras.__version__)


def _open_together(directory: str, chief: bool) -> Store:
    """Opens ``directory`` in a multi-process run, where every process opens it at the same
    point of ``fit``: the chief first, once its saves are on disk and its recovery has run, then
    the others, which must find what the chief found. Two collectives; if any process cannot
    open the directory, or sees other contents, every process raises instead of waiting.
    """
    store: Store | None = None
    error: Exception | None = None
    if chief:
        WRITER.wait()
        try:
            store = _writing_store(directory)
        except Exception as caught:
            error = caught
    chief_sees = chief_text(_UNOPENED if store is None else contents_digest(store))
    if chief_sees == _UNOPENED:
        if error is not None:
            raise error
        raise RuntimeError(
            f"keras_ckpt: process 0 could not open the checkpoint directory {directory}; "
            "its own error says why."
        )
    if not chief:
        try:
            store = FollowerStore(directory, keras_version=keras.__version__)
        except Exception as caught:
            error = caught
    sees = _UNOPENED if store is None else contents_digest(store)
    (differs,) = any_process(sees != chief_sees)
    if (error is not None or differs) and store is not None:
        store.close()  # the chief's writer lock is not held by a run that does not start
    if error is not None:
        raise error
    if differs:
        here = "" if chief else f", process {process_index()}: {_checkpoints(sees)}"
        raise RuntimeError(
            f"keras_ckpt: not every process training together sees in {directory} what "
            f"process 0 sees (process 0: {_checkpoints(chief_sees)}{here}). Every "
            "process reads the checkpoints it resumes and ranks from, so the directory must be "
            "on a file system all of them share, under the same path."
        )
    assert store is not None  # no error was raised, so this process opened it
    return store
