"""FP8 quantization (E4M3FN and E5M2) with an amax-derived scale, as ModelOpt's ``scaled_e4m3``.

With ``s = max_value * (1 / amax)`` (448 for E4M3, 57344 for E5M2)::

    y = fp8(clamp(x * s, -max_value, max_value)) * (1 / s)

where ``fp8`` rounds to nearest, ties to even, and ``amax <= 2^-24`` is treated as ``amax = 1``.
The reciprocals are ModelOpt's actual arithmetic: PyTorch
evaluates ``448.0 / amax`` as ``amax.reciprocal() * 448`` and divides by the scale by multiplying with its
reciprocal, so the float32 bits differ from a correctly rounded division in about a quarter of the
elements (one ulp). jq reproduces ModelOpt bit for bit (see ``tests/data/modelopt``); ``1 / s`` is also
exactly the scale an ONNX ``DequantizeLinear`` multiplies by, so exported FP8 graphs match too. ModelOpt's CUDA extension also zeroes inputs with
``|x| < 2^-24``; its CPU reference (``_fp8_eager``), which the parity vectors come from, does not, and
neither does jq (such inputs keep their FP8 value when the block's amax is small). ``amax`` broadcasts against ``x`` (per tensor, per axis, or per block on a split tensor).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jq.numerics.int import TINY_AMAX
from jq.numerics.rounding import E4M3, E5M2, MinifloatFormat, round_to_minifloat

__all__ = ["FP8_FORMATS", "fp8_format", "fp8_quant_scale", "fp8_dequant_scale", "fp8_quantize", "fp8_dequantize", "fp8_fake_quant"]

FP8_FORMATS = {"e4m3": E4M3, "e5m2": E5M2}


def fp8_format(name: str | MinifloatFormat) -> MinifloatFormat:
    """Look up ``"e4m3"`` / ``"e5m2"``."""
    if isinstance(name, MinifloatFormat):
        return name
    try:
        return FP8_FORMATS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown FP8 format {name!r}; expected one of {sorted(FP8_FORMATS)}") from None


def fp8_quant_scale(amax: jax.Array, fmt: str | MinifloatFormat = "e4m3") -> jax.Array:
    """``max_value * (1 / amax)`` in float32, with ``amax <= 2^-24`` treated as 1."""
    fmt = fp8_format(fmt)
    amax = jnp.asarray(amax, jnp.float32)
    return fmt.max_value * (1.0 / jnp.where(amax <= TINY_AMAX, 1.0, amax))


def fp8_dequant_scale(scale: jax.Array) -> jax.Array:
    """``1 / s``: the multiplier that dequantizes (and the ``DequantizeLinear`` scale on export)."""
    return 1.0 / jnp.asarray(scale, jnp.float32)


def fp8_quantize(x: jax.Array, amax: jax.Array, fmt: str | MinifloatFormat = "e4m3") -> tuple[jax.Array, jax.Array]:
    """FP8 values (float32 on the FP8 grid, so a later cast to ``float8_*`` is exact) and the scale ``s``.

    Example:
      >>> q, s = fp8_quantize(jnp.array([1.0, 0.3]), jnp.float32(448.0))
      >>> q
      Array([1.   , 0.3125], dtype=float32)
    """
    fmt = fp8_format(fmt)
    x = x.astype(jnp.float32)
    scale = fp8_quant_scale(amax, fmt)
    q = round_to_minifloat(jnp.clip(x * scale, -fmt.max_value, fmt.max_value), fmt)
    return q, scale


def fp8_dequantize(q: jax.Array, scale: jax.Array, dtype=jnp.float32) -> jax.Array:
    """``q * (1 / s)`` cast to ``dtype``."""
    return (q.astype(jnp.float32) * fp8_dequant_scale(scale)).astype(dtype)


def fp8_fake_quant(x: jax.Array, amax: jax.Array, fmt: str | MinifloatFormat = "e4m3") -> jax.Array:
    """Quantize then dequantize; returns ``x.dtype``."""
    q, scale = fp8_quantize(x, amax, fmt)
    return fp8_dequantize(q, scale, x.dtype)
