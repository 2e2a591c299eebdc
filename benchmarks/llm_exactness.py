"""Real-quantized serving of the real SmolLM2-135M against its fake-quant model: greedy tokens, logits, tokens/s.

For each format of :data:`PRESETS` (calibrated on Shakespeare text, max calibration or the preset's algorithm,
through the layer-scanned twin, :func:`jq.models.layer_scan.quantize_scanned`):
``jq.models.serve.real_quant_lm(jq.deploy.realize(qm))`` (stored FP8 / NVFP4 / INT4 weights, the kernels; FP8 KV
cache where the preset has one) and ``serve.fake_quant_lm(qm)`` (the fake-quant model ``qm.apply`` computes) each
generate ``n`` greedy tokens from the same prompt (one jitted prefill + ``lax.scan`` decode each; the layers run in
one ``lax.scan``, ``scan_layers=True``, so one layer is compiled, not 30). Reported:

Why bf16 real and fake logits differ by more than accumulation order: the bf16 fake-quant model rounds every
dequantized operand ``q / s`` to bf16 (relative error up to 2^-9, the same for every element with the same
mantissa pattern, so it does not average out in a dot product), while the real GEMM multiplies the exact codes and
scales the f32 accumulator; ``fp8_f32`` (an f32 model) removes that rounding.

* ``tokens_equal`` (all ``n`` tokens identical), ``first_mismatch``, the fake model's top-2 logit margin there;
* logits over the steps before the first mismatch (same inputs): ``max |real - fake| / max |fake|``, against a
  tolerance measured per preset: for a bf16 model, how far the fake-quant model's own bf16 logits are from the same
  fake-quant model evaluated in f32 (same quantizer state; ``fake_precision_err``), i.e. the real model must be
  as close to the fake model as bf16 evaluation is to f32 evaluation of that model; never tighter than
  :data:`LOGIT_RTOL` (for an f32 model only accumulation order differs);
* generation tokens/s (prompt prefill + ``n`` greedy tokens, one jitted program) of the real-quantized model and
  of the bf16 model (:func:`jq.models.serve.float_lm`, no evaluator) at ``--real-batches``, both in the layout of
  ``--layout``: ``separate`` (default; ``ScannedLM.unstacked()``, each layer's weights in buffers of their own, as
  served) or ``stacked`` (the scanned models the comparison ran: on the GPU the scan copies every layer's weight
  slice, ``docs/layer_layout.md``);
* per preset, for each phase -- quantize (trace + calibration), realize, build_served, first_calls (real and
  fake traced, compiled and run once, in two threads), compare, tokens/s timing -- its wall seconds (``phases_s``), the XLA
  compile seconds (``compile_s``) and jaxpr trace + lowering seconds (``trace_s``) spent in it (``jax.monitoring``
  events), so a run says where its time went.

The model is ``jq_zoo.smollm2`` (``$JQ_MODELS_DIR``; weights dequantized GGUF Q4_1), the text
``jq_zoo.shakespeare`` (``$JQ_DATA_DIR``); ``--smoke`` uses the tiny random model and random tokens instead.
Run through :mod:`benchmarks.llm_decode` (``--passes real``).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import time
import traceback

import jax
import jax.numpy as jnp
import numpy as np

import jq
import jq.models as jm
from jq import deploy
from jq.models import layer_scan, serve

__all__ = ["LOGIT_RTOL", "PRESETS", "compare", "fake_precision", "logit_rel_err", "real_pass", "summary"]

# name: (presets merged, KV cache stored in the k/v quantizers' format, params dtype)
PRESETS = {
    "fp8_kv8": (("FP8_DEFAULT_CFG", "FP8_KV_CFG"), True, "bfloat16"),
    "fp8": (("FP8_DEFAULT_CFG",), False, "bfloat16"),
    # f32 model: the fake quant's dequantized operands q / s are exact (in bf16 they are rounded to 8 bits, a
    # rounding the real GEMM, which scales the f32 accumulator, does not have)
    "fp8_f32": (("FP8_DEFAULT_CFG",), False, "float32"),
    "nvfp4": (("W4A16_NVFP4_CFG",), False, "bfloat16"),
    "nvfp4_kv8": (("W4A16_NVFP4_CFG", "FP8_KV_CFG"), True, "bfloat16"),
    "int4_awq": (("INT4_AWQ_CFG",), False, "bfloat16"),
    "int4": (("INT4_BLOCKWISE_WEIGHT_ONLY_CFG",), False, "bfloat16"),
}
LOGIT_RTOL = 2e-2  # floor of the tolerance on max |real - fake| / max |fake| over the compared steps


def _load(args):
    """``(config, params, prompt [1, t], calib batches, source)``."""
    if args.smoke:
        from benchmarks.llm_shapes import config_of

        config = config_of("tiny", 2)
        params = jm.init_params(config, jax.random.key(3), dtype=jnp.bfloat16, scale=0.1)
        rng = np.random.default_rng(3)
        prompt = jnp.asarray(rng.integers(0, config.vocab_size, (1, 8)), jnp.int32)
        calib = [(jnp.asarray(rng.integers(0, config.vocab_size, (2, 16)), jnp.int32),)]
        return config, params, prompt, calib, "tiny random model"
    from jq_zoo import shakespeare, smollm2

    config, params, tok = smollm2.load(dtype=jnp.bfloat16)
    ids = jm.encode(shakespeare.eval_text(), tok)
    prompt = jnp.asarray(np.asarray(ids[:32])[None], jnp.int32)
    calib = jm.calibration_batches(jm.encode(shakespeare.calib_text(), tok), n_batches=2, batch_size=2,
                                   seq_len=256)
    return config, params, prompt, calib, "SmolLM2-135M-Instruct (GGUF Q4_1 dequantized), Hamlet prompt"


def _timing_layout(lm, args):
    """``lm`` as the tokens/s rows time it: unstacked (``--layout separate``, each layer's buffers its own) or as
    built (stacked, one ``lax.scan``)."""
    return lm.unstacked() if getattr(args, "layout", "stacked") == "separate" else lm


def _timed(fn, *a):
    """``(result, seconds)`` of ``fn(*a)``, its arrays ready."""
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn(*a))
    return out, time.perf_counter() - t0


def _generate_tok_s(generate, prompt, n: int, iters: int) -> dict:
    """Tokens/s of a compiled ``generate(prompt, n)`` (prefill of the prompt + ``n - 1`` decode steps; median of
    ``iters`` calls, an earlier call having compiled it)."""
    t = float(np.median([_timed(generate, prompt, n)[1] for _ in range(max(1, iters))]))
    return {"tok_s": prompt.shape[0] * n / t, "ms_per_token": 1e3 * t / n}


def logit_rel_err(a_logits, b_logits, upto: int) -> float:
    """``max |a - b| / max |b|`` over the first ``upto`` steps of two ``[1, n, V]`` logit arrays."""
    a, b = np.asarray(a_logits, np.float32)[0, :upto], np.asarray(b_logits, np.float32)[0, :upto]
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def compare(real_out, fake_out, n: int, *, rtol: float = LOGIT_RTOL) -> dict:
    """Token equality of two greedy generations ``(tokens [1, n], logits [1, n, V])`` and the logit error before
    the first mismatch (max |real - fake| / max |fake| over the steps with the same inputs), against ``rtol``."""
    (rt, rl), (ft, fl) = real_out, fake_out
    rt, ft = np.asarray(rt), np.asarray(ft)
    fl = np.asarray(fl, np.float32)
    same = rt[0] == ft[0]
    first = None if same.all() else int(np.argmin(same))
    upto = n if first is None else first + 1  # the first mismatching step still had the same inputs
    err = logit_rel_err(rl, fl, upto)
    top2 = np.sort(fl[0], axis=-1)[:, -2:]
    margin = top2[:, 1] - top2[:, 0]
    return {"n_tokens": n, "tokens_equal": first is None, "matching_tokens": int(same.sum()),
            "first_mismatch": first, "logit_rel_err": err, "logit_rtol": rtol,
            "logits_within_tol": err <= rtol, "logit_scale": float(np.max(np.abs(fl[0, :upto]))),
            "fake_top2_margin_at_mismatch": None if first is None else float(margin[first]),
            "min_fake_top2_margin": float(margin[:upto].min())}


def fake_precision(fake_out, fake_f32_out, n: int) -> float:
    """How far the fake-quant model's logits are from the same model evaluated in f32, over the steps before their
    first token mismatch: the rounding error of evaluating the fake-quant model in its dtype."""
    same = np.asarray(fake_out[0])[0] == np.asarray(fake_f32_out[0])[0]
    upto = n if same.all() else int(np.argmin(same)) + 1
    return logit_rel_err(fake_out[1], fake_f32_out[1], upto)


_EVENTS = {"compile": "/jax/core/compile/backend_compile_duration",
           "trace": ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration")}
_TOTALS = {"compile": 0.0, "trace": 0.0}
_LISTENING = []


def _listen():
    """Accumulate JAX's compile-duration events (``jax.monitoring``) into ``_TOTALS``, once per process."""
    if _LISTENING:
        return
    from jax import monitoring

    def on(event, seconds, **_):
        if event == _EVENTS["compile"]:
            _TOTALS["compile"] += seconds
        elif event in _EVENTS["trace"]:
            _TOTALS["trace"] += seconds

    monitoring.register_event_duration_secs_listener(on)
    _LISTENING.append(on)


class _Phases:
    """Per phase: wall seconds (``phases_s``), XLA backend compile seconds (``compile_s``) and jaxpr trace +
    lowering seconds (``trace_s``) of the programs compiled in it (eager ops included; summed over threads, so
    a phase that compiles in parallel can show more compile than wall seconds)."""

    def __init__(self, row, save=lambda: None):
        _listen()
        self.wall, self.compile, self.trace = row["phases_s"], row["compile_s"], row["trace_s"]
        self.save = save  # after every phase: a section killed mid-preset keeps the phases that finished

    @contextlib.contextmanager
    def __call__(self, name):
        c0, t0, w0 = _TOTALS["compile"], _TOTALS["trace"], time.perf_counter()
        try:
            yield
        finally:
            self.wall[name] = time.perf_counter() - w0
            self.compile[name] = _TOTALS["compile"] - c0
            self.trace[name] = _TOTALS["trace"] - t0
            self.save()


def _preset(name, row, params, config, calib, prompt, n, args, budget, save) -> None:
    """Fill one preset's ``row``: quantize, realize, build both served models, generate, compare, tokens/s; every
    phase's wall / compile / trace seconds (:class:`_Phases`; ``first_calls``: trace + compile + one generation of
    both), ``save()`` after each."""
    presets, kv, dtype = PRESETS[name]
    row.update(presets=list(presets), kv_cache=kv, dtype=dtype, phases_s={}, compile_s={}, trace_s={})
    phase = _Phases(row, save)
    with phase("quantize"):  # trace, calibration passes (AWQ: its search), max calibration
        p = jax.tree_util.tree_map(lambda a: a.astype(dtype), params)
        cfg = jq.merge_presets(*(getattr(jq, x) for x in presets))
        # through the layer-scanned twin: each pass compiles one layer (unrolled, int4_awq's three passes
        # compiled for 145 s of its 412 s on a loaded 2-core CPU)
        qm = layer_scan.quantize_scanned(p, config, cfg, calib_data=calib, progress=False)
        jax.block_until_ready(qm.qstate)
    with phase("realize"):
        rm = jax.block_until_ready(deploy.realize(qm))
    row["plan"] = sorted(set(rm.plan.values()))
    with phase("build_served"):
        # layers in one lax.scan: one layer traced and compiled (unrolled, SmolLM2's 30 layers compiled for 37 s
        # (real) and 105 s (fake quant) on CPU at 8 tokens, against ~7 s each scanned)
        real_lm = serve.real_quant_lm(rm, config, kv_cache=kv, scan_layers=True)
        fake_lm = serve.fake_quant_lm(qm, config, scan_layers=True)
    # real and fake traced and compiled in two threads (XLA compiles without the GIL)
    with phase("first_calls"), concurrent.futures.ThreadPoolExecutor(2) as pool:
        real_f, fake_f = (pool.submit(lambda lm: jax.block_until_ready(lm.generate(prompt, n)), lm)
                          for lm in (real_lm, fake_lm))
        real_out, fake_out = real_f.result(), fake_f.result()
    rtol = LOGIT_RTOL
    if jnp.dtype(dtype) != jnp.float32:
        with phase("fake_f32"):  # the tolerance: the fake model's own distance to its f32 evaluation
            qm32 = qm.replace(params=jax.tree_util.tree_map(lambda a: a.astype(jnp.float32), qm.params))
            fake32 = jax.block_until_ready(serve.fake_quant_lm(qm32, config, scan_layers=True).generate(prompt, n))
            row["fake_precision_err"] = fake_precision(fake_out, fake32, n)
            rtol = max(LOGIT_RTOL, row["fake_precision_err"])
    with phase("compare"):
        row.update(compare(real_out, fake_out, n, rtol=rtol))
    timed_lm = _timing_layout(real_lm, args)
    for b in args.real_batches:
        if budget.left() < args.reserve_s:
            row.setdefault("tok_s_skipped", []).append(b)
            continue
        with phase(f"tok_s_B{b}"):
            pr = jnp.tile(prompt, (b, 1))
            if b != 1 or timed_lm is not real_lm:
                jax.block_until_ready(timed_lm.generate(pr, n))  # compile for this batch
            row.setdefault("tok_s", {})[str(b)] = _generate_tok_s(timed_lm.generate, pr, n, args.iters)


def real_pass(args, budget, rec, save):
    """``rec["real"]``: per preset the comparison, tokens/s and phase seconds; the float model's tokens/s once.

    A preset starts only with ``max(--reserve-s, the longest preset so far)`` of the budget left (a cut run
    keeps every finished preset: the record is saved after each)."""
    t0 = time.time()
    config, params, prompt, calib, source = _load(args)
    out = rec["real"] = {"source": source, "prompt_tokens": int(prompt.shape[1]), "load_s": time.time() - t0,
                         "presets": {}, "served": "layers in one lax.scan (serve.*_lm(scan_layers=True))",
                         "tok_s_layout": getattr(args, "layout", "stacked")}
    n = 8 if args.smoke else args.real_tokens
    print(f"real: loaded {source} in {out['load_s']:.1f} s", flush=True)
    base = _timing_layout(serve.float_lm(params, config), args)  # the float model, laid out as the timed ones
    for b in args.real_batches:
        if budget.left() >= args.reserve_s:
            pr = jnp.tile(prompt, (b, 1))
            _, first = _timed(base.generate, pr, n)  # compile
            out.setdefault("bf16_tok_s", {})[str(b)] = dict(_generate_tok_s(base.generate, pr, n, args.iters),
                                                            first_call_s=first)
    save()
    longest = 0.0
    for name in args.real_presets:
        left = budget.left()
        if left < max(args.reserve_s, longest):
            out["presets"][name] = {"skipped": f"budget ({left:.0f} s left, longest preset {longest:.0f} s)"}
            save()
            continue
        t1 = time.time()
        row = out["presets"][name] = {}  # in the record from its start: a killed section shows its phases
        try:
            _preset(name, row, params, config, calib, prompt, n, args, budget, save)
        except Exception as e:  # noqa: BLE001 - one preset failing must not hide the others
            traceback.print_exc()
            row["error"] = f"{type(e).__name__}: {str(e)[:1000]}"
        row["wall_s"] = time.time() - t1
        longest = max(longest, row["wall_s"])
        print("real", name, {k: v for k, v in row.items() if k not in ("plan", "phases_s")}, flush=True)
        print(f"real {name} {_phase_line(row)}", flush=True)
        save()
    out["wall_s"] = time.time() - t0


def _phase_line(row) -> str:
    """``wall W s: phase wall (compile C, trace T), ...``."""
    comp, trace = row.get("compile_s", {}), row.get("trace_s", {})
    return f"wall {row.get('wall_s', 0):.1f} s: " + ", ".join(
        f"{k} {v:.1f} (compile {comp.get(k, 0):.1f}, trace {trace.get(k, 0):.1f})"
        for k, v in row.get("phases_s", {}).items())


def summary(real: dict) -> str:
    lines = [f"real model: {real['source']}, prompt {real['prompt_tokens']} tokens, load {real['load_s']:.0f} s"]
    base = real.get("bf16_tok_s", {})
    lines.append("  bf16 generate tok/s (prefill + greedy tokens): " + ", ".join(f"B={b} {v['tok_s']:.0f}" for b, v in base.items()))
    for name, row in real["presets"].items():
        if "error" in row or "skipped" in row:
            lines.append(f"  {name:10s} {row.get('error', row.get('skipped'))[:200]}")
            continue
        if "tokens_equal" not in row:
            lines.append(f"  {name:10s} incomplete; {_phase_line(row)}")
            continue
        tps = ", ".join(f"B={b} {v['tok_s']:.0f} ({v['tok_s'] / base[b]['tok_s']:.2f}x bf16)"
                        for b, v in row.get("tok_s", {}).items() if b in base)
        lines.append(f"  {name:10s} tokens {'EXACT' if row['tokens_equal'] else 'DIFFER'} "
                     f"({row['matching_tokens']}/{row['n_tokens']}, first mismatch {row['first_mismatch']}, "
                     f"fake top-2 margin there {row['fake_top2_margin_at_mismatch']}), logits rel err "
                     f"{row['logit_rel_err']:.2e} ({'within' if row['logits_within_tol'] else 'OVER'} "
                     f"{row['logit_rtol']:.2e}; fake bf16 vs f32 {row.get('fake_precision_err', float('nan')):.2e}); "
                     f"generate tok/s {tps}")
        lines.append(f"  {'':10s} {_phase_line(row)}")
    return "\n".join(lines)
