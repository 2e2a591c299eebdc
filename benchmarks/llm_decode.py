"""LLM generation on real-quantized weights: tokens/s against bf16, prefill and decode timed separately.

Models (random weights, bf16): SmolLM2-135M-shaped and Llama-3-8B-shaped (:data:`SHAPES`), run at a reduced
depth (``--layers``, default 4 and 2) because every variant x batch is one compilation of an unrolled model;
decode time is ``t_head + L * t_layer`` (identical layers run one after another), so the script also times the
final norm + lm_head alone and reports the full-depth figure ``t_head + (L_full / L) (t - t_head)`` next to the
measured one.

Variants (``--variants``; default :data:`DEFAULT_VARIANTS`): ``bf16`` (plain :func:`jq.models.extend`), ``bf16_kv8`` (same, FP8 KV cache),
``fp8_w8a8`` (FP8 weights and activations, the fp8 GEMM forced at every shape), ``fp8`` (the default
:class:`jq.formats.fp8_gemm.FP8GemmPolicy`: bf16 GEMM on upcast E4M3 operands for <= 32 tokens, fp8 GEMM above),
``fp8_dequant`` (the bf16-GEMM path forced), ``nvfp4`` (NVFP4 W4A16, the Mosaic GEMM), ``int4`` (INT4 in groups
of 128, max calibration, W4A16; ``INT4_AWQ_CFG`` realizes to the same kernel, with the activation scaled by AWQ's
``pre_quant_scale``); a ``_kv8`` suffix stores the KV cache in FP8 E4M3 with the calibrated per-layer amax
(``FP8_KV_CFG``). Quantized variants run through :mod:`jq.models.serve` (``jq.deploy.realize``).

Passes, in order, under a wall-time budget (``--budget-s``; cells that do not fit are listed as skipped):
``fp8_gemm`` (one GEMM: bf16 vs fp8 vs dequant at each batch), ``decode`` (``--steps`` greedy tokens in one
jitted ``lax.scan``, after a ``--prompt``-token prefill), ``check`` (teacher-forced: the fake-quant model
``qm.apply`` on prompt + realized tokens; greedy agreement and prefill-logit error; ``--check-models``, random
weights: small top-2 margins make it informative, not a pass/fail), ``prefill``. The full-depth estimate leaves
out only per-token constants (embedding gather, argmax), which it counts once, as at the measured depth.
Timings: median of ``--iters`` calls after a compile call, each ``block_until_ready``.

``PYTHONUNBUFFERED=1 PYTHONPATH=. python -m benchmarks.llm_decode --out $OUT/llm_decode.json``;
``--smoke`` runs tiny shapes (CPU, under a minute).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
import traceback

import jax
import jax.numpy as jnp
import numpy as np

import jq
import jq.models as jm
from jq import deploy
from jq import numerics as nx
from jq.formats.fp8_gemm import FP8GemmPolicy
from jq.models import llama, serve

SHAPES = {
    "smollm2_135m": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, rope_theta=100000.0,
                         tie_word_embeddings=True),
    "llama3_8b": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=8, rope_theta=500000.0,
                      tie_word_embeddings=False),
    "tiny": dict(vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, rope_theta=10000.0, tie_word_embeddings=False),
}
BENCH_LAYERS = {"smollm2_135m": 4, "llama3_8b": 2, "tiny": 2}
PRESETS = {"fp8": "FP8_DEFAULT_CFG", "nvfp4": "W4A16_NVFP4_CFG", "int4": "INT4_BLOCKWISE_WEIGHT_ONLY_CFG"}
FP8_POLICIES = {"fp8": FP8GemmPolicy(), "fp8_w8a8": FP8GemmPolicy(mode="w8a8"),
                "fp8_dequant": FP8GemmPolicy(mode="dequant")}
VARIANTS = ("bf16", "bf16_kv8", "fp8_w8a8", "fp8", "fp8_kv8", "fp8_dequant", "nvfp4", "nvfp4_kv8", "int4",
            "int4_kv8")
# default: every weight format once, FP8 KV on/off for bf16 and NVFP4 (each variant x batch is one compilation)
DEFAULT_VARIANTS = ("bf16", "bf16_kv8", "fp8_w8a8", "fp8", "nvfp4", "nvfp4_kv8", "int4")


def config_of(shape: str, layers: int) -> jm.LlamaConfig:
    d = dict(SHAPES[shape], num_hidden_layers=layers, architectures=["LlamaForCausalLM"],
             max_position_embeddings=4096, rms_norm_eps=1e-5)
    return jm.LlamaConfig.from_hf(d)


def _median_time(fn, args, iters: int):
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn(*args))  # compile + first run
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times), compile_s, out


@dataclasses.dataclass(frozen=True, eq=False)
class PlainLM:
    """The unquantized model (bf16) with a float or FP8 cache: the baseline, without jq's evaluator."""

    config: jm.LlamaConfig
    params: dict
    kv_spec: object = None
    k_amax: object = None
    v_amax: object = None
    weights: dict = dataclasses.field(default_factory=dict)

    def init_cache(self, batch, max_len):
        return jm.init_cache(self.config, batch, max_len, kv_format=self.kv_spec, k_amax=self.k_amax,
                             v_amax=self.v_amax, dtype=jnp.bfloat16)

    def extend(self, weights, params, tokens, cache):
        return jm.extend(params, tokens, cache)


def _decode_program(lm, n_steps):
    def run(weights, params, token, cache):
        def step(carry, _):
            tok, c = carry
            logits, c = lm.extend(weights, params, tok[:, None], c)
            nxt = jnp.argmax(logits[:, 0], axis=-1).astype(jnp.int32)
            return (nxt, c), nxt
        (_, cache), toks = jax.lax.scan(step, (token, cache), None, length=n_steps)
        return toks.T, cache
    return jax.jit(run)


def _prefill_program(lm):
    return jax.jit(lambda w, p, prompt, cache: lm.extend(w, p, prompt, cache))


def _head_program(config):
    def run(params, h):
        return llama.lm_head(params, h, config)
    return jax.jit(run)


class Budget:
    def __init__(self, seconds):
        self.t0, self.seconds = time.time(), seconds

    def left(self):
        return self.seconds - (time.time() - self.t0)


class Model:
    """One model shape: params, calibrated quantized models and the served variants (built lazily)."""

    def __init__(self, shape, layers, args):
        self.shape, self.layers, self.args = shape, layers, args
        self.config = config_of(shape, layers)
        self.full_layers = SHAPES[shape]["num_hidden_layers"]
        self.params = llama.init_params(self.config, jax.random.key(0), dtype=jnp.bfloat16, scale=0.02)
        rng = np.random.default_rng(0)
        self.calib = jnp.asarray(rng.integers(0, self.config.vocab_size, (2, 32)), jnp.int32)
        self.prompts = {b: jnp.asarray(rng.integers(0, self.config.vocab_size, (b, args.prompt)), jnp.int32)
                        for b in args.batches}
        self.qms, self.rms, self.lms, self.programs = {}, {}, {}, {}
        self.realize_s = {}
        self.max_len = args.prompt + args.steps + 1  # one cache shape for every program of a batch size

    def program(self, variant):
        """``(prefill, decode)`` jitted once per variant (jit caches one executable per batch size)."""
        if variant not in self.programs:
            lm = self.lm(variant)
            self.programs[variant] = (_prefill_program(lm), _decode_program(lm, self.args.steps))
        return self.programs[variant]

    def qm(self, fmt):
        if fmt not in self.qms:
            t0 = time.time()
            cfg = jq.merge_presets(getattr(jq, PRESETS[fmt]), jq.FP8_KV_CFG)
            qm = jq.quantize(self.params, jm.make_forward(self.config), cfg, calib_data=[(self.calib,)],
                             progress=False)
            self.qms[fmt] = qm
            self.rms[fmt] = deploy.realize(qm)
            jax.block_until_ready(self.rms[fmt].weights)
            self.realize_s[fmt] = time.time() - t0
        return self.qms[fmt]

    def lm(self, variant):
        if variant in self.lms:
            return self.lms[variant]
        base, kv8 = (variant[:-4], True) if variant.endswith("_kv8") else (variant, False)
        if base == "bf16":
            if kv8:
                spec = jm.kv_spec("fp8")
                k_amax, v_amax = serve._kv_amax(self.qm("fp8"), self.config, "k_bmm_quantizer"), \
                    serve._kv_amax(self.qm("fp8"), self.config, "v_bmm_quantizer")
                lm = PlainLM(self.config, self.params, spec, k_amax, v_amax)
            else:
                lm = PlainLM(self.config, self.params)
        else:
            fmt = "fp8" if base.startswith("fp8") else base
            qm, rm = self.qm(fmt), self.rms[fmt]
            if not kv8:  # the same stored weights, no KV quantization anywhere
                qm = qm.replace(config=qm.config.with_entries(("*bmm_quantizer", False)))
            kernels = rm.kernels
            if base in FP8_POLICIES:
                kernels = {k: dataclasses.replace(v, policy=FP8_POLICIES[base]) for k, v in kernels.items()}
            rm = deploy.RealizedModel(qm, rm.weights, rm.plan, rm.backend, kernels)
            lm = serve.real_quant_lm(rm, self.config, kv_cache=kv8)
        self.lms[variant] = lm
        return lm


def fp8_gemm_pass(args, budget, rec):
    """One GEMM ``[B, K] @ [N, K]^T`` (the 8B MLP up-projection): bf16 dot, fp8 GEMM, bf16 GEMM on E4M3."""
    from jq.formats.linear import FP8Linear
    n, k = (256, 128) if args.smoke else (14336, 4096)
    w = jax.random.normal(jax.random.key(1), (n, k), jnp.float32).astype(jnp.bfloat16)
    amax = jnp.max(jnp.abs(w)).astype(jnp.float32)
    q, s = nx.fp8_quantize(w.astype(jnp.float32), amax, "e4m3")
    stored = (q.astype(jnp.float8_e4m3fn), nx.fp8_dequant_scale(s))
    platform = "gpu" if jax.default_backend() == "gpu" else "cpu"
    rows = []
    for b in args.batches:
        if budget.left() < 0:
            rows.append({"B": b, "skipped": "budget"})
            continue
        x = jax.random.normal(jax.random.key(2), (b, k), jnp.float32).astype(jnp.bfloat16)
        row = {"B": b, "N": n, "K": k}
        fns = {"bf16": jax.jit(lambda x, w: jnp.dot(x, w.T, preferred_element_type=jnp.float32))}
        for mode in ("w8a8", "dequant"):
            kern = FP8Linear(policy=FP8GemmPolicy(mode=mode))
            fns[mode] = jax.jit(lambda x, st, kern=kern: kern.apply(x, st, input_amax=jnp.float32(4.0),
                                                                      platform=platform))
        for name, fn in fns.items():
            try:
                t, _, _ = _median_time(fn, (x, w if name == "bf16" else stored), args.iters * 5)
                row[f"{name}_us"] = t * 1e6
            except Exception as e:  # one failing path must not hide the others
                row[f"{name}_error"] = f"{type(e).__name__}: {str(e)[:300]}"
        if "bf16_us" in row:
            for mode in ("w8a8", "dequant"):
                if f"{mode}_us" in row:
                    row[f"{mode}_speedup"] = row["bf16_us"] / row[f"{mode}_us"]
        row["policy_choice"] = FP8GemmPolicy().choose(tokens=b, n=n, k=k)
        rows.append(row)
    rec["fp8_gemm"] = rows


def _cell(fn):
    try:
        return fn()
    except Exception as e:
        traceback.print_exc()
        return {"error": f"{type(e).__name__}: {str(e)[:1000]}"}


def decode_pass(model, args, budget, rec):
    head = _head_program(model.config)
    for b in args.batches:
        h = jnp.zeros((b, 1, model.config.hidden_size), jnp.bfloat16)
        t_head, _, _ = _median_time(head, (model.params, h), args.iters)
        rec.setdefault("head_decode_s", {})[str(b)] = t_head
        for variant in args.variants:
            key = f"{model.shape}/decode/B{b}/{variant}"
            if budget.left() < 0:
                rec["cells"][key] = {"skipped": "budget"}
                continue

            def run():
                lm = model.lm(variant)
                _, dec = model.program(variant)
                # decode time does not depend on the cache contents: an empty cache holding `prompt` positions
                cache = dataclasses.replace(lm.init_cache(b, model.max_len), length=jnp.int32(args.prompt))
                t, compile_s, _ = _median_time(dec, (lm.weights, lm.params, model.prompts[b][:, -1], cache),
                                               args.iters)
                full = t_head + (model.full_layers / model.layers) * (t - t_head)
                return {"s": t, "tok_s": b * args.steps / t, "full_depth_tok_s": b * args.steps / full,
                        "compile_s": compile_s}
            rec["cells"][key] = _cell(run)
            print(key, {k: (round(v, 4) if isinstance(v, float) else v) for k, v in rec["cells"][key].items()
                        if k != "tokens"}, flush=True)
            _save(args, rec)


def prefill_pass(model, args, budget, rec):
    head = _head_program(model.config)
    for b in args.batches:
        h = jnp.zeros((b, args.prompt, model.config.hidden_size), jnp.bfloat16)
        t_head, _, _ = _median_time(head, (model.params, h), args.iters)
        rec.setdefault("head_prefill_s", {})[str(b)] = t_head
        for variant in args.variants:
            key = f"{model.shape}/prefill/B{b}/{variant}"
            if budget.left() < 0:
                rec["cells"][key] = {"skipped": "budget"}
                continue

            def run():
                lm = model.lm(variant)
                prefill, _ = model.program(variant)
                cache = lm.init_cache(b, model.max_len)
                t, compile_s, _ = _median_time(prefill, (lm.weights, lm.params, model.prompts[b], cache),
                                               args.iters)
                full = t_head + (model.full_layers / model.layers) * (t - t_head)
                return {"s": t, "tok_s": b * args.prompt / t, "full_depth_tok_s": b * args.prompt / full,
                        "compile_s": compile_s}
            rec["cells"][key] = _cell(run)
            print(key, {k: (round(v, 4) if isinstance(v, float) else v) for k, v in rec["cells"][key].items()},
                  flush=True)
            _save(args, rec)


def check_pass(model, args, budget, rec):
    """Teacher-forced agreement of the realized greedy tokens (batch 1) with the fake-quant ``qm.apply``: the
    realized model generates ``steps + 1`` tokens (prefill, then the decode program); ``qm.apply`` runs once on
    prompt + those tokens, and its argmax at each position must be the realized model's next token."""
    b = 1
    for variant in args.variants:
        if variant.startswith("bf16"):
            continue
        key = f"{model.shape}/check/{variant}"
        if budget.left() < 0:
            rec["cells"][key] = {"skipped": "budget"}
            continue

        def run():
            lm = model.lm(variant)
            prefill, dec = model.program(variant)
            fmt = "fp8" if variant.startswith("fp8") else variant.split("_")[0]
            fq = model.qms[fmt]
            if not variant.endswith("_kv8"):
                fq = fq.replace(config=fq.config.with_entries(("*bmm_quantizer", False)))
            prompt = model.prompts[b] if b in model.prompts else model.prompts[args.batches[0]][:1]
            real_logits, cache = prefill(lm.weights, lm.params, prompt, lm.init_cache(b, model.max_len))
            first = jnp.argmax(real_logits[:, -1], axis=-1).astype(jnp.int32)
            rest, _ = dec(lm.weights, lm.params, first, cache)
            toks = jnp.concatenate([first[:, None], rest], axis=1)
            seq = jnp.concatenate([prompt, toks], axis=1)
            fake_logits = jax.jit(fq.apply)(fq.params, seq).astype(jnp.float32)
            t = prompt.shape[1]
            fake_next = jnp.argmax(fake_logits[0, t - 1:-1], axis=-1)  # the fake model's choice at each step
            agree = float(jnp.mean((fake_next == toks[0]).astype(jnp.float32)))
            first_mismatch = int(jnp.argmin(fake_next == toks[0])) if agree < 1 else None
            real_logits = real_logits.astype(jnp.float32)
            err = float(jnp.max(jnp.abs(real_logits - fake_logits[:, :t])) / jnp.max(jnp.abs(fake_logits[:, :t])))
            top2 = jnp.sort(fake_logits[0, t - 1:-1], axis=-1)[:, -2:]
            return {"greedy_agreement": agree, "first_mismatch": first_mismatch, "n_tokens": int(toks.shape[1]),
                    "prefill_logit_rel_err": err, "min_top2_margin": float(jnp.min(top2[:, 1] - top2[:, 0])),
                    "logit_scale": float(jnp.max(jnp.abs(fake_logits)))}
        rec["cells"][key] = _cell(run)
        print(key, rec["cells"][key], flush=True)
        _save(args, rec)


def _save(args, rec):
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(rec, f, indent=1, default=str)


def summary(rec, args) -> str:
    lines = [f"{rec['info']['device']}  jax {rec['info']['jax']}  {rec['info']['date'][:19]}  "
             f"prompt {args.prompt}  decode steps {args.steps}"]
    for row in rec.get("fp8_gemm", []):
        if "bf16_us" in row:
            lines.append(f"fp8 gemm B={row['B']:3d} N={row['N']} K={row['K']}: bf16 {row['bf16_us']:.1f} us  "
                         + "  ".join(f"{m} {row.get(m + '_speedup', float('nan')):.2f}x" for m in ("w8a8", "dequant"))
                         + f"  (policy: {row['policy_choice']})")
    for shape in args.models:
        for phase in ("decode", "prefill"):
            lines.append(f"{shape} {phase} (layers {rec['layers'][shape]} of {SHAPES[shape]['num_hidden_layers']}):"
                         f" tok/s measured | full-depth estimate | speedup vs bf16 (measured / full depth)")
            for b in args.batches:
                base = rec["cells"].get(f"{shape}/{phase}/B{b}/bf16", {})
                for v in args.variants:
                    c = rec["cells"].get(f"{shape}/{phase}/B{b}/{v}", {})
                    if "tok_s" not in c:
                        lines.append(f"  B={b:2d} {v:12s} {c.get('error', c.get('skipped', 'missing'))[:100]}")
                        continue
                    sp = (f"{c['tok_s'] / base['tok_s']:5.2f}x / {c['full_depth_tok_s'] / base['full_depth_tok_s']:5.2f}x"
                          if "tok_s" in base else "")
                    lines.append(f"  B={b:2d} {v:12s} {c['tok_s']:10.0f} | {c['full_depth_tok_s']:10.0f} | {sp}")
        for v in args.variants:
            c = rec["cells"].get(f"{shape}/check/{v}")
            if c and "greedy_agreement" in c:
                lines.append(f"  check {v:12s} greedy agreement {c['greedy_agreement']:.3f} of {c['n_tokens']} "
                             f"(first mismatch {c['first_mismatch']}), prefill logits rel err "
                             f"{c['prefill_logit_rel_err']:.2e}, min top-2 margin {c['min_top2_margin']:.3g}")
            elif c and "error" in c:
                lines.append(f"  check {v:12s} ERROR {c['error'][:200]}")
    return "\n".join(lines)


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.path.join(os.environ.get("OUT", "/tmp/jq_bench"), "llm_decode.json"))
    p.add_argument("--smoke", action="store_true", help="tiny shapes on CPU (< 1 minute)")
    p.add_argument("--models", default="llama3_8b,smollm2_135m")
    p.add_argument("--check-models", default="smollm2_135m", help="models of the check pass")
    p.add_argument("--layers", default="", help="per-model depth, e.g. smollm2_135m=4,llama3_8b=2")
    p.add_argument("--batches", default="1,8,32")
    p.add_argument("--variants", default=",".join(DEFAULT_VARIANTS))
    p.add_argument("--prompt", type=int, default=16)
    p.add_argument("--steps", type=int, default=32)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--budget-s", type=float, default=180.0, help="no new cell starts after this many seconds")
    p.add_argument("--passes", default="fp8_gemm,decode,check,prefill")
    a = p.parse_args(argv)
    if a.smoke:
        a.models, a.batches, a.prompt, a.steps, a.iters, a.budget_s = "tiny", "1", 8, 4, 1, 1e9
        a.variants, a.check_models = "bf16,fp8_kv8,nvfp4_kv8", "tiny"
    a.models = [m for m in a.models.split(",") if m]
    a.batches = [int(b) for b in a.batches.split(",")]
    a.variants = [v for v in a.variants.split(",") if v]
    a.passes = [x for x in a.passes.split(",") if x]
    a.check_models = [m for m in a.check_models.split(",") if m]
    bad = [v for v in a.variants if v not in VARIANTS] + [m for m in a.models if m not in SHAPES]
    if bad:
        p.error(f"unknown variants/models {bad}; variants {VARIANTS}, models {sorted(SHAPES)}")
    a.layer_map = dict(BENCH_LAYERS)
    for part in filter(None, a.layers.split(",")):
        name, n = part.split("=")
        a.layer_map[name] = int(n)
    return a


def main(argv=None):
    args = parse(sys.argv[1:] if argv is None else argv)
    from benchmarks.kernel_bench.common import device_info
    rec = {"info": device_info(), "args": {k: v for k, v in vars(args).items()}, "cells": {}, "layers": {},
           "command": " ".join(sys.argv)}
    budget = Budget(args.budget_s)
    t0 = time.time()
    def guarded(name, fn, *a):  # a failing pass is recorded; the record and the table are still written
        try:
            fn(*a)
        except Exception as e:  # noqa: BLE001
            traceback.print_exc()
            rec.setdefault("errors", {})[name] = f"{type(e).__name__}: {str(e)[:1000]}"

    if "fp8_gemm" in args.passes:
        guarded("fp8_gemm", fp8_gemm_pass, args, budget, rec)
    models = {}
    for shape in args.models:
        layers = min(args.layer_map.get(shape, 2), SHAPES[shape]["num_hidden_layers"])
        rec["layers"][shape] = layers
        guarded(f"{shape}/init", lambda s=shape, n=layers: models.__setitem__(s, Model(s, n, args)))
        if shape not in models:
            continue
        if "decode" in args.passes:
            guarded(f"{shape}/decode", decode_pass, models[shape], args, budget, rec)
        if "check" in args.passes and shape in args.check_models:
            guarded(f"{shape}/check", check_pass, models[shape], args, budget, rec)
    if "prefill" in args.passes:
        for shape, model in models.items():
            guarded(f"{shape}/prefill", prefill_pass, model, args, budget, rec)
    for shape, model in models.items():
        rec.setdefault("realize_s", {})[shape] = model.realize_s
        rec.setdefault("plans", {})[shape] = {f: sorted(set(rm.plan.values())) for f, rm in model.rms.items()}
    rec["wall_s"] = time.time() - t0
    _save(args, rec)
    text = summary(rec, args) + "".join(f"\nERROR in {k}: {v[:300]}" for k, v in rec.get("errors", {}).items())
    rec["summary"] = text
    _save(args, rec)
    print(text)
    print(f"wrote {args.out} ({rec['wall_s']:.0f} s)")
    return rec


if __name__ == "__main__":
    main()
