"""Shared fixtures: tiny real Keras models on the CPU, TensorFlow backend unless told otherwise."""

import contextlib
import os
import subprocess
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

KERAS_VERSION = tuple(int(part) for part in keras.__version__.split(".")[:2])


def needs_keras(version, why):
    """Skips a test on a Keras older than ``version`` (``(3, 11)``), saying ``why``."""
    shown = ".".join(map(str, version))
    return pytest.mark.skipif(KERAS_VERSION < version, reason=f"Keras {shown}+: {why}")


# Scripts run in subprocesses by the tests; importing them (as --doctest-modules would) trains.
collect_ignore = [
    "backend_child.py",
    "crash_child.py",
    "distribution_child.py",
    "multiprocess_child.py",
    "remote_child.py",
    "resume_child.py",
    "resume_setup.py",
    "rollback_child.py",
    "rollback_setup.py",
    "sharded_crash_child.py",
    "snapshot_child.py",
]


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, 4)).astype("float32")
    y = (x @ rng.normal(size=(4, 1)) + 0.1 * rng.normal(size=(96, 1))).astype("float32")
    return x, y


@pytest.fixture
def make_model():
    import keras

    def make(seed: int = 0, metrics=("mae",)):
        keras.utils.set_random_seed(seed)
        model = keras.Sequential(
            [keras.Input((4,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(1)]
        )
        model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse", metrics=list(metrics))
        return model

    return make


@pytest.fixture
def scripted():
    """A callback that overwrites logs[key] with a scripted value per epoch, as a metric would."""
    import keras

    class Scripted(keras.callbacks.Callback):
        def __init__(self, values, key="val_loss"):
            super().__init__()
            self.values = list(values)
            self.key = key

        def on_epoch_end(self, epoch, logs=None):
            value = self.values[epoch]
            if value is None:
                logs.pop(self.key, None)
                for name in [n for n in logs if n.startswith("val_")]:
                    logs.pop(name)
            else:
                logs[self.key] = value

    return Scripted


class Crash(keras.callbacks.Callback):
    """Raises before the given global batch, as a crash in the middle of training would."""

    def __init__(self, at_step):
        super().__init__()
        self.at_step, self.step = at_step, 0

    def on_train_batch_begin(self, batch, logs=None):
        if self.step == self.at_step:
            raise RuntimeError("simulated crash")
        self.step += 1


class CountBatches(keras.callbacks.Callback):
    """Counts the batches trained, to show that an error came before the first one."""

    def __init__(self):
        super().__init__()
        self.batches = 0

    def on_train_batch_end(self, batch, logs=None):
        self.batches += 1


@pytest.fixture
def weights_by_epoch():
    """A callback recording the model's weights at the end of every epoch (1-based keys)."""
    import keras

    class WeightsByEpoch(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.weights = {}

        def on_epoch_end(self, epoch, logs=None):
            self.weights[epoch + 1] = [w.copy() for w in self.model.get_weights()]

    return WeightsByEpoch


def assert_weights_equal(actual, expected):
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected, strict=True):
        np.testing.assert_array_equal(a, e)


def run_child_script(name, *args):
    """Runs one of the child scripts beside this file in a fresh Python process."""
    return subprocess.run(
        [sys.executable, os.path.join(os.path.dirname(__file__), name), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
    )


_HOLD_THE_LOCK = """
import sys
from keras_ckpt.store import CheckpointStore
store = CheckpointStore(sys.argv[1])
print("holding", flush=True)
sys.stdin.read()  # until the test ends
"""


@contextlib.contextmanager
def another_process_writing(directory):
    """A second process that holds ``directory``'s writer lock while the block runs; yields its
    pid. It is SIGKILLed at the end: the kernel releases the lock, nothing is left to clean."""
    source_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.pathsep.join(p for p in (source_root, os.environ.get("PYTHONPATH")) if p)
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_THE_LOCK, str(directory)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": path},
    )
    try:
        assert holder.stdout.readline() == "holding\n"
        yield holder.pid
    finally:
        holder.kill()
        holder.wait()


# Remote storage ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3 API: moto's server on 127.0.0.1 at a free port, for the whole session. boto
    (under s3fs) finds it through the environment, with fake credentials; subprocesses inherit
    both. Yields the endpoint's URL."""
    import logging
    import socket

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    environment = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL_S3": endpoint,
    }
    with pytest.MonkeyPatch.context() as patch:
        for name, value in environment.items():
            patch.setenv(name, value)
        yield endpoint
    server.stop()


@pytest.fixture
def without_s3_credentials(monkeypatch):
    """No S3 credentials anywhere boto looks (environment, files, instance metadata), and no
    cached s3fs client made with the earlier ones, for this test only."""
    import s3fs

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    s3fs.S3FileSystem.clear_instance_cache()  # fsspec reuses clients made with the credentials
    yield
    s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture
def s3_bucket(s3_endpoint):
    """A fresh, empty bucket on the session's S3 server: ``s3://<name>``."""
    import uuid

    import s3fs

    name = f"test-{uuid.uuid4().hex[:12]}"
    s3fs.S3FileSystem().mkdir(name)
    return f"s3://{name}"
