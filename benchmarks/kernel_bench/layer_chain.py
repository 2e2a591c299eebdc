"""Where a decode step's GEMM time goes: one decoder layer's four GEMMs per format, chained over separate buffers.

A Llama-3-8B decode step at B = 1 reads ~15 GB of bf16 weights at 2.58 TB/s (run 28), but its W4A16 and FP8
steps run below their bytes' share (run 28: W4A16 INT4 2.86 ms for ~4.7 GB, FP8 4.06 ms for ~8 GB). This times
the layer's GEMMs alone -- no attention, norms or head -- as the served model lays them out (q/k/v and gate/up
fused, each layer's weights in buffers of their own) for ``--layers`` layers:

* ``layer``: per layer ``a = (h @ Wqkv)[:, :H]``, ``h2 = a @ Wo + h``, ``g = h2 @ Wgu``,
  ``h = (silu(g[:, :I]) * g[:, I:]) @ Wd + h2`` -- the four GEMMs in the model's order and dependencies;
* ``shape/<name>``: the chain of one shape's GEMM over the layers (its output cut or tiled to the next input),
  so each shape's time and weight bandwidth show on their own.

Formats: ``bf16`` (XLA dot, f32 accumulation), ``fp8`` (:class:`jq.formats.linear.FP8Linear` with the default
:class:`~jq.formats.fp8_gemm.FP8GemmPolicy`: the Pallas FP8 decode GEMM up to 64 tokens, per-tensor scales),
``fp8_fo`` (the decode kernel with ``FP8DecodeConfig(fused_out=True)``: no split-K, no epilogue fusion),
``nvfp4`` / ``int4`` (:func:`jq_kernels.w4a16.w4a16_matmul` on packed weights, its per-shape default config).
FP8 quantizes each GEMM input with a static per-tensor amax (as a calibrated model does, no reduction per call):
the largest GEMM input of the bf16 chain on the same input. Every figure is the time per layer (or per GEMM) of a
jitted chain, median of 3 repetitions, and its weight bytes per second; ratios are against bf16 of the same run. Off a GPU the W4A16 GEMM is the XLA reference and the FP8
kernel runs in interpret mode (``harness_only``: no timing meaning).

    PYTHONUNBUFFERED=1 PYTHONPATH=. python3 -m benchmarks.kernel_bench.layer_chain --layers 8 --batches 1,8
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.kernel_bench.common import device_info, save, time_fn
from benchmarks.kernel_bench.gemm_bench import (
    I4,
    NV1,
    _pack,
    _quant_weight,
    _rel,
    _xla_ref,
)

SHAPES = {  # hidden H, q/k/v rows, MLP width I
    "llama3_8b": (4096, 6144, 14336),
    "tiny": (128, 192, 256),
}
FORMATS = ("bf16", "fp8", "fp8_fo", "nvfp4", "int4")


def gemm_shapes(hidden: int, qkv: int, inter: int) -> dict:
    """``{name: (N, K)}`` of one fused layer's weights ``[N, K]``."""
    return {"qkv": (qkv, hidden), "o": (hidden, hidden), "gate_up": (2 * inter, hidden), "down": (hidden, inter)}


def make_format(fmt: str, on_gpu: bool):
    """``(store, gemm)``: ``store(w [N, K] bf16) -> stored weight`` and ``gemm(x [B, K] bf16, stored, amax) ->
    [B, N] bf16`` (``amax``: the static per-tensor input amax FP8 quantizes with, as a calibrated model does;
    the other formats ignore it)."""
    if fmt == "bf16":
        def gemm(x, w, amax=None):
            return jnp.dot(x, w.T, preferred_element_type=jnp.float32).astype(jnp.bfloat16)
        return (lambda w: w), gemm
    if fmt in ("fp8", "fp8_fo"):
        from jq.formats.fp8_gemm import FP8GemmPolicy
        from jq.formats.linear import FP8Linear
        from jq_kernels.fp8_decode import FP8DecodeConfig
        from jq_kernels.fp8_linear import prepare_fp8_weight

        lin = FP8Linear(policy=FP8GemmPolicy(), kernel_interpret=not on_gpu)
        if fmt == "fp8_fo":  # the decode kernel writing its own output (no split-K, no epilogue fusion)
            lin = FP8Linear(policy=FP8GemmPolicy(mode="decode_kernel"), decode_cfg=FP8DecodeConfig(fused_out=True),
                            kernel_interpret=not on_gpu)

        def store(w):
            return prepare_fp8_weight(w.astype(jnp.float32), jnp.max(jnp.abs(w)).astype(jnp.float32))

        def gemm(x, stored, amax):
            y = lin.apply(x, stored, input_amax=amax, platform="gpu" if on_gpu else "cpu")
            return y.astype(jnp.bfloat16)
        return store, gemm
    if fmt in ("nvfp4", "int4"):
        from jq_kernels import w4a16 as W4

        spec = NV1 if fmt == "nvfp4" else I4
        if on_gpu:
            return (lambda w: _pack(_quant_weight(w, spec), "bf16")), lambda x, pw, amax=None: W4.w4a16_matmul(x, pw)
        # harness: the XLA reference on the QTensor
        return (lambda w: _quant_weight(w, spec)), lambda x, qt, amax=None: _xla_ref(x, qt)
    raise ValueError(f"layer_chain: unknown format {fmt!r}; have {FORMATS}")


def stored_bytes(stored) -> int:
    """Bytes of a stored weight (every array leaf: codes, scales, global scale)."""
    return int(sum(leaf.nbytes for leaf in jax.tree_util.tree_leaves(stored)))


def draw_layers(shapes: dict, layers: int, key) -> list[dict]:
    """``layers`` dicts ``{name: bf16 [N, K]}``, each weight its own buffer (std 0.02)."""
    out = []
    for i in range(layers):
        ks = jax.random.split(jax.random.fold_in(key, i), len(shapes))
        out.append({name: (0.02 * jax.random.normal(kk, nk, jnp.float32)).astype(jnp.bfloat16)
                    for kk, (name, nk) in zip(ks, shapes.items())})
    return out


def layer_program(gemm, hidden: int, inter: int, record: bool = False):
    """``(h [B, H], [per-layer stored dicts], amax) -> h``: the four GEMMs of each layer in the model's order, each
    given the static input ``amax``; ``record``: ``-> (h, max |GEMM input|)`` (the calibration pass)."""
    def run(h, layers, amax):
        seen = jnp.float32(0)

        def call(x, w):
            nonlocal seen
            if record:
                seen = jnp.maximum(seen, jnp.max(jnp.abs(x)).astype(jnp.float32))
            return gemm(x, w, amax)

        for w in layers:
            a = call(h, w["qkv"])[:, :hidden]
            h2 = call(a, w["o"]) + h
            g = call(h2, w["gate_up"])
            m = (jax.nn.silu(g[:, :inter].astype(jnp.float32)) * g[:, inter:].astype(jnp.float32)).astype(h.dtype)
            h = call(m, w["down"]) + h2
        return (h, seen) if record else h
    return jax.jit(run)


def shape_program(gemm, name: str, k: int, record: bool = False):
    """``(x [B, K], [per-layer stored dicts], amax) -> x``: ``name``'s GEMM chained over the layers (output cut or
    tiled to ``K`` columns, scaled down so the values stay bounded); ``record`` as :func:`layer_program`."""
    def run(x, layers, amax):
        seen = jnp.float32(0)
        for w in layers:
            if record:
                seen = jnp.maximum(seen, jnp.max(jnp.abs(x)).astype(jnp.float32))
            y = gemm(x, w[name], amax)
            reps = -(-k // y.shape[1])
            x = (jnp.tile(y, (1, reps))[:, :k] * 0.05).astype(x.dtype)
        return (x, seen) if record else x
    return jax.jit(run)


def input_widths(shapes: dict, hidden: int) -> dict:
    """``{"layer" | "shape/<name>": the program's input width}``: the hidden size, or the shape's K."""
    return {"layer": hidden, **{f"shape/{name}": k for name, (_, k) in shapes.items()}}


def programs(gemm, shapes: dict, hidden: int, inter: int, record: bool = False) -> dict:
    """``{"layer" | "shape/<name>": jitted program}`` (keys as :func:`input_widths`)."""
    return {"layer": layer_program(gemm, hidden, inter, record),
            **{f"shape/{name}": shape_program(gemm, name, k, record) for name, (_, k) in shapes.items()}}


def layer_chain(model="llama3_8b", layers=8, batches=(1, 8), formats=FORMATS, iters=10, budget_s=1e9,
                out_name="layer_chain.json") -> dict:
    t0 = time.time()
    on_gpu = jax.default_backend() == "gpu"
    hidden, qkv, inter = SHAPES[model]
    shapes = gemm_shapes(hidden, qkv, inter)
    rec = {"info": device_info(), "model": model, "layers": layers, "shapes": {k: list(v) for k, v in shapes.items()},
           "batches": list(batches), "harness_only": not on_gpu, "cells": {}}
    raw = draw_layers(shapes, layers, jax.random.key(0))
    inputs = {(what, b): jnp.asarray(np.random.default_rng(b).standard_normal((b, k)) * 0.5, jnp.bfloat16)
              for b in batches for what, k in input_widths(shapes, hidden).items()}
    # calibration: the bf16 chains' largest GEMM input per program and batch, the static amax FP8 quantizes with
    recording = programs(make_format("bf16", on_gpu)[1], shapes, hidden, inter, record=True)
    amax = {(what, b): jnp.float32(recording[what](x, raw, jnp.float32(0))[1]) for (what, b), x in inputs.items()}
    outputs = {}  # the first format's (bf16's) chain outputs, per cell: what the others are compared with
    formats = ("bf16",) + tuple(f for f in formats if f != "bf16")
    for fmt in formats:
        if time.time() - t0 > budget_s:
            rec["cells"][fmt] = {"skipped": "budget"}
            continue
        try:
            store, gemm = make_format(fmt, on_gpu)
            stored = [{name: jax.block_until_ready(store(w)) for name, w in lay.items()} for lay in raw]
        except Exception as e:  # noqa: BLE001 - a format that cannot be built is recorded, the others run
            rec["cells"][fmt] = {"error": f"{type(e).__name__}: {str(e)[:800]}"}
            continue
        bytes_of = {name: stored_bytes(w) for name, w in stored[0].items()}
        layer_bytes = {"layer": sum(bytes_of.values()), **{f"shape/{n}": v for n, v in bytes_of.items()}}
        progs = programs(gemm, shapes, hidden, inter)
        for b in batches:
            for what, fn in progs.items():
                key = f"{fmt}/B{b}/{what}"
                if time.time() - t0 > budget_s:
                    rec["cells"][key] = {"skipped": "budget"}
                    continue
                args = (inputs[(what, b)], stored, amax[(what, b)])
                try:
                    tc = time.time()
                    out = np.asarray(jax.block_until_ready(fn(*args)), np.float32)
                    cell = {"compile_s": time.time() - tc, "finite": bool(np.all(np.isfinite(out))),
                            "input_amax": float(args[2])}
                    ref = outputs.setdefault(f"B{b}/{what}", out)  # bf16 runs first: the reference
                    cell["rel_err_vs_bf16"] = _rel(out, ref)
                    t = time_fn(fn, [args], iters=iters)["s"]
                    cell["us_per_layer"] = 1e6 * t / layers
                    cell["weight_GB_s"] = layers * layer_bytes[what] / t / 1e9
                except Exception as e:  # noqa: BLE001
                    cell = {"error": f"{type(e).__name__}: {str(e)[:800]}"}
                rec["cells"][key] = cell
                print(f"{key:28s} " + (f"{cell['us_per_layer']:8.1f} us/layer {cell['weight_GB_s']:6.0f} GB/s"
                                        if "us_per_layer" in cell else cell.get("error", "")[:200]), flush=True)
                save(out_name, rec)
        del stored
    for key, cell in rec["cells"].items():
        fmt, rest = key.split("/", 1) if "/" in key else (key, "")
        base = rec["cells"].get(f"bf16/{rest}", {})
        if fmt != "bf16" and "us_per_layer" in cell and "us_per_layer" in base:
            cell["vs_bf16"] = base["us_per_layer"] / cell["us_per_layer"]
    rec["wall_s"] = time.time() - t0
    rec["summary"] = table(rec)
    save(out_name, rec)
    print(rec["summary"], flush=True)
    return rec


def table(rec) -> str:
    """One line per (format, batch): the layer's µs and x bf16, then each shape's µs and GB/s."""
    lines = [f"{rec['model']} GEMMs, {rec['layers']} layers, separate buffers"
             + (" (CPU harness: no timing meaning)" if rec["harness_only"] else "")]
    for key, cell in rec["cells"].items():
        if not key.endswith("/layer"):
            continue
        fmt, b, _ = key.split("/")
        if "us_per_layer" not in cell:
            lines.append(f"{fmt:6s} {b:4s} {cell.get('error', cell.get('skipped', '?'))[:80]}")
            continue
        parts = []
        for name in rec["shapes"]:
            c = rec["cells"].get(f"{fmt}/{b}/shape/{name}", {})
            parts.append(f"{name} {c['us_per_layer']:.1f} us {c['weight_GB_s']:.0f} GB/s" if "us_per_layer" in c
                         else f"{name} -")
        sp = f" x{cell['vs_bf16']:.2f}" if "vs_bf16" in cell else ""
        lines.append(f"{fmt:6s} {b:4s} layer {cell['us_per_layer']:7.1f} us{sp} {cell['weight_GB_s']:5.0f} GB/s | "
                     + " | ".join(parts))
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="llama3_8b", choices=sorted(SHAPES))
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--formats", default=",".join(FORMATS))
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--budget-s", type=float, default=1e9)
    a = ap.parse_args(argv)
    return layer_chain(a.model, a.layers, tuple(int(b) for b in a.batches.split(",")), tuple(a.formats.split(",")),
                       a.iters, a.budget_s)


if __name__ == "__main__":
    main()
