"""The integration suite on the other Keras backends: every fast test, in a fresh process with
KERAS_BACKEND set (a backend is chosen once per process)."""

import os
import subprocess
import sys

import pytest


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_fast_suite_passes_on(backend):
    tests = os.path.dirname(__file__)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-m", "not slow", "-p", "no:cacheprovider", tests],
        env={**os.environ, "KERAS_BACKEND": backend},
        cwd=os.path.dirname(tests),
        capture_output=True,
        text=True,
        timeout=600,
    )
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in summary and "failed" not in summary, summary
