"""GPU smoke test + benchmark of the real-quantized GEMMs (jq_kernels/fp8_linear.py, jq_kernels/w4a16/).

* FP8: XLA's fp8 ``dot_general`` (K-major weights) vs the bf16 GEMM at 8192^3; the compiled HLO is checked for
  ``__cublas$lt$matmul$f8``.
* W4A16 decode GEMM, N=28672 K=8192, batch 1/4/16: the Mosaic GPU kernel (NVFP4, INT4 g128) vs XLA's bf16 dot and
  XLA's native int4 path, same run. Smoke: small and ragged shapes against ``x @ dequant(W).T``.

``PYTHONPATH=. python -m benchmarks.kernel_bench.gemm_bench [smoke|bench|all]``.
"""

from __future__ import annotations

import functools
import sys
import traceback

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from benchmarks.kernel_bench.common import device_info, save, time_fn
from jq import qtensor
from jq.config import QuantizerSpec
from jq_kernels import fp8_linear as F8
from jq_kernels import nvfp4 as K
from jq_kernels import w4a16 as W4
from jq_kernels.w4a16.matmul import prep_x
from jq_kernels.w4a16.plan import plan
from jq_kernels.w4a16.schedules import mosaic_call

NV1 = QuantizerSpec(num_bits=(2, 1), block_sizes={-1: 16, "type": "dynamic", "scale_bits": (4, 3)})
I4 = QuantizerSpec(num_bits=4, block_sizes={-1: 128})


def _rel(a, b):
    a = np.asarray(a, np.float32)
    b = np.asarray(b, np.float32)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def _quant_weight(w, spec):
    """QTensor of ``w`` (NVFP4 through the quantize kernel, INT4 through the jnp reference)."""
    if spec.kind == "nvfp4":
        def q(v):
            data, scale, gs = K.nvfp4_quantize(v)
            return qtensor.QTensor(data, scale, gs, spec, tuple(v.shape), str(v.dtype))

        return jax.jit(q)(w)
    return jax.jit(lambda v: qtensor.quantize(v, spec))(w)


def _pack(qt, dtype="bf16"):
    """The decode-GEMM layout of a canonical ``[N, K]`` NVFP4 / INT4 QTensor."""
    fmt = "nvfp4" if qt.spec.kind == "nvfp4" else "int4"
    return W4.pack_w4(qt.data, qt.scale, qt.global_scale, fmt=fmt, shape=qt.shape, dtype=dtype)


def _xla_ref(x, qt):
    """``x @ dequant(W).T`` through XLA (bf16 weights): the reference the decode GEMM is checked against."""
    return W4.w4a16_matmul_xla(x, qtensor.dequantize(qt, jnp.bfloat16))


def smoke(configs=None) -> dict:
    """:func:`schedule_smoke` of the given configs (default ``MosaicConfig()``) on bf16-operand weights."""
    return schedule_smoke([("bf16", c) for c in (configs or [W4.MosaicConfig()])], out_name="gemm_smoke.json")


def bench(configs=None, batches=(1, 4, 16)) -> dict:
    out = {"fp8": {}, "decode": []}
    rng = np.random.default_rng(0)
    # ---------------- FP8 GEMM 8192^3
    m = n = k = 8192
    try:
        a = [jnp.asarray(rng.standard_normal((m, k), dtype=np.float32), jnp.bfloat16) for _ in range(2)]
        wb = [jnp.asarray(rng.standard_normal((n, k), dtype=np.float32), jnp.bfloat16) for _ in range(2)]
        flops = 2 * m * n * k
        bf = jax.jit(lambda x, w: lax.dot_general(x, w, (((1,), (1,)), ((), ())),
                                                   preferred_element_type=jnp.float32).astype(jnp.bfloat16))
        bf_kn = jax.jit(lambda x, w: jnp.dot(x, w, preferred_element_type=jnp.float32).astype(jnp.bfloat16))
        wkn = [w.T.copy() for w in wb]
        t_bf = time_fn(bf, list(zip(a, wb)), iters=20)
        t_bf2 = time_fn(bf_kn, list(zip(a, wkn)), iters=20)
        wq = [F8.prepare_fp8_weight(w, jnp.float32(4.0)) for w in wb]
        xq = [jax.jit(lambda v: jnp.clip(v * 100, -448, 448).astype(jnp.float8_e4m3fn))(x) for x in a]
        f8 = jax.jit(lambda x, w, s: (lax.dot_general(x, w, (((1,), (1,)), ((), ())),
                                                       preferred_element_type=jnp.float32) * s).astype(jnp.bfloat16))
        args8 = [(x, w[0], w[1] * 0.01) for x, w in zip(xq, wq)]
        t_f8 = time_fn(f8, args8, iters=20)
        hlo = f8.lower(*args8[0]).compile().as_text()
        from jq_kernels.fp8 import fp8_quantize

        lin = jax.jit(lambda x, w, s: F8.fp8_linear(x, w, s, jnp.float32(4.0),
                                                   quantize_x=lambda v, am: fp8_quantize(v, am)))
        t_lin = time_fn(lin, [(x, w[0], w[1]) for x, w in zip(a, wq)], iters=20)
        lin_hlo = lin.lower(a[0], wq[0][0], wq[0][1]).compile().as_text()
        # f8 with weights stored (K, N): XLA inserts a transpose
        f8kn = jax.jit(lambda x, w, s: (jnp.dot(x, w, preferred_element_type=jnp.float32) * s).astype(jnp.bfloat16))
        wq_kn = [w[0].T.copy() for w in wq]
        t_f8kn = time_fn(f8kn, [(x, w, jnp.float32(0.01)) for x, w in zip(xq, wq_kn)], iters=20)
        bf_best = min(t_bf["s"], t_bf2["s"])
        out["fp8"] = {
            "shape": [m, n, k],
            "bf16_NK_TFLOPs": flops / t_bf["s"] / 1e12, "bf16_KN_TFLOPs": flops / t_bf2["s"] / 1e12,
            "fp8_NK_TFLOPs": flops / t_f8["s"] / 1e12, "fp8_KN_TFLOPs": flops / t_f8kn["s"] / 1e12,
            "fp8_linear_with_act_quant_TFLOPs": flops / t_lin["s"] / 1e12,
            "ratio_fp8_vs_best_bf16": bf_best / t_f8["s"],
            "ratio_fp8_linear_vs_best_bf16": bf_best / t_lin["s"],
            "cublaslt_f8_in_hlo": "__cublas$lt$matmul$f8" in hlo,
            "cublaslt_f8_in_fp8_linear_hlo": "__cublas$lt$matmul$f8" in lin_hlo,
            "hlo_custom_calls": sorted(set(l.split("custom_call_target=")[1].split(",")[0]
                                           for l in hlo.splitlines() if "custom_call_target=" in l)),
        }
        print("  fp8:", out["fp8"], flush=True)
        del a, wb, wkn, wq, xq, args8, wq_kn
    except Exception as e:
        out["fp8"] = {"error": f"{type(e).__name__}: {str(e)[:2000]}"}
        traceback.print_exc()

    # ---------------- decode GEMM
    n, k = 28672, 8192
    configs = configs or [W4.MosaicConfig()]
    w = jnp.asarray(rng.standard_normal((n, k), dtype=np.float32), jnp.bfloat16)
    w2 = w * 1.01  # second copy: calls alternate between weight buffers (no L2 reuse across calls)
    wkn = w.T.copy()
    qts = {}
    pws = {}
    for spec in (NV1, I4):
        try:
            qts[spec.kind] = [_quant_weight(v, spec) for v in (w, w2)]
            pws[spec.kind] = [jax.block_until_ready(_pack(q)) for q in qts[spec.kind]]
        except Exception as e:
            out.setdefault("errors", []).append(f"pack {spec.kind}: {type(e).__name__}: {str(e)[:1500]}")
            traceback.print_exc()
    i4x = [W4.int4_xla_weights(q.data, q.scale) for q in qts.get("int", [])]
    wbytes = n * k * 2
    for b in batches:
        xs = [jnp.asarray(rng.standard_normal((b, k)), jnp.bfloat16) for _ in range(2)]
        row = {"B": b, "N": n, "K": k}

        def t(name, fn, argsets, nbytes=None):
            try:
                tt = time_fn(jax.jit(fn), argsets, iters=50, warmup=5)
                row[name + "_us"] = tt["s"] * 1e6
                if nbytes:
                    row[name + "_GBps"] = nbytes / tt["s"] / 1e9
                print(f"  B={b} {name:40s} {tt['s'] * 1e6:8.1f} us", flush=True)
            except Exception as e:
                row[name + "_error"] = f"{type(e).__name__}: {str(e)[:1500]}"
                print(f"  B={b} {name}: ERROR {type(e).__name__}: {str(e)[:400]}", flush=True)

        dn = (((1,), (1,)), ((), ()))
        t("xla_bf16_NK", lambda x, w: lax.dot_general(x, w, dn, preferred_element_type=jnp.float32).astype(
            jnp.bfloat16), [(xs[0], w), (xs[1], w2)], wbytes)
        t("xla_bf16_KN", lambda x, w: jnp.dot(x, w, preferred_element_type=jnp.float32).astype(jnp.bfloat16),
          [(xs[0], wkn), (xs[1], wkn)], wbytes)
        if i4x:
            t("xla_int4_g128", lambda x, q, s: W4.w4a16_matmul_xla_int4(x, q, s),
              [(xs[0],) + i4x[0], (xs[1],) + i4x[1]], n * k // 2)
            t("xla_int4_per_channel", lambda x, q, s: (lax.dot_general(
                x, q.astype(jnp.bfloat16), dn, preferred_element_type=jnp.float32) * s[:, 0]).astype(jnp.bfloat16),
              [(xs[0],) + i4x[0], (xs[1],) + i4x[1]], n * k // 2)
        for kind, pl_ in pws.items():
            ref = jax.jit(_xla_ref)(xs[0], qts[kind][0])
            for cfg in configs:
                name = f"mosaic_{kind}_r{cfg.rows}_k{cfg.block_k}_s{cfg.stages}"
                fn = functools.partial(W4.w4a16_matmul_mosaic, cfg=cfg)
                try:
                    y = jax.jit(fn)(xs[0], pl_[0])
                    row[name + "_rel_err"] = _rel(y, ref)
                    row[name + "_norms"] = [float(np.linalg.norm(np.asarray(y, np.float32))),
                                            float(np.linalg.norm(np.asarray(ref, np.float32)))]
                except Exception as e:
                    row[name + "_error"] = f"{type(e).__name__}: {str(e)[:1500]}"
                    print(f"  {name}: ERROR {str(e)[:300]}", flush=True)
                    continue
                t(name, fn, [(xs[0], pl_[0]), (xs[1], pl_[1])], pl_[0].nbytes)
        bf = min(row.get("xla_bf16_NK_us", 1e9), row.get("xla_bf16_KN_us", 1e9))
        for key in list(row):
            if key.endswith("_us") and not key.startswith("xla_bf16"):
                row[key[:-3] + "_speedup_vs_bf16"] = bf / row[key]
        out["decode"].append(row)
    del w, w2, wkn, qts, pws, i4x
    try:
        out["model_shapes"] = bench_model_shapes()
    except Exception as e:
        out["model_shapes_error"] = f"{type(e).__name__}: {str(e)[:1500]}"
        traceback.print_exc()
    return out


def bench_model_shapes(shapes=((4096, 4096), (1024, 4096), (14336, 4096), (4096, 14336)), batches=(1, 16)) -> list:
    """Per-GEMM decode times at the e2e model's shapes (N, K): bf16, FP8 (cuBLASLt), NVFP4 Mosaic."""
    from jq_kernels.fp8 import fp8_quantize

    rng = np.random.default_rng(1)
    rows = []
    dn = (((1,), (1,)), ((), ()))
    for n, k in shapes:
        w = [jnp.asarray(rng.standard_normal((n, k), dtype=np.float32), jnp.bfloat16) for _ in range(3)]
        pw = [_pack(_quant_weight(v, NV1)) for v in w]
        wq = [F8.prepare_fp8_weight(v, jnp.float32(4.0)) for v in w]
        for b in batches:
            xs = [jnp.asarray(rng.standard_normal((b, k)), jnp.bfloat16) for _ in range(3)]
            row = {"N": n, "K": k, "B": b}
            cases = {
                "bf16": (lambda x, v: lax.dot_general(x, v, dn, preferred_element_type=jnp.float32).astype(
                    jnp.bfloat16), list(zip(xs, w))),
                "fp8_linear": (lambda x, q, s: F8.fp8_linear(x, q, s, jnp.float32(3.0),
                                                            quantize_x=lambda v, a: fp8_quantize(v, a)),
                               [(x, q[0], q[1]) for x, q in zip(xs, wq)]),
                "fp8_linear_xla_act_quant": (lambda x, q, s: F8.fp8_linear(x, q, s, jnp.float32(3.0)),
                                             [(x, q[0], q[1]) for x, q in zip(xs, wq)]),
                "nvfp4_mosaic": (lambda x, p: W4.w4a16_matmul_mosaic(x, p), list(zip(xs, pw))),
            }
            for name, (fn, args) in cases.items():
                try:
                    t = time_fn(jax.jit(fn), args, iters=60, warmup=5)
                    row[name + "_us"] = t["s"] * 1e6
                except Exception as e:
                    row[name + "_error"] = f"{type(e).__name__}: {str(e)[:800]}"
            print("  ", {kk: (round(v, 1) if isinstance(v, float) else v) for kk, v in row.items()}, flush=True)
            rows.append(row)
    return rows


# ----------------------------------------------------------------------------------------------------
# decode-GEMM schedules: grid (one warpgroup per CTA), stream-K, warp-specialized stream-K


def parse_configs(spec: str) -> list:
    """``"[bf16/]grid:2,128,4[,split];ws:2,128,4[,ctas];stream_k[@kernel]:2,128,4[,ctas]"`` -> (operand dtype,
    MosaicConfig) pairs (dtype ``f16`` unless prefixed; ``@kernel``: the in-kernel epilogue)."""
    out = []
    for part in spec.split(";"):
        dtype, _, part = part.rpartition("/")
        sched, _, nums = part.partition(":")
        sched, _, epi = sched.partition("@")
        v = [int(t) for t in nums.split(",")]
        kw = dict(rows=v[0], block_k=v[1], stages=v[2], schedule=sched, epilogue=epi or "xla")
        if len(v) > 3:
            kw["split_k" if sched == "grid" else "ctas"] = v[3]
        out.append((dtype or "f16", W4.MosaicConfig(**kw)))
    return out


def cfg_name(dc) -> str:
    dtype, cfg = dc
    extra = cfg.split_k if cfg.schedule == "grid" else cfg.ctas
    epi = "_epik" if cfg.epilogue == "kernel" else ""
    return f"{dtype}_{cfg.schedule}{epi}_r{cfg.rows}_k{cfg.block_k}_s{cfg.stages}" + (f"_{extra}" if extra else "")


SMOKE_CONFIGS = "bf16/stream_k:2,128,3;bf16/stream_k:2,128,4;bf16/grid:2,128,4;f16/grid:2,128,4"
DEFAULT_SWEEP = ("f16/grid:2,128,4;bf16/stream_k:2,128,3;bf16/stream_k:2,128,4;bf16/stream_k:2,128,4,264;"
                 "f16/stream_k:2,128,4;bf16/grid:2,128,4;bf16/ws:2,128,4")


def _gpu_clocks() -> str:
    """SM/memory clocks, temperature, power and active throttle reasons now (nvidia-smi), for the log."""
    import subprocess

    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=clocks.sm,clocks.mem,temperature.gpu,power.draw,"
                               "clocks_throttle_reasons.active", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=20).stdout.strip()
    except Exception as e:  # pragma: no cover
        return f"nvidia-smi failed: {e}"


def decode_schedules(configs=None, batches=(1, 4, 16), n=28672, k=8192, out_name="decode_schedules.json",
                     rounds=3) -> dict:
    """One run: XLA bf16 vs every decode-GEMM config at (N, K), batch 1/4/16, both formats.

    Per config: the whole call (x prep + kernel + partial-sum reduction/scale), the kernel alone (x prepared
    outside), its relative error vs ``x @ dequant(W).T``. Per batch, everything (XLA's bf16 dot in both weight
    layouts included) is compiled first and then timed in ``rounds`` interleaved rounds, so a baseline and the
    calls it is compared with are timed minutes apart at most; each figure is the lowest of its rounds' medians,
    and ``ratio_rounds`` holds the per-round ratio (bf16 of that round / call of that round).
    """
    import faulthandler
    import os

    configs = configs or parse_configs(DEFAULT_SWEEP)
    rec = {"info": device_info(), "N": n, "K": k, "configs": [cfg_name(c) for c in configs], "rows": [],
           "clocks": [("start", _gpu_clocks())]}
    print("clocks (sm, mem, temp, power, throttle):", rec["clocks"][-1][1], flush=True)
    rng = np.random.default_rng(0)
    w = jnp.asarray(rng.standard_normal((n, k), dtype=np.float32), jnp.bfloat16)
    w2 = w * 1.01
    wkn = w.T.copy()
    kinds = os.environ.get("JQ_DECODE_KINDS", "nvfp4,int").split(",")  # QuantizerSpec.kind: "nvfp4", "int"
    qts = {sp.kind: [_quant_weight(v, sp) for v in (w, w2)] for sp in (NV1, I4) if sp.kind in kinds}
    dtypes = sorted({d for d, _ in configs})
    packs = {(kind, d): [jax.block_until_ready(_pack(q, d)) for q in v] for kind, v in qts.items()
             for d in dtypes}
    dn = (((1,), (1,)), ((), ()))
    xs = {b: [jnp.asarray(rng.standard_normal((b, k)), jnp.bfloat16) for _ in range(2)] for b in batches}
    bf16_nk = jax.jit(lambda x, w: lax.dot_general(x, w, dn, preferred_element_type=jnp.float32).astype(jnp.bfloat16))
    bf16_kn = jax.jit(lambda x, w: jnp.dot(x, w, preferred_element_type=jnp.float32).astype(jnp.bfloat16))
    table = {}

    def timed(fn, argsets):
        return time_fn(fn, argsets, iters=50, warmup=5)["s"] * 1e6

    for b in batches:
        x = xs[b]
        base = {"B": b, "what": "xla_bf16", "NK_rounds": [], "KN_rounds": []}
        live = []
        for kind in qts:
            for dc in configs:
                dtype, cfg = dc
                name = cfg_name(dc)
                pl_ = packs[(kind, dtype)]
                row = {"B": b, "what": f"{kind}:{name}"}
                faulthandler.dump_traceback_later(120, exit=True)  # a hung kernel ends the process
                try:
                    ref = jax.jit(_xla_ref)(x[0], qts[kind][0])
                    fn = jax.jit(functools.partial(W4.w4a16_matmul_mosaic, cfg=cfg))
                    y = jax.block_until_ready(fn(x[0], pl_[0]))
                    row["rel_err"] = _rel(y, ref)
                    row["finite"] = bool(np.all(np.isfinite(np.asarray(y, np.float32))))
                    y2 = fn(x[0], pl_[0])  # a second call: the same bits (no race in the epilogue)
                    row["repeat_bitwise_equal"] = bool(np.array_equal(np.asarray(y).view(np.uint16),
                                                                      np.asarray(y2).view(np.uint16)))
                    p = plan(pl_[0], b, cfg)
                    xp = [prep_x(v, p["kp"], p["tpad"], pl_[0].dtype)[0] for v in x]
                    kfn = jax.jit(lambda xs_, pw_, cfg=cfg, b=b: mosaic_call(xs_, pw_, cfg, b))
                    row["plan"] = {kk: p[kk] for kk in ("rows", "bk", "stages", "slots") if kk in p}
                    row["plan"].update({kk: p[kk] for kk in ("split", "ctas", "per") if kk in p})
                    live.append((row, fn, kfn, [(x[0], pl_[0]), (x[1], pl_[1])], [(xp[0], pl_[0]), (xp[1], pl_[1])]))
                except Exception as e:
                    row["error"] = f"{type(e).__name__}: {str(e)[:2500]}"
                    print(f"B={b:3d} {kind} {name}: ERROR {str(e)[:600]}", flush=True)
                    rec["rows"].append(row)
                faulthandler.cancel_dump_traceback_later()
        for _ in range(rounds):
            base["NK_rounds"].append(timed(bf16_nk, [(x[0], w), (x[1], w2)]))
            base["KN_rounds"].append(timed(bf16_kn, [(x[0], wkn), (x[1], wkn)]))
            for row, fn, kfn, args, kargs in live:
                faulthandler.dump_traceback_later(120, exit=True)
                try:
                    row.setdefault("us_rounds", []).append(timed(fn, args))
                    row.setdefault("kernel_us_rounds", []).append(timed(kfn, kargs))
                except Exception as e:
                    row["error"] = f"{type(e).__name__}: {str(e)[:2500]}"
                faulthandler.cancel_dump_traceback_later()
        bf16_rounds = [min(a, c) for a, c in zip(base["NK_rounds"], base["KN_rounds"])]
        base["us"] = table[("bf16", b)] = min(bf16_rounds)
        rec["rows"].append(base)
        print(f"B={b:3d} xla bf16 (best layout) {base['us']:7.1f} us (rounds "
              f"{', '.join(f'{v:.1f}' for v in bf16_rounds)})", flush=True)
        for row, *_ in live:
            if "us_rounds" in row and len(row["us_rounds"]) == rounds:
                row["us"], row["kernel_us"] = min(row["us_rounds"]), min(row["kernel_us_rounds"])
                row["speedup"] = table[("bf16", b)] / row["us"]
                row["ratio_rounds"] = [bb / c for bb, c in zip(bf16_rounds, row["us_rounds"])]
                table[(row["what"].split(":", 1)[0], row["what"].split(":", 1)[1], b)] = row["us"]
                print(f"B={b:3d} {row['what']:38s} {row['us']:7.1f} us {row['speedup']:.2f}x (rounds "
                      f"{', '.join(f'{v:.1f}' for v in row['us_rounds'])}; per-round ratio "
                      f"{', '.join(f'{v:.2f}' for v in row['ratio_rounds'])}; kernel "
                      f"{', '.join(f'{v:.1f}' for v in row['kernel_us_rounds'])}) "
                      f"err {row['rel_err']:.1e} same-bits {row['repeat_bitwise_equal']}", flush=True)
            else:
                print(f"B={b:3d} {row['what']}: ERROR {row.get('error', '')[:600]}", flush=True)
            rec["rows"].append(row)
        rec["clocks"].append((f"after B={b}", _gpu_clocks()))
        print("clocks:", rec["clocks"][-1][1], flush=True)
        save(out_name, rec)
    print("==== table: us (x bf16 of the same run)")
    print("config".ljust(40) + "".join(f"{f'B={b}':>24s}" for b in batches))
    print("xla bf16".ljust(40) + "".join(f"{table[('bf16', b)]:>24.1f}" for b in batches))
    for kind in qts:
        for dc in configs:
            name = cfg_name(dc)
            cells = []
            for b in batches:
                t = table.get((kind, name, b))
                cells.append(f"{t:8.1f} ({table[('bf16', b)] / t:4.2f}x)" if t else "-")
            print(f"{kind}:{name}".ljust(40) + "".join(f"{c:>24s}" for c in cells))
    return rec


def schedule_smoke(configs, shapes=((256, 512), (200, 300), (1024, 1024)), batches=(1, 3, 16, 33, 64),
                   out_name="decode_smoke.json", f32_batches=(3, 33)) -> dict:
    """Correctness of the given configs vs ``x @ dequant(W).T`` (fresh random inputs per case); configs with the
    in-kernel epilogue are also checked with f32 output at ``f32_batches``."""
    res = {"cases": [], "failures": 0}
    rng = np.random.default_rng(7)
    for spec in (NV1, I4):
        for (n, k) in shapes:
            w = jnp.asarray(rng.standard_normal((n, k)), jnp.bfloat16)
            qt = _quant_weight(w, spec)
            pws = {d: _pack(qt, d) for d in sorted({d for d, _ in configs})}
            for b in batches:
                x = jnp.asarray(rng.standard_normal((b, k)) * rng.uniform(0.01, 100), jnp.bfloat16)
                ref = jax.jit(_xla_ref)(x, qt)
                runs = [(dc, jnp.bfloat16) for dc in configs]
                runs += [(dc, jnp.float32) for dc in configs if dc[1].epilogue == "kernel" and b in f32_batches]
                for dc, odt in runs:
                    dtype, cfg = dc
                    name = f"{spec.kind} N={n} K={k} B={b} {cfg_name(dc)}" + (" f32" if odt == jnp.float32 else "")
                    try:
                        y = jax.jit(functools.partial(W4.w4a16_matmul_mosaic, cfg=cfg, out_dtype=odt))(x, pws[dtype])
                        assert y.shape == (b, n) and y.dtype == odt, (y.shape, y.dtype)
                        err = _rel(y, ref)
                        ok = bool(err < 2e-2) and bool(np.all(np.isfinite(np.asarray(y, np.float32))))
                        res["cases"].append({"name": name, "rel_err": err, "ok": ok})
                        res["failures"] += 0 if ok else 1
                        print(f"  {name}: rel err {err:.2e} {'ok' if ok else 'FAIL'}", flush=True)
                    except Exception as e:
                        res["failures"] += 1
                        res["cases"].append({"name": name, "error": f"{type(e).__name__}: {str(e)[:2000]}"})
                        print(f"  {name}: ERROR {type(e).__name__}: {str(e)[:600]}", flush=True)
    errs = [c["rel_err"] for c in res["cases"] if "rel_err" in c]
    print(f"smoke: {res['failures']} failures in {len(res['cases'])} cases; rel err "
          f"{min(errs, default=0):.1e}..{max(errs, default=0):.1e}", flush=True)
    rec = {"info": device_info(), "smoke": res}
    save(out_name, rec)
    return res


def _cuda_profiler(on: bool):
    """``cudaProfilerStart/Stop`` (through CuPy, present on the GPU machines) so that ``ncu --profile-from-start
    off`` sees only the calls of interest; a no-op without CuPy or with ``JQ_CUDA_PROFILER=0``."""
    import os

    if os.environ.get("JQ_CUDA_PROFILER", "1") == "0":
        return
    try:
        import cupy

        (cupy.cuda.runtime.profilerStart if on else cupy.cuda.runtime.profilerStop)()
    except Exception as e:  # pragma: no cover
        print("no CUDA profiler control:", e, flush=True)


def profile(configs=None, batches=(4,), kinds=("nvfp4", "int4"), bf16_dot=True):
    """One call of each config's kernel (and of XLA's bf16 dot) at N=28672 K=8192 between
    ``cudaProfilerStart/Stop``, for ``ncu --profile-from-start off``; weights and x prepared outside."""
    configs = configs or parse_configs(DEFAULT_SWEEP)
    rng = np.random.default_rng(0)
    n, k = 28672, 8192
    w = jnp.asarray(rng.standard_normal((n, k), dtype=np.float32), jnp.bfloat16)
    dn = (((1,), (1,)), ((), ()))
    bf16 = jax.jit(lambda x, w: lax.dot_general(x, w, dn, preferred_element_type=jnp.float32).astype(jnp.bfloat16))
    specs = {"nvfp4": NV1, "int4": I4}
    for kind in kinds:
        qt = _quant_weight(w, specs[kind])
        packs = {d: jax.block_until_ready(_pack(qt, d)) for d in sorted({d for d, _ in configs})}
        for b in batches:
            x = jnp.asarray(rng.standard_normal((b, k)), jnp.bfloat16)
            jax.block_until_ready(bf16(x, w))
            for dc in configs:
                dtype, cfg = dc
                pw = packs[dtype]
                p = plan(pw, b, cfg)
                xp = jax.block_until_ready(prep_x(x, p["kp"], p["tpad"], pw.dtype)[0])
                f = jax.jit(lambda xs_, pw_, cfg=cfg, b=b: mosaic_call(xs_, pw_, cfg, b))
                jax.block_until_ready(f(xp, pw))
                _cuda_profiler(True)
                jax.block_until_ready(f(xp, pw))
                _cuda_profiler(False)
                print("profiled", kind, b, cfg_name(dc), plan(pw, b, cfg), flush=True)
            if bf16_dot and kind == kinds[0]:
                _cuda_profiler(True)
                jax.block_until_ready(bf16(x, w))
                _cuda_profiler(False)
                print("profiled xla bf16", b, flush=True)


def main(argv):
    what = argv[1] if len(argv) > 1 else "all"
    import os

    sweep = os.environ.get("JQ_DECODE_SWEEP")
    if what == "schedules":
        batches = tuple(int(v) for v in os.environ.get("JQ_DECODE_BATCHES", "1,4,16").split(","))
        decode_schedules(parse_configs(sweep) if sweep else None, batches=batches,
                         out_name=os.environ.get("JQ_DECODE_OUT", "decode_schedules.json"),
                         rounds=int(os.environ.get("JQ_DECODE_ROUNDS", "3")))
        return
    if what == "schedule_smoke":
        schedule_smoke(parse_configs(os.environ.get("JQ_SMOKE_CONFIGS", SMOKE_CONFIGS)))
        return
    if what == "profile":
        profile(parse_configs(sweep) if sweep else None,
                batches=tuple(int(v) for v in os.environ.get("JQ_PROFILE_BATCHES", "4").split(",")),
                kinds=tuple(os.environ.get("JQ_PROFILE_KINDS", "nvfp4,int4").split(",")),
                bf16_dot=os.environ.get("JQ_PROFILE_BF16", "1") == "1")
        return
    rec = {"info": device_info()}
    if what in ("smoke", "all"):
        rec["smoke"] = smoke()
    if what in ("bench", "all"):
        rec["bench"] = bench()
    print(save("gemm.json", rec))


if __name__ == "__main__":
    main(sys.argv)
