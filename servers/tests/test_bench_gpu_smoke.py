"""The GPU benchmark runs only where a GPU is lent; its --smoke mode runs the same flow on the CPU with tiny
models, so that a change to the models or the engine cannot leave it broken until the next GPU session."""

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_gpu.py"


def test_bench_gpu_smoke_prints_its_table():
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke"], capture_output=True, text=True, timeout=600, env=env
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| tiny")]
    # Two models at batch 1, 4 and 16, each with a server and a bare-loop figure.
    assert len(rows) == 6, done.stdout
