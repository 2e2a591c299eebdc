"""FP8 linear layer through XLA: E4M3 activations and weights, one fp8 ``dot_general`` that XLA lowers to
cuBLASLt's fp8 GEMM on Hopper (a plain XLA dot elsewhere), the two per-tensor scales applied to the f32 result.

Weights are stored once as E4M3 ``[N, K]`` (K-major: the layout cuBLASLt's fp8 kernels take without a transpose).
Measurements: ``docs/kernels.md`` (FP8 linear).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from jq import numerics as nx

__all__ = ["prepare_fp8_weight", "fp8_linear", "fp8_gemm_uses_cublaslt"]


def prepare_fp8_weight(w_canonical, amax):
    """E4M3 weight ``[N, K]`` (K-major) and its dequant multiplier ``1/s_w``, ``s_w = 448 / amax``.

    Example:
      >>> w_q, w_inv = prepare_fp8_weight(jnp.array([[1.0, -2.0]]), jnp.float32(2.0))
      >>> w_q.dtype, w_q.astype(jnp.float32).tolist(), float(w_inv)
      (dtype(float8_e4m3fn), [[224.0, -448.0]], 0.004464285913854837)
    """
    q, s = nx.fp8_quantize(w_canonical, amax, "e4m3")
    return q.astype(jnp.float8_e4m3fn), nx.fp8_dequant_scale(s)


def fp8_linear(x, w_q, w_inv_scale, x_amax, out_dtype=jnp.bfloat16, quantize_x=None, operand_dtype=None):
    """``y = (q(x) @ w_q.T) * (1/s_x) * (1/s_w)`` with both operands E4M3, accumulated in f32.

    ``operand_dtype=jnp.bfloat16`` runs the product as a bf16 GEMM on the E4M3 values upcast to bf16 (exact:
    every E4M3 value is a bf16 value, and bf16 x bf16 products are exact in the f32 accumulator), so the result
    equals the fp8 GEMM's up to accumulation order; the weight stays stored as E4M3 (1 byte per element) and the
    upcast is the GEMM operand's producer (small-batch, weight-bandwidth-bound path).

    Args:
      x: activations ``[..., K]``.
      w_q: ``[N, K]`` float8_e4m3fn (K-major), ``w_inv_scale`` its ``1/s_w`` (:func:`prepare_fp8_weight`).
      x_amax: the calibrated per-tensor activation amax; ``q(x)`` is :func:`jq.numerics.fp8_quantize` with it.
      out_dtype: the result dtype.
      quantize_x: optional ``(x2d, amax) -> (float8 values, s_x)`` replacing the jnp quantization (the fused
        kernel :func:`jq_kernels.fp8.fp8_quantize` on the GPU).
    """
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    if quantize_x is not None:
        xq, sx = quantize_x(x2, x_amax)
    else:
        q, sx = nx.fp8_quantize(x2, x_amax, "e4m3")
        xq = q.astype(jnp.float8_e4m3fn)
    if operand_dtype is not None:
        xq, w_q = xq.astype(operand_dtype), w_q.astype(operand_dtype)
    acc = lax.dot_general(xq, w_q, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
    y = acc * (nx.fp8_dequant_scale(sx) * w_inv_scale)
    return y.astype(out_dtype).reshape(lead + (w_q.shape[0],))


def fp8_gemm_uses_cublaslt(fn, *args) -> bool:
    """True when the compiled HLO of ``fn(*args)`` calls cuBLASLt's fp8 matmul (GPU only)."""
    txt = jax.jit(fn).lower(*args).compile().as_text()
    return "__cublas$lt$matmul$f8" in txt
