"""Checkpoint directories on remote storage: any fsspec URL (``s3://``, ``gs://``, ``memory://``).
No Keras import.

Object stores have no atomic rename and no directory fsync, and several machines may see one
bucket. A ``RemoteStore`` keeps the local store's promise (a reader sees a checkpoint whole or
not at all, a failed save changes nothing committed) with this protocol:

1. The checkpoint is written to a local staging file (HDF5 and zip writers need a seekable
   file; a failed upload can then be retried without touching the model again), hashed, and
   uploaded under a name no other save uses: ``.keras_ckpt-tmp-<12 hex>-<file name>``.
2. The manifest is written with the commit marked *pending* (that name and the new record).
3. The uploaded object is copied to its final name on the server (no bytes through this
   machine) and the manifest is written again with the new record and no pending commit: that
   write is the commit. The uploaded object is then deleted.

Every manifest write is conditional where the store supports it (S3 ``If-Match`` on the ETag
read, ``If-None-Match: *`` for the first one): if another writer changed the manifest since
this process read it, the write is refused and ``ManifestConflictError`` says so; nothing of the
other writer's is overwritten, and the refused checkpoint stays unlisted. Elsewhere (``memory://``,
stores fsspec gives no precondition for) one writer per directory is up to the user, as on a
file system without locks; a warning says so once.

Opening a directory for writing settles what a killed writer left: a pending commit whose final
object matches the recorded SHA-256 is completed, any other is dropped; objects of the temporary
pattern that the manifest does not list are deleted, as are files it lists as trash; on S3, the
unfinished multipart uploads of such objects (a writer killed in a large upload) are aborted,
since no listing shows their parts. Readers
resolve a pending commit the same way, in memory. Aliases (``best``, ``latest``) live in the
manifest only: no object is written for them.

Transient errors (a dropped connection, a timeout, a throttled request) are retried
``len(RETRY_DELAYS)`` times with the delays given, then raised; with an asynchronous save that is
on the training thread at the next save or at the end of ``fit``.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import re
import shutil
import tempfile
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, TypeVar

from keras_ckpt.records import (
    ALIASES,
    MANIFEST_NAME,
    TEMP_PATTERN,
    TEMP_PREFIX,
    CheckpointRecord,
    Manifest,
    ManifestError,
)
from keras_ckpt.store import (
    CheckpointCorruptedError,
    Store,
    add_record,
    alias_filename,
    check_plain_name,
    drop_keeper,
    file_sha256,
    sha256_and_size,
)

T = TypeVar("T")

_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://(.*)$", re.DOTALL)

# Protocols whose fsspec implementation comes with a keras_ckpt extra.
EXTRAS = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs"}

# Seconds to wait before each retry of an operation that failed for a transient reason.
RETRY_DELAYS: tuple[float, ...] = (0.5, 2.0, 5.0)

# The largest manifest read (one of 100,000 checkpoints is some tens of MB).
MAX_MANIFEST_BYTES = 256 * 1024 * 1024


class ManifestConflictError(RuntimeError):
    """Another writer changed a remote directory's manifest since this process read it: this
    process's change was refused, so neither writer's checkpoints were overwritten."""


# URLs ------------------------------------------------------------------------------------------


def is_url(directory: Any) -> bool:
    """Whether ``directory`` is a URL of a remote store (``file://`` URLs are local paths).

    Example:
        >>> is_url("s3://bucket/run"), is_url("runs/a"), is_url("file:///tmp/a")
        (True, False, False)
    """
    if isinstance(directory, os.PathLike):
        directory = os.fspath(directory)
    if not isinstance(directory, str):
        return False
    match = _URL.match(directory)
    return match is not None and match.group(1).lower() not in ("file", "local")


def local_path(directory: str) -> str:
    """A ``file://`` URL as a local path; anything else unchanged.

    Example:
        >>> local_path("file:///tmp/run"), local_path("runs/a")
        ('/tmp/run', 'runs/a')
    """
    match = _URL.match(directory)
    if match is not None and match.group(1).lower() in ("file", "local"):
        return match.group(2) or "/"
    return directory


def check_url(argument: str, url: str) -> str:
    """Checks a remote directory's URL without touching the network; returns it normalized
    (no trailing slash).

    Raises:
        ValueError: naming ``argument``, when the URL has no path, has an empty, ``.`` or
            ``..`` component, a protocol fsspec does not know, or one whose implementation is
            not installed (naming the pip extra that installs it).
    """
    match = _URL.match(url)
    if match is None:
        raise ValueError(f"Argument `{argument}` must be a URL. Received: {argument}={url!r}")
    protocol, rest = match.group(1).lower(), match.group(2).rstrip("/")
    parts = rest.split("/")
    if not rest or any(part in ("", ".", "..") for part in parts) or not url.isprintable():
        raise ValueError(
            f"Argument `{argument}` must be a URL with a path of plain names, such as "
            f"'s3://bucket/runs/a' (no empty, '.' or '..' parts, no control characters). "
            f"Received: {argument}={url!r}"
        )
    _filesystem_class(argument, url, protocol)
    return f"{match.group(1)}://{rest}"


def _filesystem_class(argument: str, url: str, protocol: str) -> Any:
    import fsspec

    known = set(fsspec.available_protocols())
    if protocol not in known:
        raise ValueError(
            f"Argument `{argument}` has the protocol {protocol!r}, which fsspec does not know "
            f"(known: s3, gs, memory, file and {len(known) - 4} others; see "
            f"fsspec.available_protocols()). Received: {argument}={url!r}"
        )
    try:
        return fsspec.get_filesystem_class(protocol)
    except ImportError as error:
        extra = EXTRAS.get(protocol)
        hint = (
            f'pip install "keras-ckpt[{extra}]"'
            if extra
            else f"install the package fsspec names: {error}"
        )
        raise ValueError(
            f"Argument `{argument}` is a {protocol}:// URL, whose file system is not installed: "
            f"{hint}. Received: {argument}={url!r}"
        ) from None


def join(directory: str, name: str) -> str:
    """``name`` inside the remote ``directory``."""
    return posixpath.join(directory, name)


def _filesystem(url: str) -> tuple[Any, str]:
    """The fsspec file system of ``url`` and the path fsspec uses for it."""
    import fsspec.core

    return fsspec.core.url_to_fs(url)


# Retries ---------------------------------------------------------------------------------------


def _is_transient(error: BaseException) -> bool:
    """A failure worth retrying: not a missing object, a refused permission or precondition."""
    if isinstance(error, (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError)):
        return False
    if isinstance(error, (ConnectionError, TimeoutError)):
        return True
    if isinstance(error, OSError):
        return error.errno not in (22,)  # EINVAL: what s3fs makes of a failed precondition
    text = type(error).__name__
    return any(word in text for word in ("Timeout", "Connection", "Throttl", "ServiceUnavailable"))


def _retried(what: str, operation: Callable[[], T]) -> T:
    for delay in (*RETRY_DELAYS, None):
        try:
            return operation()
        except Exception as error:
            if delay is None or not _is_transient(error):
                raise
            warnings.warn(
                f"keras_ckpt: {what} failed ({type(error).__name__}: {error}); retrying in "
                f"{delay} s.",
                stacklevel=3,
            )
            time.sleep(delay)
    raise AssertionError("unreachable")


# Reading ---------------------------------------------------------------------------------------


def _read_manifest(fs: Any, directory: str) -> tuple[Manifest, Any]:
    """The manifest of ``directory`` and the token of the version read (``None`` if there is
    no manifest yet): its ETag where the store has one, else its bytes."""
    path = _path_of(fs, join(directory, MANIFEST_NAME))
    for _ in range(5):
        before = _etag(fs, path)
        try:
            raw = _retried(f"reading {path}", lambda: fs.cat_file(path))
        except FileNotFoundError:
            return Manifest(), None
        if len(raw) > MAX_MANIFEST_BYTES:
            raise ManifestError(f"The manifest {directory}/{MANIFEST_NAME} is too large.")
        after = _etag(fs, path)
        if before == after:  # the bytes are those of that version
            return _parse(raw, directory), (after if after is not None else raw)
    raise ManifestConflictError(
        f"The manifest of {directory} changed five times while it was read; another process is "
        "writing there."
    )


def _parse(raw: bytes, directory: str) -> Manifest:
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as error:
        raise ManifestError(
            f"The manifest {directory}/{MANIFEST_NAME} is not valid JSON "
            f"({type(error).__name__}: {error}). keras_ckpt never writes a partial manifest, so "
            "something else changed it."
        ) from None
    return Manifest.from_json(data, directory)


def _etag(fs: Any, path: str) -> str | None:
    if not _has_etags(fs):
        return None
    with contextlib.suppress(Exception):
        fs.invalidate_cache(path)
    try:
        info = _retried(f"reading {path}", lambda: fs.info(path))
    except FileNotFoundError:
        return None
    etag = info.get("ETag") or info.get("etag")
    return None if etag is None else str(etag)


def _has_etags(fs: Any) -> bool:
    """Whether the store has S3's conditional writes (``If-Match`` on an ETag)."""
    protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    return any(p in ("s3", "s3a") for p in protocols)


def _path_of(fs: Any, url: str) -> str:
    """``url`` as ``fs`` names it (without the protocol)."""
    import fsspec.core

    return str(fsspec.core.strip_protocol(url))


def read_committed(directory: str) -> Manifest:
    """What a reader of a remote directory may rely on: its manifest with a pending commit
    resolved in memory. Writes nothing."""
    fs, _ = _filesystem(directory)
    manifest, _ = _read_manifest(fs, directory)
    _resolve_pending(fs, manifest, directory)
    manifest.trash = []
    return manifest


def list_names(directory: str) -> set[str]:
    """The names of the objects directly in ``directory``."""
    fs, root = _filesystem(directory)
    with contextlib.suppress(Exception):
        fs.invalidate_cache(root)
    try:
        entries = _retried(f"listing {directory}", lambda: fs.ls(root, detail=False))
    except FileNotFoundError:
        return set()
    return {posixpath.basename(str(entry).rstrip("/")) for entry in entries}


def exists(url: str) -> bool:
    """Whether anything is at ``url``: an object, or a directory (a prefix) holding objects, or
    a bucket.

    Example:
        >>> import fsspec
        >>> fsspec.filesystem("memory").pipe_file("/remote-doc/run/a.bin", b"abc")
        >>> exists("memory://remote-doc/run"), exists("memory://remote-doc/other")
        (True, False)
    """
    fs, path = _filesystem(url)
    with contextlib.suppress(Exception):
        fs.invalidate_cache(path)
    return bool(_retried(f"reading {url}", lambda: fs.exists(path)))


def object_size(url: str) -> int:
    """The size in bytes of the object at ``url``, without reading it.

    Raises:
        FileNotFoundError: If there is no object there (nothing, or only a prefix of others).

    Example:
        >>> import fsspec
        >>> fsspec.filesystem("memory").pipe_file("/remote-doc/run/b.bin", b"abcd")
        >>> object_size("memory://remote-doc/run/b.bin")
        4
    """
    fs, path = _filesystem(url)
    with contextlib.suppress(Exception):
        fs.invalidate_cache(path)
    info = _retried(f"reading {url}", lambda: fs.info(path))
    if info.get("type") != "file":
        raise FileNotFoundError(f"No object at {url}.")
    return int(info["size"])


def _sha256_of(fs: Any, path: str) -> tuple[int, str]:
    with fs.open(path, "rb") as file:
        return sha256_and_size(file)


def _matches(fs: Any, record: CheckpointRecord) -> bool:
    try:
        return _sha256_of(fs, _path_of(fs, record.path)) == (record.size, record.sha256)
    except FileNotFoundError:
        return False


def _resolve_pending(fs: Any, manifest: Manifest, directory: str) -> str | None:
    """Settles ``manifest.pending`` in memory: completed if its final object holds the recorded
    bytes (the copy happened), else dropped. Returns the pending upload's name, if any."""
    pending, manifest.pending = manifest.pending, None
    if pending is None:
        return None
    record = CheckpointRecord.from_json(pending["record"], directory)
    if _matches(fs, record):
        add_record(manifest, record)
    return str(pending["temp"])


def verify(record: CheckpointRecord) -> None:
    """Raises ``CheckpointCorruptedError`` unless the remote object matches its record."""
    fs, _ = _filesystem(record.path)
    try:
        size, sha256 = _sha256_of(fs, _path_of(fs, record.path))
    except FileNotFoundError:
        raise CheckpointCorruptedError(f"Checkpoint {record.path} is missing.") from None
    if size != record.size:
        raise CheckpointCorruptedError(
            f"Checkpoint {record.path} has {size} bytes; its manifest recorded {record.size}."
        )
    if sha256 != record.sha256:
        raise CheckpointCorruptedError(
            f"Checkpoint {record.path} does not match the SHA-256 its manifest recorded."
        )


@contextlib.contextmanager
def local_copy(record: CheckpointRecord, verify_checksum: bool = True) -> Iterator[str]:
    """A local copy of a remote checkpoint, for Keras to open; deleted afterwards.

    The copy has the checkpoint's file name (Keras picks the format by its extension) and, with
    ``verify_checksum``, is checked against the recorded size and SHA-256 first.
    """
    fs, _ = _filesystem(record.path)
    staging = tempfile.mkdtemp(prefix="keras_ckpt-download-")
    try:
        local = os.path.join(staging, record.filename)
        try:
            _retried(
                f"downloading {record.path}",
                lambda: fs.get_file(_path_of(fs, record.path), local),
            )
        except FileNotFoundError:
            raise CheckpointCorruptedError(f"Checkpoint {record.path} is missing.") from None
        if verify_checksum and (os.path.getsize(local), file_sha256(local)) != (
            record.size,
            record.sha256,
        ):
            raise CheckpointCorruptedError(
                f"Checkpoint {record.path} does not match the size and SHA-256 its manifest "
                "recorded."
            )
        yield local
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# Writing ---------------------------------------------------------------------------------------

_locks_guard = threading.Lock()
_directory_locks: dict[str, threading.RLock] = {}
# Uploads this process has in flight (a background save uploads outside the directory lock):
# recovery in the same process leaves them alone.
_uploading: set[str] = set()
_warned_unconditional: set[str] = set()
# Each directory's manifest as this process last read or wrote it, with its token.
_known: dict[str, tuple[Manifest, Any]] = {}


def _copy(manifest: Manifest) -> Manifest:
    """A copy the caller may change (records are frozen; the containers are copied)."""
    return Manifest(
        records=list(manifest.records),
        aliases=dict(manifest.aliases),
        pending=None if manifest.pending is None else dict(manifest.pending),
        trash=list(manifest.trash),
    )


def _directory_lock(directory: str) -> threading.RLock:
    with _locks_guard:
        return _directory_locks.setdefault(directory, threading.RLock())


def _write_manifest(fs: Any, directory: str, manifest: Manifest, token: Any) -> Any:
    """Writes ``manifest`` if the stored one is still the version ``token`` names; returns the
    token of the version written.

    Raises:
        ManifestConflictError: If another writer changed the manifest in between.
    """
    path = _path_of(fs, join(directory, MANIFEST_NAME))
    data = json.dumps(manifest.to_json(), indent=1, allow_nan=False).encode("utf-8")
    conflict = ManifestConflictError(
        f"Another process changed the manifest of {directory} since this one read it, so this "
        "change was not written: two writers in one directory would overwrite each other's "
        "checkpoints. Nothing committed was lost; use one directory per writer."
    )
    if _has_etags(fs):
        condition = {"mode": "create"} if token is None else {"IfMatch": token}

        def put() -> None:
            try:
                fs.pipe_file(path, data, **condition)
            except OSError:  # FileExistsError too: a refused If-None-Match
                if _etag(fs, path) == token:
                    raise  # the manifest is as read: retried if transient
                with contextlib.suppress(Exception):
                    if fs.cat_file(path) == data:
                        return  # written, though the answer was lost: a retry must not conflict
                raise conflict from None

        _retried(f"writing {path}", put)
        return _etag(fs, path)
    protocol = directory.split("://", 1)[0]
    if protocol not in _warned_unconditional:  # once per protocol and process
        _warned_unconditional.add(protocol)
        warnings.warn(
            f"keras_ckpt: {protocol}:// gives keras_ckpt no conditional writes, so two processes "
            f"writing checkpoints into one directory (such as {directory}) at the same time "
            "would go unnoticed; use one writer per directory.",
            stacklevel=4,
        )
    with contextlib.suppress(FileNotFoundError):
        if fs.cat_file(path) != token:
            raise conflict
    if token is not None and not fs.exists(path):
        raise conflict
    _retried(f"writing {path}", lambda: fs.pipe_file(path, data))
    return data


class RemoteStore(Store):
    """A checkpoint directory on remote storage, written with the module's protocol.

    Args:
        directory: The directory's URL, checked by ``check_url``.
        keras_version: Recorded with every checkpoint.

    Raises:
        ValueError: If the directory cannot be written (a missing bucket, missing credentials,
            no permission): found by writing and deleting a probe object.
        ManifestError: If its manifest is damaged or names anything but plain names.
    """

    def __init__(self, directory: str, keras_version: str = "unknown") -> None:
        self.directory = directory
        self.keras_version = keras_version
        self._fs = _filesystem(self.directory)[0]
        self._lock = _directory_lock(self.directory)
        self._probe()
        self.recover()
        # Listed once: later, the names this directory gains are the manifest's (one writer).
        self._listed = list_names(self.directory)

    def _probe(self) -> None:
        """Fails now, not after an epoch, where the directory cannot be written: a
        missing bucket, missing credentials, no permission."""
        probe = self._object(f"{TEMP_PREFIX}probe-{uuid.uuid4().hex[:12]}")
        try:
            _retried(f"writing {self.directory}", lambda: self._fs.pipe_file(probe, b""))
            self._fs.rm_file(probe)
        except Exception as error:
            raise ValueError(
                f"Checkpoint directory {self.directory!r} cannot be written: "
                f"{type(error).__name__}: {error}"
            ) from None

    def _object(self, name: str) -> str:
        return _path_of(self._fs, join(self.directory, name))

    @property
    def writes(self) -> bool:
        return True

    def path(self, filename: str) -> str:
        return join(self.directory, filename)

    def manifest(self) -> Manifest:
        return self._read()[0]

    def filenames(self) -> set[str]:
        return list_names(self.directory)

    def names_in_use(self) -> set[str]:
        """The names listed when the store was opened and every name its manifest gives: no
        request while the manifest is known (a listing per save would be one on the training
        thread)."""
        manifest = self.manifest()
        named = {record.filename for record in manifest.records}
        return self._listed | named | set(manifest.aliases.values()) | set(manifest.trash)

    def is_directory(self, filename: str) -> bool:
        return bool(
            _retried(
                f"reading {self.path(filename)}", lambda: self._fs.isdir(self._object(filename))
            )
        )

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
        check_plain_name(filename)
        if multi_file:
            raise ValueError(
                f"Checkpoint {filename!r} is several files (sharded weights), which keras_ckpt "
                f"keeps in local directories only, not in {self.directory}."
            )
        upload = f"{TEMP_PREFIX}{uuid.uuid4().hex[:12]}-{filename}"
        with _locks_guard:
            _uploading.add(upload)
        try:
            size, sha256 = self._upload(filename, upload, write)
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
                manifest, token = self._read()
                stale = _resolve_pending(self._fs, manifest, self.directory)
                manifest.pending = {"temp": upload, "record": record.to_json()}
                token = self._write(manifest, token)
                _retried(
                    f"copying {upload} to {filename}",
                    lambda: self._fs.copy(self._object(upload), self._object(filename)),
                )
                manifest.pending = None
                add_record(manifest, record)
                self._write(manifest, token)
                for name in (upload, stale):
                    if name is not None:
                        with contextlib.suppress(Exception):
                            self._fs.rm_file(self._object(name))
        except BaseException:
            with contextlib.suppress(Exception):
                self._fs.rm_file(self._object(upload))
            raise
        finally:
            with _locks_guard:
                _uploading.discard(upload)
        return record

    def _upload(self, filename: str, upload: str, write: Callable[[str], None]) -> tuple[int, str]:
        staging = tempfile.mkdtemp(prefix="keras_ckpt-upload-")
        try:
            local = os.path.join(staging, filename)
            write(local)
            with open(local, "rb") as file:
                size, sha256 = sha256_and_size(file)
            _retried(
                f"uploading {filename} to {self.directory}",
                lambda: self._fs.put_file(local, self._object(upload)),
            )
            return size, sha256
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def release(self, keeper: str, filenames: Iterable[str]) -> list[str]:
        names = set(filenames)
        if not names:
            return []
        with self._lock:
            manifest, token = self._read()
            deleted, manifest.trash = drop_keeper(manifest, keeper, names)
            token = self._write(manifest, token)
            if manifest.trash:
                self._empty_trash(manifest, token)
        return deleted

    def set_alias(self, alias: str, target_filename: str) -> str:
        if alias not in ALIASES:
            raise ValueError(f"Argument `alias` must be one of {ALIASES}. Received: {alias!r}")
        with self._lock:
            manifest, token = self._read()
            if manifest.find(target_filename) is None:
                raise ValueError(f"{target_filename!r} is not a committed checkpoint.")
            if manifest.aliases.get(alias) != target_filename:
                manifest.aliases[alias] = target_filename
                self._write(manifest, token)
        return self.path(alias_filename(alias, target_filename))

    def remove_if_empty(self) -> bool:
        with self._lock:
            if self.records() or list_names(self.directory) - {MANIFEST_NAME}:
                return False
            with contextlib.suppress(FileNotFoundError):
                self._fs.rm_file(self._object(MANIFEST_NAME))
        return True

    def close(self) -> None:
        """Nothing to let go of: a remote directory has no writer lock."""

    def recover(self) -> None:
        """Settles what a killed writer left (see the module)."""
        with self._lock:
            manifest, token = self._read(fresh=True)
            changed = manifest.pending is not None
            _resolve_pending(self._fs, manifest, self.directory)
            if changed:
                token = self._write(manifest, token)
            if manifest.trash:
                token = self._empty_trash(manifest, token)
            with _locks_guard:
                in_flight = set(_uploading)
            for name in list_names(self.directory):
                if TEMP_PATTERN.match(name) and name not in in_flight:
                    with contextlib.suppress(FileNotFoundError):
                        self._fs.rm_file(self._object(name))
            if _has_etags(self._fs):
                self._abort_unfinished_uploads(in_flight)

    def _abort_unfinished_uploads(self, in_flight: set[str]) -> None:
        """Aborts the S3 multipart uploads of temporary objects that a killed writer left in
        this directory: S3 lists them nowhere else, and keeps (and bills) their parts until
        they are aborted. Only keys of the temporary pattern directly in the directory.

        Best effort: a store without the call, or credentials without the permission to list
        multipart uploads (``s3:ListBucketMultipartUploads``), get one warning and the
        directory opens as before; a bucket lifecycle rule then cleans up instead.
        """
        bucket, _, key_prefix = self._object(TEMP_PREFIX).partition("/")
        directory_prefix = key_prefix[: -len(TEMP_PREFIX)]
        markers: dict[str, str] = {}
        while True:
            try:
                listing = self._fs.call_s3(
                    "list_multipart_uploads", Bucket=bucket, Prefix=key_prefix, **markers
                )
            except Exception as error:  # noqa: BLE001 - cleaning up is not worth failing for
                warnings.warn(
                    f"keras_ckpt could not list the unfinished uploads of {self.directory} to "
                    f"abort a killed writer's ({type(error).__name__}: {error}); a bucket "
                    "lifecycle rule that aborts incomplete multipart uploads cleans them up.",
                    stacklevel=2,
                )
                return
            for upload in listing.get("Uploads", []):
                name = str(upload["Key"])[len(directory_prefix) :]
                if TEMP_PATTERN.match(name) and "/" not in name and name not in in_flight:
                    with contextlib.suppress(Exception):  # another opener may have aborted it
                        self._fs.call_s3(
                            "abort_multipart_upload",
                            Bucket=bucket,
                            Key=upload["Key"],
                            UploadId=upload["UploadId"],
                        )
            if not listing.get("IsTruncated"):
                return
            markers = {
                "KeyMarker": listing.get("NextKeyMarker", ""),
                "UploadIdMarker": listing.get("NextUploadIdMarker", ""),
            }

    def _read(self, fresh: bool = False) -> tuple[Manifest, Any]:
        """The manifest as this process last read or wrote it (from the store if ``fresh``),
        and the token of that version. This process's stores of the directory share it, so
        deciding a save costs no request; a change by another writer is caught by the
        conditional write that follows."""
        with _locks_guard:
            known = None if fresh else _known.get(self.directory)
        if known is None:
            known = _read_manifest(self._fs, self.directory)
            with _locks_guard:
                _known[self.directory] = known
        manifest, token = known
        return _copy(manifest), token

    def _write(self, manifest: Manifest, token: Any) -> Any:
        try:
            written = _write_manifest(self._fs, self.directory, manifest, token)
        except BaseException:
            with _locks_guard:
                _known.pop(self.directory, None)  # read afresh next time
            raise
        with _locks_guard:
            _known[self.directory] = (_copy(manifest), written)
        return written

    def _delete(self, name: str) -> None:
        path = self._object(name)
        with contextlib.suppress(FileNotFoundError):
            _retried(f"deleting {path}", lambda: self._fs.rm_file(path))

    def _empty_trash(self, manifest: Manifest, token: Any) -> Any:
        listed = {record.filename for record in manifest.records}
        for name in manifest.trash:
            if name not in listed:
                self._delete(name)
        manifest.trash = []
        return self._write(manifest, token)


__all__ = [
    "EXTRAS",
    "ManifestConflictError",
    "check_url",
    "exists",
    "is_url",
    "list_names",
    "local_copy",
    "local_path",
    "object_size",
    "RemoteStore",
    "read_committed",
    "verify",
]
