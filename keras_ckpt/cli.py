"""The ``keras-ckpt`` command line (also ``python -m keras_ckpt``): look at, check, prune,
export and average checkpoint directories, plot their history, and run the demo.

Every command but ``demo`` reads a directory that keras_ckpt wrote (it holds a
``keras_ckpt.json`` manifest): a local path, or the URL of a remote one (``s3://bucket/run``,
any fsspec URL; see ``keras_ckpt.remote``). What the commands write (``export``, ``average``,
``plot``) is written here, to a local path. Exit status: 0 when all is well, 1 when ``verify``
finds a bad checkpoint, 2 on any other error (a missing or damaged directory, an unknown
checkpoint, a bad option), reported as one line on stderr, never a traceback.

Checkpoint directories are untrusted input (downloaded, shared): every name the manifest holds
must be a plain file name in the directory and every file it names a regular file, or the command
refuses the directory before reading, writing or deleting anything. A remote directory's
manifest is checked the same way as it is parsed; an object store holds no links, folders or
pipes, so its objects need no further check.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import re
import shutil
import stat
import sys
import time
import uuid
import warnings
import zipfile
from collections.abc import Sequence
from typing import Any

from keras_ckpt import ranking, remote
from keras_ckpt.policies import AnyOf, KeepBest, KeepLatest, RetentionPolicy
from keras_ckpt.records import (
    BEST_ALIAS,
    KIND_MODEL,
    LATEST_ALIAS,
    MANIFEST_NAME,
    CheckpointRecord,
    Manifest,
    ManifestError,
    is_blob,
    unreferenced,
)
from keras_ckpt.store import (
    CheckpointCorruptedError,
    CheckpointStore,
    Store,
    alias_filename,
    alias_has_file,
    file_sha256,
    local_file,
    read_committed,
    read_manifest,
    verify,
)


class UsageError(Exception):
    """A problem with what the user asked for: printed without a traceback, exit status 2."""


# What reading a damaged manifest, or a command on a damaged directory, can raise: a malformed
# entry (KeyError, TypeError, AttributeError), a bad value (ValueError, the store's
# ManifestError among them), a number out of range (OverflowError), a file that cannot be read
# (OSError), a deeply nested JSON document or a directory another process holds (RuntimeError).
_EXPECTED_ERRORS = (
    ValueError,
    OSError,
    LookupError,
    TypeError,
    AttributeError,
    ArithmeticError,
    RuntimeError,
)


def _failures(directory: str) -> tuple[type[Exception], ...]:
    """What reading or changing ``directory`` may raise that is not a bug of ours: for a remote
    directory anything, since each store's client has errors of its own (botocore's
    ``NoCredentialsError``, say)."""
    return (Exception,) if remote.is_url(directory) else _EXPECTED_ERRORS


def _printable(text: object) -> str:
    """``text`` with every character a terminal would act on (newline, escape, ...) escaped."""
    return "".join(
        char if char.isprintable() else char.encode("unicode_escape").decode("ascii")
        for char in str(text)
    )


def _one_line(text: object) -> str:
    """``text`` as one printable line: runs of whitespace (newlines too) become one space."""
    return _printable(" ".join(str(text).split()))


def _describe(error: BaseException) -> str:
    """An exception as a short phrase for a one-line message."""
    if isinstance(error, KeyError):
        return f"the entry {error.args[0]!r} is missing" if error.args else "an entry is missing"
    text = _one_line(error)
    if isinstance(error, (ValueError, OSError)) and text:
        return text
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class _Parser(argparse.ArgumentParser):
    """Bad options give one line on stderr, in the same form as every other error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {_one_line(message)} (see '{self.prog} --help')\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


_DIRECTORY_HELP = "the checkpoint directory: a path, or a URL such as s3://bucket/run"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="keras-ckpt",
        description=(
            "Look at, check, prune and export keras_ckpt checkpoint directories, local or "
            "remote (any fsspec URL: s3://bucket/run, gs://..., ...)."
        ),
        epilog="Run 'keras-ckpt COMMAND --help' for a command's options.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    ls = commands.add_parser("ls", help="list the committed checkpoints of a directory")
    ls.add_argument("directory", metavar="DIR", help=_DIRECTORY_HELP)
    ls.add_argument("--json", action="store_true", help="print JSON instead of a table")

    show = commands.add_parser(
        "show", help="everything the manifest knows about one checkpoint, and its model summary"
    )
    show.add_argument("directory", metavar="DIR", help=_DIRECTORY_HELP)
    show.add_argument(
        "checkpoint",
        metavar="CHECKPOINT",
        nargs="?",
        default="latest",
        help="a file name, 'best', 'latest' (the default: the newest) or an epoch number",
    )

    check = commands.add_parser(
        "verify", help="check every checkpoint's SHA-256 and that it opens (exit 1 if not)"
    )
    check.add_argument("directory", metavar="DIR", help=_DIRECTORY_HELP)

    prune = commands.add_parser(
        "prune", help="delete checkpoints with the retention policies the callbacks use"
    )
    prune.add_argument("directory", metavar="DIR", help=_DIRECTORY_HELP)
    prune.add_argument("--keep-last", type=_positive_int, help="keep the N newest")
    prune.add_argument("--keep-best", type=_positive_int, help="keep the K best by --monitor")
    prune.add_argument("--monitor", default="val_loss", help="metric for --keep-best")
    prune.add_argument(
        "--mode", choices=ranking.MODES, default="auto", help="direction of --monitor"
    )
    prune.add_argument("--dry-run", action="store_true", help="say what would go; delete nothing")

    export = commands.add_parser(
        "export",
        help="copy one checkpoint out as a standalone .keras (a weights-only one as .weights.h5)",
    )
    export.add_argument("directory", metavar="DIR", help=_DIRECTORY_HELP)
    export.add_argument("output", metavar="OUT.keras|OUT.weights.h5")
    export.add_argument(
        "--which", default="best", help="'best' (the default), 'latest' or an epoch number"
    )
    export.add_argument(
        "--weights",
        choices=("raw", "ema"),
        default="raw",
        help="'raw' (the default): the file as saved; 'ema': the model holding the optimizer's "
        "moving averages (a run with use_ema=True; OUT.keras, a whole-model checkpoint)",
    )

    average = commands.add_parser(
        "average",
        help="average the best or newest checkpoints into one .keras model (a uniform soup)",
    )
    average.add_argument("directory", metavar="DIR", help=_DIRECTORY_HELP)
    average.add_argument("output", metavar="OUT.keras")
    chosen = average.add_mutually_exclusive_group(required=True)
    chosen.add_argument(
        "--best", type=_positive_int, metavar="K", help="the K best checkpoints by --monitor"
    )
    chosen.add_argument("--latest", type=_positive_int, metavar="K", help="the K newest")
    average.add_argument("--monitor", default="val_loss", help="metric for --best")
    average.add_argument(
        "--mode", choices=ranking.MODES, default="auto", help="direction of --monitor"
    )
    average.add_argument("--force", action="store_true", help="replace OUT.keras if it exists")

    plot = commands.add_parser(
        "plot", help="metric history by epoch with the kept checkpoints marked (a PNG)"
    )
    plot.add_argument("directory", metavar="DIR", help=_DIRECTORY_HELP)
    plot.add_argument("-o", "--output", required=True, metavar="FILE.png")
    plot.add_argument(
        "--metric", action="append", help="a metric to plot (repeatable; default: all)"
    )

    demo = commands.add_parser(
        "demo", help="train a tiny model and keep its best checkpoints in ./runs/demo"
    )
    demo.add_argument("--directory", default=os.path.join("runs", "demo"))
    demo.add_argument("--epochs", type=_positive_int, default=8)
    demo.add_argument("--top-k", type=_positive_int, default=3)
    demo.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        return _run(args)
    except UsageError as error:
        message = str(error)
    except KeyboardInterrupt:
        print(f"keras-ckpt {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`keras-ckpt ls DIR | head`): stop quietly, as other tools do,
        # and keep Python from complaining again when it flushes stdout at exit.
        with contextlib.suppress(Exception):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as error:  # noqa: BLE001 - the last line of defence, see below
        # A failure no command foresaw is still a bug of ours, but a user gets one line, not a
        # traceback (the directory may be hostile, and the traceback would help nobody there).
        message = (
            f"unexpected {type(error).__name__}: {error} (this is a bug in keras_ckpt; please "
            "report it with the command that caused it)"
        )
    print(f"keras-ckpt {args.command}: error: {_one_line(message)}", file=sys.stderr)
    return 2


def _run(args: argparse.Namespace) -> int:
    if args.command == "demo":
        from keras_ckpt import demo

        try:
            return demo.main(args.directory, args.epochs, args.top_k, args.seed)
        except ValueError as error:  # an unusable --directory
            raise UsageError(str(error)) from None
    command = {
        "ls": _ls,
        "show": _show,
        "verify": _verify,
        "prune": _prune,
        "export": _export,
        "average": _average,
        "plot": _plot,
    }[args.command]
    return command(args)


# Reading -----------------------------------------------------------------------------------


def _manifest(directory: str) -> tuple[str, Manifest]:
    """The directory's absolute path and its committed manifest, or a ``UsageError`` saying
    what is wrong. Reads only: a crash's leftovers are resolved in memory.

    The store checks every entry of the manifest as it parses it. The command line also refuses
    a directory where a listed name is anything but a regular file (a link, a folder, a pipe),
    before any command reads, exports or deletes there: it is the door through which directories
    from elsewhere come in.

    A URL is read by ``_remote_manifest``; a ``file://`` URL is a local path.
    """
    if remote.is_url(directory):
        return _remote_manifest(directory)
    path = os.path.abspath(remote.local_path(directory))
    if not os.path.isdir(path):
        if os.path.lexists(path):
            raise UsageError(f"{path} is not a directory")
        raise UsageError(f"no directory at {path}")
    manifest_path = os.path.join(path, MANIFEST_NAME)
    if not os.path.lexists(manifest_path):
        raise UsageError(
            f"{path} holds no {MANIFEST_NAME}: it is not a directory keras_ckpt wrote "
            "checkpoints to"
        )
    try:
        for where, name in _listed_files(read_manifest(path)):
            _check_regular_file(path, name, where)
        return path, read_committed(path)
    except ManifestError as error:
        raise UsageError(str(error)) from None
    except _EXPECTED_ERRORS as error:
        raise UsageError(f"cannot read {manifest_path}: {_describe(error)}") from None


def _remote_manifest(directory: str) -> tuple[str, Manifest]:
    """A remote directory's normalized URL and its committed manifest, or a ``UsageError``
    saying what is wrong: a malformed URL, a protocol without its file system, a missing bucket
    or credentials, no manifest there. Reads only: a crash's leftovers are resolved in memory.

    The store checks every entry of the manifest as it parses it, as for a local directory.
    """
    try:
        url = remote.check_url("directory", directory)
    except ValueError as error:
        raise UsageError(str(error)) from None
    try:
        manifest = read_committed(url)
        if manifest.records or manifest.aliases:
            return url, manifest
        # A missing manifest reads as an empty one (as does a missing bucket): say which.
        names = remote.list_names(url)
        if MANIFEST_NAME in names:
            return url, manifest
        absent = _nothing_there(url, names)
    except ManifestError as error:
        raise UsageError(str(error)) from None
    except Exception as error:  # noqa: BLE001 - each store's client has errors of its own
        raise UsageError(f"cannot read {url}: {_describe(error)}") from None
    raise UsageError(absent)


def _nothing_there(url: str, names: set[str]) -> str:
    """Why ``url``, which holds no manifest, is no checkpoint directory."""
    if names:
        return (
            f"{url} holds no {MANIFEST_NAME}: it is not a directory keras_ckpt wrote checkpoints to"
        )
    protocol, _, path = url.partition("://")
    bucket = f"{protocol}://{path.split('/')[0]}"
    if protocol.lower() in remote.EXTRAS and not remote.exists(bucket):
        return f"no bucket {bucket} (or these credentials may not see it)"
    return f"nothing at {url}: it is not a directory keras_ckpt wrote checkpoints to"


def _listed_files(manifest: Manifest) -> list[tuple[str, str]]:
    """Every file name the manifest gives, each with where it stands (``checkpoint #2``, ...)."""
    names = [(f"checkpoint #{i}", r.filename) for i, r in enumerate(manifest.records, start=1)]
    names += [
        (f"the file of alias {alias!r}", alias_filename(alias, target))
        for alias, target in manifest.aliases.items()
        if alias_has_file(target)
    ]
    names += [(f"trash entry #{i}", name) for i, name in enumerate(manifest.trash, start=1)]
    if manifest.pending is not None:
        names.append(("the temporary file of 'pending'", manifest.pending["temp"]))
        names.append(("the record of 'pending'", manifest.pending["record"]["file"]))
    return names


def _check_regular_file(directory: str, name: str, where: str) -> None:
    """Refuses anything but a regular file at ``name`` (a link, a folder, a pipe), unfollowed;
    a missing file is left to the command (``verify`` reports it)."""
    path = os.path.join(directory, name)
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISREG(mode):
        kind = (
            "symbolic link"
            if stat.S_ISLNK(mode)
            else "directory"
            if stat.S_ISDIR(mode)
            else "special file"
        )
        raise UsageError(
            f"{path} ({where}) is a {kind}, not a regular file; a keras_ckpt directory holds "
            "only regular files, so it was changed by hand or is not what it claims"
        )


def _aliases_by_target(manifest: Manifest) -> dict[str, list[str]]:
    names: dict[str, list[str]] = {}
    for alias, target in sorted(manifest.aliases.items()):
        names.setdefault(target, []).append(alias)
    return names


def _find(manifest: Manifest, which: str) -> CheckpointRecord:
    """A checkpoint by file name, alias (``best``, ``latest``) or epoch number."""
    if not manifest.records:
        raise UsageError("the directory holds no committed checkpoint")
    record = manifest.find(which)
    if record is not None:
        return record
    if which in manifest.aliases:
        record = manifest.find(manifest.aliases[which])
        if record is not None:
            return record
    if which == LATEST_ALIAS:
        return manifest.records[-1]
    if re.fullmatch("[0-9]+", which):  # ASCII digits: int() takes "٣" but refuses "²"
        epoch = int(which) if len(which) <= 20 else -1
        in_epoch = [r for r in manifest.records if r.epoch == epoch]
        if in_epoch:
            return in_epoch[-1]
        epochs = sorted({r.epoch for r in manifest.records})
        raise UsageError(
            f"no checkpoint of epoch {which[:20]}{'...' if len(which) > 20 else ''}; epochs "
            f"with checkpoints: {epochs[:20]}{' ...' if len(epochs) > 20 else ''}"
        )
    names = [r.filename for r in manifest.records]
    raise UsageError(
        f"no checkpoint {_printable(repr(which[:80]))}; use a file name, 'best', 'latest' or an "
        f"epoch number. Files: {', '.join(names[:10])}{' ...' if len(names) > 10 else ''}"
    )


def _size(size: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"  # pragma: no cover


def _age(seconds: float) -> str:
    seconds = max(seconds, 0.0)
    for unit, length in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= length:
            return f"{seconds / length:.0f}{unit}"
    return f"{seconds:.0f}s"


def _metrics_text(metrics: dict[str, float]) -> str:
    return " ".join(f"{_printable(name)}={value:.4g}" for name, value in sorted(metrics.items()))


# Commands ----------------------------------------------------------------------------------


def _ls(args: argparse.Namespace) -> int:
    _, manifest = _manifest(args.directory)
    aliases = _aliases_by_target(manifest)
    if args.json:
        rows = [
            {**record.to_json(), "path": record.path, "aliases": aliases.get(record.filename, [])}
            for record in manifest.records
        ]
        print(json.dumps(rows, indent=1))
        return 0
    if not manifest.records:
        print("no committed checkpoints")
        return 0
    now = time.time()
    table = [("FILE", "EPOCH", "STEP", "SIZE", "AGE", "MARKS", "METRICS")]
    for record in manifest.records:
        table.append(
            (
                record.filename,
                str(record.epoch) + ("" if record.batch is None else f"/b{record.batch}"),
                str(record.step),
                _size(record.total_size),
                _age(now - record.time),
                ",".join(aliases.get(record.filename, [])) or "-",
                _metrics_text(record.metrics) or "-",
            )
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]) - 1)]
    for row in table:
        cells = [cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True)]
        print("  ".join([*cells, row[-1]]))
    return 0


def _show(args: argparse.Namespace) -> int:
    _, manifest = _manifest(args.directory)
    record = _find(manifest, args.checkpoint)
    data = record.to_json()
    state = data.pop("state", None)
    data["path"] = record.path
    data["aliases"] = _aliases_by_target(manifest).get(record.filename, [])
    width = max(len(key) for key in data)
    for key, value in data.items():
        if key == "metrics":
            value = _metrics_text(value) or "-"
        elif key == "time":
            value = _time_text(value)
        elif key == "size":
            value = f"{value} bytes ({_size(value)})"
        elif key == "parts":  # the shards of sharded weights, or blobs (dedup): one line each
            total = _size(record.total_size)
            if is_blob(record.parts[0].filename):
                others = {n for r in manifest.records if r is not record for n in r.filenames}
                shared = sum(part.filename in others for part in record.parts)
                what = f"{len(record.parts)} blobs ({shared} shared with other checkpoints)"
            else:
                what = f"{len(record.parts)} shards"
            print(f"{key.ljust(width)}  {what}, {total} with the index")
            for part in record.parts:
                print(f"{''.ljust(width)}  {_printable(part.filename)} ({_size(part.size)})")
            continue
        print(f"{key.ljust(width)}  {_printable(value)}")
    if state:
        print(f"{'resume state'.ljust(width)}  {_printable(_state_text(state))}")
    if record.kind == KIND_MODEL:
        print()
        _print_model_summary(record)
    return 0


def _time_text(seconds: float) -> str:
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))
    except (OverflowError, OSError, ValueError):  # a time no clock reaches
        return f"{seconds} (seconds since 1970)"


def _state_text(state: dict[str, Any]) -> str:
    parts = [f"epoch {state.get('epoch')}", f"batch {state.get('batch')}"]
    if state.get("finished") is not None:
        parts.append(f"finished after {state['finished']} epochs")
    callbacks = state.get("callbacks")
    callbacks = sorted(callbacks) if isinstance(callbacks, dict) else []
    if callbacks:
        parts.append(f"callback states: {', '.join(callbacks)}")
    return "; ".join(parts)


def _print_model_summary(record: CheckpointRecord) -> None:
    import keras

    # Keras opens local files: a remote checkpoint is downloaded, and checked against its
    # SHA-256 (a local one is opened as it is; verify is the command that checks).
    opened: contextlib.AbstractContextManager[str] = (
        local_file(record, verify_checksum=True)
        if remote.is_url(record.path)
        else contextlib.nullcontext(record.path)
    )
    try:
        with opened as path:
            model = keras.saving.load_model(path, compile=False)
    except Exception as error:  # a custom object this process does not know, say
        print(f"(no model summary: {type(error).__name__}: {_one_line(error)})")
        return
    model.summary()


def _verify(args: argparse.Namespace) -> int:
    path, manifest = _manifest(args.directory)
    bad = []
    total = len(manifest.records)
    for index, record in enumerate(manifest.records, start=1):
        problem = _problem(record)
        if problem:
            bad.append(record.filename)
        status = "BAD" if problem else "ok "
        print(f"[{index}/{total}] {status} {record.filename}{': ' + problem if problem else ''}")
    for alias, target in sorted(manifest.aliases.items()):
        problem = _alias_problem(path, manifest, alias, target)
        if problem:
            bad.append(alias)
            print(f"BAD alias {alias}: {problem}")
    if bad:
        print(f"{len(bad)} bad: {', '.join(bad)}")
        return 1
    print(f"all {total} checkpoints verified")
    return 0


def _problem(record: CheckpointRecord) -> str | None:
    """What is wrong with a committed checkpoint file, or ``None``."""
    if remote.is_url(record.path):
        return _remote_problem(record)
    try:
        verify(record)
    except CheckpointCorruptedError as error:
        return _one_line(error)
    except OSError as error:
        return f"cannot be read: {_describe(error)}"
    return _format_problem(record.path)


def _remote_problem(record: CheckpointRecord) -> str | None:
    """``_problem`` for a remote checkpoint, read once: the download is checked against the
    recorded size and SHA-256, then opened (the bytes checked are the bytes opened)."""
    try:
        with local_file(record, verify_checksum=True) as path:
            return _format_problem(path)
    except CheckpointCorruptedError as error:
        return _one_line(error)
    except Exception as error:  # noqa: BLE001 - each store's client has errors of its own
        return f"cannot be read: {_describe(error)}"


def _format_problem(path: str) -> str | None:
    """Why the checkpoint file at ``path`` does not open as what its extension says, or
    ``None``."""
    import h5py

    try:
        if path.endswith(".keras"):
            with zipfile.ZipFile(path) as archive:
                names = set(archive.namelist())
                missing = {"config.json", "model.weights.h5"} - names
                if missing:
                    return f"the archive lacks {', '.join(sorted(missing))}"
                with archive.open("model.weights.h5") as weights, h5py.File(weights, "r"):
                    pass
        elif path.endswith(".h5"):
            with h5py.File(path, "r"):
                pass
    except Exception as error:
        return f"does not open: {_one_line(error)}"
    return None


def _alias_problem(directory: str, manifest: Manifest, alias: str, target: str) -> str | None:
    record = manifest.find(target)
    if record is None:
        return f"points at {target}, which is not a committed checkpoint"
    if remote.is_url(directory) or not alias_has_file(target):
        return None  # a remote directory's aliases, a sharded one's: in the manifest alone
    alias_path = os.path.join(directory, alias_filename(alias, target))
    if manifest.find(os.path.basename(alias_path)) is not None:
        return None  # a checkpoint of its own has that name; the alias lives in the manifest
    try:
        if (
            not os.path.samefile(alias_path, record.path)
            and file_sha256(alias_path) != record.sha256
        ):
            return f"{os.path.basename(alias_path)} differs from {target}"
    except FileNotFoundError:
        return f"{os.path.basename(alias_path)} is missing"
    except OSError as error:
        return f"{os.path.basename(alias_path)} cannot be read: {_describe(error)}"
    return None


def _prune(args: argparse.Namespace) -> int:
    """Deletes through the directory's store. A local one takes the writer lock, so it is
    refused while a run writes there; an object store has no lock: a remote directory is
    pruned while no run writes into it (on S3 a clash is refused, by the conditional manifest
    writes, rather than lost; elsewhere nothing notices it)."""
    path, manifest = _manifest(args.directory)
    if args.keep_last is None and args.keep_best is None:
        raise UsageError("say what to keep: --keep-last N and/or --keep-best K")
    policies: list[RetentionPolicy] = []
    if args.keep_last is not None:
        policies.append(KeepLatest(args.keep_last))
    if args.keep_best is not None:
        mode = ranking.resolve_mode(args.monitor, args.mode)
        if mode is None:
            raise UsageError(
                f"cannot tell whether {args.monitor!r} is better high or low; pass --mode min "
                "or --mode max"
            )
        present = {name for record in manifest.records for name in record.metrics}
        if args.monitor not in present:
            raise UsageError(
                f"no checkpoint has the metric {args.monitor!r}; metrics present: {sorted(present)}"
            )
        policies.append(KeepBest(args.keep_best, args.monitor, mode))
    flags = AnyOf(*policies).keep(manifest.records)
    protected = set(manifest.aliases.values())
    dropped = [
        record
        for record, keep in zip(manifest.records, flags, strict=True)
        if not keep and record.filename not in protected
    ]
    kept = len(manifest.records) - len(dropped)
    spared = [
        r.filename
        for r, keep in zip(manifest.records, flags, strict=True)
        if not keep and r.filename in protected
    ]
    store: Store | None = None
    if not args.dry_run:
        _check_before_deleting(path, manifest, dropped)
        try:  # takes the writer lock: refused, before a word of the plan, while a run writes
            # (a remote store has no lock, but writes a probe: refused here without the right
            # to write, and it settles what a killed writer left, as opening a local one does)
            store = remote.RemoteStore(path) if remote.is_url(path) else CheckpointStore(path)
        except _failures(path) as error:
            raise UsageError(f"prune stopped with nothing deleted: {_describe(error)}") from None
    if spared:
        print(f"keeping {', '.join(spared)}: the best/latest alias points at it")
    verb = "would delete" if args.dry_run else "deleting"
    for record in dropped:
        print(f"{verb} {record.filename} ({_size(record.total_size)})")
    freed = _bytes_freed(manifest, dropped)
    if args.dry_run:
        print(f"dry run: {len(dropped)} would go ({_size(freed)}), {kept} stay; nothing deleted")
        return 0
    assert store is not None
    deleted = []
    try:
        for record in dropped:
            # A record that no callback keeps (a manifest written by hand) goes on any release.
            for keeper in record.kept_by or ("keras-ckpt prune",):
                deleted += store.release(keeper, [record.filename])
    except _failures(path) as error:
        done = f"after deleting {', '.join(deleted)}" if deleted else "with nothing deleted"
        raise UsageError(f"prune stopped {done}: {_describe(error)}") from None
    freed = _bytes_freed(manifest, [r for r in dropped if r.filename in deleted])
    print(f"deleted {len(deleted)} ({_size(freed)}), {len(manifest.records) - len(deleted)} kept")
    return 0


def _bytes_freed(manifest: Manifest, dropped: list[CheckpointRecord]) -> int:
    """The bytes deleting ``dropped`` frees: each file once, and not the blobs (weights stored
    once) that a checkpoint which stays still lists."""
    sizes = {record.filename: record.size for record in dropped}
    sizes.update((part.filename, part.size) for record in dropped for part in record.parts)
    gone = {r.filename for r in dropped}
    remaining = [record for record in manifest.records if record.filename not in gone]
    return sum(sizes[name] for name in unreferenced(list(sizes), remaining))


def _check_before_deleting(
    directory: str, manifest: Manifest, dropped: list[CheckpointRecord]
) -> None:
    """Refuses to prune a directory in doubt: a listed file missing or of the wrong size, or a
    checkpoint that stays not matching its checksum (deleting the others would lose the last
    good copies)."""
    going = {record.filename for record in dropped}
    failures = _checkpoint_failures(directory)
    for record in manifest.records:
        try:
            if record.filename in going and remote.is_url(record.path):
                _check_remote_size(record)
            elif record.filename in going:
                if not os.path.lexists(record.path):
                    raise CheckpointCorruptedError(f"Checkpoint {record.path} is missing.")
                if os.path.getsize(record.path) != record.size:
                    raise CheckpointCorruptedError(
                        f"Checkpoint {record.path} does not have the size its manifest recorded."
                    )
            else:
                verify(record)
        except failures as error:
            raise UsageError(
                f"{_describe(error)} Nothing deleted: prune deletes only from a directory whose "
                "checkpoints are all there and intact; run 'keras-ckpt verify' to see the rest"
            ) from None


def _checkpoint_failures(directory: str) -> tuple[type[Exception], ...]:
    """What checking a checkpoint of ``directory`` raises when the checkpoint, not our code, is
    at fault: damage or a failed read (for a remote directory, any error of the store's
    client)."""
    return (Exception,) if remote.is_url(directory) else (CheckpointCorruptedError, OSError)


def _check_remote_size(record: CheckpointRecord) -> None:
    """That a remote checkpoint about to be deleted is there with its recorded size (its bytes
    are not downloaded: it goes anyway)."""
    try:
        size = remote.object_size(record.path)
    except FileNotFoundError:
        raise CheckpointCorruptedError(f"Checkpoint {record.path} is missing.") from None
    if size != record.size:
        raise CheckpointCorruptedError(
            f"Checkpoint {record.path} does not have the size its manifest recorded."
        )


def _export(args: argparse.Namespace) -> int:
    path, manifest = _manifest(args.directory)
    which = args.which
    if which == BEST_ALIAS and BEST_ALIAS not in manifest.aliases:
        raise UsageError("the directory has no best checkpoint; use --which latest or an epoch")
    record = _find(manifest, which)
    weights_out = args.output.endswith(".weights.h5")
    if not args.output.endswith(".keras") and not weights_out:
        raise UsageError(
            "the output must end in .keras (or .weights.h5 for a weights-only checkpoint), "
            f"got {args.output!r}"
        )
    _check_local_output(args.output)
    if record.kind != KIND_MODEL and not weights_out:
        raise UsageError(
            f"{record.filename} holds weights only, which cannot make a standalone model; "
            "export it as OUT.weights.h5, export a whole-model checkpoint "
            "(save_weights_only=False), or load the weights into your model and call model.save"
        )
    if weights_out and args.weights == "ema":
        raise UsageError(
            "--weights ema writes a whole model holding the moving averages: give OUT.keras "
            "and a whole-model checkpoint"
        )
    if weights_out and record.kind == KIND_MODEL:
        raise UsageError(f"{record.filename} is a whole model; export it as OUT.keras")
    if weights_out and record.filename.endswith(".weights.json"):
        raise UsageError(
            f"{record.filename} is sharded weights, which export does not copy; load it with "
            "keras_ckpt.load_checkpoint(record, model) or model.load_weights(<index>)"
        )
    with contextlib.ExitStack() as download:
        try:
            if weights_out:
                from keras_ckpt.loading import checkpoint_file

                # Weights stored once (dedup) are assembled into a standard .weights.h5 file.
                source = download.enter_context(checkpoint_file(record, verify_checksum=True))
            elif remote.is_url(record.path):
                # One download, checked against the recorded size and SHA-256, is what is copied.
                source = download.enter_context(local_file(record, verify_checksum=True))
            else:
                verify(record)
                source = record.path
        except _checkpoint_failures(path) as error:
            raise UsageError(f"{_describe(error)} Nothing exported") from None
        output = _export_target(args.output, path)
        averaged = None
        if args.weights == "ema":
            averaged = _with_averages(dataclasses.replace(record, path=source), path)
        # Keras saves only to a name ending in .keras.
        temporary = f"{output}.tmp-{uuid.uuid4().hex[:8]}" + (
            ".keras" if averaged is not None else ""
        )
        try:
            # Missing parent folders are created (as export always did): the path says where.
            os.makedirs(os.path.dirname(output), exist_ok=True)
            if averaged is None:
                shutil.copyfile(source, temporary)
            else:
                averaged.save(temporary)
            os.replace(temporary, output)
        except OSError as error:
            raise UsageError(f"cannot write {output}: {_describe(error)}") from None
        finally:
            with contextlib.suppress(OSError):
                os.remove(temporary)
    averages = " with the moving averages as its weights" if args.weights == "ema" else ""
    print(f"exported {record.filename} (epoch {record.epoch}) to {output}{averages}")
    return 0


def _with_averages(record: CheckpointRecord, directory: str) -> Any:
    """The checkpoint's model (verified already) with its optimizer's moving averages as its
    weights, for ``export --weights ema``."""
    from keras_ckpt.loading import load_checkpoint

    try:
        return load_checkpoint(record, verify_checksum=False, weights="ema")
    except _checkpoint_failures(directory) + (ValueError,) as error:
        raise UsageError(f"{_describe(error)} Nothing exported") from None


def _average(args: argparse.Namespace) -> int:
    path, manifest = _manifest(args.directory)
    which, k = ("best", args.best) if args.best is not None else ("latest", args.latest)
    if not args.output.endswith(".keras"):
        raise UsageError(f"the output must end in .keras, got {args.output!r}")
    _check_local_output(args.output)
    output = _export_target(args.output, path)
    if os.path.lexists(output) and not args.force:
        raise UsageError(f"{output} exists; pass --force to replace it")
    mode = ranking.resolve_mode(args.monitor, args.mode)
    if which == "best" and mode is None:
        raise UsageError(
            f"--mode auto cannot tell from the name {args.monitor!r} whether higher is better; "
            "pass --mode min or --mode max"
        )
    chosen = ranking.checkpoints_to_average(manifest.records, which, k, args.monitor, mode)
    if not chosen:
        if which == "best" and manifest.records:
            raise UsageError(f"no checkpoint has the metric {args.monitor!r}; try --latest")
        raise UsageError("the directory holds no committed checkpoint")
    weights_only = [record.filename for record in chosen if record.kind != KIND_MODEL]
    if weights_only:
        raise UsageError(
            f"{', '.join(weights_only[:5])} hold{'s' if len(weights_only) == 1 else ''} weights "
            "only, which cannot make a standalone model; average whole-model checkpoints "
            "(save_weights_only=False), or call keras_ckpt.average_checkpoints(DIR, "
            "model=model) and model.save"
        )
    from keras_ckpt.averaging import average_checkpoints

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # fewer than K: the line below says how many
            model = average_checkpoints(path, which, k, monitor=args.monitor, mode=args.mode)
    except _checkpoint_failures(path) + (ValueError,) as error:
        raise UsageError(f"{_describe(error)} Nothing written") from None
    temporary = f"{output}.tmp-{uuid.uuid4().hex[:8]}.keras"
    try:
        os.makedirs(os.path.dirname(output), exist_ok=True)
        model.save(temporary)
        os.replace(temporary, output)
    except OSError as error:
        raise UsageError(f"cannot write {output}: {_describe(error)}") from None
    finally:
        with contextlib.suppress(OSError):
            os.remove(temporary)
    names = ", ".join(f"{record.filename} (epoch {record.epoch})" for record in chosen)
    fewer = f" (asked for {k}; the directory has only {len(chosen)})" if len(chosen) < k else ""
    print(f"averaged {len(chosen)} checkpoint(s) into {output}{fewer}: {names}")
    return 0


def _check_local_output(output: str) -> None:
    """Refuses a URL where a command writes a file: what it writes is written here."""
    if remote.is_url(output):
        raise UsageError(
            f"the output must be a local path, got the URL {_printable(repr(output))}; write "
            "it here and copy it there with that storage's own tools"
        )


def _export_target(output: str, directory: str) -> str:
    """The absolute path to export to; refuses a folder and any file of the checkpoint
    directory (replacing a checkpoint or an alias there would break the directory)."""
    path = os.path.abspath(output)
    if os.path.isdir(path):
        raise UsageError(f"{path} is a directory; give the path of the .keras file to write")
    parent = os.path.dirname(path)
    if remote.is_url(directory):
        return path  # a local path is never a file of a remote directory
    with contextlib.suppress(OSError):
        if os.path.lexists(path) and os.path.samefile(parent, directory):
            raise UsageError(
                f"{path} is a file of the checkpoint directory; export to a path outside it"
            )
    return path


def _plot(args: argparse.Namespace) -> int:
    path, manifest = _manifest(args.directory)
    if not manifest.records:
        raise UsageError("the directory holds no committed checkpoint")
    from keras_ckpt.plots import history_of, plot_directory

    try:
        history_of(manifest)
    except _EXPECTED_ERRORS as error:  # the History a resume checkpoint carries is damaged
        raise UsageError(f"cannot read the history kept in {path}: {_describe(error)}") from None
    _check_local_output(args.output)
    output = os.path.abspath(args.output)
    if os.path.isdir(output):
        raise UsageError(f"{output} is a directory; give the path of the .png file to write")
    try:
        plot_directory(manifest, output, metrics=args.metric)
    except OSError as error:
        raise UsageError(f"cannot write {output}: {_describe(error)}") from None
    except (ValueError, ImportError) as error:  # nothing to plot, no matplotlib
        raise UsageError(str(error)) from None
    print(f"wrote {os.path.abspath(args.output)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
