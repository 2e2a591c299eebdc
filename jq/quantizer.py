"""What a :class:`~jq.config.QuantizerSpec` does to a tensor: the reference semantics of one quantizer.

This module maps a spec onto the format functions of :mod:`jq.numerics`. It decides the amax a quantizer
calibrates (per tensor, per axis, per static block, or the NVFP4 global amax), computes it, and applies
fake quantization. Weight quantizers act on a :class:`CanonicalView` of the weight, the ``[out, in]``
layout of a PyTorch Linear, so ModelOpt's ``axis=0`` and ``block_sizes={-1: ...}`` keep their meaning.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from jq import numerics as nx
from jq.config import QuantizerSpec
from jq.numerics.blocks import BlockLayout

__all__ = ["CanonicalView", "block_layout", "broadcastable_amax", "amax_shape", "compute_amax", "fake_quant_reference", "clip_mask", "needs_amax",
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


def _spec_axes(spec_axes, ndim: int, batch: int) -> tuple[int, ...]:
    """Spec axes (relative to the non-batch part) as absolute axes of a rank-``ndim`` tensor."""
    if spec_axes is None:
        return ()
    axes = (spec_axes,) if isinstance(spec_axes, int) else tuple(spec_axes)
    inner = ndim - batch
    out = []
    for a in axes:
        if not -inner <= a < inner:
            raise ValueError(f"axis {a} is out of range for a quantized tensor of rank {inner}")
        out.append(batch + (a % inner))
    return tuple(out)


def block_layout(spec: QuantizerSpec, shape: Sequence[int], batch: int) -> BlockLayout:
    sizes = {}
    for a, size in spec.block_sizes.sizes:
        (ax,) = _spec_axes(a, len(shape), batch)
        sizes[ax] = size
    return BlockLayout.create(shape, sizes)


def needs_amax(spec: QuantizerSpec) -> bool:
    """True when the quantizer needs a calibrated amax: static INT/FP8 and NVFP4's global amax."""
    kind = spec.kind
    if kind in ("mxfp8", "mxfp4", "mxint8"):
        return False
    if kind == "nvfp4":  # block scales are always dynamic; the global amax is static unless type="dynamic"
        return spec.type != "dynamic"
    return not spec.is_dynamic


def amax_shape(spec: QuantizerSpec, shape: Sequence[int], batch: int = 0) -> tuple[int, ...] | None:
    """Shape of the calibrated amax for a tensor of ``shape`` (canonical for weights), or None if none."""
    return None if not needs_amax(spec) else jax.eval_shape(
        lambda x: compute_amax(x, spec, batch), jax.ShapeDtypeStruct(tuple(shape), jnp.float32)).shape


def compute_amax(x: jax.Array, spec: QuantizerSpec, batch: int = 0) -> jax.Array | None:
    """The statistic max calibration keeps for ``x`` (float32), or None for dynamic/MX quantizers.

    * INT/FP8 per tensor: ``max|x|`` (per leading batch axis when ``batch > 0``), shape ``()`` or ``(*batch,)+1s``.
    * per axis: keep-dims amax over all but ``axis`` (and the batch axes).
    * static blocks: one amax per block, shape :attr:`BlockLayout.num_blocks_shape`.
    * NVFP4: the per-tensor (global) amax; its block amaxes are dynamic.
    """
    if not needs_amax(spec):
        return None
    x = jnp.asarray(x)
    batch_axes = tuple(range(batch))
    if spec.kind == "nvfp4" or (spec.axis is None and spec.block_sizes is None):
        return nx.reduce_amax(x, batch_axes if batch else None)
    if spec.block_sizes is not None:
        layout = block_layout(spec, x.shape, batch)
        return layout.squeeze_stats(layout.block_amax(x))
    keep = batch_axes + _spec_axes(spec.axis, x.ndim, batch)
    return nx.reduce_amax(x, keep)


def hadamard_rotate(x: jax.Array) -> jax.Array:
    """``x @ H_n / sqrt(n)`` over the last axis (ModelOpt's ``rotate=True``); ``n`` must be a power of two."""
    n = x.shape[-1]
    h = jnp.asarray(nx.sylvester_hadamard(n) / math.sqrt(n), jnp.float32)
    return jnp.matmul(x.astype(jnp.float32), h, precision=jax.lax.Precision.HIGHEST).astype(x.dtype)


def _nvfp4_two_d(spec: QuantizerSpec) -> bool:
    return len(spec.block_sizes.sizes) == 2


def fake_quant_reference(
    x: jax.Array,
    spec: QuantizerSpec,
    amax: jax.Array | None = None,
    *,
    batch: int = 0,
    random_bits: jax.Array | None = None,
) -> jax.Array:
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
    kind = spec.kind
    if kind in ("mxfp8", "mxfp4", "mxint8"):
        return nx.mx_fake_quant(x, nx.MX_FORMATS[kind])
    if kind == "nvfp4":
        if amax is None:  # dynamic global amax: per call (per batch entry)
            amax = nx.reduce_amax(x, tuple(range(batch)) if batch else None)
        two_d = _nvfp4_two_d(spec)
        if batch:  # one global scale per batch entry
            fn = lambda xi, ai: nx.nvfp4_fake_quant(xi, ai, two_d=two_d, random_bits=None)  # noqa: E731
            for _ in range(batch):
                fn = jax.vmap(fn)
            return fn(x, jnp.reshape(amax, x.shape[:batch]))
        return nx.nvfp4_fake_quant(x, amax, two_d=two_d, random_bits=random_bits)

    def apply(v, a):
        if kind == "int":
            return nx.int_fake_quant(v, a, spec.num_bits, spec.unsigned, spec.narrow_range)
        return nx.fp8_fake_quant(v, a, spec.fp8_name)

    if spec.block_sizes is not None:
        layout = block_layout(spec, x.shape, batch)
        if amax is None:
            block_amax = layout.block_amax(x)
        else:
            block_amax = layout.expand_stats(amax)
        return layout.merge(apply(layout.split(x), block_amax)).astype(x.dtype)
    if amax is None:
        amax = nx.reduce_amax(x, tuple(range(batch)) + _spec_axes(spec.axis, x.ndim, batch)
                              if (batch or spec.axis is not None) else None)
    return apply(x, broadcastable_amax(amax, x.ndim))


def broadcastable_amax(amax: jax.Array, ndim: int) -> jax.Array:
    amax = jnp.asarray(amax, jnp.float32)
    if amax.ndim and amax.ndim < ndim:  # per-batch amax stored squeezed: append singleton axes
        amax = amax.reshape(amax.shape + (1,) * (ndim - amax.ndim))
    return amax


def clip_mask(x: jax.Array, spec: QuantizerSpec, amax: jax.Array | None, batch: int = 0) -> jax.Array | None:
    """Where the clipped straight-through estimator passes gradients: ``|x| <= amax`` (None: everywhere).

    ModelOpt's rule: static quantizers clip at their amax; NVFP4 clips at its global amax; MX formats
    (no amax) pass everything.
    """
    if amax is None or spec.kind in ("mxfp8", "mxfp4", "mxint8"):
        return None
    if spec.kind != "nvfp4" and spec.block_sizes is not None:
        layout = block_layout(spec, x.shape, batch)
        bound = layout.merge(jnp.broadcast_to(layout.expand_stats(amax), layout.blocked_shape))
        return jnp.abs(x) <= bound
    return jnp.abs(x) <= broadcastable_amax(amax, x.ndim)
