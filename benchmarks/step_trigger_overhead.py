"""Per-batch overhead of step-triggered checkpoint callbacks whose saves are rare.

Trains a tiny model with no checkpoint callback, with keras_ckpt.IntervalCheckpoint(every_steps=
<never due>), with keras_ckpt.ModelCheckpoint(save_freq=<never due>) and with Keras's own
ModelCheckpoint(save_freq=<never due>), alternating the variants over several rounds in one
process, and prints steps per second and the slowdown of each against no callback. Target for
IntervalCheckpoint: at most 2% slower.

Run: python benchmarks/step_trigger_overhead.py [--rounds 8] [--epochs 3]
(KERAS_BACKEND picks the backend; the default is TensorFlow.)
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_ckpt  # noqa: E402

NEVER = 10**9


def build_model() -> keras.Model:
    model = keras.Sequential(
        [keras.Input((16,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(1)]
    )
    model.compile(optimizer="adam", loss="mse")
    return model


def variants(directory: str) -> dict[str, callable]:
    return {
        "no callback": lambda: [],
        "keras_ckpt.IntervalCheckpoint(every_steps)": lambda: [
            keras_ckpt.IntervalCheckpoint(
                os.path.join(directory, "interval"), every_steps=NEVER, save_on_train_end=False
            )
        ],
        "keras_ckpt.ModelCheckpoint(save_freq=N)": lambda: [
            keras_ckpt.ModelCheckpoint(os.path.join(directory, "k", "m.keras"), save_freq=NEVER)
        ],
        "keras.callbacks.ModelCheckpoint(save_freq=N)": lambda: [
            keras.callbacks.ModelCheckpoint(os.path.join(directory, "m.keras"), save_freq=NEVER)
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=300, help="steps per epoch")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.steps * 32, 16)).astype("float32")
    y = rng.normal(size=(args.steps * 32, 1)).astype("float32")
    total_steps = args.steps * args.epochs
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
        f"keras {keras.__version__}, backend {keras.backend.backend()}"
    )
    print(f"{args.rounds} rounds x {args.epochs} epochs x {args.steps} steps, batch 32")
    with tempfile.TemporaryDirectory() as directory:
        makers = variants(directory)
        timings: dict[str, list[float]] = {name: [] for name in makers}
        model = build_model()
        model.fit(x, y, batch_size=32, epochs=1, verbose=0)  # compile the train step once
        names = list(makers)
        for round_index in range(args.rounds):
            # Rotate the order each round so drift (warm-up, thermal, caches) hits all variants.
            shift = round_index % len(names)
            for name in names[shift:] + names[:shift]:
                make = makers[name]
                callbacks = make()
                start = time.perf_counter()
                model.fit(x, y, batch_size=32, epochs=args.epochs, verbose=0, callbacks=callbacks)
                timings[name].append(time.perf_counter() - start)
    # The fastest round is the least disturbed by other load; medians are shown too.
    fastest = {name: min(values) for name, values in timings.items()}
    medians = {name: statistics.median(values) for name, values in timings.items()}
    print(f"{'variant':<48} {'steps/s':>9} {'vs none':>8} {'median vs none':>15}")
    for name in timings:
        print(
            f"{name:<48} {total_steps / fastest[name]:>9.0f} "
            f"{fastest[name] / fastest['no callback'] - 1:>+8.1%} "
            f"{medians[name] / medians['no callback'] - 1:>+15.1%}"
        )


if __name__ == "__main__":
    main()
