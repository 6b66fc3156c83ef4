"""The checkpoint store: the one engine under every saving callback. No Keras import.

A store is a directory of checkpoint files plus ``keras_ckpt.json``, the manifest. Every change
goes through a write-ahead step so that a process killed at any instant leaves the directory as it
was before the change or as it is after it:

1. The checkpoint is written under a temporary name (``.keras_ckpt-tmp-*``) in the same directory,
   flushed and fsynced while its SHA-256 is computed.
2. The manifest is replaced (temporary file, fsync, ``os.replace``) with the commit marked
   *pending*.
3. The temporary file is renamed over the final name (``os.replace``) and the directory fsynced.
4. The manifest is replaced again with the new record and no pending commit.

Opening a directory finishes or undoes what a killed process left: a pending commit whose
temporary file still exists is undone (the old file, if any, is untouched); one whose rename
happened and whose file matches the recorded checksum is completed. Leftover temporary files
are removed. Readers (``list_checkpoints``) see only what the manifest lists.

Deletion is recorded the same way: the manifest drops the records and lists the files as
*trash* before they are unlinked.

Weights stored once (``dedup=True``): a checkpoint is an index (``.weights.dedup.json``) whose
parts are content-addressed blobs (``blob-<sha256>.bin``). It is committed like sharded
weights, through a temporary folder, with only the blobs no committed checkpoint has; the ones
it shares are taken from the records that list them. A blob is the one file several records
may list; it is trashed only when no remaining record lists it, and recovery removes a file of
the blob pattern that no record lists (what a killed save left).

A directory is untrusted input (runs are downloaded and shared). The manifest is checked as a
whole when it is parsed (``keras_ckpt.records``): every name in it must be a plain file name in
the directory, or it is refused. Files are opened without following symbolic links, and a
checkpoint that is not a regular file counts as damaged. Recovery removes only names of the
temporary-file pattern. One process at a time writes into a directory: a writing store holds an
advisory lock (``flock`` on ``.keras_ckpt.lock``), which the kernel releases when the process
ends, so a crash never leaves a stale lock.

The saving itself is a callable ``write(path)`` supplied by the caller, so the store knows
nothing of Keras; an asynchronous writer wraps this class rather than changing it. In a
multi-process run only the chief writes; the other processes use a ``FollowerStore``, which
takes the same changes in memory. Both implement ``Store``, the interface the callbacks hold
(``keras_ckpt.processes.open_store`` picks one for the process).

A directory given as an fsspec URL (``s3://``, ``gs://``, ``memory://``) is a remote directory:
``keras_ckpt.remote.RemoteStore`` implements ``Store`` for it with a protocol of its own (the
manifest write is the commit there too). The module-level readers here (``read_committed``,
``verify``, ``list_names``, ``local_file``, ``check_directory_usable``) hand a URL to
``keras_ckpt.remote`` and keep the local code for paths, so callers need not ask which kind a
directory is.
"""

from __future__ import annotations

import abc
import contextlib
import copy
import datetime
import errno
import hashlib
import json
import os
import re
import shutil
import socket
import stat
import threading
import time
import uuid
import warnings
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, BinaryIO

from keras_ckpt import validation
from keras_ckpt.records import (
    ALIASES,
    DEDUP_EXTENSION,
    LOCK_NAME,
    MANIFEST_NAME,
    TEMP_PATTERN,
    TEMP_PREFIX,
    CheckpointPart,
    CheckpointRecord,
    DedupDataset,
    DedupGroup,
    Manifest,
    ManifestError,
    dedup_index_layout,
    first_shard_name,
    is_blob,
    name_problem,
    shard_base_name,
    sharded_index_shards,
    unreferenced,
)

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; one writer per directory is then up to you
    fcntl = None  # type: ignore[assignment]

_HASH_CHUNK = 1 << 20
# Opening a file never follows a symbolic link (O_NOFOLLOW where the system has it).
_NO_FOLLOW = getattr(os, "O_NOFOLLOW", 0)

_locks_guard = threading.Lock()
_directory_locks: dict[str, threading.RLock] = {}
# The last parsed manifest of each directory, with the bytes it was parsed from.
_parsed: dict[str, tuple[bytes, Manifest]] = {}
# Temporary files this process is writing right now (a background save writes outside the
# directory lock): recovery in the same process leaves them alone.
_writing: set[str] = set()


def _directory_lock(directory: str) -> threading.RLock:
    with _locks_guard:
        return _directory_locks.setdefault(directory, threading.RLock())


class CheckpointCorruptedError(ValueError):
    """A checkpoint file does not match the size or SHA-256 its manifest recorded, is missing,
    or is not a regular file (a symbolic link or a directory: never followed)."""


class DirectoryLockedError(RuntimeError):
    """Another process is writing checkpoints into the directory."""


def open_regular(path: str) -> int:
    """A read-only descriptor of ``path``, which must be a regular file: a symbolic link is
    refused, not followed (it could point anywhere outside the directory).

    Raises:
        CheckpointCorruptedError: If ``path`` is missing, a link, a directory or another
            special file.
    """
    try:
        # Non-blocking: opening a named pipe planted under a checkpoint's name must not hang.
        fd = os.open(path, os.O_RDONLY | _NO_FOLLOW | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise CheckpointCorruptedError(f"Checkpoint {path} is missing.") from None
    except OSError as error:
        if error.errno in (errno.ELOOP, errno.EMLINK) or os.path.islink(path):
            raise CheckpointCorruptedError(
                f"Checkpoint {path} is a symbolic link; keras_ckpt never follows one."
            ) from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise CheckpointCorruptedError(f"Checkpoint {path} is not a regular file.")
    return fd


def check_regular_file(path: str) -> None:
    """Raises ``CheckpointCorruptedError`` unless ``path`` is a regular file (``os.lstat``)."""
    os.close(open_regular(path))


def check_directory_usable(directory: str | os.PathLike[str], argument: str) -> str:
    """Checks, without creating anything, that ``directory`` can hold checkpoints.

    A URL of a remote store (``s3://bucket/run``) is checked by ``keras_ckpt.remote.check_url``
    and returned normalized; a ``file://`` URL is a local path.

    Returns the absolute path. Raises ``ValueError`` naming ``argument`` when ``directory`` is not
    a non-empty ``str`` or ``os.PathLike`` without NUL (``validation.directory``), when the path
    is a file, or when the nearest existing parent is not a writable directory.
    """
    text = validation.directory(argument, directory)
    from keras_ckpt import remote

    if remote.is_url(text):
        return remote.check_url(argument, text)
    path = os.path.abspath(remote.local_path(text))
    probe = path
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not os.path.isdir(probe):
        raise ValueError(
            f"Argument `{argument}` must be a directory (or a path where one can be created), "
            f"but {probe!r} is a file. Received: {argument}={os.fspath(directory)!r}"
        )
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ValueError(
            f"Argument `{argument}` must be writable, but {probe!r} is not. "
            f"Received: {argument}={os.fspath(directory)!r}"
        )
    return path


def _fsync_directory(directory: str) -> None:
    if not hasattr(os, "O_DIRECTORY"):  # Windows cannot open directories.
        return
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_and_size(file: BinaryIO) -> tuple[int, str]:
    """The size and SHA-256 of what is left to read in ``file``, an open binary file (local, or
    an fsspec file of a remote directory), read once in 1 MiB pieces."""
    digest = hashlib.sha256()
    size = 0
    while chunk := file.read(_HASH_CHUNK):
        digest.update(chunk)
        size += len(chunk)
    return size, digest.hexdigest()


def _fsync_and_hash(path: str) -> tuple[int, str]:
    """Flushes ``path`` to disk and returns its size and SHA-256, reading it once.

    The flush (disk-bound) runs on a helper thread while this one hashes (CPU-bound); both
    release the GIL, so a large file costs about the longer of the two, not their sum.
    """
    failure: list[BaseException] = []

    def flush(fd: int) -> None:
        try:
            os.fsync(fd)
        except BaseException as error:  # noqa: BLE001 - raised below, on the caller's thread
            failure.append(error)

    with open(path, "rb") as file:
        flusher = threading.Thread(target=flush, args=(file.fileno(),), name="keras_ckpt-fsync")
        flusher.start()
        try:
            size, sha256 = sha256_and_size(file)
        finally:
            flusher.join()
    if failure:
        raise failure[0]
    return size, sha256


def file_sha256(path: str) -> str:
    """The SHA-256 of ``path``, a regular file (see ``open_regular``)."""
    with os.fdopen(open_regular(path), "rb") as file:
        return sha256_and_size(file)[1]


def read_manifest(directory: str) -> Manifest:
    """The committed manifest of ``directory``; an empty one if there is none yet.

    Parsing is skipped when the file's bytes equal those parsed last time (a directory with
    thousands of checkpoints is read by every store operation).
    """
    path = os.path.join(directory, MANIFEST_NAME)
    try:
        with os.fdopen(open_regular(path), "rb") as file:
            raw = file.read()
    except CheckpointCorruptedError as error:
        if not os.path.lexists(path):
            return Manifest()
        raise ManifestError(f"The manifest {path} is refused: {_problem_of(error)}.") from None
    with _locks_guard:
        cached = _parsed.get(path)
    if cached is None or cached[0] != raw:
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError) as error:  # bad JSON, bad UTF-8, too deep
            raise ManifestError(
                f"The manifest {path} is not valid JSON ({type(error).__name__}: {error}). "
                "keras_ckpt never writes a partial manifest, so something else changed it; move "
                "it away to start a fresh store."
            ) from None
        cached = (raw, Manifest.from_json(data, directory))
        with _locks_guard:
            _parsed[path] = cached
    manifest = cached[1]
    # Records are frozen; the containers are copied, so callers may change them freely.
    return Manifest(
        records=list(manifest.records),
        aliases=dict(manifest.aliases),
        pending=None if manifest.pending is None else copy.deepcopy(manifest.pending),
        trash=list(manifest.trash),
    )


def list_names(directory: str) -> set[str]:
    """The names in ``directory`` (a path or a remote directory's URL) but the writer lock; an
    empty set if it does not exist."""
    from keras_ckpt import remote

    if remote.is_url(directory):
        return remote.list_names(directory) - {LOCK_NAME}
    try:
        return set(os.listdir(directory)) - {LOCK_NAME}
    except FileNotFoundError:
        return set()


def _problem_of(error: CheckpointCorruptedError) -> str:
    """ "Checkpoint X is a symbolic link; ..." as "it is a symbolic link; ..."."""
    text = str(error)
    return "it" + text[text.index(" is ") :].rstrip(".") if " is " in text else text


def verify(record: CheckpointRecord) -> None:
    """Raises ``CheckpointCorruptedError`` unless the file is a regular file (not a link) that
    matches its recorded size and SHA-256 (for a remote directory: the object matches). A
    checkpoint of several files (sharded weights) has each of its parts checked the same way.
    """
    from keras_ckpt import remote

    if remote.is_url(record.path):
        if record.parts:
            raise CheckpointCorruptedError(
                f"Checkpoint {record.path} is several files (sharded weights), which keras_ckpt "
                "keeps in local directories only."
            )
        remote.verify(record)
        return
    _verify_file(record.path, record.size, record.sha256)
    directory = os.path.dirname(record.path)
    for part in record.parts:
        _verify_file(os.path.join(directory, part.filename), part.size, part.sha256, record.path)
    check_sharded_index(record)


def check_sharded_index(record: CheckpointRecord) -> None:
    """Raises ``CheckpointCorruptedError`` unless the index of a sharded checkpoint (its
    ``.weights.json``) names only plain file names among the checkpoint's recorded parts, each
    a regular file: Keras opens every name it gives, so nothing else may be reached through it.
    A dedup index (``.weights.dedup.json``) is checked the same way (``check_dedup_index``).
    """
    if record.filename.endswith(DEDUP_EXTENSION):
        check_dedup_index(record)
        return
    if not record.filename.endswith(".weights.json"):
        return
    with os.fdopen(open_regular(record.path), "rb") as file:
        raw = file.read()
    try:
        shards = sharded_index_shards(json.loads(raw), record.path)
    except (ValueError, RecursionError) as error:  # ManifestError is a ValueError
        raise CheckpointCorruptedError(f"Checkpoint {record.path} is refused: {error}") from None
    # Keras opens the first shard by the index's own name even when the index does not list
    # it, so it is checked as the listed ones are.
    opened = [
        *shards,
        *([first] if (first := first_shard_name(record.filename)) not in shards else []),
    ]
    parts = {part.filename for part in record.parts}
    outside = [name for name in opened if name not in parts]
    if outside:
        raise CheckpointCorruptedError(
            f"Checkpoint {record.path} names shards that are not its recorded parts: {outside}."
        )
    directory = os.path.dirname(record.path)
    for name in opened:
        check_regular_file(os.path.join(directory, name))


def read_dedup_index(record: CheckpointRecord) -> list[DedupGroup | DedupDataset]:
    """The layout of a dedup checkpoint's index (``records.dedup_index_layout``), checked
    against the record: every blob it names is one of the record's parts, a regular file of
    the variable's size.

    Raises:
        CheckpointCorruptedError: If the index is not a valid dedup index or names a blob that
            is not one of the checkpoint's recorded parts, or of another size.
    """
    with os.fdopen(open_regular(record.path), "rb") as file:
        raw = file.read()
    try:
        layout = dedup_index_layout(json.loads(raw), record.path)
    except (ValueError, RecursionError) as error:  # ManifestError is a ValueError
        raise CheckpointCorruptedError(f"Checkpoint {record.path} is refused: {error}") from None
    parts = {part.filename: part for part in record.parts}
    directory = os.path.dirname(record.path)
    for item in layout:
        if not isinstance(item, DedupDataset):
            continue
        blob = item.blob
        if blob not in parts:
            raise CheckpointCorruptedError(
                f"Checkpoint {record.path} names a blob that is not its recorded part: {blob!r}."
            )
        if parts[blob].size != item.size:
            raise CheckpointCorruptedError(
                f"Checkpoint {record.path} gives {item.key!r} {item.size} bytes; its blob "
                f"{blob!r} has {parts[blob].size}."
            )
        check_regular_file(os.path.join(directory, blob))
    return layout


def check_dedup_index(record: CheckpointRecord) -> None:
    """``read_dedup_index`` for its checks alone."""
    read_dedup_index(record)


def _verify_file(path: str, expected_size: int, sha256: str, of: str | None = None) -> None:
    """``verify`` for one file; ``of`` is the checkpoint it is a part of."""
    try:
        with os.fdopen(open_regular(path), "rb") as file:
            size = os.fstat(file.fileno()).st_size
            if size != expected_size:
                raise CheckpointCorruptedError(
                    f"Checkpoint {path} has {size} bytes; its manifest recorded {expected_size}."
                )
            digest = sha256_and_size(file)[1]
        if digest != sha256:
            raise CheckpointCorruptedError(
                f"Checkpoint {path} does not match the SHA-256 its manifest recorded."
            )
    except CheckpointCorruptedError as error:
        if of is None:
            raise
        raise CheckpointCorruptedError(f"{error} (a shard of the checkpoint {of})") from None


@contextlib.contextmanager
def local_file(record: CheckpointRecord, verify_checksum: bool = True) -> Iterator[str]:
    """A local path of the checkpoint for Keras to open: the file itself, or for a remote
    directory a downloaded copy, deleted afterwards. ``verify_checksum`` checks it first;
    without it, a local file must still be a regular file (no link) and a sharded index may
    name only the checkpoint's own regular files."""
    from keras_ckpt import remote

    if remote.is_url(record.path):
        if record.parts:
            verify(record)  # refused: several files are kept in local directories only
        with remote.local_copy(record, verify_checksum) as path:
            yield path
        return
    if verify_checksum:
        verify(record)
    else:  # unverified, but never a link, nor an index that reaches outside the directory
        check_regular_file(record.path)
        check_sharded_index(record)
    yield record.path


def read_committed(directory: str) -> Manifest:
    """What a reader may rely on: the manifest with an interrupted commit resolved in memory.

    Writes nothing, so listing a directory that a killed process left is safe and read-only.
    ``directory`` may be the URL of a remote directory (``keras_ckpt.remote``).
    """
    from keras_ckpt import remote

    if remote.is_url(directory):
        return remote.read_committed(directory)
    manifest = read_manifest(directory)
    _resolve_pending(manifest, directory)
    return manifest


def contents_digest(store: Store) -> str:
    """What ``store`` holds, as 64 ASCII characters: the number of committed checkpoints
    (8 digits), then a digest of their names, checksums and the aliases. Processes that read the
    same directory get the same text."""
    manifest = store.manifest()
    entries = sorted([record.filename, record.sha256] for record in manifest.records)
    text = json.dumps([entries, sorted(manifest.aliases.items())])
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return f"{len(manifest.records):08d}{digest[:56]}"


def _resolve_pending(manifest: Manifest, directory: str) -> list[str]:
    """Settles ``manifest.pending`` in memory: completed if its rename happened, else dropped.

    The rename happened when the temporary file (or folder, for a checkpoint of several files)
    is gone and the final files match the recorded checksums; otherwise the previous file of
    that name (if any) is still the committed one. Returns the files that are no checkpoint's
    any more (shards of a replaced or dropped sharded checkpoint), for the caller to delete.
    """
    pending, manifest.pending = manifest.pending, None
    if pending is None:
        return []
    record = CheckpointRecord.from_json(pending["record"], directory)
    if not os.path.exists(os.path.join(directory, pending["temp"])):
        try:
            verify(record)
        except CheckpointCorruptedError:
            pass
        else:
            return add_record(manifest, record)
    # Dropped: parts already renamed into place belong to nobody now.
    aliases = {alias_filename(a, t) for a, t in manifest.aliases.items()}
    return [
        name
        for name in record.filenames[1:]
        if manifest.owner(name) is None and name not in aliases
    ]


def _dedup_parts(
    manifest: Manifest, folder: str, record: CheckpointRecord
) -> tuple[CheckpointPart, ...]:
    """Every blob the dedup index in ``folder`` names: those ``record`` wrote (its parts so
    far) and those it shares with committed checkpoints (weights stored once).

    Raises:
        ValueError: If the index names a blob neither written nor any committed checkpoint's,
            or a blob written is not named by the index.
    """
    index = replace(record, path=os.path.join(folder, record.filename))
    try:
        layout = dedup_index_layout(_read_json(index.path), record.filename)
    except (ValueError, RecursionError) as error:
        raise ValueError(f"Saving {record.filename!r} wrote an invalid index: {error}") from None
    named = {item.blob: item for item in layout if isinstance(item, DedupDataset)}
    written = {part.filename: part for part in record.parts}
    stray = sorted(set(written) - set(named))
    if stray:
        raise ValueError(f"Saving {record.filename!r} wrote blobs its index does not name: {stray}")
    committed = {
        part.filename: part
        for other in manifest.records
        for part in other.parts
        if is_blob(part.filename)
    }
    parts = []
    for blob in sorted(named):
        part = written.get(blob) or committed.get(blob)
        if part is None:
            raise ValueError(
                f"Saving {record.filename!r} shares the blob {blob!r}, which no committed "
                "checkpoint has any more; nothing was committed."
            )
        parts.append(part)
    return tuple(parts)


def _read_json(path: str) -> Any:
    with os.fdopen(open_regular(path), "rb") as file:
        return json.loads(file.read())


def _move_out(folder: str, directory: str, record: CheckpointRecord) -> None:
    """Renames the files of ``record`` from ``folder`` into ``directory`` (the parts first, the
    index last; those moved already are skipped), then removes the folder."""
    for name in (*record.filenames[1:], record.filename):
        with contextlib.suppress(FileNotFoundError):
            os.replace(os.path.join(folder, name), os.path.join(directory, name))
    _remove_staging_folder(folder)


_SHARD_SUFFIX = re.compile(r"_[0-9]{5}\.weights\.h5")


def _remove_staging_folder(path: str) -> bool:
    """Removes ``path`` if it is the temporary folder of a sharded save: a real folder (no
    link) named ``.keras_ckpt-tmp-<hex>-<stem>.weights.json`` holding only regular files named
    ``<stem>.weights.json`` or ``<stem>_<5 digits>.weights.h5``. Any other folder, even of the
    temporary pattern, is not keras_ckpt's to delete and stays. Returns whether it went."""
    name = os.path.basename(path)
    filename = TEMP_PATTERN.sub("", name, count=1)
    dedup = filename.endswith(DEDUP_EXTENSION)
    if not (TEMP_PATTERN.match(name) and (filename.endswith(".weights.json") or dedup)):
        return False
    stem = shard_base_name(filename)
    try:
        if not stat.S_ISDIR(os.lstat(path).st_mode):
            return False
        entries = os.listdir(path)
        for entry in entries:
            shard = (dedup and is_blob(entry)) or (
                entry.startswith(stem) and _SHARD_SUFFIX.fullmatch(entry[len(stem) :])
            )
            if not (entry == filename or shard) or not stat.S_ISREG(
                os.lstat(os.path.join(path, entry)).st_mode
            ):
                return False
        for entry in entries:
            os.remove(os.path.join(path, entry))
        os.rmdir(path)
    except OSError:
        return False
    return True


def add_record(manifest: Manifest, record: CheckpointRecord) -> list[str]:
    """Adds ``record``, replacing a same-named one (whose keepers it takes over). Returns the
    files of the replaced checkpoint that the new one does not have (shards of an earlier
    sharded save), which the caller deletes."""
    previous = manifest.find(record.filename)
    stale: list[str] = []
    if previous is not None:
        keepers = tuple(dict.fromkeys(previous.kept_by + record.kept_by))
        record = replace(record, kept_by=keepers)
        manifest.records.remove(previous)
        stale = [name for name in previous.filenames if name not in record.filenames]
    manifest.records.append(record)
    return stale


def drop_keeper(manifest: Manifest, keeper: str, names: set[str]) -> tuple[list[str], list[str]]:
    """Takes ``keeper`` off the records of ``names`` in ``manifest``; drops those nobody keeps
    any more, and the aliases that named them. Returns the checkpoints dropped, and every file
    name that goes with them (the checkpoints and the dropped aliases' files)."""
    remaining, deleted = [], []
    files: list[str] = []
    for record in manifest.records:
        if record.filename in names:
            record = record.without_keeper(keeper)
            if not record.kept_by:
                deleted.append(record.filename)
                files.extend(record.filenames)  # a sharded checkpoint's shards go with it
                continue
        remaining.append(record)
    manifest.records = remaining
    files = unreferenced(files, remaining)  # a blob another checkpoint still lists stays
    for alias, target in list(manifest.aliases.items()):
        if target in deleted:
            del manifest.aliases[alias]
            if alias_has_file(target):
                files.append(alias_filename(alias, target))
    return deleted, files


def check_plain_name(filename: str) -> None:
    problem = name_problem(filename)
    if problem is None and filename.startswith(TEMP_PREFIX):
        problem = f"starts with {TEMP_PREFIX!r}, which keras_ckpt reserves for temporary files"
    if problem is None and is_blob(filename):
        problem = "is a blob name (blob-<sha256>.bin), which keras_ckpt reserves"
    if problem is not None:
        raise ValueError(
            f"Checkpoint file name must be a plain name in the directory ({filename!r} {problem}). "
            f"Received: {filename!r}"
        )


def _link_or_copy(source: str, destination: str) -> None:
    """Hard-links ``source`` (never through a symbolic link) as ``destination``; copies and
    fsyncs where the file system cannot link."""
    try:
        os.link(source, destination, follow_symlinks=False)
    except OSError:
        with os.fdopen(open_regular(source), "rb") as reader, open(destination, "xb") as writer:
            shutil.copyfileobj(reader, writer)
        _fsync_and_hash(destination)


def reserved_alias_filenames() -> list[str]:
    """File names the aliases use; the native callbacks never name a checkpoint like this."""
    return [alias + ext for alias in ALIASES for ext in _ALIAS_EXTENSIONS]


# ``.weights.json`` is reserved too, though a sharded checkpoint's alias has no file (see
# ``alias_has_file``): a name some version may want must not be a checkpoint's today.
_ALIAS_EXTENSIONS = (".weights.h5", ".weights.json", DEDUP_EXTENSION, ".keras", ".h5")


def alias_has_file(target_filename: str) -> bool:
    """Whether an alias of ``target_filename`` is a file (a hard link or a copy) beside it.

    Not for sharded weights (``.weights.json``): Keras opens an index's first shard by the
    index's own name (``best_00000.weights.h5`` for ``best.weights.json``), so a linked index
    would not load; the alias lives in the manifest only, where ``load_best`` and
    ``load_latest`` read it.
    """
    return not target_filename.endswith((".weights.json", DEDUP_EXTENSION))


def alias_filename(alias: str, target_filename: str) -> str:
    """``best`` pointing at ``epoch003.weights.h5`` is the file ``best.weights.h5``."""
    for extension in _ALIAS_EXTENSIONS:
        if target_filename.endswith(extension):
            return alias + extension
    return alias


class _HeldLock:
    """This process's hold on one directory's lock file: shared by its stores, counted."""

    def __init__(self, fd: int):
        self.fd = fd
        self.holders = 1


_held_locks: dict[str, _HeldLock] = {}
_warned_unlockable: set[str] = set()


def _acquire_directory(directory: str) -> None:
    """Takes the directory's writer lock for this process (again, if it holds it already).

    Raises:
        DirectoryLockedError: If another process holds it, naming that process.
        ManifestError: If the lock file is a symbolic link or not a regular file.
        OSError: If the lock file cannot be created (a read-only directory).
    """
    with _locks_guard:
        held = _held_locks.get(directory)
        if held is not None:
            held.holders += 1
            return
        path = os.path.join(directory, LOCK_NAME)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | _NO_FOLLOW, 0o666)
        except OSError as error:
            if error.errno in (errno.ELOOP, errno.EMLINK, errno.EISDIR):
                raise ManifestError(
                    f"{path} is not a regular file (a symbolic link or a directory); keras_ckpt "
                    "keeps its lock there and follows no link. Remove it to write here."
                ) from None
            raise
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise ManifestError(f"{path} is not a regular file; remove it to write here.")
        # A lock file with other links is not ours alone (it may be a file outside, hard-linked
        # in): it is locked, but never read or written.
        own = os.fstat(fd).st_nlink == 1
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 300, 0).decode("utf-8", "replace") if own else ""
                holder = "".join(c for c in holder.strip() if c.isprintable()) or "unknown"
                os.close(fd)
                raise DirectoryLockedError(
                    f"Another process is writing checkpoints into {directory} ({holder}). Two "
                    "writers would overwrite each other's manifest; wait until it ends, or use "
                    "another directory. The lock is released when that process exits."
                ) from None
            except OSError as error:  # a file system without locks
                if directory not in _warned_unlockable:
                    _warned_unlockable.add(directory)
                    warnings.warn(
                        f"keras_ckpt: cannot lock {path} ({error}); make sure no other process "
                        "writes checkpoints into this directory at the same time.",
                        stacklevel=4,
                    )
        if own:
            since = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
            holder = f"pid {os.getpid()} on {socket.gethostname()}, since {since}\n"
            os.ftruncate(fd, 0)
            os.pwrite(fd, holder.encode(), 0)
        _held_locks[directory] = _HeldLock(fd)


def _release_directory(directory: str) -> None:
    with _locks_guard:
        held = _held_locks.get(directory)
        if held is None:
            return
        held.holders -= 1
        if held.holders == 0:
            del _held_locks[directory]
            os.close(held.fd)  # the kernel drops the flock with the last descriptor


class Store(abc.ABC):
    """A checkpoint directory as one process of a run uses it: what the saving callbacks need.

    Two kinds implement it, and callbacks never ask which one they hold. A ``CheckpointStore``
    writes the directory; it is the chief's (process 0's), or the only process's. A
    ``FollowerStore`` is what every other process of a multi-process run holds: it reads the
    directory once, then takes the chief's changes in memory and writes nothing. Where a
    callback must act differently (a follower has nothing to write), it asks ``writes``.

    Attributes:
        directory: The checkpoint directory, an absolute path.
        keras_version: Recorded with every checkpoint committed.
    """

    directory: str
    keras_version: str

    @property
    @abc.abstractmethod
    def writes(self) -> bool:
        """Whether ``commit`` writes the checkpoint (calls ``write``) and changes files; a
        follower only records the commit."""

    # Reading -----------------------------------------------------------------------------

    @abc.abstractmethod
    def manifest(self) -> Manifest:
        """The committed manifest (a copy the caller may change)."""

    def records(self) -> list[CheckpointRecord]:
        """Committed checkpoints, oldest first."""
        return self.manifest().records

    def path(self, filename: str) -> str:
        """Where ``filename`` lives in the directory."""
        return os.path.join(self.directory, filename)

    @abc.abstractmethod
    def filenames(self) -> set[str]:
        """The names in the directory (checkpoints of every run, aliases, anything else but the
        writer lock)."""

    def names_in_use(self) -> set[str]:
        """The names a new checkpoint must not take: ``filenames()``, which a remote directory
        answers without a request on the training thread (see ``RemoteStore``)."""
        return self.filenames()

    def is_directory(self, filename: str) -> bool:
        """Whether ``filename`` in the directory is a directory (a prefix holding objects, for a
        remote directory), where no checkpoint can be written."""
        return os.path.isdir(self.path(filename))

    # Changing ----------------------------------------------------------------------------

    @abc.abstractmethod
    def commit(
        self,
        filename: str,
        write: Callable[[str], None],
        *,
        epoch: int,
        step: int,
        metrics: Mapping[str, float],
        kind: str,
        run: str,
        keeper: str,
        batch: int | None = None,
        state: Mapping[str, Any] | None = None,
        multi_file: bool = False,
    ) -> CheckpointRecord:
        """Commits a checkpoint as ``filename``, written by ``write(temporary_path)`` where the
        store ``writes``; returns its record. With ``multi_file``, ``write`` may write more
        files beside ``temporary_path`` (Keras's sharded weights), committed as one checkpoint.
        """

    @abc.abstractmethod
    def release(self, keeper: str, filenames: Iterable[str]) -> list[str]:
        """``keeper`` no longer keeps ``filenames``; those nobody keeps go. Returns their names."""

    @abc.abstractmethod
    def set_alias(self, alias: str, target_filename: str) -> str:
        """Points ``alias`` at a committed checkpoint; returns the alias's path."""

    @abc.abstractmethod
    def remove_if_empty(self) -> bool:
        """Removes the directory if it holds no checkpoint; whether it did."""

    @abc.abstractmethod
    def close(self) -> None:
        """Lets go of the directory (the writer lock, for a store that holds one)."""

    def _new_record(
        self,
        filename: str,
        size: int,
        sha256: str,
        *,
        metrics: Mapping[str, float],
        keeper: str,
        state: Mapping[str, Any] | None = None,
        **fields: Any,
    ) -> CheckpointRecord:
        """The record of ``filename`` from ``commit``'s arguments (epoch, step, kind, ...)."""
        return CheckpointRecord(
            path=self.path(filename),
            metrics=dict(metrics),
            time=time.time(),
            size=size,
            sha256=sha256,
            keras_version=self.keras_version,
            kept_by=(keeper,),
            state=None if state is None else dict(state),
            **fields,
        )


class CheckpointStore(Store):
    """A crash-safe directory of checkpoints with a manifest.

    Several stores (one per callback) may share a directory within a process: every change
    re-reads the manifest under a per-directory lock, so none overwrites another's records.
    Another process cannot: an open store holds the directory's writer lock until ``close()``
    (or until it is garbage-collected, or the process ends); a write after ``close()`` takes
    the lock again.

    Args:
        directory: Where the checkpoints live; created if missing.
        keras_version: Recorded with every checkpoint.

    Raises:
        ValueError: If the directory cannot be created or written.
        DirectoryLockedError: If another process is writing into the directory.
        ManifestError: If the directory's manifest is damaged or names anything that is not a
            plain file in the directory.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        keras_version: str = "unknown",
    ):
        self.directory = os.path.abspath(validation.directory("directory", directory))
        self.keras_version = keras_version
        self._lock = _directory_lock(self.directory)
        self._release: weakref.finalize | None = None
        self._take_directory()
        try:
            self.recover()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Lets other processes write into the directory (once no store of this process holds
        it). Reading goes on working; the next write takes the lock again."""
        if self._release is not None:
            self._release()

    def _take_directory(self) -> None:
        """Holds the directory's writer lock while this store is open (see the class)."""
        if self._release is not None and self._release.alive:
            return
        try:
            os.makedirs(self.directory, exist_ok=True)
            _acquire_directory(self.directory)
        except OSError as error:
            raise ValueError(
                f"Checkpoint directory {self.directory!r} cannot be written: {error}"
            ) from None
        self._release = weakref.finalize(self, _release_directory, self.directory)

    @property
    def writes(self) -> bool:
        """Always: this store writes the directory."""
        return True

    # Reading -----------------------------------------------------------------------------

    def manifest(self) -> Manifest:
        """The committed manifest, as on disk."""
        return read_manifest(self.directory)

    def filenames(self) -> set[str]:
        """The names in the directory (checkpoints of every run, aliases, anything else but the
        writer lock)."""
        return set(os.listdir(self.directory)) - {LOCK_NAME}

    # Writing -----------------------------------------------------------------------------

    def commit(
        self,
        filename: str,
        write: Callable[[str], None],
        *,
        epoch: int,
        step: int,
        metrics: Mapping[str, float],
        kind: str,
        run: str,
        keeper: str,
        batch: int | None = None,
        state: Mapping[str, Any] | None = None,
        multi_file: bool = False,
    ) -> CheckpointRecord:
        """Writes a checkpoint through ``write(temporary_path)`` and commits it as ``filename``.

        A same-named committed file is replaced only at the instant of the atomic rename; if
        ``write`` raises, nothing on disk or in the manifest changes.

        With ``multi_file`` (Keras's sharded weights), ``write`` gets ``filename`` inside a
        temporary folder of the directory and may write more files beside it (the shards); all
        of them are one checkpoint (see ``_commit_files``).

        Raises:
            ValueError: If ``filename`` is not a plain name, or (``multi_file``) a file written
                is not a plain regular file, an index names a file not written, or a file would
                replace one that another checkpoint or an alias owns.
        """
        check_plain_name(filename)
        self._take_directory()
        if multi_file:
            return self._commit_files(
                filename,
                write,
                epoch=epoch,
                batch=batch,
                step=step,
                metrics=metrics,
                kind=kind,
                run=run,
                keeper=keeper,
                state=state,
            )
        temporary = self._temporary_path(filename)
        with _locks_guard:
            _writing.add(temporary)
        try:
            write(temporary)
            size, sha256 = _fsync_and_hash(temporary)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.remove(temporary)
            with _locks_guard:
                _writing.discard(temporary)
            raise
        record = self._new_record(
            filename,
            size,
            sha256,
            epoch=epoch,
            batch=batch,
            step=step,
            metrics=metrics,
            kind=kind,
            run=run,
            keeper=keeper,
            state=state,
        )
        with self._lock:
            manifest = self.manifest()
            # A commit of this process that failed half way left its pending entry: settle it
            # before this commit takes the slot.
            manifest.trash += _resolve_pending(manifest, self.directory)
            try:
                self._check_owners(manifest, record)
            except ValueError:
                os.remove(temporary)
                with _locks_guard:
                    _writing.discard(temporary)
                raise
            manifest.pending = {"temp": os.path.basename(temporary), "record": record.to_json()}
            try:
                self._write_manifest(manifest)
                os.replace(temporary, record.path)
                _fsync_directory(self.directory)
                manifest.pending = None
                manifest.trash += add_record(manifest, record)
                self._write_manifest(manifest)
                if manifest.trash:  # the shards of a sharded checkpoint of the same name
                    self._empty_trash(manifest)
            except BaseException:
                with _locks_guard:
                    _writing.discard(temporary)
                with contextlib.suppress(Exception):
                    self.recover()
                raise
        with _locks_guard:
            _writing.discard(temporary)
        return record

    def _commit_files(
        self, filename: str, write: Callable[[str], None], **fields: Any
    ) -> CheckpointRecord:
        """``commit`` of a checkpoint that is several files: an index ``filename`` and the parts
        ``write`` writes beside it (Keras's ``.weights.json`` and its shards).

        1. ``write`` writes into a fresh temporary folder (``.keras_ckpt-tmp-*``) of the
           directory, under the final names; each file is fsynced and hashed.
        2. The manifest is replaced with the commit *pending*: from here on the commit is
           decided, since every file is complete under the temporary folder.
        3. The parts, then the index, are renamed into the directory; the folder is removed.
        4. The manifest is replaced with the record (its ``parts`` listing the shards).

        A process killed before step 2 leaves only the temporary folder, which recovery
        removes; one killed in step 3 has its renames finished by recovery (``recover``).
        """
        folder = self._temporary_path(filename)
        with _locks_guard:
            _writing.add(folder)
        decided = False  # once the pending manifest is written, the folder is recovery's
        try:
            os.mkdir(folder)
            write(os.path.join(folder, filename))
            parts = self._written_parts(folder, filename)
            size, sha256 = _fsync_and_hash(os.path.join(folder, filename))
            record = replace(self._new_record(filename, size, sha256, **fields), parts=parts)
            with self._lock:
                manifest = self.manifest()
                manifest.trash += _resolve_pending(manifest, self.directory)
                if filename.endswith(DEDUP_EXTENSION):
                    record = replace(record, parts=_dedup_parts(manifest, folder, record))
                self._check_owners(manifest, record)
                manifest.pending = {"temp": os.path.basename(folder), "record": record.to_json()}
                # The folder's entries, and the folder in the directory, are durable before the
                # manifest says the commit is decided.
                _fsync_directory(folder)
                _fsync_directory(self.directory)
                self._write_manifest(manifest)
                decided = True
                try:
                    _move_out(folder, self.directory, record)
                    _fsync_directory(self.directory)
                    manifest.pending = None
                    manifest.trash += add_record(manifest, record)
                    self._write_manifest(manifest)
                    if manifest.trash:  # shards an earlier save of this name had and this lacks
                        self._empty_trash(manifest)
                except BaseException:
                    with _locks_guard:
                        _writing.discard(folder)
                    with contextlib.suppress(Exception):
                        self.recover()
                    raise
        except BaseException:
            if not decided:  # made here, a moment ago, and no manifest names it: ours
                shutil.rmtree(folder, ignore_errors=True)
            raise
        finally:
            with _locks_guard:
                _writing.discard(folder)
        return record

    def _written_parts(self, folder: str, filename: str) -> tuple[CheckpointPart, ...]:
        """The files ``write`` left in ``folder`` beside ``filename``, fsynced and hashed.

        Raises:
            ValueError: If ``filename`` is missing, another entry is not a plain regular file,
                or the index (``.weights.json``) names a shard that was not written.
        """
        names = set(os.listdir(folder))
        if filename not in names:
            raise ValueError(f"Saving {filename!r} wrote no file of that name.")
        parts = []
        for name in sorted(names - {filename}):
            problem = name_problem(name)
            path = os.path.join(folder, name)
            if problem is None and not stat.S_ISREG(os.lstat(path).st_mode):
                problem = "is not a regular file"
            if problem is not None:
                raise ValueError(f"Saving {filename!r} wrote {name!r}, which {problem}.")
            size, sha256 = _fsync_and_hash(path)
            if filename.endswith(DEDUP_EXTENSION) and not (
                is_blob(name) and name == f"blob-{sha256}.bin"
            ):
                raise ValueError(
                    f"Saving {filename!r} wrote {name!r}, which is not a blob named by the "
                    "SHA-256 of its bytes."
                )
            parts.append(CheckpointPart(filename=name, size=size, sha256=sha256))
        if filename.endswith(".weights.json"):
            with open(os.path.join(folder, filename), "rb") as file:
                shards = sharded_index_shards(json.load(file), filename)
            missing = sorted(set(shards) - names)
            if missing:
                raise ValueError(f"The index {filename!r} names shards not written: {missing}.")
        return tuple(parts)

    def _check_owners(self, manifest: Manifest, record: CheckpointRecord) -> None:
        """Refuses a file of ``record`` that another checkpoint has (a shard of a sharded one:
        the manifest would list it twice), and a part that would replace an alias's file or a
        file keras_ckpt did not write; a same-named checkpoint's own files may be replaced."""
        owner = manifest.owner(record.filename)
        if owner is not None and owner.filename != record.filename:
            raise ValueError(
                f"Checkpoint {record.filename!r} would replace a shard of the checkpoint "
                f"{owner.filename!r}; nothing was committed. Name the checkpoints so that their "
                "files differ."
            )
        aliases = {alias_filename(a, t) for a, t in manifest.aliases.items()}
        for name in record.parts:
            if is_blob(name.filename):
                continue  # named by its content: another checkpoint's copy is this very blob
            owner = manifest.owner(name.filename)
            if owner is not None and owner.filename == record.filename:
                continue
            if (
                owner is not None
                or name.filename in aliases
                or os.path.lexists(self.path(name.filename))
            ):
                whose = f"the checkpoint {owner.filename!r}" if owner else "a file already there"
                raise ValueError(
                    f"Checkpoint {record.filename!r} would replace {name.filename!r}, "
                    f"{whose}; nothing was committed. Name the checkpoints so that their shard "
                    "files differ."
                )

    def release(self, keeper: str, filenames: Iterable[str]) -> list[str]:
        """``keeper`` no longer keeps ``filenames``; deletes those that nobody keeps.

        Returns the names of the files deleted.
        """
        names = set(filenames)
        if not names:
            return []
        self._take_directory()
        with self._lock:
            manifest = self.manifest()
            deleted, manifest.trash = drop_keeper(manifest, keeper, names)
            self._write_manifest(manifest)
            if manifest.trash:
                self._empty_trash(manifest)
        return deleted

    def set_alias(self, alias: str, target_filename: str) -> str:
        """Points the file ``alias`` (+ the target's extension) at a committed checkpoint.

        A hard link, so the alias costs no second write and no disk space; a copy where the file
        system cannot link. Returns the alias's path. If anything fails, the alias file and the
        manifest are left as they were.
        """
        if alias not in ALIASES:
            raise ValueError(f"Argument `alias` must be one of {ALIASES}. Received: {alias!r}")
        self._take_directory()
        with self._lock:
            manifest = self.manifest()
            if manifest.find(target_filename) is None:
                raise ValueError(f"{target_filename!r} is not a committed checkpoint.")
            if not alias_has_file(target_filename):
                return self._set_alias_in_manifest(manifest, alias, target_filename)
            alias_path = self.path(alias_filename(alias, target_filename))
            # The alias file as it was, kept under a temporary name until the manifest is written.
            backup = None
            if os.path.isfile(alias_path) and not os.path.islink(alias_path):
                backup = self._temporary_path(alias)
                _link_or_copy(alias_path, backup)
            try:
                self._link_alias(manifest, alias, target_filename)
                previous = manifest.aliases.get(alias)
                manifest.aliases[alias] = target_filename
                self._write_manifest(manifest)
            except BaseException:
                # Undone unless the manifest was replaced (only the fsync after it failed).
                with contextlib.suppress(Exception):
                    if self.manifest().aliases.get(alias) != target_filename:
                        if backup is not None:
                            os.replace(backup, alias_path)
                        elif manifest.find(os.path.basename(alias_path)) is None:
                            os.remove(alias_path)
                raise
            finally:
                if backup is not None:
                    with contextlib.suppress(FileNotFoundError):
                        os.remove(backup)
            self._remove_stale_alias(manifest, alias, previous, os.path.basename(alias_path))
        return alias_path

    def _set_alias_in_manifest(self, manifest: Manifest, alias: str, target_filename: str) -> str:
        """``set_alias`` for a target whose alias has no file (``alias_has_file``): the
        manifest alone names it. Returns the target's path."""
        previous = manifest.aliases.get(alias)
        manifest.aliases[alias] = target_filename
        self._write_manifest(manifest)
        self._remove_stale_alias(manifest, alias, previous, None)
        return self.path(target_filename)

    def _remove_stale_alias(
        self, manifest: Manifest, alias: str, previous: str | None, current: str | None
    ) -> None:
        """Removes the file the alias had while it pointed at ``previous``, if it had one and
        that is neither the current alias file nor a checkpoint's."""
        if previous is None or not alias_has_file(previous):
            return
        stale = alias_filename(alias, previous)
        if stale != current and manifest.owner(stale) is None:
            with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                if not os.path.isdir(self.path(stale)) or os.path.islink(self.path(stale)):
                    os.remove(self.path(stale))

    def remove_if_empty(self) -> bool:
        """Removes the directory when it holds no checkpoint and nothing but the manifest and
        the lock; the lock is let go of, for every store of this process."""
        self._take_directory()
        with self._lock:
            if self.records() or set(os.listdir(self.directory)) - {MANIFEST_NAME, LOCK_NAME}:
                return False
            os.remove(self.path(MANIFEST_NAME))
            os.remove(self.path(LOCK_NAME))
            os.rmdir(self.directory)
            with _locks_guard:
                held = _held_locks.pop(self.directory, None)
            if held is not None:
                os.close(held.fd)
        return True

    # Recovery ----------------------------------------------------------------------------

    def recover(self) -> None:
        """Finishes or undoes whatever a killed process left half done.

        An alias whose checkpoint is gone or is no regular file (deleted by hand, replaced by a
        link) is dropped with a warning; the checkpoint's record stays, and readers skip it as
        damaged.
        """
        self._take_directory()
        with self._lock:
            manifest = self.manifest()
            changed = False
            if manifest.pending is not None:
                folder = self.path(manifest.pending["temp"])
                record = CheckpointRecord.from_json(manifest.pending["record"], self.directory)
                if record.parts and os.path.isdir(folder) and not os.path.islink(folder):
                    # Decided (every file was complete in the folder): finish the renames.
                    _move_out(folder, self.directory, record)
                manifest.trash += _resolve_pending(manifest, self.directory)
                changed = True
            if manifest.trash:
                self._empty_trash(manifest)
                changed = True
            with _locks_guard:
                in_flight = tuple(_writing)  # with the files a writer makes beside them
            for name in os.listdir(self.directory):
                path = self.path(name)
                if TEMP_PATTERN.match(name) and not path.startswith(in_flight):
                    with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                        if not os.path.isdir(path) or os.path.islink(path):
                            os.remove(path)
                        else:  # the folder of a sharded save; no other folder
                            _remove_staging_folder(path)
            listed = {name for record in manifest.records for name in record.filenames}
            for name in os.listdir(self.directory):
                # A blob no checkpoint lists: written by a save that did not commit. Only names
                # of the blob pattern, only regular files, are keras_ckpt's to remove.
                if is_blob(name) and name not in listed:
                    with contextlib.suppress(FileNotFoundError):
                        if stat.S_ISREG(os.lstat(self.path(name)).st_mode):
                            os.remove(self.path(name))
            for alias, target in list(manifest.aliases.items()):
                if manifest.find(target) is None:
                    continue
                try:
                    check_regular_file(self.path(target))
                except CheckpointCorruptedError as error:
                    warnings.warn(
                        f"keras_ckpt: dropping the {alias!r} alias of {self.directory}: {error}",
                        stacklevel=2,
                    )
                    del manifest.aliases[alias]
                    alias_file = alias_filename(alias, target)
                    if manifest.owner(alias_file) is None and alias_has_file(target):
                        manifest.trash.append(alias_file)
                    changed = True
                    continue
                try:
                    self._link_alias(manifest, alias, target)
                except OSError as error:  # say a directory planted under the alias's name
                    warnings.warn(
                        f"keras_ckpt: cannot link the {alias!r} alias in {self.directory} "
                        f"({error}); the manifest still names its checkpoint.",
                        stacklevel=2,
                    )
            if manifest.trash:
                self._empty_trash(manifest)
            elif changed:
                self._write_manifest(manifest)

    # Internals ---------------------------------------------------------------------------

    def _temporary_path(self, name: str) -> str:
        """A fresh temporary name beside the checkpoints (recovery removes such leftovers)."""
        return self.path(f"{TEMP_PREFIX}{uuid.uuid4().hex[:12]}-{name}")

    def _empty_trash(self, manifest: Manifest) -> None:
        listed = {name for record in manifest.records for name in record.filenames}
        listed.update(
            alias_filename(a, t) for a, t in manifest.aliases.items() if alias_has_file(t)
        )
        for name in manifest.trash:
            path = self.path(name)
            if name not in listed and not (os.path.isdir(path) and not os.path.islink(path)):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(path)
        manifest.trash = []
        self._write_manifest(manifest)

    def _link_alias(self, manifest: Manifest, alias: str, target_filename: str) -> str:
        target = self.path(target_filename)
        alias_path = self.path(alias_filename(alias, target_filename))
        if not alias_has_file(target_filename):
            return target  # the manifest alone names it
        if manifest.find(os.path.basename(alias_path)) is not None:
            # A checkpoint of its own has the alias's name (say ModelCheckpoint("d/best.keras")):
            # it is never overwritten; the alias then lives in the manifest only.
            return alias_path
        check_regular_file(target)
        if os.path.isdir(alias_path) and not os.path.islink(alias_path):
            warnings.warn(
                f"keras_ckpt: {alias_path} is a folder, not keras_ckpt's; the {alias!r} alias "
                "lives in the manifest only (load_best and load_latest read it there).",
                stacklevel=3,
            )
            return alias_path
        with contextlib.suppress(FileNotFoundError):
            here, there = os.lstat(alias_path), os.lstat(target)
            if (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino):
                return alias_path  # already this very file (never a link that leads to it)
        temporary = self._temporary_path(alias)
        try:
            _link_or_copy(target, temporary)
            os.replace(temporary, alias_path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.remove(temporary)
            raise
        _fsync_directory(self.directory)
        return alias_path

    def _write_manifest(self, manifest: Manifest) -> None:
        path = self.path(MANIFEST_NAME)
        temporary = self._temporary_path(MANIFEST_NAME)
        try:
            with open(temporary, "w", encoding="utf-8") as file:
                json.dump(manifest.to_json(), file, indent=1, allow_nan=False)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)
        except BaseException:  # a full disk, say: the committed manifest stays as it was
            with contextlib.suppress(FileNotFoundError):
                os.remove(temporary)
            raise
        _fsync_directory(self.directory)


class FollowerStore(Store):
    """A checkpoint directory as a process other than the chief of a multi-process run sees it.

    Opening it reads the directory, which must be settled (the chief's saves on disk, its
    recovery done). From then on it takes the same changes as the chief's stores (commits,
    aliases, releases) in memory only. So the process takes the chief's decisions (what to save,
    under which name, what to drop) from the same state at the same moments, without waiting
    for the chief's background writes and without touching a file. The records it commits have
    no size and no checksum; ``write`` is never called. All followers of one directory in a
    process share one view, as the chief's stores share the directory; each opening reads it
    afresh. It is no ``CheckpointStore``: it shares only the ``Store`` interface, so nothing
    that writes can reach it.

    Args:
        directory: The chief's checkpoint directory (on a file system every process sees).
        keras_version: Recorded with every checkpoint, as by ``CheckpointStore``.
    """

    def __init__(self, directory: str | os.PathLike[str], keras_version: str = "unknown"):
        text = os.fspath(directory)
        from keras_ckpt import remote

        self.directory = text if remote.is_url(text) else os.path.abspath(text)
        self.keras_version = keras_version
        self._lock = _directory_lock(self.directory)
        manifest = read_committed(self.directory)
        manifest.trash = []
        names = {n for n in list_names(self.directory) if not n.startswith(TEMP_PREFIX)}
        with self._lock:
            self._view = _followed.setdefault(self.directory, _FollowedDirectory())
            self._view.manifest, self._view.names = manifest, names

    @property
    def writes(self) -> bool:
        """Never: the chief writes the directory."""
        return False

    def manifest(self) -> Manifest:
        """The manifest as the chief's changes left it, in memory."""
        with self._lock:
            view = self._view.manifest
            return Manifest(records=list(view.records), aliases=dict(view.aliases))

    def filenames(self) -> set[str]:
        """The names the directory holds once the chief's changes are on disk."""
        with self._lock:
            return set(self._view.names)

    def commit(
        self,
        filename: str,
        write: Callable[[str], None],
        *,
        epoch: int,
        step: int,
        metrics: Mapping[str, float],
        kind: str,
        run: str,
        keeper: str,
        batch: int | None = None,
        state: Mapping[str, Any] | None = None,
        multi_file: bool = False,
    ) -> CheckpointRecord:
        """Commits in memory what the chief commits; ``write`` is never called. Takes
        ``CheckpointStore.commit``'s arguments."""
        check_plain_name(filename)
        record = self._new_record(
            filename,
            0,
            "",
            epoch=epoch,
            batch=batch,
            step=step,
            metrics=metrics,
            kind=kind,
            run=run,
            keeper=keeper,
            state=state,
        )
        with self._lock:
            add_record(self._view.manifest, record)
            self._view.names.add(filename)
        return record

    def release(self, keeper: str, filenames: Iterable[str]) -> list[str]:
        """As ``CheckpointStore.release``, in memory."""
        with self._lock:
            deleted, files = drop_keeper(self._view.manifest, keeper, set(filenames))
            self._view.names.difference_update(files)
        return deleted

    def set_alias(self, alias: str, target_filename: str) -> str:
        """As ``CheckpointStore.set_alias``, in memory."""
        with self._lock:
            manifest = self._view.manifest
            if manifest.find(target_filename) is None:
                raise ValueError(f"{target_filename!r} is not a committed checkpoint.")
            previous = manifest.aliases.get(alias)
            if previous is not None and manifest.owner(alias_filename(alias, previous)) is None:
                self._view.names.discard(alias_filename(alias, previous))
            manifest.aliases[alias] = target_filename
            if not alias_has_file(target_filename):
                return self.path(target_filename)
            self._view.names.add(alias_filename(alias, target_filename))
        return self.path(alias_filename(alias, target_filename))

    def remove_if_empty(self) -> bool:
        """Never: the chief removes the directory."""
        return False

    def close(self) -> None:
        """Nothing: a follower holds no lock."""

    def recover(self) -> None:
        """Nothing: the chief recovers the directory."""


@dataclass
class _FollowedDirectory:
    """What the followers of one directory in this process see: the manifest and file names."""

    manifest: Manifest = field(default_factory=Manifest)
    names: set[str] = field(default_factory=set)


_followed: dict[str, _FollowedDirectory] = {}
