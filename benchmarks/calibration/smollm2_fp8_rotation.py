"""Does an orthogonal rotation of a projection's input space lower SmolLM2-135M's FP8 error? (docs/models.md)

For every projection of the 30 layers, on 1,024 calibration tokens (two 512-token windows of the calibration
plays, float model), the relative output error ``Σ ||W x - Ŵ x̂||² / Σ ||W x||²`` of E4M3 with per-output-channel
weight scales and per-token dynamic activation scales (``amax -> 448``, ``ml_dtypes.float8_e4m3fn``), for the
weights alone (``x̂ = x``), the activations alone (``Ŵ = W``) and both, in three bases:

- plain: the model as it is;
- rotated: ``x -> x Q``, ``W -> W Q`` with ``Q`` a random orthogonal matrix (``W x`` unchanged): for the
  q/k/v/gate/up inputs the RMSNorm gain is first folded into ``W`` (QuaRot/SpinQuant's residual-stream
  rotation R1), for the ``o_proj`` input one 64 x 64 rotation per head (R2, foldable into ``v_proj``), for the
  ``down_proj`` input a full 1536 x 1536 rotation (R4, an online rotation);
- alt: q/k/v/gate/up with the gain folded but not rotated; ``o_proj`` with a full 576 x 576 rotation.

E4M3's rounding error is relative, so to first order both error parts are ``σ² Σ_ij W_ij² x_j²`` (``σ²`` the
E4M3 relative mean-square error): a rotation changes it only through how ``x_j²`` lines up with ``W``'s
column norms. Figures are means over layers, in units of 1e-4. ::

    python -m benchmarks.calibration.smollm2_fp8_rotation
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


def e4m3_rows(v: np.ndarray) -> np.ndarray:
    """E4M3 with one scale per row: ``fp8(v * 448 / amax_row) * amax_row / 448``."""
    s = np.float32(448) / np.maximum(np.abs(v).max(1, keepdims=True), 1e-30)
    return np.clip(v * s, -448, 448).astype(ml_dtypes.float8_e4m3fn).astype(np.float32) / s


def relative_errors(w: np.ndarray, x: np.ndarray) -> tuple[float, float, float]:
    """``(weights only, activations only, both)`` relative output errors of ``x @ w.T`` (``w [out, in]``,
    ``x [tokens, in]``; weights per output channel, activations per token)."""
    y = x @ w.T
    qw, qx = e4m3_rows(w), e4m3_rows(x)
    den = float((y ** 2).sum())
    return tuple(float(((a @ b.T - y) ** 2).sum()) / den for a, b in ((x, qw), (qx, w), (qx, qw)))


def orthogonal(n: int, rng: np.random.Generator) -> np.ndarray:
    return np.linalg.qr(rng.standard_normal((n, n)))[0].astype(np.float32)


def main() -> None:
    config, params, tok = smollm2.load()
    x, _ = jm.token_windows(jm.encode(shakespeare.calib_text(), tok), 512, 1024)
    tokens = jnp.asarray(x)
    b, t = tokens.shape
    pos = jnp.broadcast_to(jnp.arange(t), (b, t))
    cos, sin = rope_tables(config, pos)
    mask = attention_mask(pos, pos, config)
    h = params["model"]["embed_tokens"]["weight"][tokens]
    hidden, inter, hd = config.hidden_size, config.intermediate_size, config.head_dim
    rng = np.random.default_rng(0)
    q_hidden, q_inter = orthogonal(hidden, rng), orthogonal(inter, rng)
    q_heads = np.kron(np.eye(hidden // hd, dtype=np.float32), orthogonal(hd, rng))
    totals: dict[str, np.ndarray] = {}
    for layer in params["model"]["layers"]:
        sa, mlp = layer["self_attn"], layer["mlp"]
        hn = rms_norm(h, layer["input_layernorm"], config.rms_norm_eps)
        a = attention(*project_qkv(sa, hn, cos, sin, config), mask, config)
        h = h + linear(a, sa["o_proj"])
        n2 = rms_norm(h, layer["post_attention_layernorm"], config.rms_norm_eps)
        d = jax.nn.silu(linear(n2, mlp["gate_proj"])) * linear(n2, mlp["up_proj"])
        h = h + linear(d, mlp["down_proj"])
        flat = {"attn_in": np.asarray(hn, np.float32).reshape(-1, hidden),
                "mlp_in": np.asarray(n2, np.float32).reshape(-1, hidden),
                "o_in": np.asarray(a, np.float32).reshape(-1, hidden),
                "down_in": np.asarray(d, np.float32).reshape(-1, inter)}
        gains = {"attn_in": np.asarray(layer["input_layernorm"]["weight"], np.float32),
                 "mlp_in": np.asarray(layer["post_attention_layernorm"]["weight"], np.float32)}
        for name, mod, inp in (("q_proj", sa, "attn_in"), ("k_proj", sa, "attn_in"), ("v_proj", sa, "attn_in"),
                               ("gate_proj", mlp, "mlp_in"), ("up_proj", mlp, "mlp_in"), ("o_proj", sa, "o_in"),
                               ("down_proj", mlp, "down_in")):
            w, xs = np.asarray(mod[name]["weight"], np.float32), flat[inp]
            if inp in gains:  # fold the RMSNorm gain: x / g, W * g
                wg, xg = w * gains[inp][None], xs / gains[inp][None]
                bases = ((w, xs), (wg @ q_hidden, xg @ q_hidden), (wg, xg))
            elif inp == "o_in":
                bases = ((w, xs), (w @ q_heads, xs @ q_heads), (w @ q_hidden, xs @ q_hidden))
            else:
                bases = ((w, xs), (w @ q_inter, xs @ q_inter), (w, xs))
            row = np.array([relative_errors(wb, xb) for wb, xb in bases])
            totals[name] = totals.get(name, 0) + row
    n = len(params["model"]["layers"])
    print("| projection | plain (W / A / both) | rotated (W / A / both) | alt (W / A / both) |\n|---|---|---|---|")
    for name, r in totals.items():
        cells = [" / ".join(f"{1e4 * v / n:.2f}" for v in r[k]) for k in range(3)]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
