"""Integer quantization (INT2..INT8, signed, unsigned or narrow), per tensor, per axis or per block.

``maxb = 2^(b-1+unsigned) - 1``, ``s = maxb / amax``, ``q = clamp(round_half_even(x s), lo, maxb)`` with
``lo = 0`` (unsigned), ``-maxb`` (narrow) or ``-maxb-1``; ``y = q / s``; ``amax <= 2^-24`` gives 0
(:mod:`jq.numerics.int`). Storage: INT8 codes as int8/uint8; 4 bits and fewer as two's-complement nibbles,
two per byte along the last axis (element ``2i`` in the low nibble, ONNX's INT4 layout).

Checkpoints (ModelOpt's names): ``W4A16_AWQ`` (INT4 blocks, weight-only; rows ``2r``/``2r+1`` share a byte),
``W8A8_SQ_PER_CHANNEL`` (INT8 per-channel weights, INT8 per-tensor inputs) and ``W8A16``.
"""

from __future__ import annotations

import jax.numpy as jnp
import ml_dtypes
import numpy as np

from jq import numerics as nx
from jq.formats.base import UnsupportedExport
from jq.formats.linear import W4A16Linear
from jq.formats.scaled import ScaledFormat

__all__ = ["IntFormat", "INT", "pack_rows_int4", "unpack_rows_int4"]


def pack_rows_int4(q: np.ndarray) -> np.ndarray:
    """ModelOpt's W4A16_AWQ packing: rows ``2r`` and ``2r+1`` share a byte (low and high nibble).

    Example:
      >>> pack_rows_int4(np.array([[1], [-1]], np.int8))
      array([[241]], dtype=uint8)
    """
    if q.shape[0] % 2:
        raise ValueError(f"W4A16_AWQ packing needs an even number of output rows, got {q.shape[0]}")
    c = (q.astype(np.int16) & 0xF).astype(np.uint8)
    return c[0::2] | (c[1::2] << 4)


def unpack_rows_int4(p: np.ndarray) -> np.ndarray:
    """Inverse of :func:`pack_rows_int4`: signed int8 values, twice as many rows."""
    lo, hi = (p & 0xF).astype(np.int16), (p >> 4).astype(np.int16)
    q = np.empty((2 * p.shape[0],) + p.shape[1:], np.int16)
    q[0::2], q[1::2] = lo, hi
    return np.where(q >= 8, q - 16, q).astype(np.int8)


def _is_int4_groups(spec) -> bool:
    return (spec.num_bits == 4 and not spec.unsigned and spec.block_sizes is not None
            and not spec.is_dynamic and set(spec.block_sizes.axes) == {-1})


class IntFormat(ScaledFormat):
    """Integer formats; one instance serves every bit width and granularity."""

    name = "int"
    hf_algorithms = ("W4A16_AWQ", "W8A8_SQ_PER_CHANNEL", "W8A16")
    hf_padded_blocks = True  # W4A16_AWQ: weight_scale [out, ceil(in / group)], the reader indexes it by k // group

    def claims(self, spec) -> bool:
        bs = spec.block_sizes
        return isinstance(spec.num_bits, int) and (bs is None or bs.scale_bits is None)

    def validate(self, spec) -> None:
        if spec.num_bits > 8 and spec.enable:
            raise ValueError(f"num_bits={spec.num_bits}: integer quantization supports 1..8 bits in jq")
        bs = spec.block_sizes
        if bs is not None and self.is_dynamic(spec) and len(bs.axes) > 1 \
                and any(v is not None for v in bs.axes.values()):
            raise ValueError("dynamic block quantization without scale_bits supports the last axis only")

    # -- element arithmetic -----------------------------------------------------------------------------
    def element_fake_quant(self, x, amax, spec):
        return nx.int_fake_quant(x, amax, spec.num_bits, spec.unsigned, spec.narrow_range)

    def element_quantize(self, x, amax, spec):
        return nx.int_quantize(x, amax, spec.num_bits, spec.unsigned, spec.narrow_range)

    def element_dequantize(self, q, scale):
        return nx.int_dequantize(q, scale)

    def encode(self, q, spec):
        if spec.num_bits <= 4:
            codes = q.astype(jnp.int32) & 0xF
            if codes.shape[-1] % 2:
                codes = jnp.pad(codes, [(0, 0)] * (codes.ndim - 1) + [(0, 1)])
            return nx.pack_nibbles(codes.astype(jnp.uint8))
        return q.astype(jnp.uint8 if spec.unsigned else jnp.int8)

    def decode(self, data, spec, n):
        if spec.num_bits <= 4:
            codes = nx.unpack_nibbles(data)[..., :n].astype(jnp.int32)
            if not spec.unsigned:
                codes = jnp.where(codes >= 8, codes - 16, codes)
            return codes.astype(jnp.float32)
        return data.astype(jnp.float32)

    # -- description -----------------------------------------------------------------------------------
    def element_name(self, spec) -> str:
        return f"{'u' if spec.unsigned else ''}int{spec.num_bits}"

    def bits_per_element(self, spec) -> float:
        # per-block scales are stored in 16 bits (ModelOpt's INT4 AWQ layout): INT4 in blocks of 128 is 4.125
        if spec.block_sizes is None or not spec.block_sizes.axes or None in spec.block_sizes.axes.values():
            return float(spec.num_bits)  # per tensor/channel, or a whole-axis (per-token) block: scales negligible
        return spec.num_bits + 16.0 / float(np.prod(list(spec.block_sizes.axes.values())))

    # -- export ------------------------------------------------------------------------------------------
    def export_scale(self, spec, amax):
        amax = jnp.asarray(amax, jnp.float32)
        _, hi = nx.int_bounds(spec.num_bits, spec.unsigned)
        return np.asarray(jnp.where(amax <= nx.TINY_AMAX, 1.0, amax / jnp.float32(hi)), np.float32)

    def onnx_form(self, spec, *, is_weight):
        element = {(8, False): "INT8", (8, True): "UINT8", (4, False): "INT4", (4, True): "UINT4"}.get(
            (spec.num_bits, spec.unsigned))
        if element is None:
            raise UnsupportedExport(f"{spec.num_bits}-bit integers have no ONNX type (4 and 8 do)")
        if spec.narrow_range and not is_weight:
            # a weight never exceeds its amax, so ONNX's [-128, 127] clamp equals jq's [-127, 127] there
            raise UnsupportedExport("narrow_range activations clamp to -127 where ONNX clamps to -128")
        qmax = 2.0 ** (spec.num_bits - 1 + int(spec.unsigned)) - 1.0
        return self.onnx_granularity(spec, 21 if spec.num_bits == 4 else 13, element, qmax)

    def onnx_values(self, qt, shape):
        spec = qt.spec
        data = np.asarray(qt.data)
        if spec.num_bits <= 4:
            codes = np.asarray(nx.unpack_nibbles(jnp.asarray(data)))[tuple(slice(0, n) for n in shape)]
            if spec.unsigned:
                return codes.astype(ml_dtypes.uint4)
            return np.where(codes >= 8, codes.astype(np.int16) - 16, codes).astype(np.int8).astype(ml_dtypes.int4)
        return data[tuple(slice(0, n) for n in shape)].astype(np.uint8 if spec.unsigned else np.int8)

    # -- checkpoints -------------------------------------------------------------------------------------
    def hf_algorithm(self, wspec, ispec):
        if _is_int4_groups(wspec) and ispec is None:
            return "W4A16_AWQ", {"group_size": int(wspec.block_sizes.axes[-1]), "has_zero_point": False,
                                 "pre_quant_scale": True}
        if wspec.num_bits == 8 and not wspec.unsigned and wspec.axis in (0, (0,)) and wspec.block_sizes is None:
            if ispec is None:
                return "W8A16", {}
            if ispec.format is self and ispec.num_bits == 8 and ispec.axis is None and not ispec.is_dynamic:
                return "W8A8_SQ_PER_CHANNEL", {}
        return None

    def hf_tensors(self, qt, wspec, amax, algo):
        rows, cols = qt.shape
        if algo == "W4A16_AWQ":
            codes = np.asarray(nx.unpack_nibbles(qt.data))[:rows, :cols].astype(np.int16)
            return {"weight": pack_rows_int4(np.where(codes >= 8, codes - 16, codes)),
                    "weight_scale": self.export_scale(wspec, amax).reshape(rows, -1)}
        return {"weight": np.asarray(qt.data).astype(np.int8),
                "weight_scale": self.export_scale(wspec, amax).reshape(-1)}

    def hf_dequantize(self, tensors, layer_config):
        w, ws = tensors["weight"], tensors["weight_scale"].astype(np.float32)
        if layer_config["quant_algo"] == "W4A16_AWQ":
            q = unpack_rows_int4(w).astype(np.float32)
            g = int(layer_config["group_size"])
            return q * np.repeat(ws, g, axis=1)[:, : q.shape[1]]
        return w.astype(np.float32) * ws[:, None]

    def hf_sibling_tensors(self, algo):
        return ("pre_quant_scale",) if algo == "W4A16_AWQ" else ()

    # -- kernels ----------------------------------------------------------------------------------------
    def linear_kernel(self, wspec, ispec):
        if ispec is None and _is_int4_groups(wspec) and wspec.block_sizes.axes == {-1: 128} and not wspec.rotate:
            return W4A16Linear("int4")
        return None


INT = IntFormat()
