"""One GPU call: build, check against the references and time jq's kernels and models; JSON + logs under $OUT.

``PYTHONUNBUFFERED=1 XLA_FLAGS=--xla_allow_excess_precision=false PYTHONPATH=. python -m benchmarks.gpu_suite
[--budget-s S] [--small] [sections...]``. Every section runs in its own Python process (a crash, a hang or an
out-of-memory ends that section only; its process is killed at its time cap; :mod:`benchmarks.sections`) and writes
``$OUT/section_<name>.json`` as it goes; the suite merges them into ``$OUT/suite.json`` after each section (a killed
section lists what its incremental record finished) and prints a summary table at the end.
``--budget-s``: the whole command's wall-clock budget; a section starts only with >= 25 s left and gets
``min(its cap, what is left)`` (caps: :data:`CAPS`, ``JQ_CAP_<SECTION>=seconds`` overrides); inside a section the
budget guard stops starting new work before the cap. ``--small``: tiny shapes, for a CPU end-to-end test.

Sections (issue 15):
  ``gemm_sweep``  decode-GEMM schedule sweep with weight GB/s (:mod:`benchmarks.kernel_bench.decode_sweep`;
                  configs from ``JQ_DECODE_SWEEP``, default ``decode_sweep.SWEEP``);
  ``quant_sweep`` MXFP8 / NVFP4-1D quantize launch-parameter sweep vs copy (``JQ_QUANT_SWEEP``, default
                  ``quant_kernels.QUANT_SWEEP``);
  ``llm``         Llama-3-8B shape at full depth, bf16 vs FP8 / NVFP4 / INT4 W4A16 (+FP8 KV), B = 1, 8, 32,
                  decode and prefill (:mod:`benchmarks.llm_decode`; extra arguments from ``JQ_LLM_ARGS``);
  ``fp8_decode``  FP8 decode-GEMM kernel configs vs XLA bf16 / w8a8 / dequant at the decode and 8B layer shapes,
                  B = 1, 8, 32, weight GB/s, correctness vs w8a8 (:mod:`benchmarks.kernel_bench.fp8_decode_sweep`;
                  Triton configs from ``JQ_FP8_DECODE_SWEEP``, default ``jq_kernels.fp8_decode.CONFIGS``; Mosaic
                  wgmma configs from ``JQ_FP8_WGMMA_SWEEP``, default ``fp8_decode_sweep.WGMMA_CONFIGS``, ``none``);
  ``llm_real``    the real SmolLM2-135M: real-quantized serving vs fake quant, greedy tokens and logits, tok/s,
                  per preset the wall / compile / trace seconds of each phase (``JQ_LLM_REAL_ARGS``);
older ones: quant_smoke quant_bench gemm_smoke gemm_bench gemm_schedules gemm_schedule_smoke e2e.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
import traceback

SECTIONS = ("gemm_sweep", "quant_sweep", "llm", "llm_real", "fp8_decode")
OLD_SECTIONS = ("quant_smoke", "quant_bench", "gemm_smoke", "gemm_bench", "gemm_schedules", "gemm_schedule_smoke",
                "e2e")
CAPS = {"gemm_sweep": 90, "quant_sweep": 50, "llm": 170, "llm_real": 170,  # seconds, sum 570 (+ start-up margin)
        "fp8_decode": 90}
MIN_START_S = 25.0
SECTION_TAIL_S = 12.0  # a section's own budget ends this long before its cap (final prints and JSON)


def _out():
    from benchmarks.kernel_bench.common import OUT
    return OUT


def run_section(sec: str, budget_s: float, small: bool) -> dict:
    """The section's work in this process; returns its record (also saved as ``section_<sec>.json``)."""
    from benchmarks.kernel_bench.common import save
    if sec == "gemm_sweep":
        from benchmarks.kernel_bench import decode_sweep as d
        from benchmarks.kernel_bench import gemm_bench as g
        spec = os.environ.get("JQ_DECODE_SWEEP")
        configs = g.parse_configs(spec) if spec else None
        if small:
            configs = configs or g.parse_configs("bf16/stream_k:1,128,4;bf16/grid:1,128,3")
            r = d.decode_sweep(configs, batches=(1, 3), n=256, k=512, rounds=1, iters=2, budget_s=budget_s,
                               out_name="section_gemm_sweep.json")
        else:
            r = d.decode_sweep(configs, budget_s=budget_s, out_name="section_gemm_sweep.json")
        r["summary"] = d.table(r, sorted({row["B"] for row in r["rows"]}))
    elif sec == "quant_sweep":
        from benchmarks.kernel_bench import quant_kernels as q
        spec = os.environ.get("JQ_QUANT_SWEEP")
        entries = q.parse_quant_sweep(spec) if spec else None
        if small:
            entries = entries or q.parse_quant_sweep("mxfp8:256,4,2;mxfp8:64,4,2;nvfp4:256,4,2;nvfp4:64,8,3")
            r = q.quant_sweep(entries, shape=(256, 512), rounds=1, iters=2, budget_s=budget_s,
                              out_name="section_quant_sweep.json")
        else:
            r = q.quant_sweep(entries, budget_s=budget_s, out_name="section_quant_sweep.json")
        r["summary"] = "\n".join(
            [f"copy ceiling {r['copy_ceiling_GBps']:.0f} GB/s" + (" (interpret mode: no timing meaning)"
                                                                 if r["interpret"] else "")]
            + [f"  {row['name']:28s} " + (f"{row['pct_copy']:5.1f}% of copy, mismatches "
                                          f"{row['mismatches_vs_default']}" if "pct_copy" in row
                                          else row.get("error", row.get("skipped", ""))[:120])
               for row in r["rows"]]
            + [f"best {k}: {v}" for k, v in r.items() if k.startswith("best_")])
    elif sec == "fp8_decode":
        from benchmarks.kernel_bench import fp8_decode_sweep as f
        from jq_kernels import fp8_decode as D
        from jq_kernels import fp8_wgmma as WG
        spec, wspec = os.environ.get("JQ_FP8_DECODE_SWEEP"), os.environ.get("JQ_FP8_WGMMA_SWEEP")
        configs = D.parse_configs(spec) if spec else None
        wgmma = None if wspec is None else (() if wspec == "none" else WG.parse_wgmma_configs(wspec))
        if small:
            configs = configs or D.parse_configs("fp8:32,64,0,4,2;bf16:32,64,2,4,2")
            r = f.fp8_decode_sweep(configs, batches=(1, 3), decode_shape=("decode", 256, 512),
                                   layer_shapes=(("gate_up", 128, 256),), budget_s=budget_s, iters=2, max_copies=2,
                                   out_name="section_fp8_decode.json", wgmma_configs=wgmma)
        else:
            r = f.fp8_decode_sweep(configs, budget_s=budget_s, out_name="section_fp8_decode.json",
                                   wgmma_configs=wgmma)
    elif sec in ("llm", "llm_real"):
        from benchmarks import llm_decode
        path = os.path.join(_out(), f"section_{sec}_cells.json")
        env_args = shlex.split(os.environ.get("JQ_LLM_ARGS" if sec == "llm" else "JQ_LLM_REAL_ARGS", ""))
        if sec == "llm":
            base = ["--models", "llama3_8b", "--passes", "decode,prefill",
                    "--variants", "bf16,fp8,nvfp4,int4,nvfp4_kv8", "--reserve-s", "20"]
            if small:
                base = ["--smoke", "--passes", "decode,prefill", "--variants", "bf16,fp8,nvfp4_kv8", "--batches", "1"]
        else:
            base = ["--passes", "real", "--real-batches", "1", "--models", ""]
            if small:
                base = ["--smoke", "--passes", "real", "--real-presets", "fp8_kv8,nvfp4", "--models", ""]
        full = llm_decode.main(base + env_args + ["--budget-s", str(budget_s), "--out", path])
        r = {"record": path, "summary": full["summary"], "errors": full.get("errors", {})}
    elif sec in OLD_SECTIONS:
        r = _old_section(sec)
    else:
        raise ValueError(f"unknown section {sec!r}; sections: {SECTIONS + OLD_SECTIONS}")
    save(f"section_{sec}.json", r)
    return r


def _old_section(sec):
    if sec == "quant_smoke":
        from benchmarks.kernel_bench import quant_kernels as q
        return q.smoke()
    if sec == "quant_bench":
        from benchmarks.kernel_bench import quant_kernels as q
        return q.bench(quick=os.environ.get("JQ_QUICK") == "1")
    if sec == "gemm_smoke":
        from benchmarks.kernel_bench import gemm_bench as g
        return g.smoke(_configs())
    if sec == "gemm_bench":
        from benchmarks.kernel_bench import gemm_bench as g
        return g.bench(_configs())
    if sec == "gemm_schedules":
        from benchmarks.kernel_bench import gemm_bench as g
        sweep = os.environ.get("JQ_DECODE_SWEEP")
        return g.decode_schedules(g.parse_configs(sweep) if sweep else None)
    if sec == "gemm_schedule_smoke":
        from benchmarks.kernel_bench import gemm_bench as g
        return g.schedule_smoke(g.parse_configs(os.environ.get("JQ_SMOKE_CONFIGS", g.SMOKE_CONFIGS)))
    from benchmarks.kernel_bench import e2e
    return e2e.bench()


def _configs():
    from jq_kernels.w4a16 import MosaicConfig
    spec = os.environ.get("JQ_MOSAIC_CONFIGS", "1,128,4;2,128,4;1,256,3")
    return [MosaicConfig(rows=r, block_k=k, stages=s) for r, k, s in
            (tuple(int(v) for v in part.split(",")) for part in spec.split(";"))]


def _child(sec, budget_s, small):
    t0 = time.time()
    try:
        r = run_section(sec, budget_s, small)
    except Exception as e:  # noqa: BLE001 - recorded; the parent goes on with the next section
        traceback.print_exc()
        r = {"error": f"{type(e).__name__}: {str(e)[:3000]}"}
        from benchmarks.kernel_bench.common import save
        save(f"section_{sec}.json", r)
    print(f"section {sec} done in {time.time() - t0:.0f} s", flush=True)


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sections", nargs="*")
    ap.add_argument("--budget-s", type=float, default=450.0)
    ap.add_argument("--small", action="store_true", help="tiny shapes (CPU end-to-end test)")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # child process: run this section
    ap.add_argument("--section-budget", type=float, default=1e9, help=argparse.SUPPRESS)
    a = ap.parse_args(argv[1:])
    if a.one:
        return _child(a.one, a.section_budget, a.small)
    wanted = a.sections or list(SECTIONS)
    bad = [s for s in wanted if s not in SECTIONS + OLD_SECTIONS]
    if bad:
        ap.error(f"unknown sections {bad}; sections: {SECTIONS + OLD_SECTIONS}")
    from benchmarks.kernel_bench.common import save
    from benchmarks.sections import Section, run_sections
    t_start = time.time()
    rec = {"command": " ".join(argv), "budget_s": a.budget_s, "sections": {}}
    try:
        rec["nvidia_smi"] = subprocess.run(["nvidia-smi", "--query-gpu=name,clocks.sm,clocks.mem,memory.total",
                                            "--format=csv"], capture_output=True, text=True, timeout=20).stdout
    except Exception:  # noqa: BLE001 - no GPU tools here
        pass

    def plan(sec, left):  # cap: min(its cap, what is left); its own budget ends before the cap (prints, JSON)
        cap = min(float(os.environ.get(f"JQ_CAP_{sec.upper()}", CAPS.get(sec, 600))), left)
        cmd = [sys.executable, "-m", "benchmarks.gpu_suite", "--one", sec,
               "--section-budget", str(max(5.0, cap - SECTION_TAIL_S - 10.0))] + (["--small"] if a.small else [])
        return Section(name=sec, cmd=cmd, cap_s=cap, record=os.path.join(_out(), f"section_{sec}.json"))

    def merge(results):  # suite.json after every section; a killed LLM section lists its finished cells
        for sec, r in results.items():
            if r.get("timed_out") and "summary" not in r:
                r.setdefault("error", "killed at its cap")
                try:
                    r["summary"] = _partial_cells(sec)
                except Exception as e:  # noqa: BLE001 - a torn partial record must not stop the suite
                    r["summary"] = f"  (partial record unreadable: {type(e).__name__}: {e})"
        rec["sections"] = results
        save("suite.json", rec)

    run_sections(wanted, plan, budget_s=a.budget_s, save=merge, min_start_s=MIN_START_S)
    rec["wall_s"] = time.time() - t_start
    print(save("suite.json", rec))
    print(summary(rec))
    return rec


def _partial_cells(sec) -> str:
    """What a killed section finished, from its incremental record ``section_<sec>_cells.json``: the LLM cells one
    line each, the real-model presets as :func:`benchmarks.llm_exactness.summary` gives them."""
    path = os.path.join(_out(), f"section_{sec}_cells.json")
    if not os.path.exists(path):
        return "  (no partial record)"
    with open(path) as f:
        partial = json.load(f)
    lines = [f"  {k}: " + (f"{c['tok_s']:.0f} tok/s" if "tok_s" in c else str(c)[:120])
             for k, c in partial.get("cells", {}).items()]
    if "real" in partial:
        from benchmarks import llm_exactness
        lines.append(llm_exactness.summary(partial["real"]))
    return "\n".join(lines) + f"\n  (partial record: {path})"


def summary(rec) -> str:
    lines = [f"==== summary ({rec['wall_s']:.0f} s of {rec['budget_s']:.0f})"]
    for sec, r in rec["sections"].items():
        head = f"---- {sec}: {r.get('wall_s', 0):.0f} s" + (" TIMED OUT" if r.get("timed_out") else "")
        lines.append(head)
        if "skipped" in r:
            lines.append(f"  skipped: {r['skipped']}")
        if "error" in r:
            lines.append(f"  ERROR {r['error'][:300]}")
        if "summary" in r:
            lines.append(r["summary"])
        elif "failures" in r:
            lines.append(f"  {r['failures']} failures in {len(r.get('cases', []))} cases")
    return "\n".join(lines)


if __name__ == "__main__":
    main(sys.argv)
