"""A pytest plugin that puts keras_ckpt's drop-in classes in place of Keras's own, so Keras's
own callback tests (in the installed wheel) run against them.

Loaded with ``-p keras_own_tests_plugin`` by ``test_keras_own_tests.py``, in a pytest of its own.
``pytest_configure`` runs before collection, so the names are replaced before any Keras test
module is imported; the test modules do ``from keras.src import callbacks`` and look the classes
up on that module at every use, so they get keras_ckpt's. Importing this module alone (as
``--doctest-modules`` does) replaces nothing.

``--keras-own-classes`` replaces nothing either: the reference run, for tests from a newer Keras
than the installed one, which tells a test the installed Keras cannot pass from a keras_ckpt bug.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

from keras.src import callbacks  # noqa: E402

import keras_ckpt  # noqa: E402

REPLACED = (
    "BackupAndRestore",
    "EarlyStopping",
    "LearningRateScheduler",
    "ModelCheckpoint",
    "ReduceLROnPlateau",
    "SwapEMAWeights",
)


def pytest_addoption(parser):
    parser.addoption(
        "--keras-own-classes",
        action="store_true",
        help="run Keras's tests with Keras's own callback classes (the reference)",
    )


def pytest_configure(config):
    if not config.getoption("--keras-own-classes"):
        for name in REPLACED:
            setattr(callbacks, name, getattr(keras_ckpt, name))
    # Keras's own conftest (not in the wheel) registers this marker and skips such tests on a
    # backend that cannot train; every backend keras_ckpt supports trains.
    config.addinivalue_line("markers", "requires_trainable_backend: needs a training backend")
