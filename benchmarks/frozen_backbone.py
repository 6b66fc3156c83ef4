"""Benchmark 7: checkpoints of a fine-tuning run with a frozen backbone, plain files against
``dedup=True``: disk bytes per checkpoint, stall per save and whole-fit time.

For each model size (a frozen Dense backbone holding 95-98% of the parameters under a small
trainable head, Adam), trains the model once without a callback and once with each
checkpointing callback, saving every epoch into a fresh directory and keeping every checkpoint
(``ResumeFromLatest`` keeps its newest 2 by default; here ``keep_last=epochs``). Each keras_ckpt
callback runs without dedup (a ``.weights.h5`` per checkpoint: "before") and with
``dedup=True`` (an index per checkpoint and content-addressed blobs, the frozen ones written
once: "after"). The stall of a save is the time spent in the callback's epoch hooks, epochs 2
to N; the floor is copying every variable to host memory. After the fit: the directory's bytes
on disk (hard links counted once; manifest, lock file and aliases included) and, beside them,
the files' apparent sizes; per checkpoint, that divided by the checkpoints kept, and its ratio
to one full ``.weights.h5`` (``model.save_weights``: weights and Adam state). ``fit`` times are
against the mean of two fits without a callback, one before the variants and one after. With
``--rounds R`` every variant runs R times, interleaved: stall is the median over all saves, fit
time the median of the R fits.

Target (the issue): N checkpoints take at most 1.2 x one full checkpoint + N x the trainable
part. The trainable part is printed both ways: the head's weights alone, and the head's weights
with the optimizer's variables (Adam's slots change every step, so no checkpoint can share them).

Run: python benchmarks/frozen_backbone.py [--sizes small,large] [--epochs 6] [--rounds 1]
[--epoch-seconds S]
(KERAS_BACKEND picks the backend; the default is TensorFlow.) Both sizes take about 3 minutes
on a 2-core CPU.
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from common import (  # noqa: E402
    FROZEN_SIZES,
    describe_machine,
    disk_bytes,
    frozen_backbone,
    host_copy_seconds,
    stall_arguments,
    state_bytes,
    timed_epoch_hooks,
    trained_once,
)

import keras_ckpt  # noqa: E402

NO_CALLBACK = "no callback"
NO_CALLBACK_AGAIN = "no callback, again"


def variants(
    directory: str, epochs: int
) -> dict[str, tuple[str, Callable[[], keras.callbacks.Callback | None]]]:
    """name -> (its directory, a factory of the callback)."""

    def path(name: str) -> str:
        return os.path.join(directory, name)

    return {
        NO_CALLBACK: (path("none"), lambda: None),
        "keras ModelCheckpoint .weights.h5": (
            path("k1"),
            lambda: keras.callbacks.ModelCheckpoint(
                path("k1/e{epoch}.weights.h5"), save_weights_only=True
            ),
        ),
        "keras_ckpt ModelCheckpoint .weights.h5": (
            path("c1"),
            lambda: keras_ckpt.ModelCheckpoint(
                path("c1/e{epoch}.weights.h5"), save_weights_only=True
            ),
        ),
        "keras_ckpt ModelCheckpoint dedup": (
            path("c2"),
            lambda: keras_ckpt.ModelCheckpoint(
                path("c2/e{epoch}.weights.dedup.json"), save_weights_only=True, dedup=True
            ),
        ),
        "keras_ckpt IntervalCheckpoint": (
            path("c3"),
            lambda: keras_ckpt.IntervalCheckpoint(
                path("c3"), every_epochs=1, save_weights_only=True
            ),
        ),
        "keras_ckpt IntervalCheckpoint dedup": (
            path("c4"),
            lambda: keras_ckpt.IntervalCheckpoint(
                path("c4"), every_epochs=1, save_weights_only=True, dedup=True
            ),
        ),
        "keras_ckpt ResumeFromLatest": (
            path("c5"),
            lambda: keras_ckpt.ResumeFromLatest(path("c5"), keep_last=epochs),
        ),
        "keras_ckpt ResumeFromLatest dedup": (
            path("c6"),
            lambda: keras_ckpt.ResumeFromLatest(path("c6"), keep_last=epochs, dedup=True),
        ),
        NO_CALLBACK_AGAIN: (path("none2"), lambda: None),
    }


def callback_less(name: str) -> bool:
    return name in (NO_CALLBACK, NO_CALLBACK_AGAIN)


def checkpoints_kept(name: str, directory: str) -> int:
    if name.startswith("keras "):
        return sum(n.endswith(".weights.h5") for n in os.listdir(directory))
    return len(keras_ckpt.list_checkpoints(directory))


def nbytes(variables: list[keras.Variable]) -> int:
    return sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in variables)


def run_size(size: str, epochs: int, epoch_seconds: float, rounds: int) -> None:
    width, _, batch = FROZEN_SIZES[size]
    model, x, y = trained_once(size, epoch_seconds, FROZEN_SIZES, frozen_backbone)
    samples = len(x)
    frozen = nbytes(model.non_trainable_weights)
    head = nbytes(model.trainable_weights)
    head_with_slots = head + nbytes(model.optimizer.variables)
    floor = host_copy_seconds(model)
    print(
        f"\n## {size}: frozen Dense 256-{width}-{width} under a trainable head {width}-64-10, "
        f"{model.count_params() / 1e6:.2f}M parameters, {frozen / (frozen + head):.1%} of them "
        f"frozen; {state_bytes(model) / 1e6:.1f} MB of weights and optimizer state; "
        f"{samples // batch} steps of {batch} per epoch, {epochs} epochs, {rounds} round(s)"
    )
    print(f"floor (all variables to host memory): {floor * 1e3:.1f} ms")
    stalls: dict[str, list[float]] = {}
    fits: dict[str, list[float]] = {}
    disk: dict[str, tuple[int, int, int]] = {}  # name -> (kept, bytes on disk, apparent bytes)
    with tempfile.TemporaryDirectory() as directory:
        full_path = os.path.join(directory, "full.weights.h5")
        model.save_weights(full_path)
        full_info = os.stat(full_path)
        full, full_apparent = full_info.st_blocks * 512, full_info.st_size
        os.remove(full_path)
        for _ in range(rounds):
            for name, (folder, make) in variants(directory, epochs).items():
                os.makedirs(folder)
                callback = make()
                per_epoch: list[float] = []
                callbacks = []
                if callback is not None:
                    timed_epoch_hooks(callback, per_epoch)
                    callbacks.append(callback)
                start = time.perf_counter()
                model.fit(x, y, batch_size=batch, epochs=epochs, verbose=0, callbacks=callbacks)
                fits.setdefault(name, []).append(time.perf_counter() - start)
                stalls.setdefault(name, []).extend(per_epoch[1:])
                kept = checkpoints_kept(name, folder) if callback is not None else 0
                disk[name] = (kept, disk_bytes(folder), disk_bytes(folder, apparent=True))
                shutil.rmtree(folder)
    rows = [
        (name, statistics.median(stalls[name] or [0.0]), statistics.median(fits[name]), *disk[name])
        for name in fits
    ]
    print(
        f"one full checkpoint (model.save_weights): {full / 1e6:.3f} MB on disk "
        f"({full_apparent:,} bytes); trainable part: head weights {head:,} bytes, "
        f"with the optimizer's variables {head_with_slots:,} bytes"
    )
    # The mean of the fits without a callback before the variants and after them (the machine's
    # speed drifts within a run).
    baseline = (rows[0][2] + rows[-1][2]) / 2
    print(
        f"{'variant':<40} {'stall/save':>10} {'x floor':>7} {'fit s':>6} {'fit vs none':>11} "
        f"{'kept':>4} {'dir MB':>8} {'apparent MB':>11} {'MB/ckpt':>8} {'/ full':>6}"
    )
    for name, stall, seconds, kept, used, apparent in rows:
        if callback_less(name):
            print(f"{name:<40} {'':>10} {'':>7} {seconds:>6.2f}")
            continue
        print(
            f"{name:<40} {stall * 1e3:>8.1f}ms {stall / floor:>7.2f} {seconds:>6.2f} "
            f"{seconds / baseline - 1:>+11.1%} {kept:>4} {used / 1e6:>8.2f} "
            f"{apparent / 1e6:>11.2f} {used / kept / 1e6:>8.3f} {used / kept / full:>6.3f}"
        )
    for label, trainable in (("head weights", head), ("head weights + optimizer", head_with_slots)):
        budget = 1.2 * full + epochs * trainable
        figures = [
            f"{name.removeprefix('keras_ckpt ')} {used / 1e6:.3f} MB ({used / budget:.2f}, "
            + ("within)" if used <= budget else "over)")
            for name, _, _, _, used, _ in rows
            if name.endswith("dedup")
        ]
        print(
            f"budget, trainable part = {label}: 1.2 x {full / 1e6:.3f} + {epochs} x "
            f"{trainable / 1e6:.3f} = {budget / 1e6:.3f} MB; " + "; ".join(figures)
        )


def main() -> None:
    parser = stall_arguments(__doc__.splitlines()[0], sizes="small,large", rounds=True)
    args = parser.parse_args()
    print(f"machine: {describe_machine()}")
    print(
        "stall/save: median time in the callback's epoch hooks per save (epochs 2..N); dir MB: "
        "the directory on disk after the fit, hard links once; MB/ckpt: dir MB / kept; "
        "/ full: that / one full .weights.h5"
    )
    for size in args.sizes.split(","):
        run_size(size.strip(), args.epochs, args.epoch_seconds, args.rounds)


if __name__ == "__main__":
    main()
