"""Quantization-aware training: the straight-through estimator and optax helpers.

``QuantizedModel.apply`` is differentiable: every ``jq_fake_quant`` passes gradients straight through,
clipped to ``|x| <= amax`` unless the spec sets ``pass_through_bwd=True`` (ModelOpt's two STEs). So QAT is
an ordinary JAX training loop over ``qm.params``::

    step = jq.qat.make_train_step(qm, loss_fn, optax.adamw(1e-4))
    params, opt_state = qm.params, optimizer.init(qm.params)
    for batch in data:
        params, opt_state, loss = step(params, opt_state, batch)
    qm = jq.qat.recalibrate_weights(qm.replace(params=params))  # weight amaxes from the trained weights

The calibrated amaxes stay fixed during training (ModelOpt's behaviour); :func:`recalibrate_weights`
refreshes the weight amaxes from the trained params before export (NVFP4 QAT of a GPT: 73.8 % / 73.3 % of the
PTQ gap recovered with the refresh, 68.4 % / 66.9 % without, two seeds; ``docs/training_qat.md``). With ``learnable_amax=LearnableAmax(...)``
(:mod:`jq.qat_amax`, LSQ) the amaxes are trained too: the step then updates ``trainable(qm, learn)``,
``{"params": ..., "amax": {quantizer: {"amax": ...}}}``, and :func:`with_trainable` puts it back into ``qm``.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from jq.calib.weights import calibrate_weights
from jq.qat_amax import LearnableAmax, LearnableAmaxFakeQuant

__all__ = [
    "LearnableAmax",
    "distillation_loss",
    "make_train_step",
    "recalibrate_weights",
    "ste_gradient",
    "trainable",
    "trainable_apply",
    "with_trainable",
]


def ste_gradient(x: jax.Array, amax: jax.Array | None, pass_through: bool = False) -> jax.Array:
    """The gradient multiplier of fake quantization: 1 (pass-through) or ``|x| <= amax`` (clipped STE).

    Example:
      >>> ste_gradient(jnp.array([0.5, -2.0]), jnp.float32(1.0))
      Array([1., 0.], dtype=float32)
    """
    if pass_through or amax is None:
        return jnp.ones_like(x, dtype=jnp.float32)
    return (jnp.abs(x) <= amax).astype(jnp.float32)


def distillation_loss(student_logits: jax.Array, teacher_logits: jax.Array, *, temperature: float = 1.0) -> jax.Array:
    """Knowledge-distillation loss for quantization-aware distillation (QAD): the mean over positions of
    ``T² KL(p_t || p_s)``, ``p = softmax(logits / T)`` over the last axis (Hinton et al. 2015), with the teacher
    (usually the float model) held constant.

    QAD trains the fake-quantized student to reproduce the float model's output distribution instead of the
    labels, which is ModelOpt's recommended recovery for 4-bit formats; use it as the ``loss_fn`` of
    :func:`make_train_step` with the teacher's logits computed on the same batch.

    Example:
      >>> s, t = jnp.array([[0.0, 1.0]]), jnp.array([[0.0, 1.0]])
      >>> float(distillation_loss(s, t))
      0.0
    """
    if temperature <= 0:
        raise ValueError(f"distillation_loss: temperature must be > 0, got {temperature}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"distillation_loss: student logits {student_logits.shape} and teacher logits "
                         f"{teacher_logits.shape} differ in shape")
    t = jax.lax.stop_gradient(teacher_logits.astype(jnp.float32)) / temperature
    s = student_logits.astype(jnp.float32) / temperature
    log_pt = jax.nn.log_softmax(t, axis=-1)
    kl = jnp.sum(jnp.exp(log_pt) * (log_pt - jax.nn.log_softmax(s, axis=-1)), axis=-1)
    return temperature**2 * jnp.mean(kl)


def trainable(qm, learn: LearnableAmax) -> dict:
    """The pytree QAT with learnable amaxes trains: ``{"params": qm.params, "amax": {name: {"amax": a}}}``
    for the quantizers ``learn`` selects (weights and/or activations) that hold an amax.

    Example:
      >>> train = trainable(qm, LearnableAmax(activations=False))   # weight amaxes only
    """
    slots = qm.traced.quantizers
    amax = {name: {"amax": st["amax"]} for name, st in qm.qstate.items()
            if "amax" in st and name in slots and learn.selects(slots[name].is_weight)}
    if not amax:
        raise ValueError(f"{learn} selects no quantizer with a calibrated amax (calibrate the model first)")
    return {"params": qm.params, "amax": amax}


def with_trainable(qm, train: dict):
    """``qm`` with the params and amaxes of a :func:`trainable` pytree."""
    state = {k: dict(v) for k, v in qm.qstate.items()}
    for name, entry in train["amax"].items():
        state[name].update(entry)
    return qm.replace(params=train["params"], qstate=state)


def trainable_apply(qm, learn: LearnableAmax) -> Callable:
    """``apply(train, *args)``: the quantized model on a :func:`trainable` pytree, differentiable in its amaxes."""
    handler = LearnableAmaxFakeQuant(learn)

    def apply(train, *args, **kwargs):
        return with_trainable(qm, train).evaluate(handler, train["params"], *args, **kwargs)

    return apply


def make_train_step(qm, loss_fn: Callable, optimizer, *, jit: bool = True,
                    learnable_amax: LearnableAmax | None = None) -> Callable:
    """A training step ``step(params, opt_state, batch) -> (params, opt_state, loss)`` for QAT.

    Args:
      qm: the quantized model (its quantizer state is used; its params are the initial point only).
      loss_fn: ``loss_fn(apply, params, batch) -> scalar`` where ``apply(params, *args)`` runs the
        quantized model.
      optimizer: an ``optax.GradientTransformation``.
      jit: compile the step with ``jax.jit``.
      learnable_amax: None (the amaxes stay fixed) or a :class:`LearnableAmax`: then ``params`` is the
        :func:`trainable` pytree and the optimizer also updates the selected amaxes (LSQ gradient).
    """
    import optax

    apply = qm.apply if learnable_amax is None else trainable_apply(qm, learnable_amax)

    def step(params, opt_state, batch):
        loss, grads = jax.value_and_grad(lambda p: loss_fn(apply, p, batch))(params)
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
