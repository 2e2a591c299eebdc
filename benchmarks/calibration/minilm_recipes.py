"""all-MiniLM-L6-v2: every calibration recipe of jq against round-to-nearest ``max``, by mean cosine to FP32.

The encoder of :mod:`jq_zoo.minilm` (as a Flax linen module, every linear layer of the 6 blocks quantized)
embeds real English sentences; each quantized model is scored by the mean cosine similarity of its
(L2-normalised) embeddings to the float32 ones. Calibration sentences are the first ``--calib`` of
:func:`~jq_zoo.minilm.real_sentences`, evaluation sentences the next ``--eval`` (disjoint sets). Every recipe
is run once, on the same params and data, in one process; no option of any recipe is fitted on the
evaluation sentences.

Groups (``--groups``):

* ``nvfp4``: NVFP4 W4A4 (E2M1 values, E4M3 scales per 16, FP32 global scale; activations' global amax
  static from calibration unless the row says dynamic), with max / mse / awq_* / gptq / svdquant;
* ``int4``: INT4 weight-only in groups of 128 input channels, with max / mse / awq_* / gptq and combinations;
* ``8bit``: INT8 / FP8 / MXFP8 W8A8 presets (bar: no row below 0.997).

    python benchmarks/calibration/minilm_recipes.py [--groups nvfp4,int4,8bit] [--calib 64] [--eval 256]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import jq  # noqa: E402

BARS = {"nvfp4": 0.975, "int4": 0.96, "8bit": 0.997}


def with_(preset: dict, algorithm=None, weight: dict | None = None, inp: dict | None = None) -> dict:
    """``preset`` with its algorithm replaced and its weight / input quantizer entries updated by dicts."""
    cfg = copy.deepcopy(preset)
    if algorithm is not None:
        cfg["algorithm"] = algorithm
    for key, upd in (("*weight_quantizer", weight), ("*input_quantizer", inp)):
        if upd:
            cfg["quant_cfg"][key] = {**cfg["quant_cfg"][key], **upd}
    return cfg


_NV = jq.NVFP4_DEFAULT_CFG
_I4 = jq.INT4_BLOCKWISE_WEIGHT_ONLY_CFG
_MSE_W = {"calibrator": "mse_sweep"}  # weights: amax x m, m in 0.25..4 (NVFP4 static blocks: every E4M3 scale)
_FP8_BLOCK_SEARCH = {"method": "mse", "fp8_scale_sweep": True, "activations": "max"}
_GPTQ = {"method": "gptq", "scale_search": False}  # the rows of RESULTS.md predate GPTQ's scale search (wave 6)

# (group, recipe name, config); the first row of a group is its round-to-nearest baseline
RECIPES = [
    ("nvfp4", "max (round to nearest), NVFP4_DEFAULT_CFG", _NV),
    ("nvfp4", "awq_lite (NVFP4_AWQ_LITE_CFG)", jq.NVFP4_AWQ_LITE_CFG),
    ("nvfp4", "gptq on block-scale-searched weights", with_(_NV, _GPTQ, weight=_MSE_W)),
    ("nvfp4", "svdquant (rank 32)", with_(_NV, "svdquant")),
    ("nvfp4", "awq_full (NVFP4_AWQ_FULL_CFG)", jq.NVFP4_AWQ_FULL_CFG),
    ("nvfp4", "gptq", with_(_NV, _GPTQ)),
    ("nvfp4", "awq_clip (NVFP4_AWQ_CLIP_CFG)", jq.NVFP4_AWQ_CLIP_CFG),
    ("nvfp4", "mse, E4M3 block-scale search (fp8_scale_sweep)", with_(_NV, _FP8_BLOCK_SEARCH)),
    ("nvfp4", "mse (weights: global amax sweep; acts: max)", with_(_NV, {"method": "mse", "activations": "max"})),
    ("int4", "max (round to nearest), INT4_BLOCKWISE_WEIGHT_ONLY_CFG", _I4),
    ("int4", "awq_lite (INT4_AWQ_CFG)", jq.INT4_AWQ_CFG),
    ("int4", "gptq", with_(_I4, _GPTQ)),
    ("int4", "gptq on mse-swept group amaxes", with_(_I4, _GPTQ, weight=_MSE_W)),
    ("int4", "awq_full (INT4_AWQ_FULL_CFG)", jq.INT4_AWQ_FULL_CFG),
    ("int4", "awq_clip (INT4_AWQ_CLIP_CFG)", jq.INT4_AWQ_CLIP_CFG),
    ("int4", "mse (per-group amax sweep)", with_(_I4, {"method": "mse", "activations": "max"})),
    ("int4", "gptq act_order on mse-swept group amaxes", with_(_I4, {**_GPTQ, "act_order": True},
                                                               weight=_MSE_W)),
    ("int4", "svdquant (rank 32)", with_(_I4, "svdquant")),
    ("8bit", "INT8_DEFAULT_CFG (static per-tensor acts)", jq.INT8_DEFAULT_CFG),
    ("8bit", "INT8_SMOOTHQUANT_CFG", jq.INT8_SMOOTHQUANT_CFG),
    ("8bit", "FP8_DEFAULT_CFG", jq.FP8_DEFAULT_CFG),
    ("8bit", "FP8_PER_CHANNEL_PER_TOKEN_CFG", jq.FP8_PER_CHANNEL_PER_TOKEN_CFG),
    ("8bit", "MXFP8_DEFAULT_CFG", jq.MXFP8_DEFAULT_CFG),
]


def batches(sentences, size):
    from jq_zoo.minilm import tokenize

    return [tuple(jnp.asarray(a) for a in tokenize(sentences[i:i + size])) for i in range(0, len(sentences), size)]


def embed(fn, params, data):
    f = jax.jit(fn)
    return np.concatenate([np.asarray(f(params, ids, mask)) for ids, mask in data])


def mean_cosine(emb, ref) -> float:
    """Mean over sentences of cos(emb, ref) (both L2-normalised by the model; renormalised for safety)."""
    emb = emb / np.linalg.norm(emb, axis=-1, keepdims=True)
    return float(np.mean(np.sum(emb * ref, -1)))


def main(argv=None):
    from jq_zoo.minilm import load_minilm, minilm_linen, real_sentences

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--groups", default="nvfp4,int4,8bit")
    ap.add_argument("--only", default="", help="comma-separated substrings of recipe names to run")
    ap.add_argument("--calib", type=int, default=64)
    ap.add_argument("--eval", type=int, default=256)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--json", default="", help="write the rows here (rewritten after every recipe)")
    args = ap.parse_args(argv)
    groups = args.groups.split(",")
    sentences = real_sentences()
    calib_s, eval_s = sentences[: args.calib], sentences[args.calib: args.calib + args.eval]
    assert not set(calib_s) & set(eval_s), "calibration and evaluation sentences overlap"
    calib, evals = batches(calib_s, args.batch), batches(eval_s, args.batch)
    model, to_linen = minilm_linen()
    params = to_linen(load_minilm())
    ref = embed(model.apply, params, evals)
    print(f"all-MiniLM-L6-v2: {len(calib_s)} calibration / {len(eval_s)} evaluation sentences, jax {jax.__version__}",
          flush=True)
    rows = []
    for group, name, cfg in RECIPES:
        if group not in groups or (args.only and not any(s in name for s in args.only.split(","))):
            continue
        t = time.time()
        try:
            qm = jq.quantize(params, model.apply, cfg, calib_data=calib, progress=False)
            cos = mean_cosine(embed(qm.apply, qm.params, evals), ref)
        except Exception as e:  # a recipe that does not apply is a row with its error, not a crash of the table
            cos, name = float("nan"), f"{name} [error: {type(e).__name__}: {str(e)[:120]}]"
        rows.append({"group": group, "recipe": name, "cosine": cos, "seconds": time.time() - t})
        print(f"  {group:<6} {name:<60} cos {cos:.5f}  ({rows[-1]['seconds']:.0f} s)", flush=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"rows": rows, "jax": jax.__version__, "args": vars(args)}, f, indent=1)
    print("\n| group | recipe | mean cosine | vs max (RTN) | bar | calibration + eval time |\n|---|---|---|---|---|---|")
    base = {}
    for r in rows:
        if "round to nearest" in r["recipe"]:
            base[r["group"]] = r["cosine"]
        bar = BARS[r["group"]]
        mark = "met" if r["cosine"] >= bar else "not met"
        delta = f"{r['cosine'] - base[r['group']]:+.4f}" if r["group"] in base else ""
        print(f"| {r['group']} | {r['recipe']} | {r['cosine']:.4f} | {delta} | >= {bar}: {mark} | {r['seconds']:.0f} s |")
    return rows


if __name__ == "__main__":
    main()
