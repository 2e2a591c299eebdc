"""From calibrated amax to the scales a deployment loads (and the quantized weights they go with).

A calibrated :class:`~jq.QuantizedModel` keeps ``amax`` per quantizer. Deployment formats (ONNX Q/DQ,
TensorRT, ModelOpt's Hugging Face layout) store *scales* that multiply quantized values back to floats::

    INT-b      scale = amax / maxb                      (maxb = 127, 7, ...; 1 where amax <= 2^-24)
    FP8        scale = 1 / s,  s = maxv * (1 / amax)    (maxv = 448 for E4M3; = amax / 448 within 1 ulp)
    NVFP4      weight_scale   = e4m3(amax_b / (6 gs))   per 16-block (from jq.qtensor.quantize)
               weight_scale_2 = gs = amax / 2688        (also the activation ``input_scale``)

The FP8 scale is jq's own dequantization multiplier (:func:`jq.numerics.fp8_dequant_scale`), so
``DequantizeLinear`` reproduces jq's FP8 values bit for bit. The INT scale is ModelOpt's
``amax / maxb``; jq divides by ``maxb / amax`` instead, so dequantized values can differ by one float32
ulp. Every number here comes from :mod:`jq.numerics` / :mod:`jq.qtensor`; nothing is re-derived.

Example:
  >>> qm = jq.quantize(params, model.apply, jq.INT8_DEFAULT_CFG, calib_data=[(x,)])
  >>> for site, s in layer_scales(qm).items():
  ...     print(site, s.input_scale, s.weight_scale.shape)
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from jq.calib.weights import weight_operand
from jq.config import QuantizerSpec
from jq.export.formats import spec_stages
from jq.qtensor import QTensor
from jq.qtensor import quantize as qtensor_quantize
from jq.trace.sites import ParamOrigin, ScanSlice

__all__ = ["export_scale", "LayerScales", "layer_scales", "canonical_weight", "quantize_weight"]


def export_scale(spec: QuantizerSpec, amax) -> np.ndarray:
    """The dequantization scale(s) of a calibrated quantizer, float32, same shape as ``amax``.

    INT: ``amax / maxb`` (1 where ``amax <= 2^-24``, where jq quantizes to 0); FP8: ``1 / (maxv / amax)``
    as jq computes it; NVFP4: the global scale ``amax / 2688`` (1 where ``amax == 0``). Formats without an
    amax-derived scale (MX) raise ``ValueError``.

    Example:
      >>> export_scale(QuantizerSpec(num_bits=8), np.float32(2.54))
      array(0.02, dtype=float32)
    """
    return spec.format.export_scale(spec, amax)


def _scan_free(origin) -> bool:
    return isinstance(origin, ParamOrigin) and not any(isinstance(s, ScanSlice) for s in origin.chain)


def canonical_weight(qm, site) -> jax.Array:
    """A site's weight in its canonical ``[out, in]`` (conv ``[O, I, *k]``) view, rebuilt from ``qm.params``.

    Raises ``ValueError`` for weights computed from several params leaves or sliced by a layer scan
    (their per-layer views are not one array).

    Example:
      >>> site = qm.traced.sites[0]              # a Flax Dense kernel [in, out]
      >>> canonical_weight(qm, site).shape       # [out, in]
    """
    if not _scan_free(site.weight):
        raise ValueError(f"site {site.name!r}: its weight is not one params leaf outside a layer scan, so it has "
                         f"no single canonical view to export")
    w, _ = weight_operand(site.weight, jax.tree_util.tree_leaves(qm.params))
    return site.view.to_canonical(w)


def quantize_weight(qm, site, spec: QuantizerSpec | None = None) -> QTensor:
    """The site's weight as jq stores it real-quantized (:func:`jq.qtensor.quantize` on the canonical view).

    Example:
      >>> quantize_weight(qm, qm.traced.sites[0]).data.dtype    # int8 for INT8_DEFAULT_CFG
    """
    name = site.weight_quantizer
    spec = spec if spec is not None else spec_stages(qm.spec(name))[0]
    amax = qm.qstate.get(name, {}).get("amax")
    return qtensor_quantize(canonical_weight(qm, site), spec, amax, batch=site.view.batch)


@dataclasses.dataclass(frozen=True)
class LayerScales:
    """The deployment scales of one quantized site (the fields of ModelOpt's checkpoint layout).

    Attributes:
      site: the site name (``block0_mlp_up``, ``Dense_0`` ...).
      weight_format, input_format: ``spec.describe()`` of the weight / input quantizer, or None when off.
      weight_scale: per-tensor, per-channel (``[out]``) or per-block (canonical ``[out, in/b]``) float32
        scales; for NVFP4 the E4M3 block scales (``float8_e4m3fn``).
      weight_scale_2: NVFP4's global weight scale ``amax / 2688`` (None otherwise).
      input_scale: the activation scale (None when the input quantizer is off or dynamic).
      pre_quant_scale: SmoothQuant/AWQ per-channel input multiplier (None when absent).
    """

    site: str
    weight_format: str | None
    input_format: str | None
    weight_scale: np.ndarray | None
    weight_scale_2: np.ndarray | None
    input_scale: np.ndarray | None
    pre_quant_scale: np.ndarray | None


def _weight_scales(qm, site, spec):
    amax = qm.qstate.get(site.weight_quantizer, {}).get("amax")
    return spec.format.weight_scales(quantize_weight(qm, site, spec), spec, amax)


def layer_scales(qm) -> dict[str, LayerScales]:
    """Per-site deployment scales of a calibrated model, as a deployment framework loads them.

    Sites whose quantizers are all off are omitted. Only the first stage of a sequential quantizer is
    reported.

    Example:
      >>> scales = layer_scales(qm)
      >>> scales["fc1"].input_scale  # amax / 127 for INT8
    """
    out: dict[str, LayerScales] = {}
    for site in qm.traced.sites:
        wq = site.weight_quantizer
        iq = f"{site.name}.input_quantizer" if "input_quantizer" in site.roles.values() else None
        wspec = spec_stages(qm.spec(wq))[:1] if wq else ()
        ispec = spec_stages(qm.spec(iq))[:1] if iq else ()
        if not wspec and not ispec:
            continue
        ws = ws2 = ins = pqs = None
        if wspec:
            ws, ws2 = _weight_scales(qm, site, wspec[0])
        if ispec:
            amax = qm.qstate.get(iq, {}).get("amax")
            if amax is not None:
                ins = export_scale(ispec[0], amax)
            p = qm.qstate.get(iq, {}).get("pre_quant_scale")
            pqs = None if p is None else np.asarray(p, np.float32)
        out[site.name] = LayerScales(site.name, wspec[0].describe() if wspec else None,
                                     ispec[0].describe() if ispec else None, ws, ws2, ins, pqs)
    return out
