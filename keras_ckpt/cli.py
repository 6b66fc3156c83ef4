"""The ``keras-ckpt`` command line (also ``python -m keras_ckpt``): look at, check, prune and
export checkpoint directories, plot their history, and run the demo.

Every command but ``demo`` reads a directory that keras_ckpt wrote (it holds a
``keras_ckpt.json`` manifest). Exit status: 0 when all is well, 1 when ``verify`` finds a bad
checkpoint, 2 on a usage error (a missing directory, an unknown checkpoint).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import time
import uuid
import zipfile
from collections.abc import Sequence
from typing import Any

from keras_ckpt import ranking
from keras_ckpt.policies import AnyOf, KeepBest, KeepLatest
from keras_ckpt.records import (
    BEST_ALIAS,
    KIND_MODEL,
    LATEST_ALIAS,
    MANIFEST_NAME,
    CheckpointRecord,
    Manifest,
)
from keras_ckpt.store import (
    CheckpointCorruptedError,
    CheckpointStore,
    alias_filename,
    file_sha256,
    read_committed,
    verify,
)


class UsageError(Exception):
    """A problem with what the user asked for: printed without a traceback, exit status 2."""


def _printable(text: object) -> str:
    """``text`` with every character a terminal would act on (newline, escape, ...) escaped."""
    return "".join(
        char if char.isprintable() else char.encode("unicode_escape").decode("ascii")
        for char in str(text)
    )


def _one_line(text: object) -> str:
    """``text`` as one printable line: runs of whitespace (newlines too) become one space."""
    return _printable(" ".join(str(text).split()))


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


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="keras-ckpt",
        description="Look at, check, prune and export keras_ckpt checkpoint directories.",
        epilog="Run 'keras-ckpt COMMAND --help' for a command's options.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    ls = commands.add_parser("ls", help="list the committed checkpoints of a directory")
    ls.add_argument("directory", metavar="DIR")
    ls.add_argument("--json", action="store_true", help="print JSON instead of a table")

    show = commands.add_parser(
        "show", help="everything the manifest knows about one checkpoint, and its model summary"
    )
    show.add_argument("directory", metavar="DIR")
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
    check.add_argument("directory", metavar="DIR")

    prune = commands.add_parser(
        "prune", help="delete checkpoints with the retention policies the callbacks use"
    )
    prune.add_argument("directory", metavar="DIR")
    prune.add_argument("--keep-last", type=_positive_int, help="keep the N newest")
    prune.add_argument("--keep-best", type=_positive_int, help="keep the K best by --monitor")
    prune.add_argument("--monitor", default="val_loss", help="metric for --keep-best")
    prune.add_argument(
        "--mode", choices=ranking.MODES, default="auto", help="direction of --monitor"
    )
    prune.add_argument("--dry-run", action="store_true", help="say what would go; delete nothing")

    export = commands.add_parser("export", help="copy one checkpoint out as a standalone .keras")
    export.add_argument("directory", metavar="DIR")
    export.add_argument("output", metavar="OUT.keras")
    export.add_argument(
        "--which", default="best", help="'best' (the default), 'latest' or an epoch number"
    )

    plot = commands.add_parser(
        "plot", help="metric history by epoch with the kept checkpoints marked (a PNG)"
    )
    plot.add_argument("directory", metavar="DIR")
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
        "plot": _plot,
    }[args.command]
    return command(args)


# Reading -----------------------------------------------------------------------------------


def _manifest(directory: str) -> tuple[str, Manifest]:
    path = os.path.abspath(directory)
    if not os.path.isdir(path):
        raise UsageError(f"no directory at {path}")
    if not os.path.exists(os.path.join(path, MANIFEST_NAME)):
        raise UsageError(
            f"{path} holds no {MANIFEST_NAME}: it is not a directory keras_ckpt wrote "
            "checkpoints to"
        )
    try:
        return path, read_committed(path)
    except ValueError as error:
        raise UsageError(str(error)) from None


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
    if which.isdigit():
        in_epoch = [r for r in manifest.records if r.epoch == int(which)]
        if in_epoch:
            return in_epoch[-1]
        epochs = sorted({r.epoch for r in manifest.records})
        raise UsageError(f"no checkpoint of epoch {which}; epochs with checkpoints: {epochs}")
    names = [r.filename for r in manifest.records]
    raise UsageError(
        f"no checkpoint {which!r}; use a file name, 'best', 'latest' or an epoch number. "
        f"Files: {', '.join(names[:10])}{' ...' if len(names) > 10 else ''}"
    )


def _size(size: int) -> str:
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
    return " ".join(f"{name}={value:.4g}" for name, value in sorted(metrics.items()))


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
                _size(record.size),
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
            value = f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(value))}"
        elif key == "size":
            value = f"{value} bytes ({_size(value)})"
        print(f"{key.ljust(width)}  {value}")
    if state:
        print(f"{'resume state'.ljust(width)}  {_state_text(state)}")
    if record.kind == KIND_MODEL:
        print()
        _print_model_summary(record)
    return 0


def _state_text(state: dict[str, Any]) -> str:
    parts = [f"epoch {state.get('epoch')}", f"batch {state.get('batch')}"]
    if state.get("finished") is not None:
        parts.append(f"finished after {state['finished']} epochs")
    callbacks = sorted(state.get("callbacks", {}))
    if callbacks:
        parts.append(f"callback states: {', '.join(callbacks)}")
    return "; ".join(parts)


def _print_model_summary(record: CheckpointRecord) -> None:
    import keras

    try:
        model = keras.saving.load_model(record.path, compile=False)
    except Exception as error:  # a custom object this process does not know, say
        print(f"(no model summary: {type(error).__name__}: {error})")
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
    try:
        verify(record)
    except CheckpointCorruptedError as error:
        return str(error)
    import h5py

    try:
        if record.path.endswith(".keras"):
            with zipfile.ZipFile(record.path) as archive:
                names = set(archive.namelist())
                missing = {"config.json", "model.weights.h5"} - names
                if missing:
                    return f"the archive lacks {', '.join(sorted(missing))}"
                with archive.open("model.weights.h5") as weights, h5py.File(weights, "r"):
                    pass
        elif record.path.endswith(".h5"):
            with h5py.File(record.path, "r"):
                pass
    except Exception as error:
        return f"does not open: {error}"
    return None


def _alias_problem(directory: str, manifest: Manifest, alias: str, target: str) -> str | None:
    record = manifest.find(target)
    if record is None:
        return f"points at {target}, which is not a committed checkpoint"
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
    return None


def _prune(args: argparse.Namespace) -> int:
    path, manifest = _manifest(args.directory)
    if args.keep_last is None and args.keep_best is None:
        raise UsageError("say what to keep: --keep-last N and/or --keep-best K")
    policies = []
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
    if spared:
        print(f"keeping {', '.join(spared)}: the best/latest alias points at it")
    verb = "would delete" if args.dry_run else "deleting"
    for record in dropped:
        print(f"{verb} {record.filename} ({_size(record.size)})")
    freed = sum(record.size for record in dropped)
    if args.dry_run:
        print(f"dry run: {len(dropped)} would go ({_size(freed)}), {kept} stay; nothing deleted")
        return 0
    store = CheckpointStore(path)
    for record in dropped:
        for keeper in record.kept_by:
            store.release(keeper, [record.filename])
    print(f"deleted {len(dropped)} ({_size(freed)}), {kept} kept")
    return 0


def _export(args: argparse.Namespace) -> int:
    _, manifest = _manifest(args.directory)
    which = args.which
    if which == BEST_ALIAS and BEST_ALIAS not in manifest.aliases:
        raise UsageError("the directory has no best checkpoint; use --which latest or an epoch")
    record = _find(manifest, which)
    if not args.output.endswith(".keras"):
        raise UsageError(f"the output must end in .keras, got {args.output!r}")
    if record.kind != KIND_MODEL:
        raise UsageError(
            f"{record.filename} holds weights only, which cannot make a standalone model; "
            "export a whole-model checkpoint (save_weights_only=False), or load the weights into "
            "your model and call model.save"
        )
    try:
        verify(record)
    except CheckpointCorruptedError as error:
        print(f"keras-ckpt export: {error}", file=sys.stderr)
        return 1
    output = os.path.abspath(args.output)
    os.makedirs(os.path.dirname(output), exist_ok=True)
    temporary = f"{output}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        shutil.copyfile(record.path, temporary)
        os.replace(temporary, output)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    print(f"exported {record.filename} (epoch {record.epoch}) to {output}")
    return 0


def _plot(args: argparse.Namespace) -> int:
    _, manifest = _manifest(args.directory)
    if not manifest.records:
        raise UsageError("the directory holds no committed checkpoint")
    from keras_ckpt.plots import plot_directory

    try:
        plot_directory(manifest, args.output, metrics=args.metric)
    except ValueError as error:
        raise UsageError(str(error)) from None
    print(f"wrote {os.path.abspath(args.output)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
