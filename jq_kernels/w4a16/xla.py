"""W4A16 matmuls through XLA: the reference ``x @ W.T`` on a dequantized weight, and XLA's native int4 path."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jax import lax

from jq import numerics as nx

__all__ = ["w4a16_matmul_xla", "int4_xla_weights", "w4a16_matmul_xla_int4"]


def w4a16_matmul_xla(x, w, out_dtype=jnp.bfloat16):
    """Reference path: ``y = x @ w.T`` with ``x`` and the dequantized weight ``w [N, K]`` rounded to bf16, f32
    accumulation, any backend and batch.

    Example:
      >>> y = w4a16_matmul_xla(jnp.ones((2, 4)), jnp.full((3, 4), 0.5), out_dtype=jnp.float32)
      >>> y.shape, float(y[0, 0])
      ((2, 3), 2.0)
    """
    y = lax.dot_general(x.astype(jnp.bfloat16), jnp.asarray(w).astype(jnp.bfloat16),
                        (((x.ndim - 1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
    return y.astype(out_dtype)


def int4_xla_weights(codes, scales):
    """INT4 storage -> (``int4 [N, Kp]`` codes, f32 ``[N, Kp/128]`` multipliers ``1/s``) for XLA's int4 path.

    ``codes``: uint8 packed two's-complement nibbles ``[N, Kp/2]`` (element ``2i`` low); ``scales``: f32
    quantization scales ``s = 7 / amax`` ``[N, Kp/128]``. Host-side (numpy), once per weight.
    """
    c = np.asarray(nx.unpack_nibbles(codes)).astype(np.int8)
    c = np.where(c >= 8, c - 16, c).astype(np.int8)
    inv = (1.0 / np.asarray(scales, np.float32)).astype(np.float32)
    return jnp.asarray(c).astype(jnp.int4), jnp.asarray(inv)


def w4a16_matmul_xla_int4(x, w_int4, inv_scale, out_dtype=jnp.bfloat16):
    """``x @ (w_int4 * inv_scale).T`` with XLA's int4 -> bf16 conversion and group scale fused into the GEMM
    (groups of ``Kp / inv_scale.shape[1]`` along K; ``x`` zero-padded to ``Kp``)."""
    n, kp = w_int4.shape
    g = inv_scale.shape[1]
    w = (w_int4.astype(jnp.bfloat16).reshape(n, g, kp // g) * inv_scale[:, :, None].astype(jnp.bfloat16))
    w = w.reshape(n, kp)
    xk = x.shape[-1]
    xp = x if xk == kp else jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, kp - xk)])
    y = lax.dot_general(xp.astype(jnp.bfloat16), w, (((x.ndim - 1,), (1,)), ((), ())),
                        preferred_element_type=jnp.float32)
    return y.astype(out_dtype)
