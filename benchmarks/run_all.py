"""Runs every benchmark, one process each, and prints their reports one after the other.

Run: python benchmarks/run_all.py
(KERAS_BACKEND picks the backend for all of them; the default is TensorFlow. A run takes about
ten minutes on a 2-core CPU.)
"""

from __future__ import annotations

import os
import subprocess
import sys

BENCHMARKS = [
    ("1-2. stall per save, whole-fit overhead", "save_stall.py"),
    ("3. per-batch overhead of step-triggered callbacks", "step_trigger_overhead.py"),
    ("4. resume start-up, alias bytes", "resume_startup.py"),
    ("5. write throughput", "write_throughput.py"),
    ("6. remote directory (moto S3) against local: stall per save, whole fit", "remote_stall.py"),
    ("7. frozen backbone, with and without dedup: disk bytes, stall", "frozen_backbone.py"),
]


def main() -> int:
    here = os.path.dirname(os.path.abspath(__file__))
    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    failed = []
    for title, script in BENCHMARKS:
        print(f"\n# {title} ({script})", flush=True)
        result = subprocess.run([sys.executable, os.path.join(here, script)], env=environment)
        if result.returncode:
            failed.append(script)
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
