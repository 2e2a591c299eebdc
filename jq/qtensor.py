"""Real-quantized storage: packed values plus scales, and dequantization.

:func:`quantize` turns a tensor into a :class:`QTensor` holding what a deployment stores:

=========  ==========================================================  =====================================
format     ``data``                                                    ``scale`` / ``global_scale``
=========  ==========================================================  =====================================
int (<=4)  two's-complement nibbles, two per byte (element 2i low)     ``maxb / amax`` (float32, per amax)
int (8)    int8 codes                                                  ``maxb / amax``
fp8        ``float8_e4m3fn`` / ``float8_e5m2`` values                  ``max * (1 / amax)``
nvfp4      E2M1 codes, two per byte (element 2i low)                   E4M3 block scales / fp32 global scale
mxfp8      ``float8_e4m3fn`` values                                    E8M0 codes (uint8, biased by 127)
mxfp4      E2M1 codes, two per byte                                    E8M0 codes
mxint8     int8 codes                                                  E8M0 codes
=========  ==========================================================  =====================================

Block formats keep ``data`` in the zero-padded layout (``(..., ceil(n / b) * b)``) and ``scale`` with one
entry per block. ``dequantize(quantize(x))`` equals :func:`jq.quantizer.fake_quant_reference` bit for bit.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from jq import numerics as nx
from jq.config import QuantizerSpec
from jq.quantizer import block_layout, broadcastable_amax, compute_amax

__all__ = ["QTensor", "quantize", "dequantize"]


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass
class QTensor:
    """Quantized storage of one tensor (a pytree: ``data``, ``scale`` and ``global_scale`` are children).

    Attributes:
      data: packed or narrow-typed values.
      scale: per-tensor/axis/block scale (see the module table).
      global_scale: NVFP4's fp32 second-level scale (``amax / 2688``), else None.
      spec: the quantizer spec it was made with.
      shape: the original shape; dtype: the original dtype name.
      batch: leading batch axes of the original (kept separate in every scale).
    """

    data: jax.Array
    scale: jax.Array
    global_scale: jax.Array | None
    spec: QuantizerSpec
    shape: tuple
    dtype: str
    batch: int = 0

    def tree_flatten(self):
        return (self.data, self.scale, self.global_scale), (self.spec, self.shape, self.dtype, self.batch)

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(*children, *aux)

    @property
    def format(self) -> str:
        return self.spec.kind

    @property
    def nbytes(self) -> int:
        """Bytes of storage (values + scales)."""
        return sum(int(np.prod(a.shape)) * jnp.dtype(a.dtype).itemsize
                   for a in (self.data, self.scale, self.global_scale) if a is not None)

    def dequantize(self, dtype=None) -> jax.Array:
        return dequantize(self, dtype)


def _pack_int4(q):
    """Two's-complement 4-bit codes, two per byte, element 2i in the low nibble (ONNX INT4 layout)."""
    codes = q.astype(jnp.int32) & 0xF
    if codes.shape[-1] % 2:
        codes = jnp.pad(codes, [(0, 0)] * (codes.ndim - 1) + [(0, 1)])
    return nx.pack_nibbles(codes.astype(jnp.uint8))


def _unpack_int4(packed, n):
    codes = nx.unpack_nibbles(packed)[..., :n].astype(jnp.int32)
    return jnp.where(codes >= 8, codes - 16, codes).astype(jnp.float32)


def _e4m3(v):
    return v.astype(jnp.float8_e4m3fn)  # exact: v is on the E4M3 grid and within range


def quantize(x: jax.Array, spec: QuantizerSpec, amax: jax.Array | None = None, *, batch: int = 0) -> QTensor:
    """Quantize ``x`` (a canonical view for weights) to storage.

    Args:
      x: the tensor.
      spec: the quantizer spec (its ``kind`` picks the format).
      amax: calibrated statistic (see :func:`jq.quantizer.compute_amax`); computed from ``x`` when None.
      batch: leading batch axes.

    Example:
      >>> from jq.config import QuantizerSpec
      >>> qt = quantize(jnp.ones((2, 32)), QuantizerSpec(num_bits=(2, 1), block_sizes={-1: 16, "type": "dynamic",
      ...                                                                                  "scale_bits": (4, 3)}))
      >>> qt.data.shape, qt.data.dtype, qt.scale.shape
      ((2, 16), dtype('uint8'), (2, 2))
    """
    x = jnp.asarray(x)
    if spec.rotate:
        from jq.quantizer import hadamard_rotate
        x = hadamard_rotate(x)
    kind, shape, dtype = spec.kind, tuple(x.shape), str(x.dtype)
    if kind in ("mxfp8", "mxfp4", "mxint8"):
        q, k, layout = nx.mx_quantize(x, nx.MX_FORMATS[kind])
        q = q.reshape(layout.padded_shape)
        data = _e4m3(q) if kind == "mxfp8" else (
            nx.pack_nibbles(nx.e2m1_encode(q, q < 0)) if kind == "mxfp4" else q.astype(jnp.int8))
        scale = layout.squeeze_stats(k + nx.mx.E8M0_BIAS).astype(jnp.uint8)
        return QTensor(data, scale, None, spec, shape, dtype, batch)
    if amax is None:
        amax = compute_amax(x, spec, batch)
    if kind == "nvfp4":
        if batch:
            raise NotImplementedError("NVFP4 storage of batched tensors: quantize each entry separately")
        two_d = len(spec.block_sizes.sizes) == 2
        q, s, gs, layout = nx.nvfp4_quantize(x, amax, two_d=two_d)
        negative = layout.split(x) < 0  # ModelOpt's sign bit: x < 0 before rounding
        data = nx.pack_nibbles(nx.e2m1_encode(q, negative).reshape(layout.padded_shape))
        return QTensor(data, _e4m3(layout.squeeze_stats(s)), gs, spec, shape, dtype, batch)
    if spec.block_sizes is not None:
        layout = block_layout(spec, shape, batch)
        xb = layout.split(x)
        a = layout.block_amax(x) if amax is None else layout.expand_stats(amax)
    else:
        if amax is None:  # dynamic per-tensor / per-axis
            amax = compute_amax(x, spec.replace(type="static"), batch)
        layout, xb, a = None, x, broadcastable_amax(amax, x.ndim)
    if kind == "int":
        q, s = nx.int_quantize(xb, a, spec.num_bits, spec.unsigned, spec.narrow_range)
    else:
        q, s = nx.fp8_quantize(xb, a, spec.fp8_name)
    if layout is not None:
        q = q.reshape(layout.padded_shape)
        s = layout.squeeze_stats(jnp.broadcast_to(s, a.shape))
    if kind == "int":
        data = _pack_int4(q) if spec.num_bits <= 4 else q.astype(jnp.uint8 if spec.unsigned else jnp.int8)
    else:
        data = q.astype(jnp.float8_e4m3fn if spec.fp8_name == "e4m3" else jnp.float8_e5m2)
    return QTensor(data, s.astype(jnp.float32), None, spec, shape, dtype, batch)


def dequantize(qt: QTensor, dtype=None) -> jax.Array:
    """Float values of a :class:`QTensor` (in its original dtype unless ``dtype`` is given)."""
    spec, kind = qt.spec, qt.spec.kind
    dtype = jnp.dtype(dtype or qt.dtype)
    if kind in ("mxfp8", "mxfp4", "mxint8"):
        layout = nx.BlockLayout.create(qt.shape, {-1: nx.MX_BLOCK_SIZE})
        if kind == "mxfp4":
            q = nx.e2m1_decode(nx.unpack_nibbles(qt.data))
        else:
            q = qt.data.astype(jnp.float32)
        k = layout.expand_stats(qt.scale.astype(jnp.int32) - nx.mx.E8M0_BIAS)
        return nx.mx_dequantize(q.reshape(layout.blocked_shape), k, layout, dtype)
    if kind == "nvfp4":
        layout = nx.nvfp4_layout(qt.shape, len(spec.block_sizes.sizes) == 2)
        q = nx.e2m1_decode(nx.unpack_nibbles(qt.data)).reshape(layout.blocked_shape)
        s = layout.expand_stats(qt.scale.astype(jnp.float32))
        return nx.nvfp4_dequantize(q, s, qt.global_scale, layout, dtype)
    layout = block_layout(spec, qt.shape, qt.batch) if spec.block_sizes is not None else None
    n = layout.padded_shape[-1] if layout is not None else qt.shape[-1]
    if kind == "int":
        q = _unpack_int4(qt.data, n) if spec.num_bits <= 4 else qt.data.astype(jnp.float32)
    else:
        q = qt.data.astype(jnp.float32)
    if layout is not None:
        q, s = q.reshape(layout.blocked_shape), layout.expand_stats(qt.scale)
    else:
        s = qt.scale
    y = nx.int_dequantize(q, s) if kind == "int" else nx.fp8_dequantize(q, s)
    return (layout.merge(y) if layout is not None else y).astype(dtype)


def e4m3_bits(scale: jax.Array) -> np.ndarray:
    """uint8 bit patterns of E4M3 values (for checkpoints and parity with ModelOpt's byte layout)."""
    return np.asarray(scale).astype(ml_dtypes.float8_e4m3fn).view(np.uint8)
