"""End-to-end: a quantized small transformer decoding tokens on the GPU, real quantization, tokens/s vs bf16.

Model: a Llama-style decoder (RMSNorm, GQA attention with a KV cache, SwiGLU MLP), d=4096, 32 heads (8 KV
heads), MLP 14336, 4 layers, vocab 8192, random weights (throughput only; the logits are compared with the
fake-quant model ``qm.apply``). Variants, timed in the same run:

* bf16 (the unquantized model);
* FP8 W8A8 (``jq.FP8_DEFAULT_CFG``): E4M3 weights stored K-major, activations quantized per tensor with the
  calibrated amax by the fused kernel, cuBLASLt fp8 GEMMs;
* NVFP4 W4A16 (``jq.W4A16_NVFP4_CFG``): packed NVFP4 weights, the Mosaic GPU decode GEMM.

The decode loop (``n_steps`` greedy tokens) runs inside one jitted ``fori_loop``.
``PYTHONPATH=. python -m benchmarks.kernel_bench.e2e``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
import traceback

import jax
import jax.numpy as jnp
from jax import lax

import jq
from benchmarks.kernel_bench.common import device_info, save
from jq import deploy

CFG = dict(d=4096, heads=32, kv_heads=8, ff=14336, layers=4, vocab=8192, max_len=256)


def init_params(key, cfg=CFG, dtype=jnp.bfloat16):
    d, ff, v = cfg["d"], cfg["ff"], cfg["vocab"]
    hd = d // cfg["heads"]
    dkv = cfg["kv_heads"] * hd
    ks = iter(jax.random.split(key, 8 * cfg["layers"] + 4))

    def w(shape, fan_in):
        return (jax.random.normal(next(ks), shape, jnp.float32) / math.sqrt(fan_in)).astype(dtype)

    layers = []
    for _ in range(cfg["layers"]):
        layers.append({"attn_norm": jnp.ones((d,), dtype), "wq": w((d, d), d), "wk": w((d, dkv), d),
                       "wv": w((d, dkv), d), "wo": w((d, d), d), "mlp_norm": jnp.ones((d,), dtype),
                       "w_gate": w((d, ff), d), "w_up": w((d, ff), d), "w_down": w((ff, d), ff)})
    return {"embed": w((v, d), 1.0), "layers": layers, "final_norm": jnp.ones((d,), dtype),
            "lm_head": w((d, v), d)}


def _rms(x, g):
    xf = x.astype(jnp.float32)
    return (xf * lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + 1e-6)).astype(x.dtype) * g


def step(params, tok, cache_k, cache_v, pos, cfg=CFG):
    """One decode step: ``tok [B]`` at position ``pos`` -> (logits [B, V], caches)."""
    d, h, hkv = cfg["d"], cfg["heads"], cfg["kv_heads"]
    hd = d // h
    b = tok.shape[0]
    x = params["embed"][tok]
    t = cache_k.shape[2]
    mask = jnp.arange(t) <= pos
    for li, p in enumerate(params["layers"]):
        hx = _rms(x, p["attn_norm"])
        q = (hx @ p["wq"]).reshape(b, h, hd)
        k = (hx @ p["wk"]).reshape(b, 1, hkv, hd)
        v = (hx @ p["wv"]).reshape(b, 1, hkv, hd)
        cache_k = lax.dynamic_update_slice(cache_k, k[None].astype(cache_k.dtype), (li, 0, pos, 0, 0))
        cache_v = lax.dynamic_update_slice(cache_v, v[None].astype(cache_v.dtype), (li, 0, pos, 0, 0))
        kk = jnp.repeat(cache_k[li], h // hkv, axis=2)  # [B, T, H, hd]
        vv = jnp.repeat(cache_v[li], h // hkv, axis=2)
        s = jnp.einsum("bhd,bthd->bht", q.astype(jnp.float32), kk.astype(jnp.float32)) / math.sqrt(hd)
        s = jnp.where(mask[None, None, :], s, -1e30)
        a = jax.nn.softmax(s, axis=-1)
        o = jnp.einsum("bht,bthd->bhd", a, vv.astype(jnp.float32)).reshape(b, d).astype(x.dtype)
        x = x + o @ p["wo"]
        hx = _rms(x, p["mlp_norm"])
        x = x + (jax.nn.silu(hx @ p["w_gate"]) * (hx @ p["w_up"])) @ p["w_down"]
    logits = _rms(x, params["final_norm"]) @ params["lm_head"]
    return logits.astype(jnp.float32), cache_k, cache_v


def _cache(b, cfg=CFG, dtype=jnp.bfloat16):
    hd = cfg["d"] // cfg["heads"]
    shape = (cfg["layers"], b, cfg["max_len"], cfg["kv_heads"], hd)
    return jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)


def _decoder(apply):
    """``generate(state, tok, n)``: n greedy decode steps in one jitted fori_loop."""

    def generate(state, tok, ck, cv, n_steps):
        def body(i, carry):
            tok, ck, cv = carry
            logits, ck, cv = apply(state, tok, ck, cv, i)
            return jnp.argmax(logits, axis=-1).astype(jnp.int32), ck, cv

        return lax.fori_loop(0, n_steps, body, (tok, ck, cv))

    return jax.jit(generate, static_argnums=(4,))


def _time(gen, state, b, n_steps, reps=5):
    ck, cv = _cache(b)
    tok = jnp.arange(b, dtype=jnp.int32) % 97
    jax.block_until_ready(gen(state, tok, ck, cv, n_steps))
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(gen(state, tok, ck, cv, n_steps))
        ts.append(time.perf_counter() - t0)
    ts.sort()
    return ts[len(ts) // 2]


def bench(batches=(1, 16), n_steps=64, backend="gpu", epilogues=None) -> dict:
    """``epilogues``: decode-GEMM epilogues ("xla", "kernel") to time the NVFP4 model with, each as its own variant
    ``nvfp4_w4a16_epi_<e>`` (default: ``$JQ_E2E_EPILOGUES``, else only ``MosaicConfig()``'s, as ``nvfp4_w4a16``)."""
    from jq_kernels import w4a16 as W4

    if epilogues is None and os.environ.get("JQ_E2E_EPILOGUES"):
        epilogues = os.environ["JQ_E2E_EPILOGUES"].split(",")
    out = {"model": CFG, "n_steps": n_steps, "rows": [], "details": {},
           "default_mosaic_config": str(W4.MosaicConfig())}
    cfgs = {}  # variant -> MosaicConfig override
    params = init_params(jax.random.key(0))
    b0 = 4
    ck, cv = _cache(b0)
    calib = [(jnp.arange(b0, dtype=jnp.int32) * 7 % CFG["vocab"], ck, cv, jnp.int32(0))]
    variants = {"bf16": None}
    for name, cfg in (("fp8_w8a8", jq.FP8_DEFAULT_CFG), ("nvfp4_w4a16", jq.W4A16_NVFP4_CFG)):
        try:
            t0 = time.time()
            qm = jq.quantize(params, step, cfg, calib_data=calib, progress=False)
            rm = deploy.realize(qm, backend=backend)
            out["details"][name] = {"plan": rm.plan, "stored_weight_bytes": rm.nbytes,
                                    "realize_s": time.time() - t0}
            # real-quant logits vs the fake-quant model, one step
            lf = jax.jit(lambda p, *a: qm.apply(p, *a)[0])(qm.params, *calib[0])
            lr = jax.jit(lambda w, p, *a: rm.apply(w, p, *a)[0])(rm.weights, rm.params, *calib[0])
            out["details"][name]["rel_err_vs_fake_quant"] = float(jnp.linalg.norm(lr - lf) / jnp.linalg.norm(lf))
            lb = jax.jit(step)(params, *calib[0])[0]
            out["details"][name]["rel_err_vs_bf16"] = float(jnp.linalg.norm(lr - lb) / jnp.linalg.norm(lb))
            if name == "nvfp4_w4a16" and os.environ.get("JQ_E2E_STREAM_K"):  # the run-10 default, for comparison
                cfgs["nvfp4_w4a16_stream_k"] = W4.MosaicConfig()
                variants["nvfp4_w4a16_stream_k"] = rm
            if name == "nvfp4_w4a16" and epilogues:
                for e in epilogues:
                    vname = f"{name}_epi_{e}"
                    cfgs[vname] = dataclasses.replace(W4.MosaicConfig(), epilogue=e)
                    with W4.mosaic_config(cfgs[vname]):
                        le = jax.jit(lambda w, p, *a: rm.apply(w, p, *a)[0])(rm.weights, rm.params, *calib[0])
                    out["details"][vname] = {"config": str(cfgs[vname]), "rel_err_vs_fake_quant": float(
                        jnp.linalg.norm(le - lf) / jnp.linalg.norm(lf))}
                    variants[vname] = rm
                    print(f"  {vname}: {out['details'][vname]}", flush=True)
            else:
                variants[name] = rm
            print(f"  {name}: {out['details'][name]}", flush=True)
        except Exception as e:
            traceback.print_exc()
            out["details"][name] = {"error": f"{type(e).__name__}: {str(e)[:2000]}"}
    param_bytes = sum(int(a.size) * a.dtype.itemsize for a in jax.tree_util.tree_leaves(params["layers"]))
    out["bf16_layer_weight_bytes"] = param_bytes
    for b in batches:
        row = {"B": b}
        for name, rm in variants.items():
            try:
                if rm is None:
                    gen = _decoder(lambda st, tok, ck, cv, i: step(st, tok, ck, cv, i))
                    state = params
                else:
                    gen = _decoder(lambda st, tok, ck, cv, i, rm=rm: rm.apply(st[0], st[1], tok, ck, cv, i))
                    state = (rm.weights, rm.params)
                with (W4.mosaic_config(cfgs[name]) if name in cfgs else contextlib.nullcontext()):
                    t = _time(gen, state, b, n_steps)
                row[f"{name}_tok_s"] = b * n_steps / t
                row[f"{name}_ms_per_step"] = t / n_steps * 1e3
                print(f"  B={b} {name}: {b * n_steps / t:.0f} tok/s ({t / n_steps * 1e3:.3f} ms/step)", flush=True)
            except Exception as e:
                traceback.print_exc()
                row[f"{name}_error"] = f"{type(e).__name__}: {str(e)[:1500]}"
        for name in variants:
            if name != "bf16" and f"{name}_tok_s" in row and "bf16_tok_s" in row:
                row[f"{name}_speedup"] = row[f"{name}_tok_s"] / row["bf16_tok_s"]
        out["rows"].append(row)
        save("e2e.json", {"info": device_info(), "e2e": out, "partial": True})  # kept if a later batch is cut off
    return out


if __name__ == "__main__":
    rec = {"info": device_info(), "e2e": bench()}
    print(save("e2e.json", rec))
