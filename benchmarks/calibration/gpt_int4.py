"""INT4-g128 weight-only on the small Shakespeare GPT: held-out perplexity of each calibration algorithm (CPU).

Trains (or loads) the character-level GPT of :mod:`jq_zoo.gpt` on the Project Gutenberg plays
(:mod:`jq_zoo.shakespeare`), quantizes every linear layer but ``lm_head`` to INT4 in groups of 128 along the
input channels (``jq.INT4_BLOCKWISE_WEIGHT_ONLY_CFG``) with each algorithm, and prints the validation
perplexity, the gap to float and the share of round-to-nearest's gap each algorithm closes::

    closed = (ppl_rtn - ppl_alg) / (ppl_rtn - ppl_float)

Every algorithm runs on the same trained params, the same calibration batches (random windows of the
training split) and the same held-out windows, in one process. ``max`` is round-to-nearest with per-group
max scales.

Run from the repository root (about 10 minutes on 2 CPU cores, most of it training)::

    JAX_PLATFORMS=cpu python -m benchmarks.calibration.gpt_int4 --steps 800 --params /tmp/gpt_shakespeare.npz
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import jq  # noqa: E402
from jq_zoo import shakespeare  # noqa: E402
from jq_zoo.gpt import GPT, GPTConfig, evaluate, train  # noqa: E402

ALGORITHMS = {
    "max": "max",
    "awq_lite": {"method": "awq_lite", "alpha_step": 0.1},
    "awq_clip": {"method": "awq_clip"},
    "awq_full": {"method": "awq_full", "alpha_step": 0.1},
    # without the block scale search (the default before wave 6), as in the first table of RESULTS.md
    "gptq": {"method": "gptq", "perc_damp": 0.01, "block_size": 128, "scale_search": False},
    "gptq_act_order": {"method": "gptq", "act_order": True, "scale_search": False},
    # the block scale search (AutoGPTQ's mse=True: shrink 1..0.21 step 0.01, |err|^2.4), H_jj-weighted or plain
    "gptq_search": {"method": "gptq", "scale_search": True},
    "gptq_search_plain": {"method": "gptq", "scale_search": True, "search_hessian": False},
    "gptq_act_order_search": {"method": "gptq", "act_order": True, "scale_search": True},
    "gptq_damp0.1": {"method": "gptq", "perc_damp": 0.1, "scale_search": False},
    "gptq_act_order_damp0.1": {"method": "gptq", "act_order": True, "perc_damp": 0.1, "scale_search": False},
}


def load_or_train(cfg: GPTConfig, train_ids, steps: int, path: str | None):
    """The trained params, from ``path`` (an ``.npz`` of the flattened leaves) when it exists."""
    model = GPT(cfg)
    template = model.init(jax.random.key(0), jnp.zeros((1, cfg.block_size), jnp.int32))
    leaves, treedef = jax.tree_util.tree_flatten(template)
    if path and os.path.exists(path):
        data = np.load(path)
        if len(data.files) == len(leaves) and all(data[f"p{i}"].shape == x.shape for i, x in enumerate(leaves)):
            print(f"   loaded trained params from {path}")
            return jax.tree_util.tree_unflatten(treedef, [jnp.asarray(data[f"p{i}"]) for i in range(len(leaves))])
    params, _ = train(cfg, train_ids, steps=steps, batch=32, lr=3e-3, log_every=max(1, steps // 4))
    if path:
        np.savez(path, **{f"p{i}": np.asarray(x) for i, x in enumerate(jax.tree_util.tree_leaves(params))})
    return params


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=800, help="training steps when no saved params are found")
    ap.add_argument("--params", default=None, help=".npz to load the trained params from (written after training)")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--embd", type=int, default=128)
    ap.add_argument("--calib-batches", type=int, default=16)
    ap.add_argument("--calib-batch-size", type=int, default=16)
    ap.add_argument("--eval-batches", type=int, default=8, help="held-out batches of 32 windows")
    ap.add_argument("--algorithms", default=",".join(ALGORITHMS))
    args = ap.parse_args()
    t_start = time.time()

    text = shakespeare.load_text()
    tok = shakespeare.CharTokenizer.fit(text)
    train_ids, val_ids = shakespeare.train_val_split(tok.encode(text), 0.05)
    cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=args.layers, n_head=4, n_embd=args.embd)
    print(f"== GPT {cfg}; train {len(train_ids):,} / held-out {len(val_ids):,} characters")
    params = load_or_train(cfg, train_ids, args.steps, args.params)
    model = GPT(cfg)
    evaluate_ppl = lambda fn, p: float(np.exp(evaluate(fn, p, val_ids, cfg.block_size,  # noqa: E731
                                                       n_batches=args.eval_batches)))
    ppl_float = evaluate_ppl(jax.jit(model.apply), params)
    print(f"   float perplexity {ppl_float:.4f}")

    batches = shakespeare.random_batches(train_ids, args.calib_batch_size, cfg.block_size, seed=1)
    calib = [(jnp.asarray(next(batches)[0]),) for _ in range(args.calib_batches)]
    rows = []
    for key in [k.strip() for k in args.algorithms.split(",") if k.strip()]:
        t0 = time.time()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            qm = jq.quantize(params, model.apply, {**jq.INT4_BLOCKWISE_WEIGHT_ONLY_CFG, "algorithm": ALGORITHMS[key]},
                             calib_data=calib, progress=False)
        dt = time.time() - t0
        ppl = evaluate_ppl(jax.jit(qm.apply), qm.params)
        rows.append((key, ppl, dt))
        print(f"   {key:<15} perplexity {ppl:.4f}  ({dt:.0f} s)", flush=True)

    rtn = dict((k, p) for k, p, _ in rows).get("max")
    print(f"\n== INT4-g128 weight-only, {args.calib_batches}x{args.calib_batch_size} calibration windows of "
          f"{cfg.block_size}; held-out perplexity (float {ppl_float:.4f}); total {time.time() - t_start:.0f} s")
    print(f"| algorithm | perplexity | gap to float | RTN gap closed | calibration time |")
    print(f"|---|---|---|---|---|")
    for key, ppl, dt in rows:
        closed = "-" if rtn is None or key == "max" else f"{100 * (rtn - ppl) / (rtn - ppl_float):+.1f} %"
        print(f"| {key} | {ppl:.4f} | {ppl - ppl_float:+.4f} | {closed} | {dt:.0f} s |")


if __name__ == "__main__":
    main()
