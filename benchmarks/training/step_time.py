"""Issue 14 item 6: training step time of a d_model-4096 GPT, bf16 against each recipe, in one run.

The model is :class:`jq_zoo.gpt.GPT` with ``n_embd=4096``, 32 heads, ``--layers`` blocks (default 1), a
256-token vocabulary (so ``lm_head``, kept in bf16 by every recipe, is a small share) and ``--batch`` x
``--seq`` tokens per step. A step is forward + backward + AdamW on float32 master params with bf16 compute.
``bf16`` uses XLA's bf16 GEMMs; each recipe runs every linear layer but ``lm_head`` through
:func:`jq.recipes.recipe_apply` with the GPU speed path: per-tensor FP8 recipes (``fp8_current``,
``fp8_delayed``) multiply real ``float8`` operands (:func:`jq.recipes.fp8_gemm`, which XLA should lower to
cuBLASLt's FP8 GEMM on Hopper: the script counts ``__cublas$lt$matmul$f8`` calls in the compiled HLO); block
formats (``mxfp8``, ``fp8_block``, ``nvfp4``) are emulated: quantize-dequantize with jnp ops, then a bf16 GEMM
(:func:`jq.recipes.bf16_gemm`).

Where the time goes (``--breakdown``, on by default): for the largest linear of a block (the MLP
up-projection ``[T, 4096] x [16384, 4096]``), the time of its six operand quantizations alone, of its three
GEMMs alone on already-quantized operands, and of the whole quantized linear forward + backward, against the
three bf16 GEMMs. Bars (issue 14): FP8 recipes >= 1.2x faster than bf16; NVFP4 <= 1.3x the bf16 step
(stretch 1.1x).

Compile time, not step time, is this script's cost: every recipe site's forward + backward is a large graph
(one block's NVFP4 training step is ~9,700 StableHLO ops against ~1,500 for bf16, independent of the width),
and ``recipe_apply`` unrolls the layers (a layer ``scan`` would need a key and state slice per layer). So the
default is one block (the per-block ratio is what the bars are about), recipes are traced and compiled in
groups of ``--parallel`` (concurrently), and ``--budget-s`` starts a group only if the previous group's time
still fits; the record (with each group's trace and compile seconds) is rewritten after every recipe.

GPU: see ``benchmarks/training/gpu_suite.py`` (this script is its first section)::

    PYTHONUNBUFFERED=1 PYTHONPATH=. python -m benchmarks.training.step_time --out $OUT/step_time --budget-s 200

Smoke (CPU, under a minute)::

    PYTHONPATH=. python -m benchmarks.training.step_time --smoke --out /tmp/step_smoke
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks.training.common import (
    EXCLUDE,
    RECIPES,
    Budget,
    compile_all,
    device_info,
    fast_gemm,
    fill_defaults,
    groups,
    init_state,
    make_apply,
    make_train_step,
    parse_runs,
    skip_group,
    write_json,
)
from jq import recipes as R
from jq_zoo.gpt import GPT, GPTConfig, cross_entropy

DEFAULT_RUNS = ("bf16", "fp8_current", "fp8_delayed", "mxfp8", "fp8_block", "nvfp4")
FP8_CUBLASLT = "__cublas$lt$matmul$f8"


def timed(fn, *args, n: int, warmup: int = 2) -> tuple[float, float]:
    """Median and minimum seconds per call of a compiled ``fn`` over ``n`` calls (after ``warmup``)."""
    out = None
    for _ in range(warmup):
        out = fn(*args)
    jax.block_until_ready(out)
    times = []
    for _ in range(n):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t)
    return float(np.median(times)), float(np.min(times))


def make_step(model, recipe, opt, gemm_mode: str):
    """``step(params, opt_state, rstate, x, y, key) -> (params, opt_state, rstate, loss)``, not yet jitted."""
    return make_train_step(make_apply(model, recipe, gemm_mode), recipe, opt, cross_entropy)


def hlo_gemm_counts(compiled) -> dict:
    """Counts of GEMM kinds in the optimized HLO: cuBLASLt FP8 calls, all cuBLAS/cuBLASLt calls, Triton GEMM
    fusions (XLA may emit an FP8 dot as one) and plain ``dot`` ops (CPU)."""
    text = compiled.as_text()
    return {"cublaslt_f8": text.count(FP8_CUBLASLT), "cublas_calls": text.count("__cublas$"),
            "triton_gemm": text.count("__triton_gemm"), "dot_ops": text.count(" dot(")}


def cost_summary(compiled) -> dict:
    """XLA's own estimate of the step (``cost_analysis``): FLOPs, bytes accessed, transcendentals; {} if absent."""
    try:
        ca = compiled.cost_analysis()
        ca = ca[0] if isinstance(ca, (list, tuple)) else ca
        return {k: float(ca[k]) for k in ("flops", "bytes accessed", "transcendentals") if k in ca}
    except Exception:  # noqa: BLE001 - an estimate only; some backends do not provide it
        return {}


def breakdown(recipe, t: int, k: int, n: int, gemm_mode: str, reps: int) -> dict:
    """Milliseconds of one ``[t, k] x [n, k]`` linear: six quantizations, three GEMMs, fwd+bwd (or bf16)."""
    kx, kw, kd = jax.random.split(jax.random.key(7), 3)
    x = jax.random.normal(kx, (t, k), jnp.bfloat16)
    w = (jax.random.normal(kw, (n, k), jnp.float32) * k ** -0.5).astype(jnp.bfloat16)
    dy = jax.random.normal(kd, (t, n), jnp.bfloat16)
    nt = (((1,), (1,)), ((), ()))
    if recipe is None:
        def gemms(x, w, dy):
            f32 = jnp.float32
            return (jax.lax.dot_general(x, w, nt, preferred_element_type=f32).astype(x.dtype),
                    jax.lax.dot_general(dy, w.T, nt, preferred_element_type=f32).astype(x.dtype),
                    jax.lax.dot_general(dy.T, x.T, nt, preferred_element_type=f32).astype(x.dtype))
        ms = timed(jax.jit(gemms), x, w, dy, n=reps)[0] * 1e3
        return {"gemms_ms": ms, "linear_fwd_bwd_ms": ms}
    plan = recipe.plan()
    state = recipe.init_state() if recipe.stateful else None
    gemm = fast_gemm(recipe) if gemm_mode == "fast" else R.fake_gemm

    def ctx(slot, key):
        tensor = getattr(plan, slot).tensor
        return R.OperandContext(key=jax.random.fold_in(key, R.GemmPlan.SLOTS.index(slot)),
                                scale=None if state is None else getattr(state, tensor).scale)

    def quantize(x, w, dy, key):  # t is a multiple of 16, so the RHT needs no padding of the token axis
        return (plan.fprop_x(x, ctx("fprop_x", key)), plan.fprop_w(w, ctx("fprop_w", key)),
                plan.dgrad_dy(dy, ctx("dgrad_dy", key)), plan.dgrad_w(w.T, ctx("dgrad_w", key)),
                plan.wgrad_dy(dy.T, ctx("wgrad_dy", key)), plan.wgrad_x(x.T, ctx("wgrad_x", key)))

    def three(q):
        return (gemm(q[0], q[1], which="fprop").astype(jnp.bfloat16),
                gemm(q[2], q[3], which="dgrad").astype(jnp.bfloat16),
                gemm(q[4], q[5], which="wgrad").astype(jnp.bfloat16))

    def fwd_bwd(x, w, dy, key):
        y, vjp = jax.vjp(lambda x, w: R.linear(recipe, x, w, state=state, key=key, gemm=gemm), x, w)
        return (y, *vjp(dy))

    key = jax.random.key(0)
    q_fn = jax.jit(quantize)
    q = q_fn(x, w, dy, key)
    return {"quantize_ms": timed(q_fn, x, w, dy, key, n=reps)[0] * 1e3,
            "gemms_ms": timed(jax.jit(three), q, n=reps)[0] * 1e3,
            "linear_fwd_bwd_ms": timed(jax.jit(fwd_bwd), x, w, dy, key, n=reps)[0] * 1e3}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/step_time")
    ap.add_argument("--smoke", action="store_true", help="tiny model on CPU (< 60 s)")
    ap.add_argument("--runs", default=None, help=f"comma-separated, from {list(RECIPES)}")
    ap.add_argument("--width", type=int, default=None, help="d_model (default 4096; smoke 64)")
    ap.add_argument("--layers", type=int, default=None, help="transformer blocks (default 1; smoke 1)")
    ap.add_argument("--heads", type=int, default=None, help="attention heads (default 32; smoke 2)")
    ap.add_argument("--vocab", type=int, default=256)
    ap.add_argument("--batch", type=int, default=None, help="sequences per step (default 8; smoke 2)")
    ap.add_argument("--seq", type=int, default=None, help="tokens per sequence (default 1024; smoke 32)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per run (default 10; smoke 2)")
    ap.add_argument("--gemm", choices=("fast", "emulated"), default="fast")
    ap.add_argument("--no-breakdown", action="store_true")
    ap.add_argument("--parallel", type=int, default=3, help="recipes traced and compiled together (one group)")
    ap.add_argument("--budget-s", type=float, default=None,
                    help="wall-clock budget: a group of recipes (or a breakdown) starts only if the time the last "
                         "one took still fits")
    args = ap.parse_args(argv)
    fill_defaults(args, dict(width=64, layers=1, heads=2, batch=2, seq=32, steps=2),
                  dict(width=4096, layers=1, heads=32, batch=8, seq=1024, steps=10))
    runs = parse_runs(args.runs, ("bf16", "fp8_delayed", "nvfp4") if args.smoke else DEFAULT_RUNS)
    if "bf16" in runs:
        runs.remove("bf16")
    runs.insert(0, "bf16")
    budget = Budget(args.budget_s)
    t_start = time.time()
    cfg = GPTConfig(vocab_size=args.vocab, block_size=args.seq, n_layer=args.layers, n_head=args.heads,
                    n_embd=args.width)
    model = GPT(cfg)
    info = device_info()
    tokens = args.batch * args.seq
    print(f"== {info['device']} ({info['platform']}), jax {info['jax']}; GPT {cfg}; {args.batch}x{args.seq} "
          f"tokens per step; gemm path {args.gemm}; budget {args.budget_s} s", flush=True)
    params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, args.seq), jnp.int32))
    n_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
    x = jax.random.randint(jax.random.key(1), (args.batch, args.seq), 0, args.vocab, jnp.int32)
    y = jnp.roll(x, -1, axis=1)
    key = jax.random.key(2)
    opt = optax.adamw(1e-4, weight_decay=0.01)
    opt_state = jax.jit(opt.init)(params)
    # model FLOPs of one step: 6 * params * tokens (linear layers) + attention (12 * L * T * seq * d)
    flops = 6 * n_params * tokens + 12 * args.layers * tokens * args.seq * args.width
    record = {"info": info, "config": {"n_embd": args.width, "n_layer": args.layers, "n_head": args.heads,
                                        "vocab": args.vocab, "batch": args.batch, "seq": args.seq,
                                        "params": n_params, "gemm": args.gemm, "excluded_sites": list(EXCLUDE),
                                        "timed_steps": args.steps, "budget_s": args.budget_s},
              "runs": {}, "skipped": {}}
    json_path = os.path.join(args.out, "step_time.json")
    last_build_s, last_n = 0.0, 1
    for group in [["bf16"]] + groups(runs[1:], args.parallel):  # bf16 alone first: the baseline is always kept
        # a lower-bound estimate of trace + compile (the section's hard timeout is the real guard): a recipe
        # graph is 3-6x bf16's (StableHLO ops), compiled concurrently; then the last group's time per recipe
        after_bf16 = list(record["runs"]) == ["bf16"] and last_n == 1
        estimate = 3.0 * last_build_s if after_bf16 else 1.2 * last_build_s * len(group) / last_n
        if not budget.allows(estimate):
            skip_group(record, group, f"budget: {budget.left():.0f} s left, estimate {estimate:.0f} s", json_path)
            continue
        t0 = time.time()
        lowered, rstates = {}, {}
        for name in group:
            rstates[name] = init_state(RECIPES[name], model, params, x)
            step = jax.jit(make_step(model, RECIPES[name], opt, args.gemm))
            lowered[name] = step.lower(params, opt_state, rstates[name], x, y, key)
        t_trace = time.time() - t0
        executables = compile_all(lowered)
        t_compile = time.time() - t0 - t_trace
        print(f"   {group}: traced in {t_trace:.1f} s, compiled concurrently in {t_compile:.1f} s", flush=True)
        for name in group:
            recipe, rstate, compiled = RECIPES[name], rstates[name], executables[name]
            med, best = timed(compiled, params, opt_state, rstate, x, y, key, n=args.steps)
            loss = float(compiled(params, opt_state, rstate, x, y, key)[3])
            rec = {"recipe": repr(recipe), "step_ms": med * 1e3, "step_ms_min": best * 1e3,
                   "loss": loss, "model_tflops": flops / med / 1e12, "hlo": hlo_gemm_counts(compiled),
                   "xla_cost": cost_summary(compiled),
                   "group_trace_s": t_trace, "group_compile_s": t_compile}
            record["runs"][name] = rec
            write_json(json_path, record)
            if not args.no_breakdown and budget.allows(0.5 * t_compile / len(group)):
                rec["breakdown_mlp_up"] = breakdown(recipe, tokens, args.width, 4 * args.width, args.gemm,
                                                    args.steps)
                write_json(json_path, record)
            base = record["runs"]["bf16"]["step_ms"]
            print(f"   {name:<12} step {med * 1e3:8.2f} ms (min {best * 1e3:.2f})  {base / (med * 1e3):5.2f}x bf16 "
                  f"speed  {rec['model_tflops']:.0f} TFLOP/s  HLO {rec['hlo']}  loss {loss:.3f}", flush=True)
        del executables, lowered
        last_build_s, last_n = t_trace + t_compile, len(group)
    record["seconds"] = time.time() - t_start
    write_json(json_path, record)
    base = record["runs"]["bf16"]
    print(f"\n== step time, GPT d_model {args.width}, {args.layers} layers, {tokens} tokens per step "
          f"({n_params / 1e6:.0f} M params); total {record['seconds']:.0f} s")
    print("| run | step ms | step / bf16 | bf16 speed-up | bar | cuBLASLt FP8 GEMMs |")
    print("|---|---|---|---|---|---|")
    for name, r in record["runs"].items():
        ratio = r["step_ms"] / base["step_ms"]
        bar = "-" if name == "bf16" else ("speed-up >= 1.2x" if name.startswith("fp8_") and name != "fp8_block"
                                          else "<= 1.3x (stretch 1.1x)" if name.startswith("nvfp4") else "-")
        print(f"| {name} | {r['step_ms']:.2f} | {ratio:.3f} | {1 / ratio:.2f}x | {bar} | {r['hlo']['cublaslt_f8']} |")
    if not args.no_breakdown:
        print(f"\n== where the time goes: one MLP up-projection [{tokens}, {args.width}] x [{4 * args.width}, "
              f"{args.width}], forward + backward (ms)")
        print("| run | 6 quantizations | 3 GEMMs | quantized linear fwd+bwd | bf16 3 GEMMs |")
        print("|---|---|---|---|---|")
        b = base.get("breakdown_mlp_up", {}).get("gemms_ms", float("nan"))
        for name, r in record["runs"].items():
            if "breakdown_mlp_up" not in r or "breakdown_mlp_up" not in base:
                continue
            bd = r["breakdown_mlp_up"]
            q = bd.get("quantize_ms")
            print(f"| {name} | {'-' if q is None else f'{q:.3f}'} | {bd['gemms_ms']:.3f} | "
                  f"{bd['linear_fwd_bwd_ms']:.3f} | {b:.3f} |")
    print(f"   wrote {json_path}")
    return record


if __name__ == "__main__":
    main()
