"""Does NVFP4's FP32 global scale help? Weight-only NVFP4 on all-MiniLM-L6-v2, with and without it.

NVFP4 (ModelOpt, TensorRT, jq) stores each 16-element block's scale as E4M3 *relative to* a per-tensor FP32
scale ``amax / 2688``; Qwix 0.1.8's "nvfp4" stores ``e4m3(amax_b / 6)`` with no global scale. This script
quantizes every linear weight of the encoder both ways (jq.numerics for both; the second sets the global
scale to 1), reports the total squared weight error, and the mean embedding cosine to float32 on real
sentences for each, next to Qwix's own W4A16 nvfp4 on the same module when Qwix is installed.

    python examples/nvfp4_global_scale_study.py
"""

import jax
import jax.numpy as jnp
import numpy as np

import jq.numerics as nx
from jq_zoo.minilm import load_minilm, minilm_linen, real_sentences, tokenize


def nvfp4(w_out_in, global_scale: bool):
    """Fake-quantize a ``[out, in]`` weight with 16-blocks along ``in``."""
    if global_scale:
        return nx.nvfp4_fake_quant(w_out_in)
    layout = nx.nvfp4_layout(w_out_in.shape)
    block_amax = layout.block_amax(w_out_in)
    scale = nx.nvfp4_block_scale(block_amax, jnp.float32(1.0))  # e4m3(clamp(amax_b / 6)), no global scale
    return layout.merge(nx.round_to_minifloat(nx.exact_divide(layout.split(w_out_in), scale), nx.E2M1) * scale)


def quantize_kernels(params, global_scale):
    sse = 0.0

    def visit(tree):
        nonlocal sse
        out = {}
        for k, v in tree.items():
            if isinstance(v, dict) and "kernel" in v:
                q = nvfp4(v["kernel"].T, global_scale).T  # linen kernel [in, out] -> [out, in]
                sse += float(jnp.sum((q - v["kernel"]) ** 2))
                out[k] = {**v, "kernel": q}
            elif isinstance(v, dict):
                out[k] = visit(v)
            else:
                out[k] = v
        return out

    return visit(params), sse


def main():
    model, to_linen = minilm_linen()
    params = to_linen(load_minilm())
    sentences = real_sentences()
    evals = [tuple(map(jnp.asarray, tokenize(sentences[64 + i: 96 + i]))) for i in range(0, 128, 32)]
    f = jax.jit(model.apply)
    ref = np.concatenate([np.asarray(f(params, *b)) for b in evals])

    def cosine(p, apply=f):
        return float(np.mean(np.sum(np.concatenate([np.asarray(apply(p, *b)) for b in evals]) * ref, -1)))

    for gs in (True, False):
        qp, sse = quantize_kernels(params, gs)
        print(f"jq NVFP4 weights, global scale {'on ' if gs else 'off'}: total squared weight error {sse:.1f}, "
              f"mean cosine {cosine(qp):.10f}")
    try:
        import qwix
    except ImportError:
        return
    rule = qwix.QtRule(module_path=r".*/(query|key|value|attention_output|intermediate|output)$",
                       weight_qtype="nvfp4", tile_size=16)
    qw = qwix.quantize_model(model, qwix.QtProvider([rule]))
    print(f"Qwix nvfp4 weights (no global scale):           mean cosine {cosine(params, jax.jit(qw.apply)):.10f}")


if __name__ == "__main__":
    main()
