"""SVDQuant: a high-precision low-rank branch absorbs the weight's outliers; only the residual is quantized.

For each target site, with the (AWQ-smoothed, as ModelOpt does) weight ``W_s`` in its canonical ``[out, in]`` view
and its SVD ``W_s = U diag(S) Vᵀ``::

    L = U[:, :r] diag(S[:r])      ``svdquant_lora_b``  [out, r]     (float32, weight quantizer state)
    R = Vᵀ[:r]                    ``svdquant_lora_a``  [r, in]
    y = op(q(x_s), q(W_s - L R)) + op(x_s, L R)        (x_s = x * pre_quant_scale; both ops with the site's own
                                                       dimension numbers: :meth:`jq.handlers.SiteCall.low_rank`)

The params hold the residual (ModelOpt subtracts ``L R`` from the module's weight), so weight calibration, GPTQ,
``fold_weights`` and the exporters see the tensor that is quantized; the factors are per layer in layer scans
(leading layer axes) and per expert (batch axes). A rank above ``min(out, in)`` is clipped to it, where
``L R = W_s`` exactly. Runs AWQ-lite first (``smooth=True``), then the SVD, then max calibration of the residual.

Example:
  >>> qm = jq.quantize(params, apply_fn, {**jq.NVFP4_DEFAULT_CFG, "algorithm": {"method": "svdquant", "lowrank": 32}},
  ...                  calib_data=batches)
  >>> qm.qstate["fc1.weight_quantizer"]["svdquant_lora_a"].shape     # (32, in)
"""

from __future__ import annotations

import dataclasses
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from jq.calib.awq import AWQLite
from jq.calib.base import Algorithm
from jq.calib.max import max_calibrate
from jq.calib.weights import canonical_weights, per_layer, replay_weight
from jq.trace.sites import REPLAY_AS_IDENTITY, ChainStep, ParamOrigin, ScanSlice

__all__ = ["SVDQuant", "svdquant_targets", "low_rank_factors", "add_low_rank", "remove_low_rank", "LORA_A", "LORA_B"]

LORA_A, LORA_B = "svdquant_lora_a", "svdquant_lora_b"
# chain steps that permute or re-type a weight without losing values: their transpose writes a canonical weight back
_INVERTIBLE = frozenset({"transpose", "reshape", "squeeze", "expand_dims", "convert_element_type", "copy",
                         "copy_p"}) | REPLAY_AS_IDENTITY


def _writable(traced, site, uses: dict) -> str | None:
    """Why the site's weight cannot be replaced by its residual in the params (None when it can)."""
    origin = site.weight
    if not isinstance(origin, ParamOrigin):
        return "its weight is computed from several params leaves"
    if uses[origin.leaf] > 1 or origin.leaf in traced.other_uses:
        return "its params leaf is shared with other sites or used elsewhere"
    if not all(isinstance(s, ScanSlice) or (isinstance(s, ChainStep) and s.eqn.primitive.name in _INVERTIBLE)
               for s in origin.chain):
        return "its weight is not a layout change of one params leaf"
    if sum(isinstance(s, ScanSlice) for s in origin.chain) != len(site.layer_axes):
        return "its weight is shared by the layers of a layer scan"
    return None


def svdquant_targets(qm, traced) -> list:
    """Sites with an enabled weight quantizer whose params leaf can hold the residual (others warn and stay as
    they are)."""
    uses: dict = {}
    for s in traced.sites:
        if isinstance(s.weight, ParamOrigin):
            uses[s.weight.leaf] = uses.get(s.weight.leaf, 0) + 1
    out, skipped = [], []
    for s in traced.sites:
        if s.kind == "bmm" or qm.spec(f"{s.name}.weight_quantizer") is None:
            continue
        why = _writable(traced, s, uses)
        if why is None:
            out.append(s)
        else:
            skipped.append(f"{s.name} ({why})")
    if skipped:
        warnings.warn(f"jq svdquant: no low-rank branch for {skipped}", stacklevel=3)
    return out


def low_rank_factors(w: np.ndarray, rank: int, n_lead: int) -> tuple[np.ndarray, np.ndarray]:
    """``(R, L)`` with ``L @ R`` the best rank-``rank`` approximation of each ``[out, K]`` matrix of ``w``.

    ``w`` has ``n_lead`` leading (layer, batch) axes, then ``out``, then the in-feature axes (flattened to ``K``).
    The SVD runs in float64; ``L = U_r diag(S_r)`` ``[..., out, r]``, ``R = V_rᵀ`` ``[..., r, K]`` (float32), with
    ``r = min(rank, out, K)``.

    Example:
      >>> a, b = low_rank_factors(np.eye(4), 2, 0)
      >>> a.shape, b.shape
      ((2, 4), (4, 2))
    """
    w = np.asarray(w, np.float64)
    lead, out = w.shape[:n_lead], w.shape[n_lead]
    m = w.reshape((-1, out, int(np.prod(w.shape[n_lead + 1:], dtype=np.int64))))
    r = min(rank, m.shape[1], m.shape[2])
    u, s, vt = np.linalg.svd(m, full_matrices=False)
    b = (u[..., :r] * s[:, None, :r]).astype(np.float32)
    a = vt[:, :r].astype(np.float32)
    return a.reshape(lead + a.shape[1:]), b.reshape(lead + b.shape[1:])


def _pqs_on_canonical(pqs, ndim: int, n_layers: int, batch: int):
    """``pre_quant_scale`` ``[*layers, in]`` shaped to broadcast on a canonical ``[*layers, *batch, out, in, ...]``."""
    pqs = jnp.asarray(pqs, jnp.float32)
    shape = pqs.shape[:n_layers] + (1,) * (batch + 1) + pqs.shape[n_layers:]
    return pqs.reshape(shape + (1,) * (ndim - len(shape)))


def _low_rank_raw(site, a, b, pqs):
    """``(L R) * pre_quant_scale``: the low-rank part in the params' (unsmoothed) canonical view."""
    n_layers, view = len(site.layer_axes), site.view
    lr = jnp.matmul(jnp.asarray(b), jnp.asarray(a), precision=jax.lax.Precision.HIGHEST)
    lr = lr.reshape(lr.shape[:n_layers] + tuple(view.shape))
    return lr if pqs is None else lr * _pqs_on_canonical(pqs, lr.ndim, n_layers, view.batch)


def _write_back(leaf, site, delta):
    """``leaf`` whose canonical weight (per layer) becomes ``canonical - delta`` (the chain is a pure layout change,
    so its linear transpose writes the canonical view back)."""
    origin, view, n_layers = site.weight, site.view, len(site.layer_axes)

    def forward(w):
        return per_layer(view.to_canonical, replay_weight(w, origin.chain), n_layers)

    c = forward(leaf)
    (new,) = jax.linear_transpose(forward, leaf)((c.astype(jnp.float32) - delta).astype(c.dtype))
    return new.astype(leaf.dtype)


def add_low_rank(qm, rank: int, sites=None) -> tuple:
    """``(params, qstate)`` with each target site's weight replaced by its residual and the factors in the state.

    The factors come from the smoothed canonical weight ``W_s = W / pre_quant_scale`` (what the site multiplies);
    the params get ``W - (L R) * pre_quant_scale``, so the site's pre-scaled weight is ``W_s - L R``.
    """
    traced = qm.traced
    sites = svdquant_targets(qm, traced) if sites is None else sites
    leaves, treedef = jax.tree_util.tree_flatten(qm.params)
    leaves = list(leaves)
    qstate = {k: dict(v) for k, v in qm.qstate.items()}
    for site in sites:
        w_s, _ = canonical_weights(site, leaves, qstate)
        a, b = low_rank_factors(np.asarray(w_s), rank, len(site.layer_axes) + site.view.batch)
        pqs = qstate.get(f"{site.name}.input_quantizer", {}).get("pre_quant_scale")
        leaves[site.weight.leaf] = _write_back(leaves[site.weight.leaf], site, _low_rank_raw(site, a, b, pqs))
        qstate.setdefault(f"{site.name}.weight_quantizer", {}).update({LORA_A: jnp.asarray(a), LORA_B: jnp.asarray(b)})
    return jax.tree_util.tree_unflatten(treedef, leaves), qstate


def remove_low_rank(qm):
    """``qm`` with every SVDQuant branch folded back into its params leaf (``W = residual + (L R) *
    pre_quant_scale``) and the factors dropped: the float model again, e.g. before calibrating anew."""
    sites = [s for s in qm.traced.sites if LORA_A in qm.qstate.get(f"{s.name}.weight_quantizer", {})]
    if not sites:
        return qm
    leaves, treedef = jax.tree_util.tree_flatten(qm.params)
    leaves = list(leaves)
    qstate = {k: dict(v) for k, v in qm.qstate.items()}
    for site in sites:
        st = qstate[f"{site.name}.weight_quantizer"]
        a, b = st.pop(LORA_A), st.pop(LORA_B)
        pqs = qstate.get(f"{site.name}.input_quantizer", {}).get("pre_quant_scale")
        leaves[site.weight.leaf] = _write_back(leaves[site.weight.leaf], site, -_low_rank_raw(site, a, b, pqs))
    return qm.replace(params=jax.tree_util.tree_unflatten(treedef, leaves), qstate=qstate)


@dataclasses.dataclass(frozen=True)
class SVDQuant(Algorithm):
    """ModelOpt's ``svdquant``: AWQ-lite smoothing (``smooth``), a rank-``lowrank`` branch from the SVD of the smoothed
    weight, then max calibration of the quantized residual."""

    lowrank: int = 32
    smooth: bool = True
    alpha_step: float = 0.1
    name = "svdquant"
    passes = 4
    needs_data = True

    def __post_init__(self):
        if not isinstance(self.lowrank, int) or self.lowrank < 1:
            raise ValueError(f"svdquant lowrank must be a positive integer, got {self.lowrank!r}")

    def calibrate(self, qm, data):
        data.trace(qm)
        qm = remove_low_rank(qm)  # calibrating again starts from the float weights
        if self.smooth:  # ... and from unsmoothed inputs: AWQ derives its scales anew
            qm = qm.replace(qstate={k: {n: v for n, v in st.items() if n != "pre_quant_scale"}
                                    for k, st in qm.qstate.items()})
            qm = AWQLite(alpha_step=self.alpha_step).calibrate(qm, data)
        params, qstate = add_low_rank(qm, self.lowrank)
        qm = qm.replace(params=params, qstate=qstate)
        return qm.replace(qstate=max_calibrate(qm, data))
