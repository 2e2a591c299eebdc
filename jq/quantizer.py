"""What a :class:`~jq.config.QuantizerSpec` does to a tensor: the reference semantics of one quantizer.

The arithmetic belongs to the spec's format (:mod:`jq.formats`); this module adds what is the same for every
format: the optional Hadamard rotation (``rotate=True``) and the :class:`CanonicalView` that lets weight
quantizers act on the ``[out, in]`` layout of a PyTorch Linear, so ModelOpt's ``axis=0`` and
``block_sizes={-1: ...}`` keep their meaning whatever the operand's layout.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from jq import numerics as nx

__all__ = ["CanonicalView", "amax_shape", "compute_amax", "fake_quant_reference", "clip_mask", "needs_amax",
           "hadamard_rotate"]


@dataclasses.dataclass(frozen=True)
class CanonicalView:
    """How a weight operand maps to its canonical ``[*batch, out, in]`` (or PyTorch conv ``[O, I, *k]``) view.

    ``canonical = reshape(transpose(w, perm), shape)``; ``batch`` leading canonical axes (dot_general batch
    dims, e.g. experts) are always kept in the amax and are not counted by the spec's ``axis`` numbers.

    Example (a Flax Dense kernel ``[in=8, out=4]``):
      >>> v = CanonicalView(perm=(1, 0), shape=(4, 8), batch=0)
      >>> v.to_canonical(jnp.zeros((8, 4))).shape
      (4, 8)
    """

    perm: tuple[int, ...]
    shape: tuple[int, ...]
    batch: int = 0

    def to_canonical(self, w: jax.Array) -> jax.Array:
        return jnp.reshape(jnp.transpose(w, self.perm), self.shape)

    def from_canonical(self, c: jax.Array, operand_shape: Sequence[int]) -> jax.Array:
        inv = tuple(sorted(range(len(self.perm)), key=lambda i: self.perm[i]))
        permuted_shape = tuple(operand_shape[p] for p in self.perm)
        return jnp.transpose(jnp.reshape(c, permuted_shape), inv)

    @property
    def is_identity(self) -> bool:
        return self.perm == tuple(range(len(self.perm))) and len(self.shape) == len(self.perm)

    @classmethod
    def identity(cls, shape: Sequence[int]) -> CanonicalView:
        return cls(tuple(range(len(shape))), tuple(shape), 0)


def needs_amax(spec) -> bool:
    """True when the quantizer needs a calibrated amax (static INT/FP8, NVFP4's global amax)."""
    return spec.format.needs_amax(spec)


def compute_amax(x: jax.Array, spec, batch: int = 0) -> jax.Array | None:
    """The statistic max calibration keeps for ``x`` (float32), or None for dynamic/MX quantizers.

    Per tensor ``max|x|`` (per leading batch axis when ``batch > 0``); per axis the keep-dims amax over all but
    ``axis``; per static block one amax per block; NVFP4 the per-tensor (global) amax.
    """
    return spec.format.compute_amax(x, spec, batch)


def amax_shape(spec, shape: Sequence[int], batch: int = 0) -> tuple[int, ...] | None:
    """Shape of the calibrated amax for a tensor of ``shape`` (canonical for weights), or None if none."""
    if not needs_amax(spec):
        return None
    return jax.eval_shape(lambda x: compute_amax(x, spec, batch),
                          jax.ShapeDtypeStruct(tuple(shape), jnp.float32)).shape


def hadamard_rotate(x: jax.Array) -> jax.Array:
    """``x @ H_n / sqrt(n)`` over the last axis (ModelOpt's ``rotate=True``); ``n`` must be a power of two."""
    n = x.shape[-1]
    h = jnp.asarray(nx.sylvester_hadamard(n) / math.sqrt(n), jnp.float32)
    return jnp.matmul(x.astype(jnp.float32), h, precision=jax.lax.Precision.HIGHEST).astype(x.dtype)


def fake_quant_reference(x: jax.Array, spec, amax: jax.Array | None = None, *, batch: int = 0,
                         random_bits: jax.Array | None = None) -> jax.Array:
    """Quantize-dequantize ``x`` as ``spec`` says (reference implementation, any backend).

    Args:
      x: the tensor (canonical view for weights).
      spec: an enabled spec.
      amax: the calibrated statistic from :func:`compute_amax` (None: computed from ``x``, i.e. dynamic).
      batch: number of leading batch axes (kept separate in every statistic).
      random_bits: uint8 bits of ``x``'s shape for NVFP4 stochastic rounding.

    Returns:
      An array of ``x``'s shape and dtype.
    """
    if spec.rotate:
        x = hadamard_rotate(x)
    return spec.format.fake_quant(x, spec, amax, batch=batch, random_bits=random_bits)


def clip_mask(x: jax.Array, spec, amax: jax.Array | None, batch: int = 0) -> jax.Array | None:
    """Where the clipped straight-through estimator passes gradients: ``|x| <= amax`` (None: everywhere).

    ModelOpt's rule: static quantizers clip at their amax (per block for blocked ones); NVFP4 clips at its
    global amax; MX formats (no amax) pass everything.
    """
    return spec.format.clip_mask(x, spec, amax, batch)
