"""W4A16 prefill GEMM sweep (issue 15 item 3): the Pallas-Triton prefill kernel's configs against XLA bf16, the
chunked Mosaic decode path and dequantize-to-bf16 + XLA, at prefill token counts.

For ``y = x @ W.T`` with N x K in {14336 x 4096 (gate/up), 4096 x 14336 (down), 28672 x 8192 (fused gate+up)} and
M in {512, 2048, 128, 64, 256}, every method is timed in the same run, one ``jit`` per measurement, :func:`benchmarks.kernel_bench.common.time_fn` cycling over distinct
activations and weight copies (more bytes than the 50 MB L2):

* ``bf16``: XLA's ``x @ W_bf16.T`` (f32 accumulation), the bar;
* ``decode_chunks:nvfp4``: today's W4A16 prefill, :func:`jq_kernels.w4a16.w4a16_matmul` (Mosaic decode GEMM on
  64-token chunks; M <= 512 only: 2048 tokens are 32 Mosaic calls, and run 26 measured 512 already);
* ``dequant:nvfp4``: ``x @ qt.dequantize(bf16).T`` (the weight dequantized by XLA in the same jit);
* ``kernel:nvfp4:<config>``: :func:`jq_kernels.w4a16.w4a16_prefill_matmul` (configs ending ``-ptx``: the inline-PTX
  decode, checked on the GPU by the error columns only): every candidate config at the first shape and M = 512; the
  three fastest correct ones (and the default) at the first shape's other M; at the other shapes the fastest
  correct config of the first shape at that M (else the two fastest at M = 512) and the default;
* ``kernel:int4:<config>``: the same kernel on INT4 (group 128) weights, the first NVFP4 candidate of that cell.

Order: M = 512 and 2048 at every shape, then the other M at every shape (a run cut by the budget still covers
every shape at the two main token counts).

Correctness on the device, per kernel row: max-abs and relative (Frobenius) error against the f32 reference
``x_bf16 @ dequantize(W).T`` (HIGHEST precision), and against the decode path's output where it ran (the same
products: equal up to f32 summation order and the bf16 output rounding). Every method writes bf16 (rounding: up to
2^-9 relative), so a row is ``ok`` when finite and its relative error vs the reference is <= 3e-3 (NVFP4) / 5e-3
(INT4, whose kernel also rounds ``code * amax/7`` to bf16, as the decode GEMM does); a layout or pipelining bug
shows as an error of order 1. The interpret-mode tests check the f32 numerics to 1e-6.

``PYTHONUNBUFFERED=1 PYTHONPATH=. python -m benchmarks.kernel_bench.w4a16_prefill --budget-s 230``
(JSON: ``$OUT/w4a16_prefill.json``, rewritten after every row). ``--smoke``: tiny shapes in Pallas interpret mode on
a CPU (the harness end to end; no timing meaning).
"""

from __future__ import annotations

import argparse
import faulthandler
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from benchmarks.kernel_bench.common import device_info, save, time_fn
from jq import qtensor
from jq.config import QuantizerSpec
from jq_kernels.w4a16 import pack_w4, w4a16_matmul
from jq_kernels.w4a16.prefill import (
    CONFIGS,
    PrefillConfig,
    prefill_plan,
    w4a16_prefill_matmul,
)

SHAPES = (("gate_up", 14336, 4096), ("down", 4096, 14336), ("gate_up_fused", 28672, 8192))
MS = (512, 2048, 128, 64, 256)
SPECS = {"nvfp4": QuantizerSpec(num_bits=(2, 1), block_sizes={-1: 16, "type": "dynamic", "scale_bits": (4, 3)}),
         "int4": QuantizerSpec(num_bits=4, block_sizes={-1: 128})}
OK_REL = {"nvfp4": 3e-3, "int4": 5e-3}  # bf16 output (2^-9 relative) (+ INT4's bf16 weight rounding)
L2_BYTES = 50 << 20
CHUNKED_MAX_M = 512
SMOKE_SHAPES = (("small", 256, 512), ("small_t", 128, 384))
SMOKE_MS = (40, 16)
SMOKE_CONFIGS = (PrefillConfig(block_m=16, block_n=64), PrefillConfig(block_m=32, block_n=128, swap_ab=True),
                 PrefillConfig(block_m=16, block_n=64, block_k=128, x_permute="kernel"),
                 PrefillConfig(block_m=16, block_n=64, decode="ptx"))  # interpret mode: recorded as an error


def _pack(qt, fmt):
    return pack_w4(qt.data, qt.scale, qt.global_scale, fmt=fmt, shape=qt.shape)


def _weights(n, k, seed):
    """bf16 weight copies and, per format, QTensor / PackedW4 copies: enough bytes to spill the L2."""
    keys = jax.random.split(jax.random.key(seed), 4)
    draw = jax.jit(lambda kk: (jax.random.normal(kk, (n, k), jnp.float32) * 0.02).astype(jnp.bfloat16))
    n_bf16 = max(1, min(4, -(-2 * L2_BYTES // (2 * n * k))))
    n_q = max(1, min(4, -(-2 * L2_BYTES // (n * k // 2))))
    ws = [jax.block_until_ready(draw(kk)) for kk in keys[:max(n_bf16, n_q)]]
    out = {"bf16": ws[:n_bf16]}
    for fmt, spec in SPECS.items():
        quant = jax.jit(lambda w, spec=spec: qtensor.quantize(w.astype(jnp.float32), spec))
        pack = jax.jit(lambda qt, fmt=fmt: _pack(qt, fmt))
        qts = [jax.block_until_ready(quant(w)) for w in ws[:n_q]]
        out[fmt] = (qts, [jax.block_until_ready(pack(q)) for q in qts])
    return out


def _method_fn(method, fmt, cfg, interpret):
    """One jitted ``f(x, w)`` per measurement; ``w``: bf16 array, QTensor or PackedW4 by method."""
    if method == "bf16":
        return jax.jit(lambda x, w: lax.dot_general(x, w, (((1,), (1,)), ((), ())),
                                                    preferred_element_type=jnp.float32).astype(jnp.bfloat16))
    if method == "dequant":
        return jax.jit(lambda x, qt: lax.dot_general(x, qt.dequantize(jnp.bfloat16), (((1,), (1,)), ((), ())),
                                                     preferred_element_type=jnp.float32).astype(jnp.bfloat16))
    if method == "decode_chunks":
        return jax.jit(lambda x, pw: w4a16_matmul(x, pw))
    return jax.jit(lambda x, pw: w4a16_prefill_matmul(x, pw, cfg=cfg, interpret=interpret))


def _reference(x, qt):
    """f32 ``x @ dequantize(W).T`` at HIGHEST precision (on the device)."""
    return jax.jit(lambda x, qt: lax.dot_general(x.astype(jnp.float32), qt.dequantize(jnp.float32),
                                                 (((1,), (1,)), ((), ())), precision=lax.Precision.HIGHEST,
                                                 preferred_element_type=jnp.float32))(x, qt)


def _errs(y, ref):
    d = np.asarray(y, np.float64) - ref
    return {"max_abs_err": float(np.max(np.abs(d))), "max_abs_ref": float(np.max(np.abs(ref))),
            "rel_err": float(np.linalg.norm(d) / max(np.linalg.norm(ref), 1e-30))}


def sweep(shapes=SHAPES, ms=MS, configs=CONFIGS, budget_s=230.0, iters=10, out_name="w4a16_prefill.json",
          chunked_max_m=CHUNKED_MAX_M) -> dict:
    t0 = time.time()
    on_gpu = jax.default_backend() == "gpu"
    interpret = not on_gpu
    configs = list(configs)
    rec = {"info": device_info(), "configs": [c.name for c in configs], "ms": list(ms), "rows": [],
           "harness_only": interpret, "budget_s": budget_s,
           "method": "one jit per measurement; time_fn cycling distinct activations x weight copies"}
    best = {}  # m -> fastest correct nvfp4 config name (from the first shape)
    ranking = []  # correct nvfp4 config names of the full sweep (first shape, first M), fastest first
    cache = {}  # (n, k) -> weights, kept for the second round of token counts

    def left():
        return budget_s - (time.time() - t0)

    # the first two token counts at every shape, then the others: a cut run still covers every shape
    rounds = [(shape, tuple(ms[:2])) for shape in shapes] + [(shape, tuple(ms[2:])) for shape in shapes if ms[2:]]
    for (name, n, k), round_ms in rounds:
        first = name == shapes[0][0]  # the first shape sweeps every config
        if left() < 10:
            rec["rows"].append({"shape": name, "ms": list(round_ms), "skipped": "budget"})
            continue
        try:
            wts = cache.get((n, k)) or cache.setdefault((n, k), _weights(n, k, seed=n + k))
        except Exception as e:  # noqa: BLE001 - a shape that cannot be built is recorded, the others run
            rec["rows"].append({"shape": name, "error": f"weights: {type(e).__name__}: {str(e)[:800]}"})
            save(out_name, rec)
            continue
        for m in round_ms:
            if first and m == ms[0]:
                kcfgs = configs  # the full sweep
            else:
                kcfgs = _picked(configs, [best.get(m)] if m in best else ranking[:3 if first else 2])
            _cell(rec, name, n, k, m, wts, kcfgs, best, first, interpret, on_gpu, left, iters, out_name,
                  chunked_max_m)
            if first and m == ms[0]:
                ranking[:] = _ranking(rec, name, m)
        rec["best_config"] = {str(m): c for m, c in best.items()}
        rec["ranking"] = list(ranking)
        save(out_name, rec)
    rec["wall_s"] = time.time() - t0
    rec["summary"] = table(rec)
    save(out_name, rec)
    print(rec["summary"], flush=True)
    return rec


def _picked(configs, names):
    """The configs named (in that order) and the default."""
    out = [c for nm in names for c in configs if c.name == nm]
    return out + [c for c in configs[:1] if c not in out]


def _ranking(rec, shape, m):
    """Names of the correct NVFP4 kernel configs timed at (shape, m), fastest first."""
    ok = [r for r in rec["rows"] if r.get("shape") == shape and r.get("M") == m and r.get("ok") and "us" in r
          and r["method"].startswith("kernel:nvfp4:")]
    return [r["method"].split(":", 2)[2] for r in sorted(ok, key=lambda r: r["us"])]


def _cell(rec, name, n, k, m, wts, kcfgs, best, first, interpret, on_gpu, left, iters, out_name, chunked_max_m):
    """Every method at one (shape, M): rows appended to ``rec`` and saved after each."""
    xs = [jax.random.normal(kk, (m, k), jnp.float32).astype(jnp.bfloat16)
          for kk in jax.random.split(jax.random.key(m), 3)]
    refs, decode_out = {}, {}
    base_us = None
    icfg = kcfgs[:1]  # INT4: the first candidate (the fastest NVFP4 config known for this M, else the default)
    methods = [("bf16", None, None), ("decode_chunks", "nvfp4", None), ("dequant", "nvfp4", None)]
    methods += [("kernel", "nvfp4", c) for c in kcfgs] + [("kernel", "int4", c) for c in icfg]
    for method, fmt, cfg in methods:
        label = method + (f":{fmt}" if fmt else "") + (f":{cfg.name}" if cfg else "")
        row = {"shape": name, "N": n, "K": k, "M": m, "method": label}
        rec["rows"].append(row)
        if left() < 5:
            row["skipped"] = "budget"
            continue
        if method == "decode_chunks" and (m > chunked_max_m or not on_gpu):
            row["skipped"] = "needs a GPU" if not on_gpu else f"M > {chunked_max_m}"
            continue
        if cfg is not None:
            row["plan"] = prefill_plan(m, wts[fmt][1][0], cfg)
        faulthandler.dump_traceback_later(max(30.0, min(120.0, left())), exit=True)  # a hang ends the run
        try:
            if method == "bf16":
                ws = wts["bf16"]
            else:
                ws = wts[fmt][0] if method == "dequant" else wts[fmt][1]
            fn = _method_fn(method, fmt, cfg, interpret)
            tc = time.time()
            y = jax.block_until_ready(fn(xs[0], ws[0]))
            row["compile_s"] = time.time() - tc
            row["finite"] = bool(jnp.all(jnp.isfinite(y)))
            if fmt is not None:
                if fmt not in refs:
                    refs[fmt] = np.asarray(_reference(xs[0], wts[fmt][0][0]), np.float64)
                row.update(_errs(y, refs[fmt]))
                if method == "decode_chunks":
                    decode_out[fmt] = np.asarray(y, np.float64)
                elif method == "kernel" and fmt in decode_out:
                    row["rel_err_vs_decode"] = _errs(y, decode_out[fmt])["rel_err"]
                if method == "kernel":
                    row["ok"] = row["finite"] and row["rel_err"] <= OK_REL[fmt]
            args = [(xs[i % len(xs)], ws[i % len(ws)]) for i in range(len(xs) * len(ws))]
            t = time_fn(fn, args, iters=iters if on_gpu else 1, warmup=2 if on_gpu else 1, reps=3 if on_gpu else 1)
            row["us"] = t["s"] * 1e6
            row["TFLOPs"] = 2 * m * n * k / t["s"] / 1e12
            if method == "bf16":
                base_us = row["us"]
            elif base_us is not None:
                row["speedup_vs_bf16"] = base_us / row["us"]
        except Exception as e:  # noqa: BLE001 - a failing method is recorded, the others run
            row["error"] = f"{type(e).__name__}: {str(e)[:1500]}"
        faulthandler.cancel_dump_traceback_later()
        print(_line(row), flush=True)
        save(out_name, rec)
    if first and _ranking(rec, name, m):
        best[m] = _ranking(rec, name, m)[0]


def _line(r) -> str:
    head = f"{r['shape']:13s} M={r['M']:5d} {r['method']:36s}"
    if "us" not in r:
        return head + " " + (r.get("skipped") or r.get("error", "?"))[:300]
    extra = f" x{r['speedup_vs_bf16']:.2f} bf16" if "speedup_vs_bf16" in r else ""
    err = f" rel_err {r['rel_err']:.1e} max_abs {r['max_abs_err']:.1e}" if "rel_err" in r else ""
    err += f" vs_decode {r['rel_err_vs_decode']:.1e}" if "rel_err_vs_decode" in r else ""
    bad = " WRONG" if r.get("ok") is False else ""
    return head + f" {r['us']:9.1f} us {r['TFLOPs']:6.1f} TFLOP/s{extra}{err}{bad} (compile {r['compile_s']:.1f} s)"


def table(rec) -> str:
    """One line per (shape, method): ``M=m: us, x bf16`` for each M."""
    lines = ["W4A16 prefill GEMM" + (" (CPU interpret harness: no timing meaning)" if rec["harness_only"] else "")]
    keys = list(dict.fromkeys((r["shape"], r["method"]) for r in rec["rows"] if "method" in r))
    for shape, method in keys:
        cells = []
        for m in rec["ms"]:
            r = next((r for r in rec["rows"] if r.get("shape") == shape and r.get("method") == method
                      and r.get("M") == m), None)
            if r is None:
                continue
            if "us" not in r:
                cells.append(f"M={m}: {(r.get('skipped') or r.get('error', '-'))[:20]}")
                continue
            sp = f" {r['speedup_vs_bf16']:4.2f}x" if "speedup_vs_bf16" in r else ""
            cells.append(f"M={m}: {r['us']:8.1f} us{sp}" + (" WRONG" if r.get("ok") is False else ""))
        lines.append(f"{shape}/{method}"[:52].ljust(52) + " | ".join(cells))
    lines.append(f"fastest correct NVFP4 config per M (first shape): {rec.get('best_config', {})}")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budget-s", type=float, default=230.0, help="no measurement starts past this (seconds)")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes, interpret mode on a CPU (harness test)")
    ap.add_argument("--ms", default=None, help="comma-separated token counts (default 512,2048,128,64,256)")
    ap.add_argument("--shapes", default=None, help="comma-separated NxK (default 14336x4096,4096x14336,28672x8192)")
    ap.add_argument("--configs", default=None, help="comma-separated PrefillConfig names (default: CONFIGS)")
    ap.add_argument("--iters", type=int, default=10)
    a = ap.parse_args(argv)
    shapes, ms, configs = (SMOKE_SHAPES, SMOKE_MS, SMOKE_CONFIGS) if a.smoke else (SHAPES, MS, CONFIGS)
    if a.shapes:
        shapes = tuple((s, *(int(v) for v in s.split("x"))) for s in a.shapes.split(","))
    if a.ms:
        ms = tuple(int(v) for v in a.ms.split(","))
    if a.configs:
        configs = tuple(PrefillConfig.from_name(c) for c in a.configs.split(","))
    rec = sweep(shapes, ms, configs, budget_s=a.budget_s, iters=a.iters)
    return 0 if rec["rows"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
