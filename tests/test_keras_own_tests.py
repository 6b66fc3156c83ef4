"""Keras's own tests of the callbacks keras_ckpt replaces, run against keras_ckpt's classes.

How: one pytest subprocess runs Keras's test files (``keras/src/callbacks/*_test.py``), copied
into a temporary directory, with ``keras_own_tests_plugin`` loaded (``-p``). The plugin replaces
``keras.src.callbacks.EarlyStopping`` etc. by keras_ckpt's classes before pytest imports any test
module; Keras's tests do ``from keras.src import callbacks`` and look each class up on that module
at every use, so they construct ours. Nothing of Keras's is copied into this repository or
rewritten: a new Keras release's tests run as they are. The results come back as JUnit XML, one
pytest item here per Keras test.

Which files: those the installed Keras wheel ships, or, where ``KERAS_CKPT_KERAS_TESTS`` names a
directory, those in it. Wheels before Keras 3.6 or so ship none, so ``nox -s keras_floor`` sets
it to the directory of the main environment's (newest) Keras. Tests from another Keras also run
with the installed Keras's own classes, the reference: a test the installed Keras fails itself
(it uses an argument or behaviour that came later) is not applicable there and skips, saying so.

Every applicable Keras test must pass, except those in ``EXPECTED_FAILURES``: each pins a Keras
limitation keras_ckpt removes on purpose, and must still fail, with the failure it is listed for
(so one that starts passing, or fails for another reason, is noticed). Where the wheel ships no
tests and no directory is named, everything here is skipped, saying so.
"""

import ast
import os
import pathlib
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ElementTree

import keras
import pytest

import keras_ckpt
from keras_ckpt.writer import WRITER

KERAS_TESTS_VARIABLE = "KERAS_CKPT_KERAS_TESTS"
INSTALLED_KERAS_TESTS = pathlib.Path(keras.__file__).parent / "src" / "callbacks"
KERAS_TESTS = pathlib.Path(os.environ.get(KERAS_TESTS_VARIABLE) or INSTALLED_KERAS_TESTS)
# Tests written for another Keras than the one that runs them need the reference run.
OTHER_KERAS = KERAS_TESTS.resolve() != INSTALLED_KERAS_TESTS.resolve()
TEST_FILES = [
    "backup_and_restore_test.py",
    "early_stopping_test.py",
    "learning_rate_scheduler_test.py",
    "model_checkpoint_test.py",
    "reduce_lr_on_plateau_test.py",
    "swap_ema_weights_test.py",
]
TESTS_DIRECTORY = pathlib.Path(__file__).parent
SOURCE_ROOT = TESTS_DIRECTORY.parent

PLATEAU = "reduce_lr_on_plateau_test.py::ReduceLROnPlateauTest"
SWAP = "swap_ema_weights_test.py::SwapEMAWeightsTest"
EMA_FILES_HOLD_RAW_WEIGHTS = (
    "It expects Keras's recipe, SwapEMAWeights(swap_on_epoch=True) before ModelCheckpoint, to "
    "save the moving averages as the model's weights, with the raw weights in the optimizer's "
    "slots: a resume from that file diverges. keras_ckpt's checkpoints hold the raw weights as "
    "the model's and the averages in the optimizer, so they resume exactly; "
    "load_best(weights='ema') and keras-ckpt export --weights ema give the averages "
    "(test_ema.py)."
)

# Keras test -> (text its failure must contain, why keras_ckpt differs on purpose).
EXPECTED_FAILURES = {
    f"{PLATEAU}::test_throws_when_optimizer_has_schedule": (
        "TypeError not raised",
        "Keras cannot lower the rate of an optimizer built with a LearningRateSchedule and raises "
        "TypeError; keras_ckpt's ReduceLROnPlateau scales the schedule instead (tested in "
        "test_stopping_and_lr.py).",
    ),
    f"{SWAP}::test_swap_ema_weights_on_epoch": ("AssertionError", EMA_FILES_HOLD_RAW_WEIGHTS),
    f"{SWAP}::test_swap_ema_weights_with_tf_distribute": (
        "AssertionError",
        EMA_FILES_HOLD_RAW_WEIGHTS,
    ),
    "backup_and_restore_test.py::BackupAndRestoreCallbackTest::test_best_case_step": (
        "_last_batch_seen",
        "It reads Keras's private batch counter `_last_batch_seen` (kept by an on_train_batch_end "
        "hook, which would turn off asynchronous batch dispatch) and expects Keras's restart of "
        "the interrupted epoch from batch 0, which trains its first batches twice (17 calls "
        "where 5 epochs of 3 batches make 15). keras_ckpt continues at the saved batch: "
        "test_backup_and_restore_continues_the_interrupted_epoch below.",
    ),
    "backup_and_restore_test.py::BackupAndRestoreCallbackTest::test_backup_corrupted": (
        "_weights_path",
        "It reads and overwrites Keras's private backup files (`_weights_path`, "
        "`_training_metadata_path`, their `.bkp` copies). keras_ckpt keeps checksummed "
        "checkpoints committed by a manifest, and falls back to the previous one when the newest "
        "is damaged: test_backup_and_restore_falls_back_from_a_damaged_checkpoint below.",
    ),
}


def keras_test_ids() -> list[str]:
    """``file::Class::test`` for every test method of Keras's test files, read with ``ast``
    (collection must not import them: that would import Keras's test utilities here)."""
    ids = []
    for name in TEST_FILES:
        path = KERAS_TESTS / name
        if not path.is_file():
            continue
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.ClassDef):
                ids += [
                    f"{name}::{node.name}::{method.name}"
                    for method in node.body
                    if isinstance(method, ast.FunctionDef) and method.name.startswith("test")
                ]
    return ids


KERAS_TEST_IDS = keras_test_ids()
NO_TESTS = (
    f"Keras {keras.__version__}'s wheel ships no tests of its callbacks (in {KERAS_TESTS}); "
    f"{KERAS_TESTS_VARIABLE} may name the directory of a newer Keras's"
)
# How a JUnit outcome reads in a sentence.
OUTCOMES = {"passed": "passes", "failure": "fails", "error": "errors", "skipped": "skips"}


def run_keras_tests(directory: pathlib.Path, *plugin_options: str) -> dict[str, tuple[str, str]]:
    """Runs Keras's test files, copied into ``directory``, in one pytest subprocess;
    ``{test id: (outcome, text)}``, and ``{file: ("error", text)}`` for a file that fails to
    import (tests from a newer Keras may import what the installed one lacks)."""
    files = [
        shutil.copy(KERAS_TESTS / name, directory / name)
        for name in TEST_FILES
        if (KERAS_TESTS / name).is_file()
    ]
    report = directory / "report.xml"
    path = os.pathsep.join(
        [str(SOURCE_ROOT), str(TESTS_DIRECTORY), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "keras_own_tests_plugin",
        *plugin_options,
        "-p",
        "no:cacheprovider",
        # No ini file (neither ours nor any above the copies), ids relative to the copies.
        "-c",
        os.devnull,
        "--rootdir",
        str(directory),
        "-q",
        "--continue-on-collection-errors",
        f"--junitxml={report}",
        *files,
    ]
    env = {**os.environ, "PYTHONPATH": path, "KERAS_BACKEND": keras.backend.backend()}
    run = subprocess.run(
        command, cwd=directory, env=env, capture_output=True, text=True, timeout=900
    )
    if not report.is_file():
        pytest.fail(f"Keras's tests did not run:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}")
    results = {}
    for case in ElementTree.parse(report).getroot().iter("testcase"):
        module, _, cls = case.get("classname", "").rpartition(".")
        test_id = f"{module.rpartition('.')[2]}.py::{cls}::{case.get('name')}"
        if not cls:  # the file failed to import: pytest reports it under its module name
            test_id = f"{case.get('name')}.py"
        outcome, text = "passed", ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = child.tag
                text = f"{child.get('message', '')}\n{child.text or ''}"
        results[test_id] = (outcome, text)
    return results


def result_of(results: dict[str, tuple[str, str]], test_id: str) -> tuple[str, str] | None:
    """A test's result, or its file's where the file failed to import (none of its tests ran)."""
    return results.get(test_id) or results.get(test_id.partition("::")[0])


def what_failed(text: str) -> str:
    """A failure's message; for a file that failed to import, the exception it raised."""
    lines = text.strip().splitlines() or [""]
    raised = [line[1:].strip() for line in lines if line.startswith("E   ")]
    return (raised[-1] if lines[0] == "collection failure" and raised else lines[0])[:300]


@pytest.fixture(scope="module")
def keras_results(tmp_path_factory):
    """Keras's tests with keras_ckpt's classes in place of Keras's."""
    return run_keras_tests(tmp_path_factory.mktemp("keras_own_tests"))


@pytest.fixture(scope="module")
def reference_results(tmp_path_factory):
    """The same tests with the installed Keras's own classes, where they come from another Keras;
    None where they are the installed Keras's own (they pass with its classes, by its CI)."""
    if not OTHER_KERAS:
        return None
    return run_keras_tests(tmp_path_factory.mktemp("reference"), "--keras-own-classes")


@pytest.mark.slow
@pytest.mark.parametrize(
    "test_id", KERAS_TEST_IDS or [pytest.param("none", marks=pytest.mark.skip(reason=NO_TESTS))]
)
def test_keras_own_test_passes_with_keras_ckpt_classes(keras_results, reference_results, test_id):
    ours = result_of(keras_results, test_id)
    assert ours, f"no result for {test_id}: {sorted(keras_results)}"
    outcome, text = ours
    if reference_results is not None:
        reference_result = result_of(reference_results, test_id)
        assert reference_result, f"no reference result for {test_id}: {sorted(reference_results)}"
        reference, reference_text = reference_result
        if reference != "passed":
            reason = what_failed(reference_text)
            pytest.skip(
                f"not applicable on Keras {keras.__version__}: with its own classes this "
                f"test {OUTCOMES[reference]} ({reason}); with keras_ckpt's it {OUTCOMES[outcome]}"
            )
    if outcome == "skipped":
        pytest.skip(f"Keras's test skips itself: {text.strip()}")
    if test_id in EXPECTED_FAILURES:
        expected, why = EXPECTED_FAILURES[test_id]
        assert outcome == "failure", f"expected to fail on purpose ({why}), but it {outcome}"
        assert expected in text, f"fails for another reason than the listed one ({why}):\n{text}"
    else:
        assert outcome == "passed", text


@pytest.mark.slow
@pytest.mark.skipif(not KERAS_TEST_IDS, reason=NO_TESTS)
def test_every_keras_result_is_checked(keras_results, reference_results):
    # A parametrized Keras test reports under names the ast reading above does not know.
    # A file that failed to import reports once, under its name, for all its tests.
    for results in filter(None, [keras_results, reference_results]):
        assert set(results) <= {*KERAS_TEST_IDS, *TEST_FILES}
        assert all(result_of(results, test_id) for test_id in KERAS_TEST_IDS)
    assert set(EXPECTED_FAILURES) <= set(KERAS_TEST_IDS)


@pytest.mark.skipif(
    KERAS_TESTS_VARIABLE not in os.environ and not KERAS_TEST_IDS,
    reason=f"{NO_TESTS}; none expected",
)
def test_every_keras_test_file_is_there():
    # A directory named on purpose must hold the tests (a wrong one would skip them all), and a
    # wheel that ships some must ship each (a renamed file would go unnoticed).
    missing = [name for name in TEST_FILES if not (KERAS_TESTS / name).is_file()]
    assert not missing, f"{KERAS_TESTS} lacks {missing}"


def test_the_plugin_substitutes_every_drop_in_class():
    import keras_own_tests_plugin

    exported = {name for name in keras_ckpt.__all__ if hasattr(keras.callbacks, name)}
    assert set(keras_own_tests_plugin.REPLACED) == exported


# What keras_ckpt does where the Keras tests above fail on purpose ----------------------------


class CanaryLayer(keras.layers.Layer):
    """Counts its calls in training, in a variable saved with the weights (as Keras's test)."""

    def __init__(self):
        super().__init__()
        self.counter = self.add_weight(
            shape=(), initializer="zeros", dtype="float32", trainable=False
        )

    def call(self, x):
        self.counter.assign_add(1)
        return x


class Interrupt(keras.callbacks.Callback):
    def __init__(self, batches=None, epochs=None):
        super().__init__()
        self.batches, self.epochs = batches, epochs

    def on_train_batch_end(self, batch, logs=None):
        self.batches = None if self.batches is None else self.batches - 1
        if self.batches == 0:
            WRITER.wait()
            raise RuntimeError("interrupted")

    def on_epoch_end(self, epoch, logs=None):
        self.epochs = None if self.epochs is None else self.epochs - 1
        if self.epochs == 0:
            # A crash skips on_train_end: let the save in flight land first, as the writer
            # thread would before the interpreter exits, so the directory is the same each time.
            WRITER.wait()
            raise RuntimeError("interrupted")


def canary_model():
    model = keras.Sequential([keras.Input((3,)), CanaryLayer(), keras.layers.Dense(1)])
    model.compile(loss="mse", optimizer="sgd")
    return model


def counter(model):
    return int(keras.ops.convert_to_numpy(model.layers[0].counter))


def canary_data():
    import numpy as np

    rng = np.random.default_rng(0)
    return rng.random((10, 3)), rng.random((10, 1))  # 3 batches of 4, 4 and 2


def test_backup_and_restore_continues_the_interrupted_epoch(tmp_path):
    x, y = canary_data()
    backup = keras_ckpt.BackupAndRestore(tmp_path / "backup", save_freq=1)
    model = canary_model()
    with pytest.raises(RuntimeError, match="interrupted"):
        model.fit(
            x, y, batch_size=4, epochs=2, callbacks=[backup, Interrupt(batches=2)], shuffle=False
        )
    assert counter(model) == 2 and backup._current_epoch == 0
    history = model.fit(x, y, batch_size=4, epochs=5, callbacks=[backup], verbose=0, shuffle=False)
    # Every batch of the 5 epochs trained once (Keras's test expects 17: two batches twice).
    assert (counter(model), backup._current_epoch, history.epoch[-1]) == (15, 5, 4)


def test_backup_and_restore_falls_back_from_a_damaged_checkpoint(tmp_path):
    x, y = canary_data()
    directory = tmp_path / "backup"
    backup = keras_ckpt.BackupAndRestore(directory, double_checkpoint=True)
    model = canary_model()
    with pytest.raises(RuntimeError, match="interrupted"):
        model.fit(x, y, batch_size=4, epochs=6, callbacks=[backup, Interrupt(epochs=3)])
    # An epoch's save is taken as the next begins, so the interrupted third epoch has none.
    newest, previous = keras_ckpt.list_checkpoints(directory)[::-1]
    assert backup._current_epoch == 3
    pathlib.Path(newest.path).write_text("0")  # as Keras's test damages its newest backup
    with pytest.warns(UserWarning, match="skipping"):
        history = model.fit(
            x, y, batch_size=4, epochs=5, callbacks=[backup], verbose=0, shuffle=False
        )
    assert backup.resumed_from.filename == previous.filename
    assert (counter(model), backup._current_epoch, history.epoch[-1]) == (15, 5, 4)
