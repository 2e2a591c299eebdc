"""E2M1 (FP4) codes and nibble packing.

The E2M1 grid is ``{0, 0.5, 1, 1.5, 2, 3, 4, 6}``; a code is ``sign << 3 | index`` into that grid, so codes
0..7 are non-negative and 8..15 their negatives. Two codes pack into one byte, element ``2i`` in the low
nibble and ``2i + 1`` in the high nibble (ModelOpt's and ONNX's FLOAT4E2M1 layout).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["E2M1_GRID", "E2M1_VALUES", "e2m1_encode", "e2m1_decode", "pack_nibbles", "unpack_nibbles"]

E2M1_GRID = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0], np.float32)
E2M1_VALUES = np.concatenate([E2M1_GRID, -E2M1_GRID])  # value of each code 0..15 (code 8 is -0)


def e2m1_encode(q: jax.Array, negative: jax.Array | None = None) -> jax.Array:
    """Codes (uint8 in 0..15) of values that already lie on the E2M1 grid.

    The grid index is ``2|q|`` below 2, ``|q| + 2`` for 2 and 3, 6 for 4 and 7 for 6. The sign bit is
    ``negative`` when given (ModelOpt takes it from the value before rounding, so a small negative that
    rounds to zero is code 8), else the sign bit of ``q`` (so ``-0.0`` is code 8 too).
    """
    q = q.astype(jnp.float32)
    a = jnp.abs(q)
    index = jnp.where(a < 2, 2 * a, jnp.where(a < 4, a + 2, jnp.where(a < 6, 6.0, 7.0)))
    sign = (jnp.signbit(q) if negative is None else negative).astype(jnp.uint8)
    return (sign << 3) | index.astype(jnp.uint8)


def e2m1_decode(codes: jax.Array) -> jax.Array:
    """Float32 values of E2M1 codes (arithmetic, no table gather); code 8 decodes to +0 as in ModelOpt."""
    c = codes.astype(jnp.int32)
    index = (c & 7).astype(jnp.float32)
    mag = jnp.where(index < 4, index * 0.5, jnp.where(index < 6, index - 2, jnp.where(index < 7, 4.0, 6.0)))
    return jnp.where(((c & 8) != 0) & (index > 0), -mag, mag)


def pack_nibbles(codes: jax.Array, axis: int = -1) -> jax.Array:
    """Pack 4-bit codes two per byte along ``axis`` (which must have even length): ``lo | hi << 4``.

    Example:
      >>> pack_nibbles(jnp.array([1, 2, 15, 0], jnp.uint8))
      Array([33, 15], dtype=uint8)
    """
    codes = jnp.moveaxis(codes.astype(jnp.uint8), axis, -1)
    if codes.shape[-1] % 2:
        raise ValueError(f"packing needs an even number of elements along axis {axis}, got {codes.shape[-1]}")
    lo, hi = codes[..., 0::2] & 0xF, codes[..., 1::2] & 0xF
    return jnp.moveaxis(lo | (hi << 4), -1, axis)


def unpack_nibbles(packed: jax.Array, axis: int = -1) -> jax.Array:
    """Inverse of :func:`pack_nibbles`: uint8 codes, twice as long along ``axis``."""
    packed = jnp.moveaxis(packed.astype(jnp.uint8), axis, -1)
    both = jnp.stack([packed & 0xF, packed >> 4], axis=-1)
    return jnp.moveaxis(both.reshape(*packed.shape[:-1], -1), -1, axis)
