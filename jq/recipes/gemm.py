"""The pluggable GEMM of a recipe linear: ``gemm(a, b, *, which) -> a @ b^T`` on quantized operands.

Both operands are :class:`~jq.recipes.operands.QOperand` in NT form (``a [M, C]``, ``b [P, C]``, contracted
along ``C``); ``which`` is ``"fprop"``, ``"dgrad"`` or ``"wgrad"`` (TE picks split accumulation per GEMM;
a recording GEMM in the tests uses it too). The result is float32 ``[M, P]``.

- :func:`fake_gemm` multiplies the dequantized operands in float32 (exact emulation of any recipe).
- :func:`fp8_gemm` multiplies the raw FP8 values as ``float8_*`` arrays and applies ``1/s_a * 1/s_b`` after
  accumulation: the pattern XLA lowers to cuBLASLt's FP8 GEMM on Hopper (``__cublas$lt$matmul$f8``; both
  operands K-major, which NT form already is; E5M2 x E5M2 is not a cuBLASLt combination, and no recipe
  produces it). It needs per-tensor-scaled operands (Float8CurrentScaling, DelayedScaling). Blocked formats
  (MXFP8, 1x128, NVFP4) need a block-scaled GEMM (Blackwell tensor cores, or a Pallas kernel that dequantizes
  tiles before a bf16/FP8 MMA on Hopper): that kernel plugs in here with the same signature, reading the
  block values and scales from an extended ``QOperand``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jq.recipes.operands import QOperand

__all__ = ["fake_gemm", "bf16_gemm", "fp8_gemm", "NT_DIMS"]

NT_DIMS = (((1,), (1,)), ((), ()))  # contract the last axis of both operands


def fake_gemm(a: QOperand, b: QOperand, *, which: str) -> jax.Array:
    """``a.dequantized @ b.dequantized^T`` in float32 at highest precision.

    Example:
      >>> a = QOperand(jnp.ones((2, 3))); b = QOperand(jnp.ones((4, 3)))
      >>> fake_gemm(a, b, which="fprop").shape
      (2, 4)
    """
    return jax.lax.dot_general(
        a.dequantized, b.dequantized, NT_DIMS, precision=jax.lax.Precision.HIGHEST, preferred_element_type=jnp.float32
    )


def bf16_gemm(a: QOperand, b: QOperand, *, which: str) -> jax.Array:
    """``bf16(a.dequantized) @ bf16(b.dequantized)^T`` accumulated in float32 (the emulated GPU speed path).

    Exact inputs for formats whose dequantized values fit bf16 (MXFP8, power-of-two 1x128 FP8: E4M3 values
    times a power of two); for NVFP4 the per-tensor FP32 global scale makes the bf16 cast round (relative
    error <= 2^-9 per operand).

    Example:
      >>> a = QOperand(jnp.ones((2, 3))); b = QOperand(jnp.ones((4, 3)))
      >>> bf16_gemm(a, b, which="fprop").dtype
      dtype('float32')
    """
    return jax.lax.dot_general(
        a.dequantized.astype(jnp.bfloat16), b.dequantized.astype(jnp.bfloat16), NT_DIMS,
        preferred_element_type=jnp.float32,
    )


_F8_DTYPES = {"e4m3": jnp.float8_e4m3fn, "e5m2": jnp.float8_e5m2}


def fp8_gemm(a: QOperand, b: QOperand, *, which: str) -> jax.Array:
    """Real FP8 GEMM: ``(fp8(a.values) @ fp8(b.values)^T) * (a.scale_inv * b.scale_inv)``.

    The casts are exact (``values`` are already on the FP8 grid and clamped), so the result equals
    :func:`fake_gemm` up to float32 accumulation order.
    """
    for name, op in (("a", a), ("b", b)):
        if op.values is None or op.fmt is None or op.fmt.name not in _F8_DTYPES:
            raise ValueError(
                f"fp8_gemm ({which}): operand {name} is not a per-tensor FP8 operand; use a per-tensor FP8 recipe "
                "(Float8CurrentScaling, DelayedScaling) or fake_gemm"
            )
    acc = jax.lax.dot_general(
        a.values.astype(_F8_DTYPES[a.fmt.name]),
        b.values.astype(_F8_DTYPES[b.fmt.name]),
        NT_DIMS,
        preferred_element_type=jnp.float32,
    )
    return acc * (a.scale_inv * b.scale_inv)
