"""One GPU call: build, check against the references and time every jq kernel; JSON + logs under $OUT.

``PYTHONUNBUFFERED=1 XLA_FLAGS=--xla_allow_excess_precision=false PYTHONPATH=. python -m benchmarks.gpu_suite
[sections...]`` with sections from: quant_smoke quant_bench gemm_smoke gemm_bench gemm_schedules gemm_schedule_smoke
e2e (default: all), and the optional ``llm_decode`` (not in the default list; ``benchmarks/llm_decode.py``, its
arguments from ``JQ_LLM_DECODE_ARGS``, its record in ``$OUT/llm_decode.json``). ``gemm_schedules`` times the decode-GEMM configs of ``JQ_DECODE_SWEEP`` (``[bf16/]schedule:rows,
block_k,stages[,ctas|split];...``, see ``gemm_bench.parse_configs``) against XLA's bf16 dot in one run;
``gemm_schedule_smoke`` checks those of ``JQ_SMOKE_CONFIGS`` on small and ragged shapes.
Each section is isolated (an error is recorded and the next section runs).
"""

from __future__ import annotations

import os
import sys
import time
import traceback

import jax

from benchmarks.kernel_bench.common import device_info, save

SECTIONS = ("quant_smoke", "quant_bench", "gemm_smoke", "gemm_bench", "gemm_schedules", "gemm_schedule_smoke", "e2e")
OPTIONAL_SECTIONS = ("llm_decode",)  # run only when named (about 4 minutes on an H100)


def main(argv):
    wanted = argv[1:] or list(SECTIONS)
    rec = {"info": device_info(), "sections": {}}
    print(rec["info"], flush=True)
    try:
        import subprocess
        rec["nvidia_smi"] = subprocess.run(["nvidia-smi", "--query-gpu=name,clocks.sm,clocks.mem,memory.total",
                                            "--format=csv"], capture_output=True, text=True).stdout
    except Exception:
        pass
    for sec in wanted:
        t0 = time.time()
        print(f"==== {sec}", flush=True)
        try:
            if sec == "quant_smoke":
                from benchmarks.kernel_bench import quant_kernels as q
                r = q.smoke()
            elif sec == "quant_bench":
                from benchmarks.kernel_bench import quant_kernels as q
                r = q.bench(quick=os.environ.get("JQ_QUICK") == "1")
            elif sec == "gemm_smoke":
                from benchmarks.kernel_bench import gemm_bench as g
                r = g.smoke(_configs())
            elif sec == "gemm_bench":
                from benchmarks.kernel_bench import gemm_bench as g
                r = g.bench(_configs())
            elif sec == "gemm_schedules":
                from benchmarks.kernel_bench import gemm_bench as g
                sweep = os.environ.get("JQ_DECODE_SWEEP")
                r = g.decode_schedules(g.parse_configs(sweep) if sweep else None)
            elif sec == "gemm_schedule_smoke":
                from benchmarks.kernel_bench import gemm_bench as g
                r = g.schedule_smoke(g.parse_configs(os.environ.get("JQ_SMOKE_CONFIGS", g.SMOKE_CONFIGS)))
            elif sec == "e2e":
                from benchmarks.kernel_bench import e2e
                r = e2e.bench()
            elif sec == "llm_decode":
                import shlex

                from benchmarks import llm_decode
                from benchmarks.kernel_bench.common import OUT
                path = os.path.join(OUT, "llm_decode.json")
                full = llm_decode.main(shlex.split(os.environ.get("JQ_LLM_DECODE_ARGS", "")) + ["--out", path])
                r = {"record": path, "summary": full["summary"]}
            else:
                raise ValueError(sec)
        except Exception as e:
            traceback.print_exc()
            r = {"error": f"{type(e).__name__}: {str(e)[:3000]}"}
        r["wall_s"] = time.time() - t0
        rec["sections"][sec] = r
        save("suite.json", rec)
        jax.clear_caches()
    print(save("suite.json", rec))
    _summary(rec)


def _configs():
    from jq_kernels.w4a16 import MosaicConfig
    spec = os.environ.get("JQ_MOSAIC_CONFIGS", "1,128,4;2,128,4;1,256,3")
    out = []
    for part in spec.split(";"):
        r, k, s = (int(v) for v in part.split(","))
        out.append(MosaicConfig(rows=r, block_k=k, stages=s))
    return out


def _summary(rec):
    print("==== summary", flush=True)
    for sec, r in rec["sections"].items():
        if "error" in r:
            print(f"{sec}: ERROR {r['error'][:300]}")
        elif "failures" in r:
            print(f"{sec}: {r['failures']} failures in {len(r.get('cases', []))} cases")
        if sec == "quant_bench" and "rows" in r:
            print(f"copy ceiling {r['copy_ceiling_GBps']:.0f} GB/s")
            for row in r["rows"]:
                if "error" in row:
                    print(f"  {row['name']}: ERROR")
                else:
                    print(f"  {row['name'][:58]:58s} {row['GBps']:6.0f} GB/s {row['pct_copy']:5.1f}%")
        if sec == "gemm_bench":
            print("  fp8:", {k: v for k, v in r.get("fp8", {}).items() if k != "hlo_custom_calls"})
            for row in r.get("decode", []):
                print("  ", {k: (round(v, 2) if isinstance(v, float) else v) for k, v in row.items()
                             if not k.endswith("_error")})
                errs = {k: v[:200] for k, v in row.items() if k.endswith("_error")}
                if errs:
                    print("   errors:", errs)
        if sec == "e2e":
            print("  ", {k: v for k, v in r.items() if k != "details"})
        if sec == "llm_decode" and "summary" in r:
            print(r["summary"])


if __name__ == "__main__":
    main(sys.argv)
