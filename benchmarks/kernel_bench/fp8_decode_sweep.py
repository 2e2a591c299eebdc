"""FP8 decode GEMM sweep in one run: the Pallas decode kernel's configs vs XLA bf16 and jq's two FP8 GEMMs.

For ``y = x @ W.T`` at the decode-GEMM shape (N=28672, K=8192) and the Llama-3-8B layer shapes (q/o 4096x4096,
k/v 1024x4096, gate/up 14336x4096, down 4096x14336), B = 1, 8, 32, every method is timed in the same run:

* ``bf16``: XLA's ``x_bf16 @ w_bf16.T`` (f32 accumulation);
* ``w8a8`` / ``dequant`` / ``kernel:<config>`` (the Pallas-Triton decode GEMM) / ``wgmma:<config>`` (the Mosaic
  GPU one, :mod:`jq_kernels.fp8_wgmma`; GPU only): :class:`jq.formats.linear.FP8Linear` with the GEMM forced
  (activation quantization included, as the model runs it).

Each timed program runs the method on ``copies`` distinct weights (enough to spill the 50 MB L2) and as many
distinct activations (no quantize kernel shared by common-subexpression elimination) inside one ``jit`` and sums
the results, so launch overhead is the device's, not Python's; the figure is the time per GEMM.
**Weight GB/s** counts the stored weight bytes (``N K`` for FP8, ``2 N K`` for bf16). Correctness: each FP8
program's output against the ``w8a8`` program's and the ``dequant`` program's (same weights, same quantized
activations, exact products: equal up to f32 summation order; cuBLASLt's fp8 GEMM may accumulate with fewer bits,
so a row is correct when it is within 1e-4 of either). The decode shape runs every config; the layer shapes run the
best config per batch of the decode shape (the default where none is correct), of each kernel. ``budget_s``: no
cell starts past it. On a CPU the Triton kernel runs in Pallas interpret mode and the Mosaic kernel is skipped
(``harness_only``: no timing meaning).

``JQ_FP8_DECODE_SWEEP="fp8:128,256,0,4,4;..." JQ_FP8_WGMMA_SWEEP="1,256,4,0;..." PYTHONPATH=. python -m
benchmarks.gpu_suite fp8_decode``
"""

from __future__ import annotations

import faulthandler
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.kernel_bench.common import device_info, save, time_fn
from jq.formats.fp8_gemm import FP8GemmPolicy
from jq.formats.linear import FP8Linear
from jq_kernels import fp8_decode as D
from jq_kernels import fp8_wgmma as WG
from jq_kernels.fp8_linear import prepare_fp8_weight

DECODE_SHAPE = ("decode", 28672, 8192)
LAYER_SHAPES = (("gate_up", 14336, 4096), ("down", 4096, 14336), ("q_o", 4096, 4096), ("k_v", 1024, 4096))
# the same layer with q/k/v and gate/up fused into one GEMM each, as serving stacks (and llm_decode's _fused) run it
FUSED_LAYER_SHAPES = (("qkv", 6144, 4096), ("o", 4096, 4096), ("gate_up2", 28672, 4096), ("down", 4096, 14336))
SHAPE_SETS = {"llama3_8b": LAYER_SHAPES, "llama3_8b_fused": FUSED_LAYER_SHAPES}
BAR = 1.6  # issue 15: FP8 >= 1.6x bf16 tokens/s at every B <= 32 (model level)
L2_SPILL_BYTES = 128 << 20  # fp8 bytes per timed program: > 2x the H100/H200 L2
# the Mosaic kernel's candidates, its default first (four: the gpu_suite section's 90 s cap): 64- or 128-row CTAs,
# 3-4 K steps of 256-512 in flight, the grid and the stream-K schedules
WGMMA_CONFIGS = (WG.FP8WgmmaConfig(), WG.FP8WgmmaConfig(rows=2), WG.FP8WgmmaConfig(block_k=512, stages=3),
                 WG.FP8WgmmaConfig(schedule="stream_k", ctas_per_sm=2))
KERNELS = {"kernel": "decode_kernel", "wgmma": "wgmma_kernel"}  # method prefix -> FP8GemmPolicy mode


def _weights(n, k, copies, seed):
    draw = jax.jit(lambda key: jax.random.normal(key, (n, k), jnp.float32).astype(jnp.bfloat16))
    prep = jax.jit(lambda w: prepare_fp8_weight(w.astype(jnp.float32), jnp.max(jnp.abs(w)).astype(jnp.float32)))
    ws = [draw(kk) for kk in jax.random.split(jax.random.key(seed), copies)]
    return ws, [jax.block_until_ready(prep(w)) for w in ws]


def _program(method, cfg, interpret):
    """``f(xs, amax, weights) = sum_c GEMM(xs[c], weights[c])`` (float32 ``[B, N]``) for one method."""
    if method == "bf16":
        def one(x, amax, w):
            return jnp.dot(x, w.T, preferred_element_type=jnp.float32)
    else:
        prefix = method.split(":", 1)[0]
        mode = KERNELS.get(prefix, method)
        kw = {"wgmma_cfg": cfg} if prefix == "wgmma" else {"decode_cfg": cfg, "kernel_interpret": interpret}
        lin = FP8Linear(policy=FP8GemmPolicy(mode=mode), **kw)
        platform = "cpu" if interpret else "gpu"

        def one(x, amax, w):
            return lin.apply(x, w, input_amax=amax, platform=platform)

    def run(xs, amax, ws):
        acc = one(xs[0], amax, ws[0])
        for x, w in zip(xs[1:], ws[1:]):
            acc = acc + one(x, amax, w)
        return acc
    return jax.jit(run)


def fp8_decode_sweep(configs=None, batches=(1, 8, 32), decode_shape=DECODE_SHAPE, layer_shapes=LAYER_SHAPES,
                     budget_s=1e9, out_name="fp8_decode_sweep.json", iters=10, max_copies=16,
                     every_config=False, wgmma_configs=None) -> dict:
    """Time the methods at ``decode_shape`` (every config; None: skipped) and at each of ``layer_shapes`` (the
    decode shape's best config per batch and kernel, or every config with ``every_config``);
    ``rec["best_by_shape"]`` holds the fastest correct config per (shape, batch). ``configs``: Triton decode-kernel
    configs (None: ``jq_kernels.fp8_decode.CONFIGS``); ``wgmma_configs``: Mosaic kernel configs (None:
    :data:`WGMMA_CONFIGS`; ``()``: none)."""
    t0 = time.time()
    on_gpu = jax.default_backend() == "gpu"
    interpret = not on_gpu
    configs = list(configs or D.CONFIGS)
    wgmma_configs = list(WGMMA_CONFIGS if wgmma_configs is None else wgmma_configs)
    kernel_methods = [(f"kernel:{c.name}", c) for c in configs] + [(f"wgmma:{c.name}", c) for c in wgmma_configs]
    rec = {"info": device_info(), "configs": [m for m, _ in kernel_methods], "batches": list(batches), "rows": [],
           "harness_only": interpret, "method": "time per GEMM inside one jit over `copies` distinct weights"}

    def cells(shape, methods):
        name, n, k = shape
        copies = int(min(max_copies, max(2, -(-L2_SPILL_BYTES // (n * k)))))
        if time.time() - t0 > budget_s:
            rec["rows"].append({"shape": name, "skipped": "budget"})
            return
        ws, stored = _weights(n, k, copies, seed=n + k)
        for b in batches:
            x = tuple(jax.random.normal(kk, (b, k), jnp.float32).astype(jnp.bfloat16)
                      for kk in jax.random.split(jax.random.key(b), copies))
            amax = jnp.max(jnp.abs(jnp.stack(x))).astype(jnp.float32)
            refs = {}
            base_us = None
            for method, cfg in methods(b):
                row = {"shape": name, "N": n, "K": k, "B": b, "method": method, "copies": copies}
                rec["rows"].append(row)
                if time.time() - t0 > budget_s:
                    row["skipped"] = "budget"
                    continue
                if method.startswith("wgmma:") and interpret:
                    row["skipped"] = "needs a GPU"
                    continue
                if cfg is not None:
                    row["plan"] = (WG.wgmma_plan(n, k, b, cfg) if method.startswith("wgmma:")
                                   else D.decode_plan(n, k, b, cfg))
                faulthandler.dump_traceback_later(90, exit=True)  # a hung kernel ends the process
                try:
                    fn = _program(method, cfg, interpret)
                    w_args = tuple(ws) if method == "bf16" else tuple(stored)
                    tc = time.time()
                    y = np.asarray(jax.block_until_ready(fn(x, amax, w_args)), np.float64)
                    row["compile_s"] = time.time() - tc
                    row["finite"] = bool(np.all(np.isfinite(y)))
                    for ref_name, ref in refs.items():
                        row[f"rel_err_vs_{ref_name}"] = float(np.linalg.norm(y - ref) / max(np.linalg.norm(ref), 1e-30))
                    if method in ("w8a8", "dequant"):
                        refs[method] = y
                    t = time_fn(fn, [(x, amax, w_args)], iters=iters, warmup=2, reps=3)
                    row["us"] = t["s"] * 1e6 / copies
                    wbytes = (2 if method == "bf16" else 1) * n * k
                    row["GBps"] = wbytes / row["us"] / 1e3
                    if method == "bf16":
                        base_us = row["us"]
                    elif base_us is not None:
                        row["speedup_vs_bf16"] = base_us / row["us"]
                except Exception as e:  # noqa: BLE001 - a config that fails is recorded, the others run
                    row["error"] = f"{type(e).__name__}: {str(e)[:1500]}"
                faulthandler.cancel_dump_traceback_later()
                print(_line(row), flush=True)
                save(out_name, rec)
        del ws, stored

    base = [("bf16", None), ("w8a8", None), ("dequant", None)]
    every = lambda b: base + kernel_methods
    rec["best"], best_method = {}, {}
    if decode_shape is not None:
        cells(decode_shape, every)
        rec["best"] = _best(rec, decode_shape[0])
        best_method = {(p, b): v["method"] for p in KERNELS for b, v in _best(rec, decode_shape[0], p).items()}
        save(out_name, rec)

    def methods(b):  # per kernel: its best config at the decode shape, else its first (default) config
        out = []
        for prefix in KERNELS:
            mine = [m for m in kernel_methods if m[0].startswith(prefix + ":")]
            out += [m for m in mine if m[0] == best_method.get((prefix, b))] or mine[:1]
        return base + out

    for shape in layer_shapes:
        cells(shape, every if every_config else methods)
    shapes = ([decode_shape] if decode_shape else []) + list(layer_shapes)
    rec["best_by_shape"] = {s[0]: _best(rec, s[0]) for s in shapes}
    rec["best_wgmma_by_shape"] = {s[0]: _best(rec, s[0], "wgmma") for s in shapes}
    rec["wall_s"] = time.time() - t0
    rec["summary"] = table(rec)
    save(out_name, rec)
    print(rec["summary"], flush=True)
    return rec


def _ok(r):
    """Timed, finite, and (every FP8 method but the w8a8 reference) within 1e-4 of the w8a8 or dequant output."""
    errs = [r.get("rel_err_vs_w8a8", 1.0), r.get("rel_err_vs_dequant", 1.0)]
    checked = r["method"] in ("bf16", "w8a8") or min(errs) < 1e-4
    return "us" in r and bool(r.get("finite")) and checked


def _best(rec, shape, prefix: str = "kernel") -> dict:
    """Per batch: the fastest correct config at ``shape`` of the kernel whose methods start with ``prefix:``."""
    out = {}
    for b in rec["batches"]:
        rows = [r for r in rec["rows"] if r.get("shape") == shape and r.get("B") == b
                and str(r.get("method", "")).startswith(prefix + ":") and _ok(r)]
        if rows:
            r = min(rows, key=lambda r: r["us"])
            out[b] = {"config": r["method"].split(":", 1)[1], "method": r["method"], "us": r["us"],
                      "GBps": r["GBps"], "speedup_vs_bf16": r.get("speedup_vs_bf16")}
    return out


def _line(r) -> str:
    head = f"{r['shape']:8s} B={r['B']:3d} {r['method']:28s}"
    if "us" not in r:
        return head + " " + (r.get("skipped") or r.get("error", "?"))[:200]
    extra = f" x{r['speedup_vs_bf16']:.2f} bf16" if "speedup_vs_bf16" in r else ""
    err = "".join(f" err/{k[11:]} {v:.1e}" for k, v in r.items() if k.startswith("rel_err_vs_"))
    return head + f" {r['us']:8.1f} us {r['GBps']:6.0f} GB/s{extra}{err} (compile {r['compile_s']:.1f} s)"


def table(rec) -> str:
    """One line per (shape, method): ``B=b: us, x bf16, weight GB/s`` for each batch; best config per batch."""
    lines = ["fp8 decode GEMM" + (" (CPU interpret harness: no timing meaning)" if rec["harness_only"] else "")]
    keys = list(dict.fromkeys((r["shape"], r["method"]) for r in rec["rows"] if "method" in r))
    for shape, method in keys:
        cells = []
        for b in rec["batches"]:
            r = next((r for r in rec["rows"] if r.get("shape") == shape and r.get("method") == method
                      and r.get("B") == b), None)
            if r is None or "us" not in r:
                cells.append(f"B={b}: {((r or {}).get('skipped') or (r or {}).get('error', '-'))[:24]}")
                continue
            sp = f" {r['speedup_vs_bf16']:4.2f}x" if "speedup_vs_bf16" in r else ""
            bad = "" if _ok(r) else " WRONG"
            cells.append(f"B={b}: {r['us']:7.1f} us{sp} {r['GBps']:5.0f} GB/s{bad}")
        lines.append(f"{shape}/{method}"[:40].ljust(40) + " | ".join(cells))
    for b, v in rec.get("best", {}).items():
        sp = v["speedup_vs_bf16"]
        lines.append(f"best kernel config at the decode shape, B={b}: {v['config']} {v['GBps']:.0f} GB/s"
                     + (f", {sp:.2f}x bf16" if sp else ""))
    for key in ("best_by_shape", "best_wgmma_by_shape"):
        for shape, by_b in rec.get(key, {}).items():
            for b, v in by_b.items():
                sp = v["speedup_vs_bf16"]
                lines.append(f"best at {shape}, B={b}: {v['method']} {v['GBps']:.0f} GB/s"
                             + (f", {sp:.2f}x bf16" if sp else ""))
    return "\n".join(lines)


def main(argv=None):
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", default="llama3_8b_fused", choices=sorted(SHAPE_SETS))
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--configs", default="", help="parse_configs spec (default: jq_kernels.fp8_decode.CONFIGS)")
    ap.add_argument("--wgmma-configs", default=None,
                    help="parse_wgmma_configs spec (default: WGMMA_CONFIGS; 'none': the Mosaic kernel not at all)")
    ap.add_argument("--every-config", action="store_true", help="every config at every layer shape")
    ap.add_argument("--decode-shape", action="store_true", help="also the N=28672, K=8192 decode shape first")
    ap.add_argument("--budget-s", type=float, default=1e9)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--out-name", default="fp8_decode_sweep.json")
    a = ap.parse_args(argv)
    return fp8_decode_sweep(D.parse_configs(a.configs) if a.configs else None,
                            batches=tuple(int(b) for b in a.batches.split(",")),
                            decode_shape=DECODE_SHAPE if a.decode_shape else None, layer_shapes=SHAPE_SETS[a.shapes],
                            budget_s=a.budget_s, out_name=a.out_name, iters=a.iters, every_config=a.every_config,
                            wgmma_configs=None if a.wgmma_configs is None else
                            (() if a.wgmma_configs == "none" else WG.parse_wgmma_configs(a.wgmma_configs)))


if __name__ == "__main__":
    main()
