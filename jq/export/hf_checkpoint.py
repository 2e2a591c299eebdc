"""Hugging Face checkpoints in ModelOpt's unified layout, so GPU serving stacks can load JAX-quantized models.

:func:`to_hf_checkpoint` writes ``model.safetensors`` and ``hf_quant_config.json``. Each quantized linear
site ``name`` (canonical ``[out, in]`` weight, as a PyTorch ``Linear``) gets:

=============  =====================================  ===================================  ========================
quant_algo     ``name.weight``                        ``name.weight_scale``                others
=============  =====================================  ===================================  ========================
FP8            float8_e4m3fn ``[out, in]``            fp32 scalar ``1/s`` (= amax/448)     ``input_scale``
W4A16_AWQ      uint8 ``[out/2, in]``: INT4 codes of   fp32 ``[out, in/g]`` amax_b / 7      ``pre_quant_scale``
               rows ``2r`` (low nibble), ``2r+1``                                          ``[in]`` (ones when jq
               (high nibble)                                                                has none)
W8A8_SQ_...    int8 ``[out, in]``                     fp32 ``[out]`` amax / 127            ``input_scale``
W8A16          int8 ``[out, in]``                     fp32 ``[out]``
NVFP4          uint8 ``[out, in/2]``: E2M1 codes,     float8_e4m3fn ``[out, in/16]``       ``weight_scale_2`` fp32
               element ``2i`` in the low nibble                                            ``amax / 2688``,
                                                                                           ``input_scale`` (gs)
W4A16_NVFP4    as NVFP4                               as NVFP4                             ``weight_scale_2``
NVFP4_SVD      as NVFP4: the residual ``W_s - L R``   as NVFP4                             as NVFP4, ``pre_quant_scale``,
                                                                                           ``svdquant_lora_a`` ``[r, in]``,
                                                                                           ``svdquant_lora_b`` ``[out, r]``
=============  =====================================  ===================================  ========================

Dequantization is ``weight * weight_scale`` (per block / channel), for NVFP4
``e2m1(weight) * (weight_scale * weight_scale_2)``. The quantized values come from :func:`jq.qtensor.quantize`, so
FP8 and NVFP4 weights dequantize to jq's fake-quantized weights bit for bit; INT scales are ModelOpt's
``amax / maxb`` (jq divides by ``maxb / amax``: one float32 ulp apart). Other params are written under their key
paths (``block0.ln1.scale``); the weights of unquantized linear sites as ``name.weight`` ``[out, in]`` too. A
site with a ``pre_quant_scale`` stores its smoothed weight ``W / pre_quant_scale`` (what it quantizes; the serving
stack multiplies the input by ``pre_quant_scale``). SVDQuant sites (:mod:`jq.calib.svdquant`) exist in ModelOpt's
layout only as ``NVFP4_SVD`` (``y = NVFP4_GEMM(x_s, residual) + x_s @ lora_aᵀ @ lora_bᵀ``, ``lora_rank`` in
``hf_quant_config.json``); other weight formats with a low-rank branch raise.

``hf_quant_config.json`` follows ModelOpt: ``{"producer": ..., "quantization": {"quant_algo", "kv_cache_quant_algo",
"group_size", "has_zero_point", "pre_quant_scale", "exclude_modules"}}``; several formats give
``"quant_algo": "MIXED_PRECISION"`` with ``"quantized_layers"``. jq's ``INT4_BLOCKWISE_WEIGHT_ONLY_CFG`` and
``INT4_AWQ_CFG`` both store as ModelOpt's ``W4A16_AWQ`` (ModelOpt's name for INT4 blocked weights, AWQ or not).

Fused siblings (q/k/v, gate/up: :func:`jq.trace.sibling_groups`) must share ``input_scale``, NVFP4's
``weight_scale_2`` and AWQ's ``pre_quant_scale``. jq's calibration shares input amaxes; calibrate with
``share_sibling_weight_amax=True`` for the weights. Otherwise :func:`to_hf_checkpoint` raises, or with
``unify_siblings=True`` takes the group's max (the checkpoint then differs slightly from ``qm``).

Example:
  >>> qm = jq.calibrate(qm, batches, share_sibling_weight_amax=True)
  >>> jq.export.to_hf_checkpoint(qm, "ckpt")
  >>> ck = jq.export.read_hf_checkpoint("ckpt")
  >>> w = ck.dequantize("block0.q_proj")       # [out, in] float32
"""

from __future__ import annotations

import dataclasses
import json
import os
import struct
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

import jq
from jq import formats
from jq.calib.svdquant import LORA_A, LORA_B
from jq.export.formats import spec_stages
from jq.formats.int import pack_rows_int4, unpack_rows_int4
from jq.export.scales import canonical_weight, export_scale
from jq.qtensor import quantize as qtensor_quantize
from jq.trace.sites import ParamOrigin, keypath_parts
from jq.trace.symbols import sibling_groups

__all__ = ["to_hf_checkpoint", "read_hf_checkpoint", "HFCheckpoint", "read_safetensors", "SUPPORTED_ALGOS"]

SUPPORTED_ALGOS = tuple(a for f in formats.FORMATS for a in f.hf_algorithms)
SAFETENSORS_FILE, CONFIG_FILE = "model.safetensors", "hf_quant_config.json"
SCALE_TENSORS = ("weight_scale", "weight_scale_inv")  # a quantized layer has one (block FP8: DeepSeek's name)
# ModelOpt's quant_algo of a layer with an SVDQuant low-rank branch, by the quant_algo of its weight format
SVD_ALGOS = {"NVFP4": "NVFP4_SVD"}


def _algo(site_name: str, wspec, ispec, low_rank: bool = False) -> tuple[str, dict]:
    """ModelOpt's ``quant_algo`` (and layer fields) for a site's weight / input specs (the weight's format
    decides; an input quantized without a weight quantizer has no checkpoint form); ``low_rank``: SVDQuant."""
    found = None if wspec is None else wspec.format.hf_algorithm(wspec, ispec)
    if found is None:
        raise ValueError(f"site {site_name!r}: weight {wspec.describe() if wspec else 'off'} with input "
                         f"{ispec.describe() if ispec else 'off'} has no ModelOpt checkpoint format; supported: "
                         f"{', '.join(SUPPORTED_ALGOS)} (FP8 per-tensor W/A, INT4 blocks weight-only, INT8 "
                         f"per-channel weights with per-tensor or no input, NVFP4 with or without NVFP4 inputs, "
                         f"FP8 square [b, b] weight tiles with dynamic per-token input groups of b)")
    if low_rank:
        if found[0] not in SVD_ALGOS:
            raise ValueError(f"site {site_name!r}: an SVDQuant low-rank branch on {found[0]} (weight "
                             f"{wspec.describe()}, input {ispec.describe() if ispec else 'off'}) has no ModelOpt "
                             f"checkpoint format; ModelOpt stores SVDQuant only as "
                             f"{', '.join(f'{v} ({k} weights and inputs)' for k, v in SVD_ALGOS.items())}. "
                             f"Export it to ONNX instead, or calibrate without svdquant")
        found = SVD_ALGOS[found[0]], {**found[1], "has_zero_point": False, "pre_quant_scale": True}
    return found


def _param_name(path) -> str:
    parts = keypath_parts(path)
    if len(parts) > 1 and parts[0] == "params":
        parts = parts[1:]
    while len(parts) > 1 and parts[-1] in ("value", "raw_value"):
        parts = parts[:-1]
    return ".".join(parts)


_pack_rows_int4, _unpack_rows_int4 = pack_rows_int4, unpack_rows_int4  # names the tests know
# one compiled program per (shape, spec): eager quantization compiles every small op (~10 s per NVFP4 layer on CPU)
_quantize_jit = jax.jit(qtensor_quantize, static_argnums=(1,))


@dataclasses.dataclass
class _Layer:
    site: object
    algo: str
    fields: dict
    wspec: object
    ispec: object
    wamax: np.ndarray | None
    iamax: np.ndarray | None
    pqs: np.ndarray | None
    lora: tuple | None = None  # SVDQuant (svdquant_lora_a [r, in], svdquant_lora_b [out, r])


def _layers(qm) -> tuple[list[_Layer], list[str]]:
    layers, excluded = [], []
    for site in qm.traced.sites:
        if site.kind == "bmm":
            continue
        wq = site.weight_quantizer
        iq = f"{site.name}.input_quantizer"
        wst, ist = spec_stages(qm.spec(wq)) if wq else (), spec_stages(qm.spec(iq))
        if not wst and not ist:
            excluded.append(site.name)
            continue
        if len(wst) > 1 or len(ist) > 1:
            raise ValueError(f"site {site.name!r}: sequential quantizers have no ModelOpt checkpoint format here")
        if site.kind != "linear" or len(site.view.shape) != 2 or site.view.batch:
            raise ValueError(f"site {site.name!r} ({site.kind}, canonical weight {site.view.shape}): the checkpoint "
                             f"layout covers 2-D linear weights")
        wspec, ispec = (wst[0] if wst else None), (ist[0] if ist else None)
        for spec, shape, what in ((wspec, site.view.shape, "weight"), (ispec, site.shapes[0], "input")):
            if spec is None or spec.format.hf_padded_blocks:
                continue
            for axis, n, block in spec.format.padding(spec, shape):
                raise ValueError(  # ModelOpt refuses these too ("not divisible for block size")
                    f"site {site.name!r}: axis {axis} of its {what} {tuple(shape)} has {n} elements, not a multiple "
                    f"of the {spec.describe()} block size {block}; its checkpoint layout (and the serving stacks "
                    f"reading it) needs whole blocks, jq would zero-pad the last one. Exclude the layer "
                    f"(quant_cfg[{site.name + '.*'!r}] = {{'enable': False}}) or give it a multiple of {block}.")
        st_w, st_i = qm.qstate.get(wq, {}) if wq else {}, qm.qstate.get(iq, {})
        lora = (np.asarray(st_w[LORA_A], np.float32), np.asarray(st_w[LORA_B], np.float32)) if LORA_A in st_w else None
        algo, fields = _algo(site.name, wspec, ispec, low_rank=lora is not None)
        iamax = st_i.get("amax")
        if ispec is not None and ispec.format.needs_amax(ispec) and iamax is None:  # per-token inputs have none
            raise ValueError(f"quantizer {iq!r} is not calibrated")
        pqs = st_i.get("pre_quant_scale")
        layers.append(_Layer(site, algo, fields, wspec, ispec,
                             None if st_w.get("amax") is None else np.asarray(st_w["amax"], np.float32),
                             None if iamax is None else np.asarray(iamax, np.float32),
                             None if pqs is None else np.asarray(pqs, np.float32), lora))
    return layers, excluded


_LAYER_FIELD = {"input_scale": "iamax", "weight_scale_2": "wamax", "pre_quant_scale": "pqs"}  # tensor -> _Layer


def _check_siblings(qm, layers: list[_Layer], unify: bool) -> None:
    by_name = {lay.site.name: lay for lay in layers}
    for group in sibling_groups(qm.traced):
        members = [by_name[n] for n in group if n in by_name]
        if len(members) < 2:
            continue
        shared = ["input_scale"]
        if len({m.algo for m in members}) == 1 and members[0].wspec is not None:
            shared += list(members[0].wspec.format.hf_sibling_tensors(members[0].algo))
            if members[0].lora is not None:
                shared.append("pre_quant_scale")  # one smoothed input for the fused GEMM and its low-rank branch
        for label in shared:
            attr = _LAYER_FIELD[label]
            vals = [getattr(m, attr) for m in members]
            if all(v is None for v in vals):
                continue
            if any(v is None for v in vals) or any(v.shape != vals[0].shape or not np.array_equal(v, vals[0])
                                                    for v in vals):
                names = [m.site.name for m in members]
                if not unify:
                    raise ValueError(f"fused siblings {names} have different {label}; serving stacks fuse them into "
                                     f"one GEMM. Calibrate with jq.calibrate(..., share_sibling_weight_amax=True) or "
                                     f"pass unify_siblings=True (uses the group's max)")
                if any(v is None or v.shape != vals[0].shape for v in vals):
                    raise ValueError(f"fused siblings {names}: {label} cannot be unified (shapes differ)")
                shared = np.maximum.reduce(vals)
                for m in members:
                    setattr(m, attr, shared)
                warnings.warn(f"jq.export.to_hf_checkpoint: unified {label} of siblings {names} (group max); the "
                              f"checkpoint no longer equals the model exactly", stacklevel=3)


def _layer_tensors(qm, lay: _Layer) -> dict[str, np.ndarray]:
    name, spec = lay.site.name, lay.wspec
    w = canonical_weight(qm, lay.site)
    out: dict[str, np.ndarray] = {}
    if spec is not None:
        if lay.pqs is not None:  # the site quantizes the smoothed weight W * (1 / pre_quant_scale), as it computes it
            w = (w * (1.0 / jnp.asarray(lay.pqs, jnp.float32))).astype(w.dtype)
        qt = _quantize_jit(w, spec, None if lay.wamax is None else jnp.asarray(lay.wamax))
        out.update(spec.format.hf_tensors(qt, spec, lay.wamax, lay.algo))
        if lay.fields.get("pre_quant_scale"):  # the format's layout always carries one (ones when jq has none)
            out["pre_quant_scale"] = lay.pqs if lay.pqs is not None else np.ones((w.shape[1],), np.float32)
        if lay.lora is not None:
            out[LORA_A], out[LORA_B] = lay.lora
    else:
        out["weight"] = np.asarray(w)
    if lay.ispec is not None and lay.ispec.format.needs_amax(lay.ispec):
        out["input_scale"] = export_scale(lay.ispec, lay.iamax).reshape(())
    if lay.ispec is not None and lay.pqs is not None and "pre_quant_scale" not in out:
        out["pre_quant_scale"] = lay.pqs
    return {f"{name}.{k}": v for k, v in out.items()}


def _quant_config(layers: list[_Layer], excluded: list[str]) -> dict:
    per_layer = {lay.site.name: {"quant_algo": lay.algo, **lay.fields} for lay in layers}
    distinct = {json.dumps(v, sort_keys=True) for v in per_layer.values()}
    quant: dict = {"quant_algo": None, "kv_cache_quant_algo": None}
    if len(distinct) == 1:
        quant.update(next(iter(per_layer.values())))
    elif distinct:
        quant["quant_algo"] = "MIXED_PRECISION"
        quant["quantized_layers"] = per_layer
    ranks = {lay.lora[0].shape[0] for lay in layers if lay.lora is not None}
    if len(ranks) > 1:
        raise ValueError(f"SVDQuant layers have different ranks {sorted(ranks)}; ModelOpt's checkpoint records one "
                         f"lora_rank")
    if ranks:
        quant["lora_rank"] = ranks.pop()
    quant["exclude_modules"] = sorted(excluded)
    return {"producer": {"name": "jq", "version": jq.__version__}, "quantization": quant}


def to_hf_checkpoint(qm, export_dir: str | os.PathLike, *, unify_siblings: bool = False) -> Path:
    """Write ``qm`` as a ModelOpt-style Hugging Face checkpoint (``model.safetensors`` + ``hf_quant_config.json``).

    Args:
      qm: a calibrated :class:`~jq.QuantizedModel` with FP8, INT4-blocked (W4A16_AWQ), INT8 or NVFP4 linear sites.
      export_dir: the directory (created if missing).
      unify_siblings: give fused siblings the group's max ``input_scale``/``weight_scale_2``/``pre_quant_scale``
        instead of raising when they differ.

    Returns:
      The directory.

    Example:
      >>> qm = jq.quantize(params, model.apply, jq.NVFP4_DEFAULT_CFG, calib_data=batches)
      >>> jq.export.to_hf_checkpoint(jq.calibrate(qm, batches, share_sibling_weight_amax=True), "nvfp4_ckpt")
    """
    import safetensors.flax

    export_dir = Path(export_dir)
    export_dir.mkdir(parents=True, exist_ok=True)
    layers, excluded = _layers(qm)
    _check_siblings(qm, layers, unify_siblings)  # unified amaxes are used below to re-derive the tensors
    tensors: dict[str, np.ndarray] = {}
    consumed: set[int] = set()
    sites = {s.name: s for s in qm.traced.sites}
    for lay in layers:
        tensors.update(_layer_tensors(qm, lay))
        consumed.add(lay.site.weight.leaf)
    for name in excluded:
        site = sites[name]
        if site.kind == "linear" and isinstance(site.weight, ParamOrigin) and len(site.view.shape) == 2:
            try:
                tensors[f"{name}.weight"] = np.asarray(canonical_weight(qm, site))
                consumed.add(site.weight.leaf)
            except ValueError:
                pass
    for i, (path, leaf) in enumerate(jax.tree_util.tree_leaves_with_path(qm.params)):
        if i not in consumed:
            key = _param_name(path)
            if key in tensors:
                key = key + ".param"
            tensors[key] = np.asarray(leaf)
    safetensors.flax.save_file({k: jnp.asarray(v) for k, v in tensors.items()}, str(export_dir / SAFETENSORS_FILE),
                               metadata={"format": "pt", "producer": "jq"})
    (export_dir / CONFIG_FILE).write_text(json.dumps(_quant_config(layers, excluded), indent=4))
    return export_dir


# ----------------------------------------------------------------------------------------------------
# reading back

_ST_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
              "F8_E4M3": ml_dtypes.float8_e4m3fn, "F8_E5M2": ml_dtypes.float8_e5m2, "I64": np.int64,
              "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict]:
    """Tensors and metadata of a ``.safetensors`` file as numpy arrays (FP8 as ``ml_dtypes`` arrays).

    A small reader of the format (8-byte header length, JSON header, raw little-endian data) because the
    ``safetensors`` numpy loader has no FP8 dtypes.
    """
    data = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    meta = header.pop("__metadata__", {}) or {}
    base = 8 + n
    out = {}
    for name, info in header.items():
        start, end = info["data_offsets"]
        dtype = np.dtype(_ST_DTYPES[info["dtype"]])
        out[name] = np.frombuffer(data[base + start: base + end], dtype=dtype).reshape(info["shape"]).copy()
    return out, meta


@dataclasses.dataclass
class HFCheckpoint:
    """A checkpoint read back by :func:`read_hf_checkpoint`: its tensors and ``hf_quant_config.json``."""

    tensors: dict
    quant_config: dict
    metadata: dict

    def layer_config(self, name: str) -> dict | None:
        """The layer's ``{"quant_algo": ...}`` (None when it is excluded or not quantized)."""
        q = self.quant_config["quantization"]
        if name in q.get("exclude_modules", []) or not any(f"{name}.{s}" in self.tensors for s in SCALE_TENSORS):
            return None
        if q.get("quant_algo") == "MIXED_PRECISION":
            return q["quantized_layers"].get(name)
        return {k: v for k, v in q.items() if k not in ("exclude_modules", "kv_cache_quant_algo")}

    def dequantize(self, name: str) -> np.ndarray:
        """The float32 ``[out, in]`` weight of layer ``name``, dequantized as a serving stack does (with a
        ``pre_quant_scale``: the smoothed weight; ``NVFP4_SVD``: the residual plus ``lora_b @ lora_a``)."""
        t = self.tensors
        cfg = self.layer_config(name)
        w = t[f"{name}.weight"]
        if cfg is None:
            return w.astype(np.float32)
        prefix = f"{name}."
        layer = {k[len(prefix):]: v for k, v in t.items() if k.startswith(prefix) and "." not in k[len(prefix):]}
        algo = {v: k for k, v in SVD_ALGOS.items()}.get(cfg["quant_algo"], cfg["quant_algo"])
        w = formats.for_hf_algorithm(algo).hf_dequantize(layer, cfg)
        if LORA_A in layer:  # SVDQuant: residual + L R (the smoothed weight the input times pre_quant_scale meets)
            w = w + layer[LORA_B].astype(np.float64) @ layer[LORA_A].astype(np.float64)
        return np.asarray(w, np.float32)


def read_hf_checkpoint(export_dir: str | os.PathLike) -> HFCheckpoint:
    """Read a directory written by :func:`to_hf_checkpoint` (or ModelOpt's unified exporter, single file).

    Example:
      >>> ck = read_hf_checkpoint("ckpt")
      >>> ck.quant_config["quantization"]["quant_algo"], ck.dequantize("block0.fc").shape
      ('FP8', (64, 32))
    """
    export_dir = Path(export_dir)
    tensors, meta = read_safetensors(export_dir / SAFETENSORS_FILE)
    config = json.loads((export_dir / CONFIG_FILE).read_text())
    return HFCheckpoint(tensors, config, meta)
