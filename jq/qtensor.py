"""Real-quantized storage: packed values plus scales, and dequantization.

:func:`quantize` turns a tensor into a :class:`QTensor` holding what a deployment stores; the spec's format
(:mod:`jq.formats`) decides the encoding:

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
mxfp6      6-bit codes, one per byte                                   E8M0 codes
=========  ==========================================================  =====================================

Block formats keep ``data`` in the zero-padded layout (``(..., ceil(n / b) * b)``) and ``scale`` with one
entry per block. ``dequantize(quantize(x))`` equals :func:`jq.quantizer.fake_quant_reference` bit for bit.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from jq.quantizer import hadamard_rotate

if TYPE_CHECKING:
    from jq.config import QuantizerSpec

__all__ = ["QTensor", "quantize", "dequantize", "e4m3_bits"]


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
        """The format's name (``"int"``, ``"fp8"``, ``"nvfp4"`` ...)."""
        return self.spec.format.name

    @property
    def nbytes(self) -> int:
        """Bytes of storage (values + scales)."""
        return sum(int(np.prod(a.shape)) * jnp.dtype(a.dtype).itemsize
                   for a in (self.data, self.scale, self.global_scale) if a is not None)

    def dequantize(self, dtype=None) -> jax.Array:
        return dequantize(self, dtype)


def quantize(x: jax.Array, spec: QuantizerSpec, amax: jax.Array | None = None, *, batch: int = 0) -> QTensor:
    """Quantize ``x`` (a canonical view for weights) to storage.

    Args:
      x: the tensor.
      spec: the quantizer spec (its format picks the encoding).
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
        x = hadamard_rotate(x)
    fmt = spec.format
    if amax is None:
        amax = fmt.compute_amax(x, spec, batch)
    return fmt.quantize(x, spec, amax, batch=batch)


def dequantize(qt: QTensor, dtype=None) -> jax.Array:
    """Float values of a :class:`QTensor` (in its original dtype unless ``dtype`` is given)."""
    return qt.spec.format.dequantize(qt, jnp.dtype(dtype or qt.dtype))


def e4m3_bits(scale: jax.Array) -> np.ndarray:
    """uint8 bit patterns of E4M3 values (for checkpoints and parity with ModelOpt's byte layout)."""
    return np.asarray(scale).astype(ml_dtypes.float8_e4m3fn).view(np.uint8)
