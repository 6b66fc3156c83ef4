"""Benchmarks 1 and 2: how long a save blocks the training thread, and what checkpointing every
epoch costs a whole ``fit``, keras_ckpt against Keras's own callbacks in the same process.

For each model size, trains the model once without a callback and once with each checkpointing
callback (saving every epoch). The stall of a save is the time spent in the callback's epoch
hooks (where every save happens); the first epoch is left out (files and stores are created
then). Also measured: the floor (copying every variable to host memory), the whole-fit time
against no callback, and the peak resident memory above the level before ``fit``.

Targets: async stall at most 2x the floor and at least 5x lower than Keras's ModelCheckpoint
(issues 6 and 17, the latter on the large model for .weights.h5, .keras and ResumeFromLatest);
whole-fit overhead at most Keras's ModelCheckpoint's plus 5 percentage points (issue 17), which
takes several rounds to tell from noise on a small machine.

Run: python benchmarks/save_stall.py [--sizes small,large] [--epochs 6] [--epoch-seconds S]
[--rounds R] [--only 'ModelCheckpoint .keras,ResumeFromLatest']
(KERAS_BACKEND picks the backend; the default is TensorFlow.) On a GPU an epoch of the default
data lasts milliseconds, so the next save always waits for the previous write; --epoch-seconds
repeats the data until an epoch without a callback lasts at least S seconds.
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
from common import (  # noqa: E402
    SIZES,
    PeakMemory,
    describe_machine,
    host_copy_seconds,
    stall_arguments,
    state_bytes,
    timed_epoch_hooks,
    trained_once,
)

import keras_ckpt  # noqa: E402


def variants(directory: str) -> dict[str, Callable[[], keras.callbacks.Callback | None]]:
    def path(name: str) -> str:
        return os.path.join(directory, name)

    return {
        "no callback": lambda: None,
        "keras ModelCheckpoint .weights.h5": lambda: keras.callbacks.ModelCheckpoint(
            path("k1/m.weights.h5"), save_weights_only=True
        ),
        "keras ModelCheckpoint .keras": lambda: keras.callbacks.ModelCheckpoint(path("k2/m.keras")),
        "keras BackupAndRestore": lambda: keras.callbacks.BackupAndRestore(path("k3")),
        "keras_ckpt ModelCheckpoint .weights.h5 async": lambda: keras_ckpt.ModelCheckpoint(
            path("c1/m.weights.h5"), save_weights_only=True
        ),
        "keras_ckpt ModelCheckpoint .weights.h5 sync": lambda: keras_ckpt.ModelCheckpoint(
            path("c2/m.weights.h5"), save_weights_only=True, async_save=False
        ),
        "keras_ckpt ModelCheckpoint .keras async": lambda: keras_ckpt.ModelCheckpoint(
            path("c3/m.keras")
        ),
        "keras_ckpt ModelCheckpoint .keras sync": lambda: keras_ckpt.ModelCheckpoint(
            path("c4/m.keras"), async_save=False
        ),
        "keras_ckpt BackupAndRestore async": lambda: keras_ckpt.BackupAndRestore(path("c5")),
        "keras_ckpt ResumeFromLatest async": lambda: keras_ckpt.ResumeFromLatest(path("c6")),
    }


def run_size(
    size: str, epochs: int, epoch_seconds: float, rounds: int, only: list[str] | None
) -> None:
    width, _, batch = SIZES[size]
    model, x, y = trained_once(size, epoch_seconds)
    samples = len(x)
    megabytes = state_bytes(model) / 1e6
    floor = host_copy_seconds(model)
    print(
        f"\n## {size}: MLP 256-{width}-{width}-10, {model.count_params() / 1e6:.1f}M parameters, "
        f"{megabytes:.0f} MB of weights and optimizer state; {samples // batch} steps of "
        f"{batch} per epoch, {epochs} epochs, {rounds} round(s)"
    )
    print(f"floor (all variables to host memory): {floor * 1e3:.1f} ms")
    # Per variant: per round (stall per save, fit seconds, fit against the same round's fit
    # without a callback, peak resident memory above the start).
    results: dict[str, list[tuple[float, float, float, float]]] = {}
    with tempfile.TemporaryDirectory() as directory:
        makers = variants(directory)
        always = ("no callback", "keras ModelCheckpoint .weights.h5")  # the references
        names = [n for n in makers if n in always or not only or any(o in n for o in only)]
        for _ in range(rounds):
            baseline = 0.0
            for name in names:
                callback = makers[name]()
                per_epoch: list[float] = []
                callbacks = []
                if callback is not None:
                    timed_epoch_hooks(callback, per_epoch)
                    callbacks.append(callback)
                with PeakMemory() as memory:
                    start = time.perf_counter()
                    model.fit(x, y, batch_size=batch, epochs=epochs, verbose=0, callbacks=callbacks)
                    seconds = time.perf_counter() - start
                baseline = baseline or seconds  # "no callback" runs first in each round
                stall = statistics.median(per_epoch[1:]) if len(per_epoch) > 1 else 0.0
                results.setdefault(name, []).append(
                    (stall, seconds, seconds / baseline - 1, memory.extra / 1e6)
                )
                shutil.rmtree(directory, ignore_errors=True)
                os.makedirs(directory, exist_ok=True)
    # The overhead of the median fit against the median fit without a callback: steadier than
    # the median of the rounds' own ratios, each of which carries one baseline's noise.
    rows = {
        name: tuple(statistics.median(r[i] for r in runs) for i in range(4))
        for name, runs in results.items()
    }
    baseline_seconds = rows["no callback"][1]
    rows = {name: (r[0], r[1], r[1] / baseline_seconds - 1, r[3]) for name, r in rows.items()}
    keras_weights = rows.get("keras ModelCheckpoint .weights.h5", (float("nan"),))[0]
    print(
        f"{'variant':<46} {'stall/save':>10} {'x floor':>8} {'Keras MC.h5/':>12} "
        f"{'fit s':>7} {'fit vs none':>11} {'peak RSS+':>10}"
        + ("   fit vs none per round" if rounds > 1 else "")
    )
    for name, (stall, seconds, overhead, extra) in rows.items():
        if name == "no callback":
            print(f"{name:<46} {'':>10} {'':>8} {'':>12} {seconds:>7.2f} {'':>11} {extra:>8.0f}MB")
            continue
        each = " ".join(f"{r[2]:+.0%}" for r in results[name]) if rounds > 1 else ""
        print(
            f"{name:<46} {stall * 1e3:>8.1f}ms {stall / floor:>8.2f} "
            f"{keras_weights / stall:>11.1f}x {seconds:>7.2f} {overhead:>+11.1%} "
            f"{extra:>8.0f}MB   {each}"
        )


def main() -> None:
    parser = stall_arguments(__doc__.splitlines()[0], sizes="small,large", rounds=True)
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated parts of variant names to run (and 'no callback'), e.g. "
        "'ModelCheckpoint .keras,ResumeFromLatest'",
    )
    args = parser.parse_args()
    only = [o.strip() for o in args.only.split(",") if o.strip()] or None
    print(f"machine: {describe_machine()}")
    print("stall/save: median time in the callback's epoch hooks per save (epochs 2..N)")
    for size in args.sizes.split(","):
        run_size(size.strip(), args.epochs, args.epoch_seconds, args.rounds, only)


if __name__ == "__main__":
    main()
