"""Quantization-aware training: the straight-through estimator and optax helpers.

``QuantizedModel.apply`` is differentiable: every ``jq_fake_quant`` passes gradients straight through,
clipped to ``|x| <= amax`` unless the spec sets ``pass_through_bwd=True`` (ModelOpt's two STEs). So QAT is
an ordinary JAX training loop over ``qm.params``::

    step = jq.qat.make_train_step(qm, loss_fn, optax.adamw(1e-4))
    params, opt_state = qm.params, optimizer.init(qm.params)
    for batch in data:
        params, opt_state, loss = step(params, opt_state, batch)
    qm = qm.replace(params=params)

The calibrated amaxes stay fixed during training (ModelOpt's behaviour); :func:`recalibrate_weights`
refreshes the weight amaxes from the trained params.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from jq.calib.weights import calibrate_weights

__all__ = ["ste_gradient", "make_train_step", "recalibrate_weights"]


def ste_gradient(x: jax.Array, amax: jax.Array | None, pass_through: bool = False) -> jax.Array:
    """The gradient multiplier of fake quantization: 1 (pass-through) or ``|x| <= amax`` (clipped STE).

    Example:
      >>> ste_gradient(jnp.array([0.5, -2.0]), jnp.float32(1.0))
      Array([1., 0.], dtype=float32)
    """
    if pass_through or amax is None:
        return jnp.ones_like(x, dtype=jnp.float32)
    return (jnp.abs(x) <= amax).astype(jnp.float32)


def make_train_step(qm, loss_fn: Callable, optimizer, *, jit: bool = True) -> Callable:
    """A training step ``step(params, opt_state, batch) -> (params, opt_state, loss)`` for QAT.

    Args:
      qm: the quantized model (its quantizer state is used; its params are the initial point only).
      loss_fn: ``loss_fn(apply, params, batch) -> scalar`` where ``apply(params, *args)`` runs the
        quantized model.
      optimizer: an ``optax.GradientTransformation``.
      jit: compile the step with ``jax.jit``.
    """
    import optax

    def step(params, opt_state, batch):
        loss, grads = jax.value_and_grad(lambda p: loss_fn(qm.apply, p, batch))(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return jax.jit(step) if jit else step


def recalibrate_weights(qm):
    """Recompute weight amaxes from ``qm.params`` (after QAT moved the weights); activations unchanged."""
    traced = qm.traced
    state = {k: dict(v) for k, v in qm.qstate.items()}
    leaves = jax.tree_util.tree_leaves(qm.params)
    for name, entry in calibrate_weights(traced, qm.specs(traced), leaves, qm.qstate).items():
        state.setdefault(name, {}).update(entry)
    return qm.replace(qstate=state)
