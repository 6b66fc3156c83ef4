"""Benchmark 5: write throughput of one large save against the disk's own sequential speed.

For the 47M-parameter MLP (about 570 MB of weights and optimizer state), measured in the same
run, median of ``--repeats``:

- disk: a plain ``write`` of that many bytes to a new file in the same directory, then fsync;
- keras_ckpt commit: a snapshot written through the store (HDF5, fsync alongside the SHA-256
  read-back, atomic rename, manifest), as the background writer does it;
- of which the HDF5 write alone;
- Keras ``model.save_weights`` (no fsync, no checksum), for reference.

Run: python benchmarks/write_throughput.py [--width 6752] [--repeats 5]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=6752)
    parser.add_argument("--repeats", type=int, default=5)
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

        def disk() -> None:
            path = os.path.join(directory, "plain.bin")
            with open(path, "wb") as file:
                file.write(payload.data)
                file.flush()
                os.fsync(file.fileno())

        def commit() -> None:
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
            snapshot.write(os.path.join(directory, "h5.weights.h5"))

        def keras_save() -> None:
            model.save_weights(os.path.join(directory, "keras.weights.h5"))

        names = {
            disk: "disk: plain write + fsync",
            commit: "keras_ckpt commit (write, fsync, SHA-256, rename, manifest)",
            h5_only: "  of which the HDF5 write (no fsync)",
            keras_save: "Keras save_weights (no fsync)",
        }
        times: dict = {action: [] for action in names}
        # Interleaved, so that the disk's moods (write-back, other tenants) hit every row.
        for _ in range(args.repeats):
            for action in names:
                snapshot = take_snapshot(model, "x.weights.h5", weights_only=True)
                start = time.perf_counter()
                action()
                times[action].append(time.perf_counter() - start)
                snapshot.discard()
                for name in os.listdir(directory):
                    if name.endswith((".bin", ".h5")):
                        os.remove(os.path.join(directory, name))
        rows = [(names[action], statistics.median(values)) for action, values in times.items()]
    disk_speed = size / rows[0][1]
    print(f"{'what':<62} {'seconds':>8} {'MB/s':>8} {'vs disk':>8}")
    for name, seconds in rows:
        speed = size / seconds
        print(f"{name:<62} {seconds:>8.3f} {speed / 1e6:>8.0f} {speed / disk_speed:>8.2f}")


if __name__ == "__main__":
    main()
