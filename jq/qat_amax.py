"""Learnable amax for QAT (LSQ, Esser et al. 2020; ModelOpt's ``learn_amax``): the amax gets a gradient.

The forward is the ordinary fake quantization (:func:`jq.fake_quant.fake_quant`, bit for bit); only the
backward differs. Every jq quantizer with an amax ``a`` is *homogeneous*: ``fq(c x, c a) = c fq(x, a)``
for ``c > 0`` (INT, FP8 and NVFP4's two-level scales alike), so ``fq(x, a) = a f(x / a)`` with ``f``
piecewise constant. The straight-through estimator on ``f`` (``f'(u) = 1`` where ``|x| <= a``, else 0) gives

    dy/da = (y - x m) / a,        m = [Q_n s <= x <= Q_p s]   (not saturated; |fq(+-2a)| bounds it)

which for INT is exactly LSQ's step-size gradient ``dy/ds = round(x/s) - x/s`` inside the range and
``Q_n`` / ``Q_p`` outside, with ``a = s Q_p``. The gradient to ``x`` stays ModelOpt's clipped STE
(``|x| <= a``; INT8's extra code -128 makes the two regions differ by one step on the negative side). Per-channel amaxes sum it over the elements they scale.
LSQ scales the step-size gradient by ``g = 1 / sqrt(N Q_p)`` (``N`` elements per amax entry, ``Q_p`` the
largest code: 127 for INT8, 448 for E4M3, 2688 = 6 x 448 for NVFP4's global amax); ``grad_scale="lsq"``
applies it, a float applies that factor. Adam-family optimizers are invariant to a constant factor per
parameter (up to their epsilon), so the scale matters for SGD.

Example::

    learn = jq.qat.LearnableAmax()                   # weights and activations, LSQ gradient scale
    train = jq.qat.trainable(qm, learn)              # {"params": ..., "amax": {name: {"amax": ...}}}
    step = jq.qat.make_train_step(qm, loss_fn, optax.adam(1e-4), learnable_amax=learn)
    train, opt_state, loss = step(train, opt_state, batch)
    qm = jq.qat.with_trainable(qm, train)
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from jq.fake_quant import fake_quant
from jq.formats.base import broadcastable_amax
from jq.handlers.apply import FakeQuant
from jq.handlers.base import QuantizerCall
from jq.quantizer import CanonicalView, clip_mask

__all__ = ["LearnableAmax", "LearnableAmaxFakeQuant", "lsq_fake_quant", "lsq_grad_scale"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class LearnableAmax:
    """Which amaxes QAT trains, and how their gradient is scaled.

    Attributes:
      weights: train the amax of weight quantizers.
      activations: train the amax of input/output (activation) quantizers.
      grad_scale: ``"lsq"`` (``1 / sqrt(N Q_p)``), a float factor, or ``1.0`` for the raw gradient.
      min_amax: the amax used is ``max(amax, min_amax)`` so a step cannot make it zero or negative.
    """

    weights: bool = True
    activations: bool = True
    grad_scale: float | str = "lsq"
    min_amax: float = 1e-6

    def __post_init__(self):
        if not (self.grad_scale == "lsq" or isinstance(self.grad_scale, (int, float))):
            raise ValueError(f"LearnableAmax.grad_scale must be 'lsq' or a number, got {self.grad_scale!r}")
        if not (self.weights or self.activations):
            raise ValueError("LearnableAmax trains nothing: set weights=True and/or activations=True")

    def selects(self, is_weight: bool) -> bool:
        """Whether a quantizer of this kind (weight or activation) has its amax trained."""
        return self.weights if is_weight else self.activations


def lsq_grad_scale(spec, n_per_amax: int) -> float:
    """LSQ's ``g = 1 / sqrt(N Q_p)`` with ``Q_p = amax / scale`` of the format (127 INT8, 448 E4M3, 2688 NVFP4).

    Example:
      >>> from jq.config import QuantizerSpec
      >>> round(lsq_grad_scale(QuantizerSpec(num_bits=8), 100), 5)  # 1 / sqrt(100 * 127)
      0.00887
    """
    with jax.ensure_compile_time_eval():  # a constant, also when called while tracing a jitted step
        q_p = 1.0 / float(np.asarray(spec.format.export_scale(spec, 1.0)).reshape(-1)[0])
    return 1.0 / float(np.sqrt(max(1, n_per_amax) * q_p))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def lsq_fake_quant(x, amax, spec, view: CanonicalView | None = None, grad_scale: float | str = 1.0):
    """:func:`jq.fake_quant.fake_quant` whose backward also returns ``dL/da = g sum ct (y - x m) / a``.

    ``amax`` is per tensor (a scalar) or per channel (broadcastable against the canonical view); the
    gradient to ``x`` is the clipped STE (``pass_through_bwd``: plain STE), as without LSQ.

    Example:
      >>> from jq.config import QuantizerSpec
      >>> s = QuantizerSpec(num_bits=8)
      >>> jax.grad(lambda a: lsq_fake_quant(jnp.array([2.0]), a, s).sum())(jnp.float32(1.0))
      Array(1., dtype=float32)
    """
    return fake_quant(x, amax, spec=spec, view=view)


def _fwd(x, amax, spec, view, grad_scale):
    y = fake_quant(x, amax, spec=spec, view=view)
    return y, (x, amax, y)


def _bwd(spec, view, grad_scale, res, ct):
    x, amax, y = res
    view = CanonicalView.identity(x.shape) if view is None else view
    f32 = jnp.float32
    c, yc, ctc = (view.to_canonical(t).astype(f32) for t in (x, y, ct))
    mask = clip_mask(c, spec, amax, view.batch)  # ModelOpt's clipped STE for x: |x| <= a
    gx = ct if spec.pass_through_bwd or mask is None else jnp.where(
        view.from_canonical(jnp.broadcast_to(mask, c.shape), x.shape), ct, jnp.zeros_like(ct))
    a = jnp.asarray(amax, f32)
    a_b, pull = jax.vjp(lambda t: jnp.broadcast_to(broadcastable_amax(t, c.ndim), c.shape), a)
    # unsaturated region [Q_n s, Q_p s]: |x| <= |fq(+-2a)|, the saturation value on x's side (INT8: -128 s .. 127 s)
    canonical = CanonicalView(tuple(range(c.ndim)), tuple(c.shape), view.batch)  # c is already canonical
    sat = fake_quant(jnp.where(c < 0, -2.0 * a_b, 2.0 * a_b), amax, spec=spec, view=canonical)
    inside = jnp.abs(c) <= jnp.abs(sat)
    dyda = jnp.where(a_b > 0, (yc - jnp.where(inside, c, 0.0)) / jnp.where(a_b > 0, a_b, 1.0), 0.0)
    (ga,) = pull(ctc * dyda)
    g = lsq_grad_scale(spec, c.size // max(1, a.size)) if grad_scale == "lsq" else float(grad_scale)
    return gx, (ga * g).astype(jnp.asarray(amax).dtype)


lsq_fake_quant.defvjp(_fwd, _bwd)


class LearnableAmaxFakeQuant(FakeQuant):
    """The quantized model with trainable amaxes: :class:`jq.handlers.apply.FakeQuant`'s forward, with
    :func:`lsq_fake_quant` on the quantizers ``learn`` selects (their first-stage ``amax``)."""

    def __init__(self, learn: LearnableAmax):
        self.learn = learn

    def stage(self, q: QuantizerCall, i: int, spec, x, amax):
        if amax is not None and i == 0 and self.learn.selects(q.is_weight):
            check_learnable(q.name, spec, amax)
            return lsq_fake_quant(x, jnp.maximum(amax, self.learn.min_amax), spec, q.view, self.learn.grad_scale)
        return super().stage(q, i, spec, x, amax)


def check_learnable(name: str, spec, amax) -> None:
    """Per-tensor and per-channel amaxes are learnable; calibrated *block* amaxes are not (an error naming them)."""
    if jnp.ndim(amax) and spec.block_sizes is not None:
        raise ValueError(f"quantizer {name!r} ({spec.describe()}): learnable amax supports per-tensor and "
                         f"per-channel amaxes, not static block amaxes of shape {tuple(jnp.shape(amax))}")
