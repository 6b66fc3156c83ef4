"""Benchmark 6: what a remote checkpoint directory costs: stall per save and whole-fit time with
the directory on S3 (moto's S3 server on 127.0.0.1) against a local temporary directory, in the
same process, on the same model.

For each model size (default: the 4.7M-parameter one), trains once without a callback, once with
Keras's own ModelCheckpoint (``.weights.h5``, local: the reference), then with each keras_ckpt
variant, local then S3: ModelCheckpoint ``.weights.h5`` and ``.keras`` and ResumeFromLatest,
asynchronous, and ModelCheckpoint ``.weights.h5`` synchronous; then once more without a callback
(the whole-fit overhead is against the faster of the two). Every variant saves every epoch.

The stall of a save is the time spent in the callback's epoch hooks, median over epochs 2..N
(as save_stall.py measures it). Of it, two parts are shown: the time waiting for the save in
flight (keras_ckpt's background writer) and, for S3, the time in S3 calls on the training
thread and their number. Per save, for S3: the writer thread's time in S3 calls, the bytes
uploaded (request bodies: checkpoint, manifests, the probe) and the server's CPU time. The S3
figures come from wrapping fsspec's ``sync`` and s3fs's ``_call_s3`` in this process;
``--detail`` lists the calls per save by thread.

An asynchronous save waits for the one in flight, so when an upload lasts longer than an epoch
the stall is that wait, not the snapshot: ``--epoch-seconds`` repeats the data until an epoch
without a callback lasts that long.

The server runs in a subprocess by default (``--server process``): a real bucket's server holds
no lock of this process, whereas moto in a thread of this process (``--server thread``) parses,
hashes and copies every upload in Python under this process's GIL, competing with the training
and writer threads (and its CPU time cannot be told apart). Either way moto shares the
machine's cores with training (the moto CPU column: about 0.5 s per 57 MB save) and keeps
objects in memory: the figures are those of a slow S3 next door, not of a real bucket, where the
server's work is elsewhere and each request also pays a network round trip.

Run: python benchmarks/remote_stall.py [--sizes small,large] [--epochs 6] [--epoch-seconds S]
[--server process|thread] [--detail]
(KERAS_BACKEND picks the backend; the default is TensorFlow. Needs moto[server] and s3fs.)
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
from common import (  # noqa: E402
    SIZES,
    describe_machine,
    host_copy_seconds,
    stall_arguments,
    state_bytes,
    timed_epoch_hooks,
    trained_once,
)

import keras_ckpt  # noqa: E402

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def s3_server(where: str) -> Iterator[Callable[[], float | None]]:
    """moto's S3 server on a free port of 127.0.0.1, in a subprocess or a thread; botocore (under
    s3fs) finds it through the environment, with fake credentials. Yields a function giving the
    CPU seconds the server has used (``None`` in a thread: they are this process's)."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    saved = {name: os.environ.get(name) for name in [*CREDENTIALS, "AWS_ENDPOINT_URL_S3"]}
    os.environ.update(CREDENTIALS, AWS_ENDPOINT_URL_S3=endpoint)
    try:
        if where == "thread":
            from moto.server import ThreadedMotoServer

            logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
            server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
            server.start()
            try:
                yield lambda: None
            finally:
                server.stop()
        else:
            process = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,  # werkzeug's line per request
            )
            try:
                wait_for_port(port, process)
                yield lambda: cpu_seconds(process.pid)
            finally:
                process.terminate()
                process.wait(10)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def wait_for_port(port: int, process: subprocess.Popen, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"moto's server exited with status {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.1)
    raise RuntimeError(f"moto's server did not listen on port {port} within {seconds:.0f} s")


def cpu_seconds(pid: int) -> float | None:
    """User and system CPU seconds of a running process (Linux), ``None`` where unknown."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as file:
            fields = file.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class S3Traffic:
    """Counts, in this process, the time each thread spends waiting for fsspec's file-system
    calls (``cat_file``, ``info``, ``put_file`` ...: each may send several requests) and the
    bytes of the request bodies s3fs sends. The counters only grow."""

    def __init__(self) -> None:
        import fsspec.asyn
        import s3fs.core

        self.main = threading.main_thread()
        self.training_seconds = self.other_seconds = 0.0
        self.training_calls = 0
        self.uploaded = 0
        # (on the training thread?, call) -> [calls, seconds]
        self.by_call: dict[tuple[bool, str], list[float]] = {}
        sync = fsspec.asyn.sync
        call_s3 = s3fs.core.S3FileSystem._call_s3

        def timed_sync(loop, func, *args, **kwargs):
            start = time.perf_counter()
            try:
                return sync(loop, func, *args, **kwargs)
            finally:
                seconds = time.perf_counter() - start
                training = threading.current_thread() is self.main
                if training:
                    self.training_seconds += seconds
                    self.training_calls += 1
                else:
                    self.other_seconds += seconds
                name = getattr(func, "__name__", "?").lstrip("_")
                counts = self.by_call.setdefault((training, name), [0, 0.0])
                counts[0] += 1
                counts[1] += seconds

        async def counted_call_s3(fs, method, *args, **kwargs):
            body = kwargs.get("Body")
            if body is not None:
                self.uploaded += len(body)
            return await call_s3(fs, method, *args, **kwargs)

        fsspec.asyn.sync = timed_sync  # sync_wrapper looks it up at each call
        s3fs.core.S3FileSystem._call_s3 = counted_call_s3


class WriterWaits:
    """Counts the time the training thread spends waiting for keras_ckpt's background writer
    (the save in flight) to finish. The counter only grows."""

    def __init__(self) -> None:
        from keras_ckpt.writer import WRITER

        self.seconds = 0.0
        wait = WRITER.wait

        def timed_wait() -> None:
            start = time.perf_counter()
            try:
                wait()
            finally:
                if threading.current_thread() is threading.main_thread():
                    self.seconds += time.perf_counter() - start

        WRITER.wait = timed_wait  # submit() and the callbacks call it through the instance


Factory = Callable[[], keras.callbacks.Callback]


def variants(local: str, bucket: str) -> list[tuple[str, str, Factory]]:
    """(where, name, factory), local and S3 side by side."""
    rows: list[tuple[str, str, Factory]] = [
        (
            "local",
            "keras ModelCheckpoint .weights.h5",
            lambda: keras.callbacks.ModelCheckpoint(
                os.path.join(local, "k1/m.weights.h5"), save_weights_only=True
            ),
        ),
    ]
    ours: list[tuple[str, Callable[[str], keras.callbacks.Callback]]] = [
        (
            "keras_ckpt ModelCheckpoint .weights.h5 async",
            lambda d: keras_ckpt.ModelCheckpoint(f"{d}/m.weights.h5", save_weights_only=True),
        ),
        (
            "keras_ckpt ModelCheckpoint .keras async",
            lambda d: keras_ckpt.ModelCheckpoint(f"{d}/m.keras"),
        ),
        ("keras_ckpt ResumeFromLatest async", lambda d: keras_ckpt.ResumeFromLatest(d)),
        (
            "keras_ckpt ModelCheckpoint .weights.h5 sync",
            lambda d: keras_ckpt.ModelCheckpoint(
                f"{d}/m.weights.h5", save_weights_only=True, async_save=False
            ),
        ),
    ]
    for index, (name, make) in enumerate(ours):
        rows.append(("local", name, lambda m=make, i=index: m(os.path.join(local, f"c{i}"))))
        rows.append(("s3", name, lambda m=make, i=index: m(f"{bucket}/c{i}")))
    return rows


def median_after_first(per_epoch: list[float]) -> float:
    return statistics.median(per_epoch[1:]) if len(per_epoch) > 1 else 0.0


def run_size(
    size: str,
    epochs: int,
    epoch_seconds: float,
    bucket: str,
    traffic: S3Traffic,
    waits: WriterWaits,
    server_cpu: Callable[[], float | None],
    detail: bool,
) -> None:
    import s3fs

    width, _, batch = SIZES[size]
    model, x, y = trained_once(size, epoch_seconds)
    floor = host_copy_seconds(model)
    print(
        f"\n## {size}: MLP 256-{width}-{width}-10, {model.count_params() / 1e6:.1f}M parameters, "
        f"{state_bytes(model) / 1e6:.0f} MB of weights and optimizer state; {len(x) // batch} "
        f"steps of {batch} per epoch, {epochs} epochs"
    )
    print(f"floor (all variables to host memory): {floor * 1e3:.1f} ms")

    def fit(callbacks: list[keras.callbacks.Callback]) -> float:
        start = time.perf_counter()
        model.fit(x, y, batch_size=batch, epochs=epochs, verbose=0, callbacks=callbacks)
        return time.perf_counter() - start

    first = fit([])
    rows, details = [], []
    with tempfile.TemporaryDirectory() as local:
        prefix = f"{bucket}/{size}-{uuid.uuid4().hex[:8]}"
        for where, name, make in variants(local, prefix):
            callback = make()
            stalls: list[float] = []
            waiting: list[float] = []
            in_requests: list[float] = []
            calls: list[float] = []
            timed_epoch_hooks(callback, stalls)
            timed_epoch_hooks(callback, waiting, lambda: waits.seconds)
            timed_epoch_hooks(callback, in_requests, lambda: traffic.training_seconds)
            timed_epoch_hooks(callback, calls, lambda: float(traffic.training_calls))
            other, uploaded = traffic.other_seconds, traffic.uploaded
            by_call = {key: tuple(value) for key, value in traffic.by_call.items()}
            cpu = server_cpu()
            seconds = fit([callback])
            cpu_after = server_cpu()
            server = None if cpu is None or cpu_after is None else (cpu_after - cpu) / epochs
            rows.append(
                (
                    where,
                    name,
                    median_after_first(stalls),
                    median_after_first(waiting),
                    seconds,
                    median_after_first(in_requests),
                    median_after_first(calls),
                    (traffic.other_seconds - other) / epochs,
                    (traffic.uploaded - uploaded) / epochs,
                    server,
                )
            )
            if where == "s3":
                details.append((name, call_breakdown(traffic.by_call, by_call, epochs)))
            shutil.rmtree(local, ignore_errors=True)
            os.makedirs(local, exist_ok=True)
        s3fs.S3FileSystem().rm(prefix, recursive=True)
    last = fit([])
    baseline = min(first, last)
    print(
        f"{'where':<5} {'variant':<44} {'stall/save':>10} {'x floor':>7} {'waiting':>8} "
        f"{'S3 calls (n)':>14} {'fit s':>6} {'fit vs none':>11} {'writer S3':>9} {'up MB':>6} "
        f"{'moto CPU':>8}"
    )
    print(f"{'':<5} {'no callback (first, last)':<44} {'':>41} {first:>6.2f} {last:>11.2f}")
    for where, name, stall, waited, seconds, in_requests, calls, other, uploaded, cpu in rows:
        s3 = f"{in_requests * 1e3:>7.1f}ms ({calls:>2.0f})" if where == "s3" else f"{'':>14}"
        writer = ""
        if where == "s3":
            writer = f"{other * 1e3:>7.0f}ms {uploaded / 1e6:>6.1f}"
            writer += f" {cpu * 1e3:>6.0f}ms" if cpu is not None else f" {'?':>8}"
        print(
            f"{where:<5} {name:<44} {stall * 1e3:>8.1f}ms {stall / floor:>7.2f} "
            f"{waited * 1e3:>6.1f}ms {s3} {seconds:>6.2f} {seconds / baseline - 1:>+11.1%} "
            f"{writer}".rstrip()
        )
    if detail:
        print("\nS3 calls per save (whole fit / epochs; T: training thread, W: writer thread):")
        for name, text in details:
            print(f"  {name}: {text}")


def call_breakdown(
    after: dict[tuple[bool, str], list[float]],
    before: dict[tuple[bool, str], tuple[float, ...]],
    epochs: int,
) -> str:
    parts = []
    for (training, call), (count, seconds) in sorted(after.items()):
        count0, seconds0 = before.get((training, call), (0, 0.0))
        if count > count0:
            parts.append(
                f"{'T' if training else 'W'} {call} {(count - count0) / epochs:.1f}x "
                f"{(seconds - seconds0) / epochs * 1e3:.0f}ms"
            )
    return ", ".join(parts)


def main() -> None:
    parser = stall_arguments(__doc__.splitlines()[0], sizes="small")
    parser.add_argument(
        "--server",
        choices=("process", "thread"),
        default="process",
        help="run moto's S3 server in a subprocess (default) or in a thread of this process",
    )
    parser.add_argument(
        "--detail", action="store_true", help="print each S3 variant's calls per save by thread"
    )
    args = parser.parse_args()
    print(f"machine: {describe_machine()}")
    print(f"S3: moto {moto_version()} server on 127.0.0.1, in a {args.server}")
    print(
        "stall/save: median time in the callback's epoch hooks per save (epochs 2..N), of which "
        "waiting: for the save in flight, and S3 calls (n): in fsspec calls (each one or more "
        "requests) on the training thread; fit vs none: against the faster of two fits without "
        "a callback; per save: writer S3: the writer thread's time in S3 calls, up MB: request "
        "bodies sent, moto CPU: the server's CPU time (it shares the cores with training)"
    )
    with s3_server(args.server) as server_cpu:
        import s3fs

        traffic, waits = S3Traffic(), WriterWaits()
        bucket = f"keras-ckpt-bench-{uuid.uuid4().hex[:8]}"
        s3fs.S3FileSystem().mkdir(bucket)
        for size in args.sizes.split(","):
            run_size(
                size.strip(),
                args.epochs,
                args.epoch_seconds,
                f"s3://{bucket}",
                traffic,
                waits,
                server_cpu,
                args.detail,
            )


def moto_version() -> str:
    import moto

    return str(moto.__version__)


if __name__ == "__main__":
    main()
