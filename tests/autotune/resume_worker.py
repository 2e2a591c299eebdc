"""Subprocess body of the SIGKILL/resume test: autotune with the cost-model benchmark.

Usage: python resume_worker.py MODEL OUT LOG DELAY_S
"""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parents[1])]

from fakes import CostModelBenchmark  # noqa: E402

from jq_autotune.config import Config  # noqa: E402
from jq_autotune.workflow import autotune  # noqa: E402

if __name__ == "__main__":
    model, out, log, delay = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    cfg = Config(schemes_per_region=8, warmup_runs=1, timing_runs=3, seed=3)
    autotune(model, out, cfg, benchmark=CostModelBenchmark(log, delay), progress=False, echo=lambda s: None)
