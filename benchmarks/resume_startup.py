"""Benchmark 4: how long a rerun takes to resume with 1, 100 and 1,000 checkpoints in the
directory, and how many bytes the ``best`` / ``latest`` aliases use on disk.

The directory holds one finished ResumeFromLatest run of the 4.7M-parameter MLP and, beside it,
N - 1 older checkpoints of an IntervalCheckpoint (hard links to one file, so they cost no disk
space, each with its own manifest entry). A rerun of the finished script is timed end to end:
``model.fit`` with the same ResumeFromLatest, which opens and recovers the store, checks the
newest checkpoint's SHA-256, loads it, restores the state and trains nothing.

Target (issue 6): flat start-up, under 1.2x from 1 to 1,000 checkpoints; aliases use no bytes.

Run: python benchmarks/resume_startup.py [--counts 1,100,1000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
from common import describe_machine, disk_bytes, mlp, mlp_data  # noqa: E402

import keras_ckpt  # noqa: E402
from keras_ckpt.records import MANIFEST_NAME  # noqa: E402
from keras_ckpt.store import read_manifest  # noqa: E402

WIDTH, SAMPLES, BATCH, EPOCHS = 2048, 512, 128, 2


def finished_run(directory: str) -> None:
    model = mlp(WIDTH)
    x, y = mlp_data(SAMPLES)
    model.fit(
        x,
        y,
        batch_size=BATCH,
        epochs=EPOCHS,
        verbose=0,
        callbacks=[keras_ckpt.ResumeFromLatest(directory)],
    )


def add_older_checkpoints(directory: str, count: int) -> None:
    """``count`` IntervalCheckpoint entries older than the resume run's, hard links to its
    newest file."""
    manifest = read_manifest(directory)
    newest = manifest.records[-1]
    fillers = []
    for index in range(count):
        name = f"interval-step{index:08d}.weights.h5"
        os.link(newest.path, os.path.join(directory, name))
        fillers.append(
            dataclasses.replace(
                newest,
                path=os.path.join(directory, name),
                epoch=index + 1,
                step=index + 1,
                time=newest.time - 1000 + index * 0.1,
                kind=newest.kind,
                run="older-run",
                kept_by=("IntervalCheckpoint",),
                state=None,
            )
        )
    manifest.records = fillers + manifest.records
    with open(os.path.join(directory, MANIFEST_NAME), "w", encoding="utf-8") as file:
        json.dump(manifest.to_json(), file, indent=1)


def time_rerun(directory: str, repeats: int) -> float:
    x, y = mlp_data(SAMPLES)
    times = []
    for _ in range(repeats):
        model = mlp(WIDTH)
        start = time.perf_counter()
        model.fit(
            x,
            y,
            batch_size=BATCH,
            epochs=EPOCHS,
            verbose=0,
            callbacks=[keras_ckpt.ResumeFromLatest(directory)],
        )
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def alias_bytes() -> tuple[int, int]:
    """Disk bytes the aliases add to a directory with BestCheckpoint and IntervalCheckpoint,
    and the size of the file an alias points at (what a copy would cost)."""
    with tempfile.TemporaryDirectory() as directory:
        model = mlp(256)
        x, y = mlp_data(SAMPLES)
        model.fit(
            x,
            y,
            batch_size=BATCH,
            epochs=3,
            verbose=0,
            validation_data=(x, y),
            callbacks=[
                keras_ckpt.BestCheckpoint(directory, save_weights_only=True),
                keras_ckpt.IntervalCheckpoint(directory, keep_last=2, save_weights_only=True),
            ],
        )
        aliases = [n for n in os.listdir(directory) if n.startswith(("best.", "latest."))]
        with_aliases = disk_bytes(directory)
        size = os.path.getsize(os.path.join(directory, aliases[0]))
        for name in aliases:
            os.remove(os.path.join(directory, name))
        return with_aliases - disk_bytes(directory), size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", default="1,100,1000")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"machine: {describe_machine()}")
    print(
        f"rerun of a finished {EPOCHS}-epoch ResumeFromLatest run, MLP 256-{WIDTH}-{WIDTH}-10 "
        f"(57 MB checkpoint), median of {args.repeats}"
    )
    counts = [int(c) for c in args.counts.split(",")]
    results = {}
    for count in counts:
        with tempfile.TemporaryDirectory() as directory:
            finished_run(directory)
            add_older_checkpoints(directory, count - 1)
            manifest_kb = os.path.getsize(os.path.join(directory, MANIFEST_NAME)) / 1e3
            results[count] = time_rerun(directory, args.repeats)
            print(
                f"{count:>5} checkpoints: {results[count] * 1e3:7.1f} ms "
                f"(manifest {manifest_kb:.0f} kB), "
                f"{results[count] / results[counts[0]]:.2f}x the {counts[0]}-checkpoint time"
            )
    extra, size = alias_bytes()
    print(f"aliases (best + latest): {extra} extra bytes on disk; a copy would take {size} each")
    keras.utils.clear_session()


if __name__ == "__main__":
    main()
