"""Accuracy of the activation calibrators (max, percentile, entropy, mse) for static W8A8 on real and small models.

For each model and static per-tensor-activation preset (INT8_DEFAULT_CFG: int8 weights per output channel,
FP8_DEFAULT_CFG: e4m3 per tensor), the model is quantized with ``algorithm`` = max / percentile / entropy /
mse (histogram MSE on activations, weight amax sweep) / mse with the activation amax sweep, and scored on
held-out inputs by the mean cosine similarity of its outputs to float32 (per row; MiniLM: per embedding).

    python benchmarks/calibrator_accuracy.py [--models minilm,transformer,cnn] [--calib 64] [--eval 256]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

import jq

ALGORITHMS = [("max", "max"), ("percentile", "percentile"), ("entropy", "entropy"),
              ("mse (hist acts)", "mse"), ("mse (sweep acts)", {"method": "mse", "activations": "sweep"})]
PRESETS = [("INT8 W8A8", jq.INT8_DEFAULT_CFG), ("FP8 W8A8", jq.FP8_DEFAULT_CFG)]


def cosine(a, b):
    a, b = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
    return float(np.mean(np.sum(a * b, -1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-12)))


def minilm(n_calib, n_eval, batch=32):
    from jq_zoo.minilm import minilm_linen, load_minilm, real_sentences, tokenize

    sentences = real_sentences()

    def batches(s):
        return [tuple(jnp.asarray(a) for a in tokenize(s[i:i + batch])) for i in range(0, len(s), batch)]

    model, to_linen = minilm_linen()
    return model.apply, to_linen(load_minilm()), batches(sentences[:n_calib]), batches(
        sentences[n_calib:n_calib + n_eval])


def small(name, n_calib, n_eval):
    """The test suite's TinyTransformer (random tokens) or CNN (random images), random weights."""
    from tests import _models as M

    rng = np.random.default_rng(0)
    if name == "transformer":
        model = M.TinyTransformer()
        data = [(jnp.asarray(rng.integers(0, 32, (16, 24))),) for _ in range((n_calib + n_eval) // 16)]
    else:
        model = M.CNN()
        data = [(jnp.asarray(rng.standard_normal((16, 16, 16, 3)), jnp.float32),)
                for _ in range((n_calib + n_eval) // 16)]
    params = model.init(jax.random.key(0), *data[0])
    k = n_calib // 16
    return model.apply, params, data[:k], data[k:]


def run(name, apply_fn, params, calib, evals):
    f = jax.jit(apply_fn)
    ref = np.concatenate([np.asarray(f(params, *b)) for b in evals])
    rows = []
    for preset_name, preset in PRESETS:
        for alg_name, alg in ALGORITHMS:
            t = time.time()
            qm = jq.quantize(params, apply_fn, {**preset, "algorithm": alg}, calib_data=calib, progress=False)
            g = jax.jit(qm.apply)
            out = np.concatenate([np.asarray(g(qm.params, *b)) for b in evals])
            rows.append((name, preset_name, alg_name, cosine(out, ref), time.time() - t))
            print(f"{name:<12} {preset_name:<10} {alg_name:<18} cos {rows[-1][3]:.5f}  ({rows[-1][4]:.0f} s)",
                  flush=True)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="minilm,transformer,cnn")
    ap.add_argument("--calib", type=int, default=64)
    ap.add_argument("--eval", type=int, default=256)
    args = ap.parse_args(argv)
    rows = []
    for name in args.models.split(","):
        if name == "minilm":
            rows += run(name, *minilm(args.calib, args.eval))
        else:
            rows += run(name, *small(name, args.calib, args.eval))
    print(f"\n| model | preset | {' | '.join(a for a, _ in ALGORITHMS)} |")
    print("|---|---|" + "---|" * len(ALGORITHMS))
    for i in range(0, len(rows), len(ALGORITHMS)):
        chunk = rows[i:i + len(ALGORITHMS)]
        print(f"| {chunk[0][0]} | {chunk[0][1]} | " + " | ".join(f"{r[3]:.5f}" for r in chunk) + " |")
    return rows


if __name__ == "__main__":
    main()
