"""Do layer-scanned weights cost a copy? Decode-shaped GEMM chains over ``L`` layers' weights, three layouts.

The LLM decode benchmark runs its layers with ``lax.scan`` over weights stacked on a leading axis (one layer
traced and compiled). Each iteration reads layer ``i``'s weights through a ``dynamic-slice``; if XLA
materialises that slice before a GEMM it cannot fuse into (cuBLAS, a Pallas kernel), every weight byte is read
twice and written once, and a bandwidth-bound decode step runs ~3x slower than its bytes say. This measures the
weight bandwidth of the same chain ``h <- (h @ W_i)[:, :K] * c`` (``B`` tokens, ``W_i`` ``[K, N]``) with

- ``scan``: ``lax.scan`` over the stacked ``[L, K, N]`` weights (the benchmark's layout);
- ``scan_unrolled``: the same scan with ``unroll=True`` (static slices of the stacked array);
- ``separate``: a Python loop over ``L`` separately allocated ``[K, N]`` arrays (an unrolled served model);

for the bf16 XLA GEMM and the FP8 decode kernel (:func:`jq_kernels.fp8_decode.fp8_decode_matmul`), at each
``--batches`` size. Ratios are against ``separate`` of the same operand in the same run. Run it once more with
``XLA_FLAGS=--xla_gpu_enable_dynamic_slice_fusion=true`` to see whether XLA's dynamic-slice fusion removes the copy.

    PYTHONPATH=. python3 -m benchmarks.kernel_bench.layer_stream --layers 8 --batches 1,32
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.kernel_bench.common import device_info, save, time_fn


def chain_step(gemm, k: int):
    """``(h, w) -> h'``: one layer of the chain (the GEMM, then the first ``k`` outputs scaled back)."""
    def step(h, w):
        y = gemm(h, w)
        return (y[:, :k] * 0.01).astype(h.dtype)
    return step


def programs(gemm, k: int):
    """``{layout: jitted (h, weights) -> h}`` for the three layouts (``weights``: stacked or a list)."""
    step = chain_step(gemm, k)

    def scan(h, w):
        return jax.lax.scan(lambda c, wi: (step(c, wi), None), h, w)[0]

    def scan_unrolled(h, w):
        return jax.lax.scan(lambda c, wi: (step(c, wi), None), h, w, unroll=True)[0]

    def separate(h, ws):
        for w in ws:
            h = step(h, w)
        return h

    return {"scan": jax.jit(scan), "scan_unrolled": jax.jit(scan_unrolled), "separate": jax.jit(separate)}


def operands(layers: int, k: int, n: int):
    """``{name: (gemm, stacked weights, per-layer list, bytes per layer)}`` on the device."""
    from jq_kernels.fp8_decode import fp8_decode_matmul

    key = jax.random.key(0)
    w = (0.02 * jax.random.normal(key, (layers, k, n), jnp.float32)).astype(jnp.bfloat16)
    bf16 = (lambda h, wi: jnp.dot(h, wi, preferred_element_type=jnp.float32), w, [w[i] + 0 for i in range(layers)],
            k * n * 2)
    wq = jnp.swapaxes(w, 1, 2).astype(jnp.float8_e4m3fn)  # [L, N, K]: the kernel's weight layout
    del w
    fp8 = (lambda h, wi: fp8_decode_matmul(h.astype(jnp.float8_e4m3fn), wi, jnp.float32(1.0)), wq,
           [wq[i] + 0 for i in range(layers)], k * n)
    return {"bf16": bf16, "fp8_decode_kernel": fp8}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--k", type=int, default=4096)
    ap.add_argument("--n", type=int, default=14336)
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--operands", default="bf16,fp8_decode_kernel")
    ap.add_argument("--tag", default="", help="suffix of the record name (e.g. the XLA flags of this run)")
    args = ap.parse_args(argv)
    rec = {"info": device_info(), "layers": args.layers, "k": args.k, "n": args.n, "cells": {}}
    ops = operands(args.layers, args.k, args.n)
    for name in args.operands.split(","):
        gemm, stacked, parts, per_layer = ops[name]
        progs = programs(gemm, args.k)
        for b in (int(v) for v in args.batches.split(",")):
            h = jnp.asarray(np.random.default_rng(b).standard_normal((b, args.k)), jnp.bfloat16)
            row = {}
            for layout, fn in progs.items():
                w = parts if layout == "separate" else stacked
                t = time_fn(fn, [(h, w)], iters=10)["s"]
                row[layout] = {"us": 1e6 * t, "weight_GB_s": args.layers * per_layer / t / 1e9}
            for layout in row:
                row[layout]["vs_separate"] = row["separate"]["us"] / row[layout]["us"]
            rec["cells"][f"{name}/B{b}"] = row
            print(f"{name:18s} B={b:3d} " + "  ".join(
                f"{lay} {r['us']:8.1f} us {r['weight_GB_s']:6.0f} GB/s ({r['vs_separate']:.2f}x)"
                for lay, r in row.items()), flush=True)
    save("layer_stream" + (f"_{args.tag}" if args.tag else ""), rec)
    return rec


if __name__ == "__main__":
    main()
