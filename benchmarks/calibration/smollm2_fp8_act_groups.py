"""Why per-group FP8 activation scales help SmolLM2-135M: the E4M3 activation error of each projection's input
with one scale per token vs one per group of G channels, and how many values a token's scale pushes below
E4M3's smallest normal (``2^-6`` after scaling: ``|x| < amax * 2^-6 / 448``, where the step is fixed at
``2^-9 / s`` and the relative error grows past the normal bound of ``2^-4``).

For every projection kind, summed over the 30 layers of the float model on the first held-out window
(512 tokens): the output error ``Σ ||W (x - x̂)||² / Σ ||W x||²`` (what the next layer sees) and the fraction
of input elements in the subnormal range (zeros excluded). Numpy / ``ml_dtypes`` quantization, no jq::

    python -m benchmarks.calibration.smollm2_fp8_act_groups
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

import jq.models as jm
from benchmarks.calibration.smollm2_outliers import projection_inputs
from jq_zoo import shakespeare, smollm2

# (label, group, power-of-two scale): None = one scale per token; "mx" = MXFP8's E8M0 scale 2^ceil(log2(amax/448))
GROUPS = (("per token", None, False), ("groups of 128", 128, False), ("groups of 64", 64, False),
          ("groups of 32", 32, False), ("groups of 16", 16, False), ("per token, 2^k scale", None, True),
          ("MX: 32, 2^k scale", 32, True))
KINDS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
SMALLEST_NORMAL = 2.0 ** -6


def e4m3_groups(x: np.ndarray, group: int | None, pow2: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``(x̂, x s)``: E4M3 fake quantization of ``x [n, c]`` with ``s = 448 / amax`` per token (group None) or per
    group of ``group`` channels (zero-padded last group); ``pow2``: ``s = 2^-ceil(log2(amax / 448))`` (MX's E8M0
    scale: the same range, but the group's largest element is no longer mapped exactly onto 448)."""
    n, c = x.shape
    g = c if group is None else group
    pad = -c % g
    xb = np.pad(x, ((0, 0), (0, pad))).reshape(n, -1, g)
    amax = np.abs(xb).max(-1, keepdims=True)
    amax = np.where(amax > 0, amax, 1)
    s = (2.0 ** -np.ceil(np.log2(amax / 448))).astype(np.float32) if pow2 else np.float32(448) / amax
    scaled = np.clip(xb * s, -448, 448)
    q = scaled.astype(ml_dtypes.float8_e4m3fn).astype(np.float32) / s
    return q.reshape(n, -1)[:, :c], scaled.reshape(n, -1)[:, :c]


def main() -> None:
    config, params, tok = smollm2.load()
    x, _ = jm.token_windows(jm.encode(shakespeare.eval_text(), tok), 512, 512)
    layers = jax.jit(lambda p, t: projection_inputs(config, p, t))(params, jnp.asarray(x))
    err = {(k, g[0]): [0.0, 0.0] for k in KINDS for g in GROUPS}
    sub = {(k, g[0]): [0, 0] for k in KINDS for g in GROUPS}
    for i, inputs in enumerate(layers):
        for kind in KINDS:
            group = "self_attn" if kind in KINDS[:4] else "mlp"
            w = np.asarray(params["model"]["layers"][i][group][kind]["weight"], np.float32)  # [out, in]
            a = np.asarray(inputs[kind], np.float32).reshape(-1, w.shape[1])
            y = a @ w.T
            for g, size, pow2 in GROUPS:
                q, scaled = e4m3_groups(a, size, pow2)
                err[kind, g][0] += float(np.sum(((q - a) @ w.T) ** 2))
                err[kind, g][1] += float(np.sum(y * y))
                nz = scaled != 0
                sub[kind, g][0] += int(np.sum(nz & (np.abs(scaled) < SMALLEST_NORMAL)))
                sub[kind, g][1] += int(np.sum(nz))
    names = [g[0] for g in GROUPS]
    print("output error Σ||W(x - x̂)||² / Σ||Wx||² (1e-4) | fraction of nonzero inputs below E4M3's smallest normal")
    print("| projection | " + " | ".join(names) + " |\n" + "|---" * (len(GROUPS) + 1) + "|")
    for kind in KINDS:
        cells = [f"{1e4 * err[kind, g][0] / err[kind, g][1]:.2f} / {100 * sub[kind, g][0] / sub[kind, g][1]:.2f} %"
                 for g in names]
        print(f"| {kind} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
