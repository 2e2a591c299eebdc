"""The ``jq_fake_quant`` primitive: quantize-dequantize as one JAX primitive.

A primitive (not a ``custom_vjp`` over jnp ops) so that exporters see it and lower it to
``QuantizeLinear``/``DequantizeLinear``, and so that GPU lowering can dispatch to a Pallas kernel.
Rules, side by side as in ``jax._src``:

* impl / lowering: :func:`jq.quantizer.fake_quant_reference` on the canonical view of the operand, or the
  kernel :mod:`jq.backends` selects for the platform;
* abstract eval: same shape and dtype as ``x``;
* batching: the mapped axis becomes a leading batch axis of the canonical view (kept separate in every
  statistic), an unbatched amax is broadcast along it;
* JVP: the straight-through estimator, ``dy = dx`` (``pass_through_bwd=True``) or the clipped STE
  ``dy = dx * (|x| <= amax)`` (ModelOpt's default), with no gradient to ``amax``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.extend import core as jcore
from jax.interpreters import ad, batching, mlir

from jq import backends
from jq.config import QuantizerSpec
from jq.quantizer import CanonicalView, clip_mask

__all__ = ["jq_fake_quant_p", "fake_quant"]

jq_fake_quant_p = jcore.Primitive("jq_fake_quant")


def fake_quant(x: jax.Array, amax: jax.Array | None = None, *, spec: QuantizerSpec,
               view: CanonicalView | None = None) -> jax.Array:
    """Fake-quantize ``x`` with ``spec``; ``amax`` is the calibrated statistic (None: dynamic).

    ``view`` maps a weight operand to its canonical ``[out, in]`` view; activations use the identity.

    Example:
      >>> from jq.config import QuantizerSpec
      >>> fake_quant(jnp.array([0.3, -1.0]), jnp.float32(1.0), spec=QuantizerSpec(num_bits=4))
      Array([ 0.2857143, -1.       ], dtype=float32)
    """
    if not spec.enable:
        return x
    x = jnp.asarray(x)
    view = CanonicalView.identity(x.shape) if view is None else view
    operands = (x,) if amax is None else (x, jnp.asarray(amax, jnp.float32))
    return jq_fake_quant_p.bind(*operands, spec=spec, view=view)


def _impl(*args, spec, view):
    return backends.reference_fake_quant(*args, spec=spec, view=view)


def _abstract_eval(x, *amax, spec, view):
    return x.update(weak_type=False)  # x's aval: inside shard_map it keeps the mesh axes x varies over


def _lowering(platform):
    def lower(ctx, *args, spec, view):
        avals = ctx.avals_in
        impl = backends.select("fake_quant", spec, platform, view=view, shape=tuple(avals[0].shape),
                               dtype=avals[0].dtype, has_amax=len(args) > 1)
        fn = functools.partial(impl.fn, spec=spec, view=view)
        return mlir.lower_fun(_barrier_after(fn), multiple_results=False)(ctx, *args)
    return lower


def _barrier_after(fn):
    """``fn`` whose result XLA cannot fuse into its consumer. On XLA CPU a small dot fused with the fake
    quant of its operand rounded differently from the same dot on the materialised operands,
    so ``jit(qm.apply)`` was one ulp off ``fq(x) @ fq(w)`` computed op by op (the exact comparisons in
    ``tests/test_transform.py`` on an AVX2 machine). Behind the barrier the dot sees plain operands."""
    return lambda *a: jax.lax.optimization_barrier(fn(*a))


def _batch(args, dims, *, spec, view):
    x, *amax = args
    xd, *ad_ = dims
    size = x.shape[xd] if xd is not None else amax[0].shape[ad_[0]]
    x = jnp.broadcast_to(x, (size,) + x.shape) if xd is None else jnp.moveaxis(x, xd, 0)
    new_amax = []
    for a, d in zip(amax, ad_):
        if d is None:  # not mapped
            a = jnp.broadcast_to(a, (size,) + a.shape)
        else:
            a = jnp.moveaxis(a, d, 0)
        new_amax.append(a)
    new_view = CanonicalView(perm=(0,) + tuple(p + 1 for p in view.perm), shape=(size,) + tuple(view.shape),
                             batch=view.batch + 1)
    return jq_fake_quant_p.bind(x, *new_amax, spec=spec, view=new_view), 0


def _jvp(primals, tangents, *, spec, view):
    x, *amax = primals
    y = jq_fake_quant_p.bind(*primals, spec=spec, view=view)
    tx = ad.instantiate_zeros(tangents[0])
    if spec.pass_through_bwd or not amax:
        return y, tx
    c = view.to_canonical(x)
    mask = clip_mask(c, spec, amax[0], view.batch)
    if mask is None:
        return y, tx
    mask = view.from_canonical(mask, x.shape)
    return y, jnp.where(mask, tx, jnp.zeros_like(tx))


jq_fake_quant_p.def_impl(_impl)
jq_fake_quant_p.def_abstract_eval(_abstract_eval)
batching.primitive_batchers[jq_fake_quant_p] = _batch
ad.primitive_jvps[jq_fake_quant_p] = _jvp
mlir.register_lowering(jq_fake_quant_p, _lowering("cpu"), platform="cpu")
mlir.register_lowering(jq_fake_quant_p, _lowering("gpu"), platform="cuda")
mlir.register_lowering(jq_fake_quant_p, _lowering("gpu"), platform="rocm")
mlir.register_lowering(jq_fake_quant_p, _lowering("tpu"), platform="tpu")
