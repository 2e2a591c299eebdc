"""AWQ-lite: activation-aware per-input-channel scaling for weight quantization.

Two passes over the calibration data. Pass 1 collects ``act_j = mean|x_j|`` per input channel; from the
params, ``w_j = mean_i |W[i, j]| / blockmax|W[i, block(j)]|`` (the weight's magnitude relative to its
quantization block). Pass 2 tries ``alpha`` in ``{0, step, ..., 1}``::

    s = act^alpha / w^(1 - alpha);   s = s / sqrt(max(s) * min(s));   s = clamp(s, 1e-4, 1e4)
    loss(alpha) = mean((x / s) @ fq(W * s) - x @ W)^2        (summed over batches)

and keeps the best ``alpha``. The input is then multiplied by ``pre_quant_scale = 1 / s`` and the weight's
input channels by ``s``, and the quantizers are re-calibrated (max). Siblings that read the same input
(q/k/v, gate/up) share one alpha and one scale, as fused serving kernels need. Applies to sites with an
enabled block-quantized weight (INT4 blocks, NVFP4; the first stage of a sequential quantizer).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jq.calib.smoothquant import weight_channel_reduce
from jq.fake_quant import fake_quant
from jq.quantizer import block_layout, compute_amax
from jq.trace import geometry
from jq.trace.primitives import bind_eqn
from jq.trace.sites import ParamOrigin
from jq.trace.symbols import sibling_partition

__all__ = ["awq_targets", "awq_alphas", "awq_weight_scale", "awq_losses", "awq_scale", "awq_select"]

MIN_SCALE, MAX_SCALE = 1e-4, 1e4


def _weight_spec(spec):
    return spec[0] if isinstance(spec, tuple) else spec


def awq_targets(qm, traced) -> list:
    """Sites AWQ applies to: an enabled, block-quantized weight (INT blocks or NVFP4) from the params."""
    out = []
    for s in traced.sites:
        if s.kind == "bmm" or not isinstance(s.weight, ParamOrigin):
            continue
        w = qm.spec(f"{s.name}.weight_quantizer")
        if w is None:
            continue
        w = _weight_spec(w)
        if w.block_sizes is not None and w.kind in ("int", "nvfp4"):
            out.append(s)
    return out


def awq_alphas(step: float = 0.1) -> np.ndarray:
    """The grid ``0, step, ..., 1``."""
    n = int(round(1.0 / step))
    return np.linspace(0.0, 1.0, n + 1).astype(np.float32)


def awq_weight_scale(site, spec, params_leaves) -> jax.Array:
    """``mean_i |W[i, j]| / blockmax`` per input channel, per layer."""
    spec = _weight_spec(spec)

    def rel(c):  # c: rows x in (absolute values), blocks along in
        layout = block_layout(spec.replace(axis=None), c.shape, 0) if spec.kind == "int" else None
        if layout is None:  # NVFP4: 16-element blocks along in
            from jq.numerics import nvfp4_layout
            layout = nvfp4_layout(c.shape)
        bmax = layout.merge(jnp.broadcast_to(layout.block_amax(c), layout.blocked_shape))
        return jnp.mean(c / jnp.maximum(bmax, 1e-12), axis=0)

    return weight_channel_reduce(site, params_leaves, rel)


def awq_scale(act_scale, w_scale, alpha):
    """``s = act^alpha / w^(1-alpha)``, normalised by ``sqrt(max * min)`` and clamped."""
    s = jnp.power(jnp.maximum(act_scale, 1e-8), alpha) / jnp.power(jnp.maximum(w_scale, 1e-8), 1.0 - alpha)
    s = s / jnp.sqrt(jnp.max(s) * jnp.min(s))
    return jnp.clip(s, MIN_SCALE, MAX_SCALE)


def awq_losses(eqn, site, x, w, act_scale, w_scale, spec, alphas) -> jax.Array:
    """Output MSE of the site for each alpha (weights fake-quantized with their amax recomputed)."""
    spec = _weight_spec(spec)
    act, wo = 1 - site.weight_operand, site.weight_operand
    base = [None] * len(eqn.invars)
    base[act], base[wo] = x, w

    def out(xv, wv):
        vals = list(base)
        vals[act], vals[wo] = xv, wv
        return bind_eqn(eqn, vals).astype(jnp.float32)

    y_ref = out(x, w)

    def one(alpha):
        s = awq_scale(act_scale, w_scale, alpha)
        xs = (x / geometry.broadcast_to_activation(site, s, x.shape)).astype(x.dtype)
        ws = geometry.scale_weight(site, w, s)
        amax = compute_amax(site.view.to_canonical(ws), spec, site.view.batch)
        wq = fake_quant(ws, amax, spec=spec, view=site.view)
        return jnp.mean((out(xs, wq) - y_ref) ** 2)

    return jax.lax.map(one, jnp.asarray(alphas))


def awq_select(qm, traced, stats, act_scales, w_scales, alphas) -> tuple[dict, dict]:
    """Pick alpha per sibling group from the summed losses; ``({input q: pre_quant_scale}, {site: alpha})``."""
    groups = sibling_partition(traced, [s.name for s in awq_targets(qm, traced)])
    pqs, chosen = {}, {}
    for group in groups:
        keys = [f"{n}.input_quantizer#awq#sum" for n in group]
        if any(k not in stats for k in keys):
            continue
        loss = sum(stats[k][0] for k in keys)  # (*layers, n_alpha)
        best = jnp.argmin(loss, axis=-1)
        alpha = jnp.asarray(alphas)[best]
        name = f"{group[0]}.input_quantizer"

        def scale_for(a_s, w_s, al):
            return awq_scale(a_s, w_s, al)

        fn = scale_for
        for _ in range(alpha.ndim):
            fn = jax.vmap(fn)
        s = fn(act_scales[name], w_scales[name], alpha)
        for n in group:
            pqs[f"{n}.input_quantizer"] = (1.0 / s).astype(jnp.float32)
            chosen[n] = np.asarray(alpha)
    return pqs, chosen
