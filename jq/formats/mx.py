"""OCP microscaling (MX) formats: 32-element blocks along the last axis with E8M0 (power-of-two) scales.

Per block ``k = clamp(ceil(log2(amax_b / dmax)), -127, 127)``, ``y = elem(x / 2^k) * 2^k`` (:mod:`jq.numerics.mx`);
scales are always dynamic, so MX quantizers need no calibration and pass every gradient. Storage: the element
codes and one biased E8M0 byte (``k + 127``) per block. :class:`MXFormat` is the family; each element type is
an instance (``MXFP8`` E4M3, ``MXFP4`` E2M1, ``MXINT8``; ``jq.formats.mxfp6`` adds E3M2 / E2M3). No ONNX
Q/DQ form (TensorRT's MX path needs Blackwell) and no checkpoint format in jq yet.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from jq import numerics as nx
from jq.formats.base import Format, KernelBinding, UnsupportedExport
from jq.formats.linear import kernels_enabled
from jq.qtensor import QTensor
from jq_kernels import mx as mx_kernels

__all__ = ["MXFormat", "MXFP8", "MXFP4", "MXINT8"]

KERNEL_DTYPES = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float32), jnp.dtype(jnp.float16))
MIN_KERNEL_ELEMENTS = 256  # below this a kernel launch is not worth it (XLA fuses the reference)


class MXFormat(Format):
    """One MX element type with E8M0 block scales.

    Args:
      element: the :class:`jq.numerics.MXFormat` (name, ``dmax``, rounding grid).
      num_bits: the spec's ``num_bits`` for this element (``(4, 3)``, ``(2, 1)``, ``8`` ...).
      bits: storage bits per element (8, 4, 6).
    """

    def __init__(self, element: nx.MXFormat, num_bits, bits: int):
        self.element = element
        self.num_bits = num_bits
        self.bits = bits
        self.name = element.name

    def claims(self, spec) -> bool:
        bs = spec.block_sizes
        return bs is not None and bs.scale_bits == (8, 0) and spec.num_bits == self.num_bits

    def validate(self, spec) -> None:
        if not self.is_dynamic(spec):
            raise ValueError("block_sizes with scale_bits (double quantization) must be 'type': 'dynamic'")
        if spec.block_sizes.axes != {-1: nx.MX_BLOCK_SIZE}:
            raise ValueError(f"MX formats use blocks of 32 along the last axis, got {spec.block_sizes.axes}")
        if spec.unsigned or spec.narrow_range:
            raise ValueError("unsigned and narrow_range are not MX options")

    # -- geometry: scales are always dynamic ----------------------------------------------------------------
    def needs_amax(self, spec) -> bool:
        return False

    def compute_amax(self, x, spec, batch=0):
        return None

    def blocks(self, spec, shape, batch=0):
        return nx.BlockLayout.create(tuple(shape), {-1: nx.MX_BLOCK_SIZE})

    def clip_mask(self, x, spec, amax, batch=0):
        return None

    # -- numerics ---------------------------------------------------------------------------------------
    def fake_quant(self, x, spec, amax, *, batch=0, random_bits=None):
        return nx.mx_fake_quant(x, self.element)

    def encode(self, q):
        """Storage of element values ``q`` (float32 on the grid)."""
        raise NotImplementedError

    def decode(self, data):
        """Element values (float32) from storage."""
        raise NotImplementedError

    def quantize(self, x, spec, amax, *, batch=0):
        q, k, layout = nx.mx_quantize(x, self.element)
        data = self.encode(q.reshape(layout.padded_shape))
        scale = layout.squeeze_stats(k + nx.mx.E8M0_BIAS).astype(jnp.uint8)
        return QTensor(data, scale, None, spec, tuple(x.shape), str(x.dtype), batch)

    def dequantize(self, qt, dtype):
        layout = nx.BlockLayout.create(qt.shape, {-1: nx.MX_BLOCK_SIZE})
        k = layout.expand_stats(qt.scale.astype(jnp.int32) - nx.mx.E8M0_BIAS)
        return nx.mx_dequantize(self.decode(qt.data).reshape(layout.blocked_shape), k, layout, dtype)

    # -- description ------------------------------------------------------------------------------------
    def describe(self, spec) -> str:
        return f"{self.name} b{nx.MX_BLOCK_SIZE}"

    def bits_per_element(self, spec) -> float:
        return self.bits + 8.0 / nx.MX_BLOCK_SIZE  # one E8M0 byte per 32 elements

    def onnx_form(self, spec, *, is_weight):
        raise UnsupportedExport("MX block scaling (E8M0 scales) has no TensorRT Q/DQ form in jq yet")

    # -- kernels ----------------------------------------------------------------------------------------
    has_kernel = True  # jq_kernels/mx.py quantizes this element type

    def kernel_bindings(self):
        if not self.has_kernel:
            return ()
        return (
            KernelBinding("fake_quant", "gpu", "pallas_triton", self._fake_quant_gpu, 10, self._serves_fake_quant,
                          f"fused {self.name} quantize-dequantize (jq_kernels/mx.py)"),
            KernelBinding("quantize", "gpu", "pallas_triton", self._quantize_gpu, 10, self._serves_quantize,
                          f"{self.name} quantize kernel (jq_kernels/mx.py)"),
            KernelBinding("dequantize", "gpu", "pallas_triton", self._dequantize_gpu, 10, self._serves_dequantize,
                          f"{self.name} dequantize kernel (jq_kernels/mx.py)"),
        )

    def _serves_quantize(self, spec=None, shape=(), dtype=None, **_):
        return kernels_enabled() and not spec.rotate and jnp.dtype(dtype) in KERNEL_DTYPES

    def _serves_fake_quant(self, spec=None, view=None, shape=(), dtype=None, **_):
        return (self._serves_quantize(spec=spec, dtype=dtype) and view is not None and not view.batch
                and len(shape) >= 1 and int(np.prod(shape)) >= MIN_KERNEL_ELEMENTS)

    def _fake_quant_gpu(self, x, *amax, spec, view):
        c = x if view.is_identity else view.to_canonical(x)
        y = mx_kernels.mx_fake_quant(c, self.name, interpret=False)
        return y if view.is_identity else view.from_canonical(y, x.shape)

    def _serves_dequantize(self, qt=None, **_):
        return kernels_enabled() and qt.batch == 0 and jnp.dtype(qt.dtype) in KERNEL_DTYPES

    def _dequantize_gpu(self, qt, dtype=None):
        return mx_kernels.mx_dequantize(qt.data, qt.scale, qt.shape, self.name, dtype=jnp.dtype(dtype or qt.dtype),
                                        interpret=False)

    def _quantize_gpu(self, x, spec, amax=None):
        data, scale = mx_kernels.mx_quantize(x, self.name, interpret=False)
        return QTensor(data, scale, None, spec, tuple(x.shape), str(x.dtype), 0)


class _MXFP8(MXFormat):
    def encode(self, q):
        return q.astype(jnp.float8_e4m3fn)  # exact: on the grid and within range

    def decode(self, data):
        return data.astype(jnp.float32)


class _MXFP4(MXFormat):
    def encode(self, q):
        return nx.pack_nibbles(nx.e2m1_encode(q, q < 0))

    def decode(self, data):
        return nx.e2m1_decode(nx.unpack_nibbles(data))


class _MXINT8(MXFormat):
    def encode(self, q):
        return q.astype(jnp.int8)

    def decode(self, data):
        return data.astype(jnp.float32)


MXFP8 = _MXFP8(nx.MXFP8, (4, 3), 8)
MXFP4 = _MXFP4(nx.MXFP4, (2, 1), 4)
MXINT8 = _MXINT8(nx.MXINT8, 8, 8)
