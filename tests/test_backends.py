"""The integration suite on the other Keras backends: every fast test that goes through a
backend, in a fresh process with KERAS_BACKEND set (a backend is chosen once per process)."""

import os
import re
import subprocess
import sys

import pytest

# Their outcome does not depend on the backend, so they run once, on TensorFlow: the pure core
# and the store (no Keras at all), argument checks at construction, the command line (local and
# remote) and hostile directories, which are refused before Keras reads a byte; Keras 2-era
# code and Keras's own callback tests, which check the drop-in classes' decisions and files
# against Keras's (the same logic whatever the backend; the files are the snapshot's, tested on
# every backend by the resume, async and loading tests); and the checkpoint events in the logs
# and TensorBoard (which writes with TensorFlow).
BACKEND_INDEPENDENT = [
    "test_pure.py",
    "test_store.py",
    "test_arguments.py",
    "test_cli.py",
    "test_cli_remote.py",
    "test_untrusted_directory.py",
    "test_decisions.py",
    "test_architecture.py",
    "test_package.py",
    "test_keras2_code.py",
    "test_keras_own_tests.py",
    "test_drop_in_fidelity.py",
    "test_events.py",
]


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_fast_suite_passes_on(backend):
    tests = os.path.dirname(__file__)
    assert all(os.path.exists(os.path.join(tests, name)) for name in BACKEND_INDEPENDENT)
    ignored = [f"--ignore={os.path.join(tests, name)}" for name in BACKEND_INDEPENDENT]
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-m",
            "not slow",
            "-p",
            "no:cacheprovider",
            *ignored,
            tests,
        ],
        env={**os.environ, "KERAS_BACKEND": backend},
        cwd=os.path.dirname(tests),
        capture_output=True,
        text=True,
        timeout=600,
    )
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    # "1 xfailed" is an expected failure, named in the test that expects it.
    assert " passed" in summary and re.search(r"\d+ failed", summary) is None, summary
