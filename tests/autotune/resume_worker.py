"""Subprocess body of the SIGKILL/resume test: autotune with the cost-model benchmark.

Usage: python resume_worker.py MODEL OUT LOG park|0  (park: wait for a signal once the first pattern is saved)
"""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parents[1])]

from fakes import CostModelBenchmark, ParkAfterFirstPattern  # noqa: E402

from jq_autotune.config import Config  # noqa: E402
from jq_autotune.workflow import autotune  # noqa: E402

if __name__ == "__main__":
    model, out, log, mode = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
    cfg = Config(schemes_per_region=8, warmup_runs=1, timing_runs=3, seed=3)
    bench = CostModelBenchmark(log)
    if mode == "park":
        bench = ParkAfterFirstPattern(bench, Path(out) / "autotuner_state.yaml")
    autotune(model, out, cfg, benchmark=bench, progress=False, echo=lambda s: None)
