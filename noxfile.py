"""The version matrix: the Keras-facing tests again on the oldest Keras and TensorFlow supported.

The README's test command runs the whole suite on the Keras that ``pip install -e ".[cpu,dev]"``
brings (the newest), then ``nox -s keras_floor``: a fresh virtual environment holding the floor's
Keras and a TensorFlow that pairs with it, where installing keras_ckpt must change neither, and the
tests of every callback's real training, exact resume (epoch boundary, mid-epoch, killed and
rerun), asynchronous saving, crashes, loading and the Keras adapter. Keras's own callback tests run
there too: the floor's wheel ships none, so they are the main environment's Keras's (the newest),
each run with the floor's own classes as well, to tell the tests that need a newer Keras.
"""

from __future__ import annotations

import importlib.util
import pathlib

import nox

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True  # a rerun keeps the environment (installs are quick)

# Keras 3.5 is the floor TensorFlow 2.18's wheels declare (keras>=3.5).
FLOOR = {"keras": "3.5.0", "tensorflow-cpu": "2.18.1"}
# For the JAX and PyTorch resume tests: a JAX of Keras 3.5's time (its train step took other
# arguments before Keras 3.7), and the PyTorch CPU build the main suite uses.
OTHER_BACKENDS = ["jax==0.4.31", "jaxlib==0.4.31", "torch==2.13.0"]

FLOOR_TESTS = [
    "tests/test_keras_adapter.py",
    "tests/test_best_checkpoint.py",
    "tests/test_interval_checkpoint.py",
    "tests/test_model_checkpoint.py",
    "tests/test_stopping_and_lr.py",
    "tests/test_resume.py",
    "tests/test_training_state.py",
    "tests/test_async.py",
    "tests/test_crash.py",
    "tests/test_loading.py",
    "tests/test_sharded.py",
    "tests/test_keras_own_tests.py",
]
# Where tests/test_keras_own_tests.py finds Keras's callback tests when not in the installed wheel.
KERAS_TESTS_VARIABLE = "KERAS_CKPT_KERAS_TESTS"


def newest_keras_tests(session: nox.Session) -> str:
    """The callback tests directory of the Keras in nox's own environment (the main one, which
    the README's command installs), found without importing Keras."""
    spec = importlib.util.find_spec("keras")
    if spec is None or spec.origin is None:
        session.error("Keras's callback tests come from the main environment: install keras there")
    return str(pathlib.Path(spec.origin).parent / "src" / "callbacks")


@nox.session
def keras_floor(session: nox.Session) -> None:
    """The suite's Keras-facing tests on Keras 3.5 with TensorFlow 2.18."""
    session.install(*(f"{name}=={version}" for name, version in FLOOR.items()), *OTHER_BACKENDS)
    session.install("-e", ".", "pytest>=8", "pytest-xdist>=3.5")
    # Installing keras_ckpt into a project's environment must leave its Keras and TensorFlow be.
    names = ", ".join(repr(name) for name in FLOOR)
    installed = session.run(
        "python",
        "-c",
        f"import importlib.metadata as m; print(*(m.version(n) for n in ({names},)))",
        silent=True,
    )
    if str(installed).split() != list(FLOOR.values()):
        session.error(f"installing keras_ckpt changed {list(FLOOR)} to {installed}")
    session.run(
        "python",
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        "-n",
        "2",
        *FLOOR_TESTS,
        *session.posargs,
        env={KERAS_TESTS_VARIABLE: newest_keras_tests(session)},
    )
