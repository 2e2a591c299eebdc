"""The 16x16 random Hadamard transform (RHT) of TransformerEngine's NVFP4 recipe.

``M = diag(sign) @ H16 / 4`` with ``H16`` the Sylvester Hadamard matrix and a fixed sign vector. ``M`` is
orthogonal (``M @ M.T = I``), so applying it along the contracting axis of both GEMM operands leaves the
product unchanged while spreading outliers across each 16-element block before FP4 quantization.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["RHT_SIGNS", "sylvester_hadamard", "rht_matrix", "random_hadamard_transform"]

RHT_SIGNS = (1, 1, 1, -1, 1, -1, -1, -1, -1, -1, -1, 1, -1, 1, -1, -1)


def sylvester_hadamard(n: int) -> np.ndarray:
    """``H_n`` with entries ±1 (``n`` a power of two): ``H_2k = [[H_k, H_k], [H_k, -H_k]]``."""
    if n < 1 or n & (n - 1):
        raise ValueError(f"Hadamard size must be a power of two, got {n}")
    h = np.ones((1, 1), np.float32)
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    return h


@functools.cache
def rht_matrix(signs: tuple[int, ...] = RHT_SIGNS) -> np.ndarray:
    """``diag(signs) @ H16 / sqrt(16)`` as float32; exact in binary (entries ±1/4)."""
    n = len(signs)
    return (np.diag(np.asarray(signs, np.float32)) @ sylvester_hadamard(n) / np.sqrt(n)).astype(np.float32)


def random_hadamard_transform(x: jax.Array, axis: int = -1, inverse: bool = False, signs=RHT_SIGNS) -> jax.Array:
    """Apply ``M`` (or ``M.T`` with ``inverse``) to consecutive 16-element blocks along ``axis``.

    The axis length must be a multiple of 16. Computed in float32 with exact products (entries ±1/4) and
    highest matmul precision, returned in ``x.dtype``.

    Example:
      >>> x = jnp.arange(32.0)
      >>> bool(jnp.allclose(random_hadamard_transform(random_hadamard_transform(x), inverse=True), x))
      True
    """
    m = jnp.asarray(rht_matrix(tuple(signs)))
    n = m.shape[0]
    xt = jnp.moveaxis(x, axis, -1)
    if xt.shape[-1] % n:
        raise ValueError(f"RHT needs the axis length to be a multiple of {n}, got {xt.shape[-1]}")
    blocks = xt.astype(jnp.float32).reshape(*xt.shape[:-1], -1, n)
    out = jnp.matmul(blocks, m.T if inverse else m, precision=jax.lax.Precision.HIGHEST)
    return jnp.moveaxis(out.reshape(xt.shape), -1, axis).astype(x.dtype)
