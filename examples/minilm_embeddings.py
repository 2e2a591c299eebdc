"""all-MiniLM-L6-v2 sentence embeddings quantized with jq, next to Qwix on the same model and sentences.

The encoder (jq_zoo.minilm, validated against transformers by examples/validate_minilm_port.py) embeds
real English sentences; each quantized model is scored by the mean cosine similarity of its embeddings to
the float32 ones. jq quantizes the model as a Flax linen module (and once as a plain JAX function); Qwix (if
installed: ``pip install --no-deps qwix==0.1.8``) runs on the linen module with its QtProvider defaults for
each format (weights per output channel, activations quantized dynamically).

    python examples/minilm_embeddings.py [--eval 256] [--calib 64]
"""

from __future__ import annotations

import argparse
import jax
import jax.numpy as jnp
import numpy as np

import jq
from jq_zoo.minilm import load_minilm, minilm_apply, minilm_linen, real_sentences, tokenize

_NVFP4 = {"num_bits": (2, 1), "block_sizes": {-1: 16, "type": "dynamic", "scale_bits": (4, 3)}}
_PER_TOKEN_INT8 = jq.merge_presets(jq.INT8_DEFAULT_CFG, {"quant_cfg": {
    "*input_quantizer": {"num_bits": 8, "type": "dynamic", "block_sizes": {-1: None}}}})
_NVFP4_DYN = jq.merge_presets(jq.NVFP4_DEFAULT_CFG, {"quant_cfg": {"*input_quantizer": {**_NVFP4, "type": "dynamic"}}})

# (format, jq config name, jq config, Qwix QtRule keyword arguments or None)
ROWS = [
    ("INT8 W8A8", "INT8_DEFAULT_CFG (static per-tensor acts)", jq.INT8_DEFAULT_CFG, None),
    ("INT8 W8A8", "INT8_SMOOTHQUANT_CFG", jq.INT8_SMOOTHQUANT_CFG, None),
    ("INT8 W8A8", "int8, dynamic per-token acts", _PER_TOKEN_INT8, dict(weight_qtype="int8", act_qtype="int8")),
    ("FP8 W8A8", "FP8_DEFAULT_CFG (static per-tensor)", jq.FP8_DEFAULT_CFG, None),
    ("FP8 W8A8", "FP8_PER_CHANNEL_PER_TOKEN_CFG", jq.FP8_PER_CHANNEL_PER_TOKEN_CFG,
     dict(weight_qtype="float8_e4m3fn", act_qtype="float8_e4m3fn")),
    ("MXFP8", "MXFP8_DEFAULT_CFG", jq.MXFP8_DEFAULT_CFG, dict(weight_qtype="mxfp8", act_qtype="mxfp8", tile_size=32)),
    ("NVFP4 W4A4", "NVFP4_DEFAULT_CFG (static global scale)", jq.NVFP4_DEFAULT_CFG, None),
    ("NVFP4 W4A4", "NVFP4, dynamic activation global scale", _NVFP4_DYN,
     dict(weight_qtype="nvfp4", act_qtype="nvfp4", tile_size=16)),
    ("NVFP4 W4A4", "NVFP4_AWQ_LITE_CFG", jq.NVFP4_AWQ_LITE_CFG, None),
    ("INT4 weight-only g128", "INT4_BLOCKWISE_WEIGHT_ONLY_CFG (RTN)", jq.INT4_BLOCKWISE_WEIGHT_ONLY_CFG,
     dict(weight_qtype="int4", tile_size=128)),
    ("INT4 weight-only g128", "INT4_AWQ_CFG", jq.INT4_AWQ_CFG, None),
]
LINEAR_LAYERS = r".*/(query|key|value|attention_output|intermediate|output)$"


def batches(sentences, size):
    for i in range(0, len(sentences), size):
        ids, mask = tokenize(sentences[i:i + size])
        yield jnp.asarray(ids), jnp.asarray(mask)


def embed(fn, params, data):
    """Embeddings of every batch; params are jit arguments (not constants folded into the program)."""
    f = jax.jit(fn)
    return np.concatenate([np.asarray(f(params, ids, mask)) for ids, mask in data])


def qwix_model(model, rule_kwargs):
    import qwix

    kw = dict(rule_kwargs)
    for k in ("weight_qtype", "act_qtype"):
        if k in kw and kw[k] in ("int8", "int4", "float8_e4m3fn"):
            kw[k] = getattr(jnp, kw[k])
    return qwix.quantize_model(model, qwix.QtProvider([qwix.QtRule(module_path=LINEAR_LAYERS, **kw)]))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--eval", type=int, default=256)
    ap.add_argument("--calib", type=int, default=64)
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args(argv)
    try:
        import qwix  # noqa: F401
        have_qwix = True
    except ImportError:
        have_qwix = False
    sentences = real_sentences()
    calib_s, eval_s = sentences[: args.calib], sentences[args.calib: args.calib + args.eval]
    calib = [(ids, mask) for ids, mask in batches(calib_s, args.batch)]
    evals = list(batches(eval_s, args.batch))
    hf = load_minilm()
    model, to_linen = minilm_linen()
    params = to_linen(hf)
    ref = embed(model.apply, params, evals)
    print(f"{len(eval_s)} evaluation sentences ({len(calib_s)} for calibration), jax {jax.__version__}")
    rows = []
    for fmt, name, cfg, qwix_kw in ROWS:
        qm = jq.quantize(params, model.apply, cfg, calib_data=calib, progress=False)
        emb = embed(qm.apply, qm.params, evals)
        cos_jq = float(np.mean(np.sum(emb * ref, -1)))
        cos_qwix = None
        if have_qwix and qwix_kw is not None:
            qwm = qwix_model(model, qwix_kw)
            cos_qwix = float(np.mean(np.sum(embed(qwm.apply, params, evals) * ref, -1)))
        rows.append((fmt, name, cos_jq, cos_qwix))
        print(f"  {fmt:<22} {name:<42} jq {cos_jq:.4f}" + (f"  Qwix {cos_qwix:.4f}" if cos_qwix else ""))
    # the same quantization of the same weights written as a plain function over Hugging Face-layout params:
    # identical weight scales; activation amaxes agree to float rounding of the two graphs' layer norms
    qp = jq.quantize(hf, minilm_apply, jq.INT8_SMOOTHQUANT_CFG, calib_data=calib, progress=False)
    cos_plain = float(np.mean(np.sum(embed(qp.apply, qp.params, evals) * ref, -1)))
    print(f"\njq INT8_SMOOTHQUANT_CFG on the plain-JAX port (HF layout, x @ W.T): mean cosine {cos_plain:.4f}")
    print(f"\n{'format':<22} {'jq config':<42} {'jq cos':>7} {'Qwix cos':>9}")
    for fmt, name, cj, cq in rows:
        q = "-" if cq is None else f"{cq:.4f}"
        print(f"{fmt:<22} {name:<42} {cj:>7.4f} {q:>9}")
    return rows, cos_plain


if __name__ == "__main__":
    main()
