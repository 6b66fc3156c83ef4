"""Benchmark 5: write throughput of one large save against the disk's own sequential speed.

For the 47M-parameter MLP (about 570 MB of weights and optimizer state), measured in the same
run, median of ``--repeats``:

- disk: a plain ``write`` of that many bytes to a new file in the same directory, then fsync;
- keras_ckpt commit: a snapshot written through the store (HDF5, fsync, SHA-256 read-back,
  atomic rename, manifest), as a background save does it;
- of which the HDF5 write alone;
- Keras ``model.save_weights`` (no fsync, no checksum), for reference.

Run: python benchmarks/write_throughput.py [--width 6752] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from common import describe_machine, mlp, mlp_data, state_bytes  # noqa: E402

from keras_ckpt.records import KIND_WEIGHTS  # noqa: E402
from keras_ckpt.snapshot import take_snapshot  # noqa: E402
from keras_ckpt.store import CheckpointStore  # noqa: E402


def median_seconds(action, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=6752)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"machine: {describe_machine()}")
    model = mlp(args.width)
    x, y = mlp_data(64)
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    size = state_bytes(model)
    payload = np.random.default_rng(0).integers(0, 255, size=size, dtype=np.uint8)
    print(f"MLP 256-{args.width}-{args.width}-10: {size / 1e6:.0f} MB of state")
    with tempfile.TemporaryDirectory() as directory:
        store = CheckpointStore(directory)
        plain = os.path.join(directory, "plain.bin")

        def disk() -> None:
            with open(plain, "wb") as file:
                file.write(payload.data)
                file.flush()
                os.fsync(file.fileno())
            os.remove(plain)

        def commit() -> None:
            snapshot = take_snapshot(model, "big.weights.h5", weights_only=True)
            store.commit(
                "big.weights.h5",
                snapshot.write,
                epoch=1,
                step=0,
                metrics={},
                kind=KIND_WEIGHTS,
                run="benchmark",
                keeper="benchmark",
            )

        def h5_only() -> None:
            snapshot = take_snapshot(model, "x.weights.h5", weights_only=True)
            path = os.path.join(directory, "h5.weights.h5")
            start = time.perf_counter()
            snapshot.write(path)
            h5_times.append(time.perf_counter() - start)
            os.remove(path)

        def keras_save() -> None:
            path = os.path.join(directory, "keras.weights.h5")
            model.save_weights(path)
            os.remove(path)

        h5_times: list[float] = []
        rows = [
            ("disk: plain write + fsync", median_seconds(disk, args.repeats)),
            ("keras_ckpt commit (snapshot excluded)", None),
            ("  of which HDF5 write", None),
            ("Keras save_weights (no fsync)", median_seconds(keras_save, args.repeats)),
        ]
        snapshot_seconds = median_seconds(
            lambda: take_snapshot(model, "x.weights.h5", weights_only=True).discard(),
            args.repeats,
        )
        rows[1] = (rows[1][0], median_seconds(commit, args.repeats) - snapshot_seconds)
        median_seconds(h5_only, args.repeats)
        rows[2] = (rows[2][0], statistics.median(h5_times))
    disk_speed = size / rows[0][1]
    print(f"{'what':<40} {'seconds':>8} {'MB/s':>8} {'vs disk':>8}")
    for name, seconds in rows:
        speed = size / seconds
        print(f"{name:<40} {seconds:>8.3f} {speed / 1e6:>8.0f} {speed / disk_speed:>8.2f}")


if __name__ == "__main__":
    main()
