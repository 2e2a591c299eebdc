"""Issue 14 item 5: NVFP4 QAT of a pre-trained Shakespeare GPT against PTQ and a float fine-tune.

1. Pre-train the character GPT of :mod:`jq_zoo.gpt` in float32 (or load it from ``--params``).
2. PTQ: ``jq.quantize(params, model.apply, jq.NVFP4_DEFAULT_CFG)`` (W4A4 NVFP4, max calibration on training
   windows; ModelOpt's defaults leave ``lm_head`` in high precision) -> perplexity ``ppl_ptq``.
3. Float fine-tune: ``--steps`` more AdamW steps on the float params -> ``ppl_float``.
4. QAT: the same steps, batches and optimizer on ``qm.params`` through ``qm.apply`` (forward fake quantization,
   straight-through estimator; :func:`jq.qat.make_train_step`), the calibrated amaxes fixed -> ``ppl_qat``;
   also reported with the weight amaxes refreshed from the trained weights (:func:`jq.qat.recalibrate_weights`).

Recovery (issue 14 bar: >= 70 %) is the share of the PTQ gap to the float fine-tune that QAT closes::

    recovery = (ppl_ptq - ppl_qat) / (ppl_ptq - ppl_float)

5. QAD (``--amax qad``): QAT with fixed amaxes whose loss is the KL divergence to the pre-trained float
   model's output distribution on the same batches (:func:`jq.qat.distillation_loss`; ModelOpt's
   quantization-aware distillation) instead of the cross-entropy on the labels -> ``ppl_qad``.
6. QAT with learnable amax (``--amax learnable``, :class:`jq.qat.LearnableAmax`, LSQ gradient with LSQ's
   gradient scale): the same steps and batches, the calibrated amaxes of every weight and input quantizer
   trained with the params (no weight decay on them) -> ``ppl_qat_learnable``. For NVFP4 the amax is the
   per-tensor global amax (``amax / 2688`` is the FP32 global scale; the 1x16 block scales come from the data),
   so LSQ moves the global scale and where the largest values saturate.

Held-out perplexity is on contiguous windows of the last 5 % of the text.

GPU (about 1 minute on one H100 with the defaults)::

    PYTHONUNBUFFERED=1 PYTHONPATH=. python -m benchmarks.training.qat_recovery --out $OUT/qat

CPU: the same command with ``JAX_PLATFORMS=cpu`` (several minutes on 2 idle cores, most of it pre-training);
``--smoke`` for a tiny run (< 60 s).
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jq
import jq.qat
from benchmarks.training.common import Budget, device_info, load_ids, write_json
from jq_zoo.gpt import GPT, GPTConfig, cross_entropy, evaluate, train
from jq_zoo.shakespeare import random_batches


LABELS = {"fixed": "NVFP4 QAT (fixed amax)", "learnable": "NVFP4 QAT (learnable amax)",
          "qad": "NVFP4 QAD (fixed amax, distilled from the float model)"}


def pretrain(cfg, train_ids, args):
    """Float params: loaded from ``--params`` (an .npz of the flattened leaves) when it matches, else trained."""
    model = GPT(cfg)
    template = model.init(jax.random.key(args.seed), jnp.zeros((1, cfg.block_size), jnp.int32))
    leaves, treedef = jax.tree_util.tree_flatten(template)
    if args.params and os.path.exists(args.params):
        data = np.load(args.params)
        if len(data.files) == len(leaves) and all(data[f"p{i}"].shape == x.shape for i, x in enumerate(leaves)):
            print(f"   loaded pre-trained params from {args.params}")
            return jax.tree_util.tree_unflatten(treedef, [jnp.asarray(data[f"p{i}"]) for i in range(len(leaves))])
    params, _ = train(cfg, train_ids, steps=args.pretrain_steps, batch=args.batch, lr=3e-3, seed=args.seed,
                      log_every=max(1, args.pretrain_steps // 4))
    if args.params:
        np.savez(args.params, **{f"p{i}": np.asarray(x) for i, x in enumerate(jax.tree_util.tree_leaves(params))})
    return params


# learning-rate schedules over the fine-tune's steps (shared by the float fine-tune and every QAT run)
SCHEDULES = {
    "constant": lambda lr, steps: lr,
    "cosine": lambda lr, steps: optax.cosine_decay_schedule(lr, steps),  # lr (1 + cos(pi t / steps)) / 2
    "linear": lambda lr, steps: optax.linear_schedule(lr, 0.0, steps),   # lr (1 - t / steps)
}


def fine_tune(apply, params, batches, lr, decay_mask=None, teacher=None):
    """AdamW (``lr``: a float or an optax schedule; clip 1.0) over ``batches`` through ``apply``; returns params
    and the losses.
    ``decay_mask``: a pytree of bools like ``params`` (where weight decay applies; None: everywhere).
    ``teacher``: None (cross-entropy on the labels) or ``x -> logits`` of the float model (QAD: the loss is
    :func:`jq.qat.distillation_loss` to the teacher's logits on the same batch)."""
    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(lr, weight_decay=0.01, mask=decay_mask))

    def loss_of(q, x, y):
        logits = apply(q, x)
        return cross_entropy(logits, y) if teacher is None else jq.qat.distillation_loss(logits, teacher(x))

    @jax.jit
    def one(p, s, x, y):
        loss, g = jax.value_and_grad(lambda q: loss_of(q, x, y))(p)
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s, loss

    state, losses = opt.init(params), []
    for x, y in batches:
        params, state, loss = one(params, state, x, y)
        losses.append(loss)
    return params, [float(v) for v in losses]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/qat")
    ap.add_argument("--smoke", action="store_true", help="tiny model, few steps (CPU, < 60 s)")
    ap.add_argument("--params", default=None, help=".npz of pre-trained params (loaded if it matches, else written)")
    ap.add_argument("--pretrain-steps", type=int, default=None, help="default 2000; smoke 20")
    ap.add_argument("--steps", type=int, default=None, help="fine-tune / QAT steps (default 300; smoke 3)")
    ap.add_argument("--lr", type=float, default=3e-4, help="fine-tune and QAT (peak) learning rate")
    ap.add_argument("--schedule", default="constant", choices=tuple(SCHEDULES),
                    help="learning-rate schedule of the fine-tune and every QAT run (decaying to 0 over --steps)")
    ap.add_argument("--width", type=int, default=None, help="n_embd (default 128; smoke 32)")
    ap.add_argument("--layers", type=int, default=None, help="n_layer (default 4; smoke 1)")
    ap.add_argument("--block", type=int, default=None, help="context (default 64; smoke 16)")
    ap.add_argument("--batch", type=int, default=None, help="sequences per step (default 32; smoke 4)")
    ap.add_argument("--calib-batches", type=int, default=None, help="calibration batches of 16 (default 16; smoke 2)")
    ap.add_argument("--eval-batches", type=int, default=None, help="held-out batches of 32 windows (default 16; smoke 1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--budget-s", type=float, default=None,
                    help="wall-clock budget: a QAT mode starts only if the time the last fine-tune took still fits")
    ap.add_argument("--amax", default="fixed,learnable,qad",
                    help="QAT runs: fixed (labels, calibrated amaxes), learnable (LSQ amaxes), qad (fixed amaxes, "
                         "distillation from the pre-trained float model)")
    args = ap.parse_args(argv)
    modes = [m.strip() for m in args.amax.split(",")]
    if not modes or set(modes) - {"fixed", "learnable", "qad"}:
        ap.error(f"--amax takes fixed, learnable and/or qad, got {args.amax!r}")
    d = dict(pretrain_steps=20, steps=3, width=32, layers=1, block=16, batch=4, calib_batches=2, eval_batches=1) \
        if args.smoke else dict(pretrain_steps=2000, steps=300, width=128, layers=4, block=64, batch=32,
                                calib_batches=16, eval_batches=16)
    for k, v in d.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    os.makedirs(args.out, exist_ok=True)
    budget = Budget(args.budget_s)
    t_start = time.time()
    tok, train_ids, val_ids = load_ids(args.smoke, args.data_dir)
    cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=args.block, n_layer=args.layers, n_head=4,
                    n_embd=args.width)
    info = device_info()
    print(f"== {info['device']} ({info['platform']}); GPT {cfg}; pre-train {args.pretrain_steps}, fine-tune/QAT "
          f"{args.steps} steps of {args.batch}x{args.block}, lr {args.lr} ({args.schedule})", flush=True)
    model = GPT(cfg)
    params = pretrain(cfg, train_ids, args)
    ppl = lambda fn, p: float(np.exp(evaluate(jax.jit(fn), p, val_ids, cfg.block_size,
                                              n_batches=args.eval_batches)))
    ppl_pre = ppl(model.apply, params)
    print(f"   pre-trained float perplexity {ppl_pre:.4f}  ({time.time() - t_start:.0f} s)", flush=True)

    calib_gen = random_batches(train_ids, 16, cfg.block_size, args.seed + 10)
    calib = [(jnp.asarray(next(calib_gen)[0]),) for _ in range(args.calib_batches)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qm = jq.quantize(params, model.apply, jq.NVFP4_DEFAULT_CFG, calib_data=calib, progress=False)
    ppl_ptq = ppl(qm.apply, qm.params)
    print(f"   NVFP4 PTQ perplexity {ppl_ptq:.4f}", flush=True)

    gen = random_batches(train_ids, args.batch, cfg.block_size, args.seed + 20)
    batches = [tuple(jnp.asarray(a) for a in next(gen)) for _ in range(args.steps)]  # shared by both runs
    lr = SCHEDULES[args.schedule](args.lr, args.steps)
    t = time.time()
    p_float, float_losses = fine_tune(model.apply, params, batches, lr)
    ppl_float = ppl(model.apply, p_float)
    print(f"   float fine-tune perplexity {ppl_float:.4f}  ({time.time() - t:.0f} s)", flush=True)
    gap = ppl_ptq - ppl_float
    rec_of = lambda p: (ppl_ptq - p) / gap if gap > 0 else float("nan")
    record = {"info": info, "config": {"n_layer": cfg.n_layer, "n_embd": cfg.n_embd, "block_size": cfg.block_size,
                                        "vocab_size": cfg.vocab_size, "pretrain_steps": args.pretrain_steps,
                                        "steps": args.steps, "batch": args.batch, "lr": args.lr,
                                        "schedule": args.schedule,
                                        "quant_cfg": "NVFP4_DEFAULT_CFG", "calib_batches": args.calib_batches,
                                        "eval_windows": 32 * args.eval_batches, "amax_modes": modes},
              "ppl_pretrained": ppl_pre, "ppl_ptq": ppl_ptq, "ppl_float_finetune": ppl_float, "bar": 0.70,
              "float_losses": float_losses, "qat": {}}
    json_path = os.path.join(args.out, "qat_recovery.json")
    rows = [("pre-trained float", ppl_pre), ("float fine-tune", ppl_float), ("NVFP4 PTQ", ppl_ptq)]
    last_s = time.time() - t  # the float fine-tune: the estimate of a QAT run
    for mode in modes:
        if not budget.allows(1.5 * last_s):
            record["qat"][mode] = {"skipped": f"budget: {budget.left():.0f} s left"}
            write_json(json_path, record)
            print(f"   {LABELS[mode]} skipped: {budget.left():.0f} s left", flush=True)
            continue
        t = time.time()
        if mode in ("fixed", "qad"):
            teacher = jax.jit(lambda x: model.apply(params, x)) if mode == "qad" else None
            p_qat, losses = fine_tune(qm.apply, qm.params, batches, lr, teacher=teacher)
            qm_qat = qm.replace(params=p_qat)
            moved = None
        else:
            learn = jq.qat.LearnableAmax()
            train = jq.qat.trainable(qm, learn)
            mask = {"params": jax.tree.map(lambda _: True, train["params"]),
                    "amax": jax.tree.map(lambda _: False, train["amax"])}
            train, losses = fine_tune(jq.qat.trainable_apply(qm, learn), train, batches, lr, mask)
            qm_qat = jq.qat.with_trainable(qm, train)
            # relative change of each trained amax (max over its entries)
            moved = {k: float(jnp.max(jnp.abs(v["amax"] / qm.qstate[k]["amax"] - 1))) for k, v in train["amax"].items()}
        ppl_qat = ppl(qm_qat.apply, qm_qat.params)
        qm_recal = jq.qat.recalibrate_weights(qm_qat)
        ppl_recal = ppl(qm_recal.apply, qm_recal.params)
        entry = {"ppl": ppl_qat, "recovery": rec_of(ppl_qat), "ppl_weight_amax_refreshed": ppl_recal,
                 "recovery_weight_amax_refreshed": rec_of(ppl_recal), "losses": losses, "seconds": time.time() - t}
        if moved is not None:
            entry["amax_relative_change_max"] = moved
            entry["learnable"] = repr(jq.qat.LearnableAmax())
        record["qat"][mode] = entry
        write_json(json_path, record)
        print(f"   {LABELS[mode]} perplexity {ppl_qat:.4f} (weight amaxes refreshed: {ppl_recal:.4f}), "
              f"recovery {100 * entry['recovery']:.1f} %  ({entry['seconds']:.0f} s)", flush=True)
        if moved:
            print(f"      amax relative change: median {np.median(list(moved.values())):.4f}, "
                  f"max {max(moved.values()):.4f} over {len(moved)} quantizers", flush=True)
        last_s = entry["seconds"]
        rows += [(LABELS[mode], ppl_qat), (f"{LABELS[mode]}, weight amax refreshed", ppl_recal)]
    if "fixed" in record["qat"]:  # the keys of the earlier record format
        record["ppl_qat"], record["recovery"] = record["qat"]["fixed"]["ppl"], record["qat"]["fixed"]["recovery"]
    record["seconds"] = time.time() - t_start
    write_json(json_path, record)
    print(f"\n== NVFP4 W4A4, held-out perplexity; total {record['seconds']:.0f} s")
    print("| model | perplexity | gap to float fine-tune | recovery of the PTQ gap |")
    print("|---|---|---|---|")
    for name, v in rows:
        r = "-" if not name.startswith(("NVFP4 QAT", "NVFP4 QAD")) else f"{100 * rec_of(v):.1f} %"
        print(f"| {name} | {v:.4f} | {v - ppl_float:+.4f} | {r} |")
    print(f"   bar: recovery >= 70 %; wrote {json_path}")
    return record


if __name__ == "__main__":
    main()
