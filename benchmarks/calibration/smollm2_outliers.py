"""Two facts behind SmolLM2-135M's FP8 / INT8 loss (docs/models.md): the weights' quantization SNR per format,
and the attention-sink token's massive ``down_proj`` inputs.

1. Weight signal-to-quantization-noise ratio ``10 log10(sum w^2 / sum (w - Q(w))^2)`` per projection kind,
   averaged (in power) over the 30 layers, for E4M3 per tensor, E4M3 per output channel and INT8 per output
   channel (``amax / 127`` steps), all with max-derived scales, computed with ``ml_dtypes`` / numpy (no jq).
2. ``max_j |x_j|`` of every ``down_proj`` input per position, on the first two held-out windows: the largest
   positions of the layers whose per-tensor amax is dominated by one token.

    python -m benchmarks.calibration.smollm2_outliers
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

import jq.models as jm
from jq.models.llama import attention, attention_mask, linear, project_qkv, rms_norm
from jq.models.rope import rope_tables
from jq_zoo import shakespeare, smollm2

KINDS = (("self_attn", "q_proj"), ("self_attn", "k_proj"), ("self_attn", "v_proj"), ("self_attn", "o_proj"),
         ("mlp", "gate_proj"), ("mlp", "up_proj"), ("mlp", "down_proj"))


def fp8_e4m3(w: np.ndarray, amax: np.ndarray) -> np.ndarray:
    """``fp8(clip(w * 448 / amax)) * amax / 448``."""
    s = np.float32(448) / amax
    return np.clip(w * s, -448, 448).astype(ml_dtypes.float8_e4m3fn).astype(np.float32) / s


def int8(w: np.ndarray, amax: np.ndarray) -> np.ndarray:
    """``clip(round(w / step), -127, 127) * step`` with ``step = amax / 127``."""
    step = amax / 127
    return np.clip(np.round(w / step), -127, 127) * step


def weight_snr_db(params: dict) -> dict:
    """``{(proj, format): dB}`` (noise power averaged over layers)."""
    ratios = {}
    for layer in params["model"]["layers"]:
        for group, name in KINDS:
            w = np.asarray(layer[group][name]["weight"], np.float32)
            per_tensor, per_row = np.abs(w).max(), np.abs(w).max(1, keepdims=True)
            for fmt, q in (("e4m3 per tensor", fp8_e4m3(w, per_tensor)), ("e4m3 per channel", fp8_e4m3(w, per_row)),
                           ("int8 per channel", int8(w, per_row))):
                ratios.setdefault((name, fmt), []).append((np.sum(w * w), np.sum((w - q) ** 2)))
    return {k: 10 * np.log10(sum(s for s, _ in v) / sum(n for _, n in v)) for k, v in ratios.items()}


def projection_inputs(config, params, tokens):
    """``[(layer, {kind: input [tokens, channels]})]`` of the float forward (jq.models' llama blocks)."""
    b, t = tokens.shape
    pos = jnp.broadcast_to(jnp.arange(t), (b, t))
    cos, sin = rope_tables(config, pos)
    mask = attention_mask(pos, pos, config)
    h = params["model"]["embed_tokens"]["weight"][tokens]
    out = []
    for layer in params["model"]["layers"]:
        n1 = rms_norm(h, layer["input_layernorm"], config.rms_norm_eps)
        q, k, v = project_qkv(layer["self_attn"], n1, cos, sin, config)
        a = attention(q, k, v, mask, config)
        h = h + linear(a, layer["self_attn"]["o_proj"])
        n2 = rms_norm(h, layer["post_attention_layernorm"], config.rms_norm_eps)
        d = jax.nn.silu(linear(n2, layer["mlp"]["gate_proj"])) * linear(n2, layer["mlp"]["up_proj"])
        h = h + linear(d, layer["mlp"]["down_proj"])
        out.append({"q_proj": n1, "k_proj": n1, "v_proj": n1, "o_proj": a, "gate_proj": n2, "up_proj": n2,
                    "down_proj": d})
    return out


def down_proj_input_max(config, params, tokens) -> np.ndarray:
    """``max_j |x_j|`` of each layer's ``down_proj`` input: ``[layers, batch, seq]`` (the forward of jq.models; jit it)."""
    return jnp.stack([jnp.abs(inputs["down_proj"]).max(-1) for inputs in projection_inputs(config, params, tokens)])


def main() -> None:
    config, params, tok = smollm2.load()
    snr = weight_snr_db(params)
    fmts = ("e4m3 per tensor", "e4m3 per channel", "int8 per channel")
    print("| projection | " + " | ".join(fmts) + " |\n|---|---|---|---|")
    for _, name in KINDS:
        print(f"| {name} | " + " | ".join(f"{snr[(name, f)]:.1f} dB" for f in fmts) + " |")
    x, _ = jm.token_windows(jm.encode(shakespeare.eval_text(), tok), 512, 1024)
    a = np.asarray(jax.jit(lambda p, t: down_proj_input_max(config, p, t))(params, jnp.asarray(x)))
    print("\n| layer | max at position 0 | max at other positions | median per-token max |\n|---|---|---|---|")
    for i in np.argsort(a.max((1, 2)))[::-1][:6]:
        print(f"| {i} | {a[i, :, 0].max():.1f} | {a[i, :, 1:].max():.1f} | {np.median(a[i]):.2f} |")


if __name__ == "__main__":
    main()
