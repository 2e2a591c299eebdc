"""MXFP6: the OCP MX 6-bit float elements E3M2 and E2M3, with 32-element E8M0 blocks.

Element formats (OCP Microscaling Formats v1.0, section 5.3.2; no infinities or NaNs)::

    E3M2: bias 3, normal exponents -2..4, 2 mantissa bits, max 2^4 * 1.75  = 28,   min subnormal 2^-4
    E2M3: bias 1, normal exponents  0..2, 3 mantissa bits, max 2^2 * 1.875 = 7.5,  min subnormal 2^-3

Everything else is the MX family's (:mod:`jq.formats.mx`): ``k = ceil(log2(amax_b / dmax))`` per block, round
half to even on the element grid with saturation. Codes are ``sign << 5 | exponent_field << m | mantissa`` and
are stored one per byte (uint8; a 3-bytes-per-4-elements packing would save 25 % and is not implemented).
Spec: ``num_bits=(3, 2)`` or ``(2, 3)`` with ``block_sizes={-1: 32, "type": "dynamic", "scale_bits": (8, 0)}``
(ModelOpt's spelling).

Example:
  >>> from jq.config import QuantizerSpec
  >>> spec = QuantizerSpec(num_bits=(3, 2), block_sizes={-1: 32, "type": "dynamic", "scale_bits": (8, 0)})
  >>> spec.format.name, spec.bits_per_element
  ('mxfp6_e3m2', 6.25)
"""

from __future__ import annotations

import jax.numpy as jnp

from jq import numerics as nx
from jq.formats.mx import MXFormat
from jq.numerics.rounding import MinifloatFormat

__all__ = ["E3M2", "E2M3", "MXFP6_E3M2", "MXFP6_E2M3", "MXFP6Format"]

E3M2 = MinifloatFormat("e3m2", 3, 2, -2, 28.0)
E2M3 = MinifloatFormat("e2m3", 2, 3, 0, 7.5)


class MXFP6Format(MXFormat):
    """MX with a 6-bit float element; codes one per byte."""

    has_kernel = False  # no Pallas kernel: the jnp reference serves every backend

    def __init__(self, element: MinifloatFormat):
        super().__init__(nx.MXFormat(f"mxfp6_{element.name}", element.max_value, element),
                         (element.exponent_bits, element.mantissa_bits), 6)
        self.minifloat = element

    def encode(self, q):
        """6-bit codes of values on the element grid: subnormals have exponent field 0."""
        m = self.minifloat.mantissa_bits
        bias = 1 - self.minifloat.min_exponent
        a = jnp.abs(q.astype(jnp.float32))
        _, e = jnp.frexp(a)  # a = f * 2^e, f in [0.5, 1): floor(log2 a) = e - 1
        normal = a >= 2.0 ** self.minifloat.min_exponent
        field = jnp.where(normal, e - 1 + bias, 0)
        ulp_exp = jnp.where(normal, e - 1, self.minifloat.min_exponent) - m
        mant = nx.ldexp(a, -ulp_exp).astype(jnp.int32) - jnp.where(normal, 1 << m, 0)
        code = (field << m) | jnp.where(a > 0, mant, 0)
        return ((jnp.signbit(q).astype(jnp.int32) << 5) | code).astype(jnp.uint8)

    def decode(self, data):
        m = self.minifloat.mantissa_bits
        c = data.astype(jnp.int32)
        field, mant = (c >> m) & ((1 << self.minifloat.exponent_bits) - 1), c & ((1 << m) - 1)
        bias = 1 - self.minifloat.min_exponent
        mag = jnp.where(field > 0, nx.ldexp((mant + (1 << m)).astype(jnp.float32), field - bias - m),
                        nx.ldexp(mant.astype(jnp.float32), self.minifloat.min_exponent - m))
        return jnp.where((c >> 5) & 1 == 1, -mag, mag)


MXFP6_E3M2 = MXFP6Format(E3M2)
MXFP6_E2M3 = MXFP6Format(E2M3)
