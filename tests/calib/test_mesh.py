"""Calibration over a device mesh (issue 12 item 5): statistics (amax, histograms, SmoothQuant's channel amaxes,
AWQ's sums) reduce across data- and tensor-parallel axes, so calibrating over 8 devices -- params and batches
sharded under ``jit`` (NamedSharding), or a ``shard_map`` inside the model -- gives one device's quantizer state.

The 8 CPU devices need their own process (this session keeps 2, tests/conftest.py): the cases run in
``_mesh_worker.py``, which asserts and prints ``OK <case>``."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CASES = ["max+percentile sharded jit", "max+percentile shard_map tensor_parallel", "smoothquant sharded jit",
         "smoothquant shard_map data_parallel", "awq_lite sharded jit", "awq_lite shard_map data_parallel"]


def test_eight_devices_calibrate_like_one():
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    env.pop("XLA_FLAGS", None)
    r = subprocess.run([sys.executable, str(Path(__file__).with_name("_mesh_worker.py"))], capture_output=True,
                       text=True, cwd=ROOT, env=env, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    assert [line[3:] for line in r.stdout.splitlines() if line.startswith("OK ")] == CASES
