"""LLM generation on real-quantized weights: tokens/s against bf16, prefill and decode timed separately, at full depth.

Models (random bf16 weights drawn on the device): Llama-3-8B-shaped and SmolLM2-135M-shaped (:data:`SHAPES`), at
their full depth (``--layers`` overrides it), run by :mod:`benchmarks.llm_stack`: one layer traced and compiled,
``lax.scan`` over the stacked layers (so every figure is measured at full depth, nothing is extrapolated).

Variants (``--variants``; default :data:`DEFAULT_VARIANTS`): ``bf16`` (no evaluator), ``bf16_kv8`` (same, FP8 KV
cache), ``fp8_w8a8`` (FP8 weights and activations, the fp8 GEMM forced at every shape), ``fp8`` (the default
:class:`jq.formats.fp8_gemm.FP8GemmPolicy`: its ``small_batch_gemm`` for <= 32 tokens, fp8 GEMM above),
``fp8_dequant`` (the bf16-GEMM path forced), ``fp8_kernel`` (the Pallas FP8 decode GEMM forced up to 64 tokens, fp8
GEMM above; its config from ``JQ_FP8_DECODE_CFG``), ``fp8_wgmma`` (the Mosaic GPU fp8 wgmma decode GEMM,
:mod:`jq_kernels.fp8_wgmma`, forced up to 64 tokens; its config from ``JQ_FP8_WGMMA_CFG``, one
``parse_wgmma_configs`` entry; off a GPU the w8a8 reference runs), ``nvfp4`` (NVFP4 W4A16, the Mosaic GEMM),
``int4`` (INT4 in groups of 128, max calibration, W4A16; ``INT4_AWQ_CFG`` realizes to the same kernel); a ``_kv8``
suffix stores the KV cache in FP8 E4M3 with the calibrated amax (``FP8_KV_CFG``); a ``_fused`` infix
(``fp8_kernel_fused``, ``nvfp4_fused_kv8``, ``bf16_fused``) runs the same random weights with q/k/v and gate/up
fused into one GEMM each (:func:`jq.models.llama.fuse_projections`, as serving stacks do; quantized: calibrated and
realized on the fused params, so a fused site has one per-tensor weight amax, the max of its parts'); a ``_qhead`` infix
(``int4_fused_qhead``, ``fp8_qhead_kv8``) quantizes the ``lm_head`` with the layers' specs as well
(:func:`head_like_layers`; ModelOpt's presets keep it in bf16, and at the 8B shape its 1.05 GB are ~7 % of the
bf16 step's bytes, ~22 % of a W4A16 step's). Quantized variants: ``jq.deploy.realize`` per layer
(a jitted program on the device) and jq's evaluator with the ``RealQuant`` handler in the scanned step.

Passes (``--passes``), under a wall-time budget (``--budget-s``: no cell starts past it; skipped cells are listed):
``fp8_gemm`` (one GEMM: bf16 vs fp8 vs dequant at each batch), ``decode`` (``--steps`` greedy tokens in one
jitted ``lax.scan`` after ``--prompt`` cached positions), ``prefill`` (the ``--prompt``-token prompt pass into an
empty cache), ``real`` (:mod:`benchmarks.llm_exactness`: the real SmolLM2-135M, real-quantized serving vs the
fake-quant model, greedy tokens and logits over ``--real-tokens`` tokens, and its tokens/s).
Timings: median of ``--iters`` calls after a compile call, each ``block_until_ready``; ``--profile`` adds, per
cell, one traced call's device kernels per step by kind and the idle time between them
(:mod:`benchmarks.kernel_bench.trace_summary`).

``PYTHONUNBUFFERED=1 PYTHONPATH=. python -m benchmarks.llm_decode --out $OUT/llm_decode.json``;
``--smoke`` runs tiny shapes (CPU, a few minutes).
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
from benchmarks import llm_stack
from benchmarks.llm_shapes import SHAPES, config_of
from jq import numerics as nx
from jq.formats.fp8_gemm import FP8GemmPolicy
from jq.models import llama, serve
from jq.models.stacking import unstack_trees

PRESETS = {"fp8": "FP8_DEFAULT_CFG", "nvfp4": "W4A16_NVFP4_CFG", "int4": "INT4_BLOCKWISE_WEIGHT_ONLY_CFG"}
FP8_POLICIES = {"fp8": FP8GemmPolicy(), "fp8_w8a8": FP8GemmPolicy(mode="w8a8"),
                "fp8_dequant": FP8GemmPolicy(mode="dequant"), "fp8_kernel": FP8GemmPolicy(mode="decode_kernel"),
                "fp8_wgmma": FP8GemmPolicy(mode="wgmma_kernel")}
_UNFUSED = ("bf16", "bf16_kv8", "fp8_w8a8", "fp8", "fp8_kv8", "fp8_dequant", "fp8_kernel", "fp8_wgmma", "nvfp4",
            "nvfp4_kv8", "int4", "int4_kv8")
VARIANTS = _UNFUSED + tuple(v[:-4] + "_fused_kv8" if v.endswith("_kv8") else v + "_fused" for v in _UNFUSED)
# "_qhead": the lm_head quantized in the variant's format too (ModelOpt's presets leave it in bf16)
VARIANTS += tuple(v[:-4] + "_qhead_kv8" if v.endswith("_kv8") else v + "_qhead" for v in VARIANTS
                  if not v.startswith("bf16"))
# every weight format once, FP8 KV on/off for bf16 and NVFP4 (each variant x batch x phase is one compilation)
DEFAULT_VARIANTS = ("bf16", "fp8", "nvfp4", "int4", "nvfp4_kv8", "bf16_kv8", "fp8_w8a8")


def _most_often_fastest(path: str, best_cells, from_name, label: str):
    """The config named most often in a sweep record's best cells (``best_cells(record)`` lists their
    ``{"config": name}`` entries), built by ``from_name``; None (the kernel's default) without a record or cells."""
    cells = best_cells(json.load(open(path))) if os.path.exists(path) else []
    names = [v["config"] for v in cells]
    cfg = from_name(max(names, key=names.count)) if names else None
    print(f"{label}: config {cfg.name if cfg else 'default'} (from {path})", flush=True)
    return cfg


def _decode_cfg():
    """The ``fp8_kernel`` variant's decode-kernel config from ``JQ_FP8_DECODE_CFG``: one
    :func:`jq_kernels.fp8_decode.parse_configs` entry; ``sweep``: the config the ``fp8_decode`` section of the
    same run (``$OUT/section_fp8_decode.json``) found fastest at the most batch sizes (the default if it has none);
    unset: the kernel's default."""
    from jq_kernels import fp8_decode
    spec = os.environ.get("JQ_FP8_DECODE_CFG", "")
    if spec != "sweep":
        return fp8_decode.parse_configs(spec)[0] if spec else None
    from benchmarks.kernel_bench.common import OUT
    return _most_often_fastest(os.path.join(OUT, "section_fp8_decode.json"),
                               lambda rec: list(rec.get("best", {}).values()),
                               fp8_decode.FP8DecodeConfig.from_name, "fp8_kernel")


def _wgmma_cfg():
    """The ``fp8_wgmma`` variant's kernel config from ``JQ_FP8_WGMMA_CFG``: one ``parse_wgmma_configs`` entry;
    ``sweep:<record>``: the config most often fastest over the (shape, batch) cells of that
    ``fp8_decode_sweep`` record (relative paths under ``$OUT``; the default if it has none); unset: the default."""
    from jq_kernels import fp8_wgmma
    spec = os.environ.get("JQ_FP8_WGMMA_CFG", "")
    if not spec.startswith("sweep:"):
        return fp8_wgmma.parse_wgmma_configs(spec)[0] if spec else None
    from benchmarks.kernel_bench.common import OUT
    return _most_often_fastest(os.path.join(OUT, spec[len("sweep:"):]),
                               lambda rec: [v for by_b in rec.get("best_wgmma_by_shape", {}).values()
                                            for v in by_b.values()],
                               fp8_wgmma.FP8WgmmaConfig.from_name, "fp8_wgmma")


def parse_variant(variant: str) -> tuple[str, bool, bool, bool]:
    """``(base, fused, kv8, qhead)`` of a variant name: ``"nvfp4_fused_qhead_kv8"`` -> ``("nvfp4", True, True,
    True)``."""
    base, kv8 = (variant[:-4], True) if variant.endswith("_kv8") else (variant, False)
    base, qhead = (base[:-6], True) if base.endswith("_qhead") else (base, False)
    base, fused = (base[:-6], True) if base.endswith("_fused") else (base, False)
    return base, fused, kv8, qhead


def head_like_layers(cfg: dict) -> dict:
    """``cfg`` (a preset dict) with the ``lm_head``'s weight and input quantizers given the specs a layer's
    projection (``down_proj``) resolves to, appended last so they win over the preset's ``*lm_head*`` exclusion."""
    rules = jq.QuantConfig.from_dict(cfg)
    quant_cfg = dict(cfg["quant_cfg"])
    for q in ("weight_quantizer", "input_quantizer"):
        quant_cfg[f"*lm_head.{q}"] = rules.resolve(f"model.layers.0.mlp.down_proj.{q}").to_dict()
    return dict(cfg, quant_cfg=quant_cfg)


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


def _decode_program(lm, n_steps):
    """``(weights, params, token [b], cache) -> (tokens [b, n_steps], cache)``: greedy steps of the
    :class:`jq.models.serve.ScannedLM` ``lm`` in one jitted ``lax.scan`` (no logits kept)."""
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
    """``(weights, params, prompt [b, t], cache) -> (logits, cache)``: ``lm.extend`` jitted."""
    return jax.jit(lm.extend)


class Budget:
    def __init__(self, seconds):
        self.t0, self.seconds = time.time(), seconds

    def left(self):
        return self.seconds - (time.time() - self.t0)


class Model:
    """One model shape at ``layers`` depth (stacked): params, 1-layer calibrated models, realized weights per
    format and the served variants (built lazily, realized weights shared across the variants of a format)."""

    def __init__(self, shape, layers, args):
        self.shape, self.layers, self.args = shape, layers, args
        self.config1 = config_of(shape, 1)
        t0 = time.time()
        self.top, self.stack = llm_stack.init_stacked(self.config1, layers, jax.random.key(0))
        if args.layout == "separate":  # each layer's weights in buffers of their own (the stack is freed)
            self.stack = unstack_trees(self.stack)
        jax.block_until_ready((self.top, self.stack))
        self.init_s = time.time() - t0
        rng = np.random.default_rng(0)
        self.calib = jnp.asarray(rng.integers(0, self.config1.vocab_size, (2, 32)), jnp.int32)
        self.prompts = {b: jnp.asarray(rng.integers(0, self.config1.vocab_size, (b, args.prompt)), jnp.int32)
                        for b in sorted(set(args.batches) | set(args.prefill_batches))}
        self.fused_params = None  # (top, stack) with q/k/v and gate/up fused, built on first use
        self.qms, self.realized, self.lms, self.programs, self.realize_s = {}, {}, {}, {}, {}
        self.max_len = args.prompt + args.steps + 1  # one cache shape for every program of a batch size

    def program(self, variant):
        """``(prefill, decode)`` jitted once per variant (jit caches one executable per batch size)."""
        if variant not in self.programs:
            lm = self.lm(variant)
            self.programs[variant] = (_prefill_program(lm), _decode_program(lm, self.args.steps))
        return self.programs[variant]

    def params(self, fused: bool):
        """``(top, stacked layers)``, with q/k/v and gate/up fused: a few eager concatenations on the device (the
        other leaves are shared with the unfused params, not copied)."""
        if not fused:
            return self.top, self.stack
        if self.fused_params is None:
            t0 = time.time()
            stack = ([llama.fuse_projections(layer) for layer in self.stack] if isinstance(self.stack, list)
                     else llama.fuse_projections(self.stack))
            self.fused_params = jax.block_until_ready((llama.fuse_projections(self.top), stack))
            self.realize_s["fuse"] = time.time() - t0
        return self.fused_params

    def qm(self, fmt, fused=False, qhead=False):
        """The calibrated 1-layer model of ``fmt`` (+ FP8 KV; ``qhead``: the ``lm_head`` quantized too) and the
        stacked realized weights."""
        key = fmt + ("_fused" if fused else "") + ("_qhead" if qhead else "")
        if key not in self.qms:
            t0 = time.time()
            top, stack = self.params(fused)
            cfg = jq.merge_presets(getattr(jq, PRESETS[fmt]), jq.FP8_KV_CFG)
            if qhead:
                cfg = head_like_layers(cfg)
            self.qms[key] = jq.quantize(top, jm.make_forward(self.config1), cfg, calib_data=[(self.calib,)],
                                        progress=False)
            self.realized[key] = llm_stack.stack_realized(self.qms[key], top, stack)
            jax.block_until_ready(self.realized[key][0])
            self.realize_s[key] = time.time() - t0
        return self.qms[key]

    def lm(self, variant):
        if variant in self.lms:
            return self.lms[variant]
        base, fused, kv8, qhead = parse_variant(variant)
        top, stack = self.params(fused)
        if base == "bf16":
            if kv8:
                qm = self.qm("fp8", fused)
                n = self.layers
                lm = llm_stack.plain(
                    self.config1, top, stack, kv_spec=jm.kv_spec("fp8"),
                    k_amax=jnp.broadcast_to(serve.kv_amax(qm, self.config1, "k_bmm_quantizer"), (n,)),
                    v_amax=jnp.broadcast_to(serve.kv_amax(qm, self.config1, "v_bmm_quantizer"), (n,)))
            else:
                lm = llm_stack.plain(self.config1, top, stack)
        else:
            fmt = "fp8" if base.startswith("fp8") else base
            qm = self.qm(fmt, fused, qhead)
            if not kv8:  # the same stored weights, no KV quantization anywhere
                qm = qm.replace(config=qm.config.with_entries(("*bmm_quantizer", False)))
            realized = self.realized[fmt + ("_fused" if fused else "") + ("_qhead" if qhead else "")]
            kernels = realized[1]
            if base in FP8_POLICIES:
                extra = {}
                if base == "fp8_kernel":  # off a GPU the kernel runs in interpret mode (the CPU smoke runs it)
                    extra = {"decode_cfg": _decode_cfg(), "kernel_interpret": jax.default_backend() != "gpu"}
                elif base == "fp8_wgmma":
                    extra = {"wgmma_cfg": _wgmma_cfg()}
                kernels = {k: dataclasses.replace(v, policy=FP8_POLICIES[base], **extra) for k, v in kernels.items()}
            lm = llm_stack.real_quant_stacked(qm, self.config1, top, stack, kv_cache=kv8,
                                              realized=realized, kernels=kernels)
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


def _phase_pass(model, args, budget, rec, phase):
    """Every (batch, variant) cell of ``phase`` (``"decode"`` or ``"prefill"``) at the model's full depth."""
    for b in (args.batches if phase == "decode" else args.prefill_batches):
        for variant in args.variants:
            key = f"{model.shape}/{phase}/B{b}/{variant}"
            if budget.left() < args.reserve_s:
                rec["cells"][key] = {"skipped": "budget"}
                continue

            def run():
                t0 = time.time()
                lm = model.lm(variant)
                prefill, dec = model.program(variant)
                build_s = time.time() - t0
                if phase == "decode":
                    # decode time does not depend on the cache contents: an empty cache holding `prompt` positions
                    keys, values, _ = lm.init_cache(b, model.max_len)
                    cache = serve.StackedCache(keys, values, jnp.int32(args.prompt))
                    fn, a, n_tok = dec, (model.prompts[b][:, -1],), b * args.steps
                else:
                    cache = lm.init_cache(b, model.max_len)
                    fn, a, n_tok = prefill, (model.prompts[b],), b * args.prompt
                call = (lm.weights, lm.params) + a + (cache,)
                t, compile_s, _ = _median_time(fn, call, args.iters)
                out = {"s": t, "tok_s": n_tok / t, "ms_per_step": 1e3 * t / (args.steps if phase == "decode" else 1),
                       "compile_s": compile_s, "build_s": build_s}
                if args.profile:
                    out["profile"] = _profile(fn, call, args.steps if phase == "decode" else 1)
                return out
            rec["cells"][key] = _cell(run)
            print(key, {k: (round(v, 4) if isinstance(v, float) else v) for k, v in rec["cells"][key].items()},
                  flush=True)
            _save(args, rec)


def _profile(fn, call, steps):
    """:func:`benchmarks.kernel_bench.trace_summary.profile_call` of one more call (its failure is recorded)."""
    from benchmarks.kernel_bench import trace_summary
    try:
        prof = trace_summary.profile_call(fn, call, steps=steps)
    except Exception as e:  # noqa: BLE001 - the timing stands without its profile
        return {"error": f"{type(e).__name__}: {str(e)[:300]}"}
    print(trace_summary.table(prof), flush=True)
    return prof


def _save(args, rec):
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(rec, f, indent=1, default=str)


BARS = {("decode", 1): {"nvfp4": 2.5, "int4": 2.5, "fp8": 1.6}, ("decode", 8): {"nvfp4": 1.8, "int4": 1.8, "fp8": 1.6},
        ("decode", 32): {"fp8": 1.6}}  # issue 15, Llama-3-8B shape


def summary(rec, args) -> str:
    lines = [f"{rec['info']['device']}  jax {rec['info']['jax']}  {rec['info']['date'][:19]}  "
             f"prompt {args.prompt}  decode steps {args.steps}"]
    for row in rec.get("fp8_gemm", []):
        if "bf16_us" in row:
            lines.append(f"fp8 gemm B={row['B']:3d} N={row['N']} K={row['K']}: bf16 {row['bf16_us']:.1f} us  "
                         + "  ".join(f"{m} {row.get(m + '_speedup', float('nan')):.2f}x" for m in ("w8a8", "dequant"))
                         + f"  (policy: {row['policy_choice']})")
    for shape in args.models:
        if shape not in rec["layers"]:
            continue
        for phase in ("decode", "prefill"):
            if phase not in args.passes:
                continue
            lines.append(f"{shape} {phase} ({rec['layers'][shape]} layers, measured): tok/s | x bf16 | x bf16_fused"
                         " | bar (vs the faster bf16 of the two)")
            for b in (args.batches if phase == "decode" else args.prefill_batches):
                cells = {v: rec["cells"].get(f"{shape}/{phase}/B{b}/{v}", {}) for v in set(args.variants) | {
                    "bf16", "bf16_fused"}}
                base_tok = {k: cells[k].get("tok_s") for k in ("bf16", "bf16_fused")}
                for v in args.variants:
                    c = cells[v]
                    if "tok_s" not in c:
                        lines.append(f"  B={b:2d} {v:18s} {c.get('error', c.get('skipped', 'missing'))[:100]}")
                        continue
                    sp = {k: c["tok_s"] / t if t else float("nan") for k, t in base_tok.items()}
                    base, _, kv8, _ = parse_variant(v)
                    fmt = "fp8" if base.startswith("fp8") else base
                    bar = None if kv8 or shape != "llama3_8b" else BARS.get((phase, b), {}).get(fmt)
                    worst = min((x for x in sp.values() if x == x), default=float("nan"))  # NaN-free minimum
                    mark = "" if bar is None else f" (bar {bar}x: {'met' if worst >= bar else 'NOT met'})"
                    lines.append(f"  B={b:2d} {v:18s} {c['tok_s']:10.0f} | {sp['bf16']:5.2f}x | "
                                 f"{sp['bf16_fused']:5.2f}x{mark}")
    if "real" in rec:
        from benchmarks import llm_exactness
        lines.append(llm_exactness.summary(rec["real"]))
    return "\n".join(lines)


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.path.join(os.environ.get("OUT", "/tmp/jq_bench"), "llm_decode.json"))
    p.add_argument("--smoke", action="store_true", help="tiny shapes on CPU")
    p.add_argument("--models", default="llama3_8b")
    p.add_argument("--layers", default="", help="per-model depth override, e.g. llama3_8b=4 (default: full)")
    p.add_argument("--batches", default="1,8,32")
    p.add_argument("--prefill-batches", default="", help="batches of the prefill pass (default: --batches)")
    p.add_argument("--variants", default=",".join(DEFAULT_VARIANTS))
    p.add_argument("--prompt", type=int, default=64, help="prompt tokens (prefill rows; cached positions in decode)")
    p.add_argument("--steps", type=int, default=32)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--budget-s", type=float, default=300.0, help="no new cell starts after this many seconds")
    p.add_argument("--reserve-s", type=float, default=8.0, help="a cell starts only with this much budget left")
    p.add_argument("--layout", default="separate", choices=("separate", "stacked"),
                   help="layers' weights: separate buffers, layers unrolled (as served; default), or stacked and run "
                        "by one lax.scan (compiles fastest; on the GPU the scan copies each layer's weight slice "
                        "before its GEMM, run 28: 0.37x the bf16 weight bandwidth)")
    p.add_argument("--passes", default="fp8_gemm,decode,prefill")
    p.add_argument("--profile", action="store_true",
                   help="after timing a cell, trace one more call and record where its time goes per step (device "
                        "kernels by kind, busy vs idle: benchmarks.kernel_bench.trace_summary)")
    p.add_argument("--real-presets", default="fp8_kv8,nvfp4,int4_awq,fp8_f32", help="real pass: formats (llm_exactness.PRESETS)")
    p.add_argument("--real-tokens", type=int, default=128, help="real pass: greedy tokens compared")
    p.add_argument("--real-batches", default="1,8", help="real pass: batches of the tokens/s rows")
    a = p.parse_args(argv)
    if a.smoke:  # tiny shapes; batches / variants / budget only where not given
        a.models, a.prompt, a.steps, a.iters = "tiny", 8, 4, 1
        a.batches = "1,3" if a.batches == p.get_default("batches") else a.batches
        if a.variants == p.get_default("variants"):
            a.variants = "bf16,bf16_kv8,fp8,nvfp4_kv8,int4"
    a.models = [m for m in a.models.split(",") if m]
    a.batches = [int(b) for b in a.batches.split(",")]
    a.prefill_batches = [int(b) for b in a.prefill_batches.split(",")] if a.prefill_batches else a.batches
    a.real_batches = [int(b) for b in a.real_batches.split(",")]
    a.variants = [v for v in a.variants.split(",") if v]
    a.passes = [x for x in a.passes.split(",") if x]
    a.real_presets = [x for x in a.real_presets.split(",") if x]
    bad = [v for v in a.variants if v not in VARIANTS] + [m for m in a.models if m not in SHAPES]
    if bad:
        p.error(f"unknown variants/models {bad}; variants {VARIANTS}, models {sorted(SHAPES)}")
    a.layer_map = {k: v["num_hidden_layers"] for k, v in SHAPES.items()}
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

    def guarded(name, fn, *a):  # a failing pass is recorded (None returned); the record is still written
        result = None
        try:
            result = fn(*a)
        except Exception as e:  # noqa: BLE001
            traceback.print_exc()
            rec.setdefault("errors", {})[name] = f"{type(e).__name__}: {str(e)[:1000]}"
        _save(args, rec)
        return result

    if "fp8_gemm" in args.passes:
        guarded("fp8_gemm", fp8_gemm_pass, args, budget, rec)
    if "real" in args.passes:
        from benchmarks import llm_exactness
        guarded("real", llm_exactness.real_pass, args, budget, rec, lambda: _save(args, rec))
    for shape in args.models:
        if not {"decode", "prefill"} & set(args.passes):
            break
        layers = args.layer_map[shape]
        rec["layers"][shape] = layers
        model = guarded(f"{shape}/init", Model, shape, layers, args)
        if model is None:
            continue
        rec.setdefault("init_s", {})[shape] = model.init_s
        for phase in ("decode", "prefill"):
            if phase in args.passes:
                guarded(f"{shape}/{phase}", _phase_pass, model, args, budget, rec, phase)
        rec.setdefault("realize_s", {})[shape] = model.realize_s
        rec.setdefault("plans", {})[shape] = {f: sorted(set(r[2].values())) for f, r in model.realized.items()}
        del model
        jax.clear_caches()
    rec["wall_s"] = time.time() - t0
    text = summary(rec, args) + "".join(f"\nERROR in {k}: {v[:300]}" for k, v in rec.get("errors", {}).items())
    rec["summary"] = text
    _save(args, rec)
    print(text)
    print(f"wrote {args.out} ({rec['wall_s']:.0f} s)")
    return rec


if __name__ == "__main__":
    main()
