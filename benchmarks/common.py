"""What the benchmarks share: the machine's description, the models, a resident-memory sampler."""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_ckpt  # noqa: E402
from keras_ckpt.snapshot import host_copy  # noqa: E402

PAGE = os.sysconf("SC_PAGE_SIZE")


def describe_machine() -> str:
    """One line: CPU, cores, memory, accelerator, Python, Keras and its backend."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as file:
            cpu = next(line.split(":", 1)[1].strip() for line in file if "model name" in line)
    except (OSError, StopIteration):
        pass
    memory = os.sysconf("SC_PHYS_PAGES") * PAGE / 2**30
    backend = keras.backend.backend()
    return (
        f"{cpu}, {os.cpu_count()} cores, {memory:.0f} GiB; accelerator: {accelerator()}; "
        f"Python {platform.python_version()}, Keras {keras.__version__} on {backend} "
        f"{backend_version()}, keras_ckpt {keras_ckpt.__version__}"
    )


def backend_version() -> str:
    module = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}.get(
        keras.backend.backend()
    )
    return getattr(__import__(module), "__version__", "?") if module else "?"


def accelerator() -> str:
    backend = keras.backend.backend()
    if backend == "torch":
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (CPU)"
    if backend == "jax":
        import jax

        device = jax.devices()[0]
        return "none (CPU)" if device.platform == "cpu" else device.device_kind
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        return gpus[0].name if gpus else "none (CPU)"
    return "?"


# name -> (width of the MLP, samples per epoch, batch size): about 1 s of training per epoch
# on a 2-core CPU, so a background write has time to finish before the next save.
SIZES = {"small": (2048, 2048, 128), "large": (6752, 512, 32)}


def stall_arguments(description: str, sizes: str, rounds: bool = False) -> argparse.ArgumentParser:
    """The arguments of the stall benchmarks: ``--sizes`` (default ``sizes``), ``--epochs``,
    ``--epoch-seconds``, with ``rounds`` also ``--rounds``; a script adds its own."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--sizes", default=sizes, help="comma-separated: small, large")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument(
        "--epoch-seconds",
        type=float,
        default=0.0,
        help="repeat the data until an epoch without a callback lasts this long (for GPUs)",
    )
    if rounds:
        parser.add_argument(
            "--rounds",
            type=positive_int,
            default=1,
            help="run every variant this many times, interleaved; medians are reported",
        )
    return parser


def positive_int(text: str) -> int:
    """An argparse type: an int of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1. Received: {value}")
    return value


def mlp(width: int, inputs: int = 256, outputs: int = 10) -> keras.Model:
    """Dense inputs -> width -> width -> outputs with Adam; width 2048 is the issue's 4.7M-param
    model (about 57 MB of weights and optimizer state)."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((inputs,)),
            keras.layers.Dense(width, activation="relu"),
            keras.layers.Dense(width, activation="relu"),
            keras.layers.Dense(outputs),
        ]
    )
    # The last layer gives logits (a loss that took them for probabilities trained badly).
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(optimizer="adam", loss=loss)
    return model


# name -> (backbone width, samples per epoch, batch size) of ``frozen_backbone``: about 1 s of
# training per epoch on a 2-core CPU (only the head trains, so an epoch takes more samples).
FROZEN_SIZES = {"small": (1024, 24576, 256), "large": (3072, 6144, 128)}


def frozen_backbone(
    width: int, head: int = 64, inputs: int = 256, outputs: int = 10
) -> keras.Model:
    """Fine-tuning: a frozen Dense backbone inputs -> width -> width (``trainable=False``) under a
    trainable head width -> head -> outputs, with Adam; width 1024 freezes 95.2% of the 1.4M
    parameters, width 3072 98.1% of 10.4M (42 MB of weights)."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((inputs,)),
            keras.layers.Dense(width, activation="relu", trainable=False, name="backbone_1"),
            keras.layers.Dense(width, activation="relu", trainable=False, name="backbone_2"),
            keras.layers.Dense(head, activation="relu", name="head_1"),
            keras.layers.Dense(outputs, name="head_2"),
        ]
    )
    # Logits: a loss on unnormalized outputs can stop the head's updates after many epochs,
    # and checkpoints whose head is unchanged would share its blobs (flattering dedup).
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(optimizer="adam", loss=loss)
    return model


def mlp_data(samples: int, inputs: int = 256, outputs: int = 10) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(samples, inputs)).astype("float32")
    y = rng.integers(0, outputs, size=(samples,)).astype("int32")
    return x, y


def trained_once(
    size: str,
    epoch_seconds: float = 0.0,
    sizes: dict[str, tuple[int, int, int]] = SIZES,
    build: Callable[[int], keras.Model] = mlp,
) -> tuple[keras.Model, np.ndarray, np.ndarray]:
    """The model of ``sizes[size]`` (by default ``mlp``, ``SIZES``) and its data, trained one
    epoch (the optimizer is built and the step traced); with ``epoch_seconds``, the data is
    repeated until an epoch without a callback lasts at least that long."""
    width, samples, batch = sizes[size]
    model = build(width)
    x, y = mlp_data(samples)
    model.fit(x, y, batch_size=batch, epochs=1, verbose=0)
    if epoch_seconds > 0:
        start = time.perf_counter()
        model.fit(x, y, batch_size=batch, epochs=1, verbose=0)
        repeats = math.ceil(epoch_seconds / (time.perf_counter() - start))
        if repeats > 1:
            x, y = mlp_data(samples * repeats)
            model.fit(x, y, batch_size=batch, epochs=1, verbose=0)
    return model, x, y


def state_bytes(model: keras.Model) -> int:
    """Bytes of the model's and the optimizer's variables: what a checkpoint holds."""
    variables = list(model.variables) + list(model.optimizer.variables)
    return sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in variables)


def host_copy_seconds(model: keras.Model, repeats: int = 7) -> float:
    """The floor of any save: copying every variable to host memory, each in one copy (the
    cheapest way the backend offers; median of ``repeats``)."""
    variables = list(model.variables) + list(model.optimizer.variables)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        copies = [host_copy(v) for v in variables]
        times.append(time.perf_counter() - start)
        del copies
    return statistics.median(times)


def timed_epoch_hooks(
    callback: keras.callbacks.Callback,
    per_epoch: list[float],
    clock: Callable[[], float] = time.perf_counter,
) -> None:
    """Adds the time spent in the callback's epoch hooks to ``per_epoch[epoch]``; another
    ``clock`` (any counter that only grows) measures something else the hooks do."""
    for hook in ("on_epoch_begin", "on_epoch_end"):
        original = getattr(callback, hook)

        def timed(epoch, logs=None, _original=original):
            start = clock()
            _original(epoch, logs)
            while len(per_epoch) <= epoch:
                per_epoch.append(0.0)
            per_epoch[epoch] += clock() - start

        setattr(callback, hook, timed)


def resident_bytes() -> int:
    with open("/proc/self/statm", encoding="ascii") as file:
        return int(file.read().split()[1]) * PAGE


class PeakMemory:
    """Samples resident memory every millisecond while in use; ``extra`` is the peak above
    the level at entry."""

    def __init__(self) -> None:
        self.start = self.peak = 0
        self._stop = threading.Event()

    def __enter__(self) -> PeakMemory:
        self.start = self.peak = resident_bytes()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while not self._stop.wait(0.001):
            self.peak = max(self.peak, resident_bytes())

    @property
    def extra(self) -> int:
        return self.peak - self.start


def disk_bytes(directory: str, apparent: bool = False) -> int:
    """Bytes the directory's files occupy on disk (with ``apparent``, their sizes), each
    hard-linked file counted once."""
    seen, total = set(), 0
    for name in os.listdir(directory):
        info = os.stat(os.path.join(directory, name))
        if info.st_ino not in seen:
            seen.add(info.st_ino)
            total += info.st_size if apparent else info.st_blocks * 512
    return total
