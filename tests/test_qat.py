"""QAT: gradients follow the straight-through estimator definition, and a quantized model trains."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jq
from jq.numerics import int_fake_quant


def test_gradient_equals_the_clipped_ste_definition(rng):
    """d/dW sum(G * (fq(x) @ fq(W))) = fq(x)^T G masked by |W| <= amax_W (per output channel)."""
    w = jnp.asarray(rng.standard_normal((8, 4)), jnp.float32)
    x = jnp.asarray(rng.standard_normal((5, 8)), jnp.float32)
    g_out = jnp.asarray(rng.standard_normal((5, 4)), jnp.float32)
    f = lambda p, x: x @ p["w"]  # noqa: E731
    qm = jq.quantize({"w": w}, f, jq.INT8_DEFAULT_CFG, calib_data=[(x,)], progress=False)
    # shrink the weight amax so that some weights are clipped and the mask matters
    st = {k: dict(v) for k, v in qm.qstate.items()}
    w_amax = st["w.weight_quantizer"]["amax"] * 0.5  # [out, 1]
    st["w.weight_quantizer"]["amax"] = w_amax
    qm = qm.replace(qstate=st)
    grad = jax.grad(lambda p: jnp.sum(g_out * qm.apply(p, x)))({"w": w})["w"]
    xq = int_fake_quant(x, st["w.input_quantizer"]["amax"], 8)
    mask = jnp.abs(w) <= w_amax[:, 0][None, :]
    np.testing.assert_allclose(grad, jnp.where(mask, xq.T @ g_out, 0.0), rtol=1e-6, atol=1e-6)
    assert 0 < int(mask.sum()) < mask.size


def test_pass_through_ste_does_not_mask(rng):
    w = jnp.asarray(rng.standard_normal((8, 4)), jnp.float32)
    x = jnp.asarray(rng.standard_normal((5, 8)), jnp.float32)
    cfg = jq.QuantConfig.from_dict({"quant_cfg": {
        "*weight_quantizer": {"num_bits": 8, "axis": 0, "pass_through_bwd": True},
        "*input_quantizer": {"enable": False}}})
    qm = jq.quantize({"w": w}, lambda p, x: x @ p["w"], cfg, calib_data=[(x,)], progress=False)
    st = {"w.weight_quantizer": {"amax": qm.qstate["w.weight_quantizer"]["amax"] * 0.1}}
    grad = jax.grad(lambda p: jnp.sum(qm.replace(qstate=st).apply(p, x)))({"w": w})["w"]
    np.testing.assert_allclose(grad, x.T @ jnp.ones((5, 4)), rtol=1e-6)


def test_ste_helper():
    np.testing.assert_array_equal(jq.qat.ste_gradient(jnp.array([0.2, -3.0]), jnp.float32(1)), [1, 0])


def test_nvfp4_qat_loss_goes_down(rng):
    """A tiny regression model quantized to NVFP4 trains with optax: the loss falls."""
    import flax.linen as nn

    model = nn.Sequential([nn.Dense(64), nn.relu, nn.Dense(1)])
    x = jnp.asarray(rng.standard_normal((256, 16)), jnp.float32)
    y = jnp.sin(x[:, :1] * 2) + 0.5 * x[:, 1:2]
    params = model.init(jax.random.key(0), x)
    qm = jq.quantize(params, model.apply, jq.NVFP4_DEFAULT_CFG, calib_data=[(x,)], progress=False)

    def loss_fn(apply, p, batch):
        bx, by = batch
        return jnp.mean((apply(p, bx) - by) ** 2)

    opt = optax.adam(3e-3)
    step = jq.qat.make_train_step(qm, loss_fn, opt)
    p, s = qm.params, opt.init(qm.params)
    first = float(loss_fn(qm.apply, p, (x, y)))
    for _ in range(150):
        p, s, _ = step(p, s, (x, y))
    last = float(loss_fn(qm.apply, p, (x, y)))
    assert last < 0.5 * first
    refreshed = jq.qat.recalibrate_weights(qm.replace(params=p))
    assert not np.array_equal(refreshed.qstate["layers_0.weight_quantizer"]["amax"],
                              qm.qstate["layers_0.weight_quantizer"]["amax"])


# --- distillation_loss (QAD) -------------------------------------------------------------------------------------

def test_distillation_loss_is_zero_for_identical_logits():
    logits = jnp.array([[1.0, -2.0, 0.5], [3.0, 3.0, -1.0]])
    assert float(jq.qat.distillation_loss(logits, logits)) == pytest.approx(0.0, abs=1e-7)


def test_distillation_loss_reference_value():
    # teacher p = (0.75, 0.25), student q = (0.5, 0.5): KL(p || q) = 0.75 ln 1.5 + 0.25 ln 0.5 (hand computed)
    teacher = jnp.log(jnp.array([[0.75, 0.25]]))
    student = jnp.zeros((1, 2))
    want = 0.75 * np.log(1.5) + 0.25 * np.log(0.5)
    assert float(jq.qat.distillation_loss(student, teacher)) == pytest.approx(want, rel=1e-6)


def test_distillation_loss_gradient_is_temperature_times_probability_difference():
    # d/ds [T^2 KL(softmax(t/T) || softmax(s/T))] averaged over N rows = T (softmax(s/T) - softmax(t/T)) / N;
    # no gradient reaches the teacher
    s = jnp.array([[0.3, -1.0, 2.0], [0.0, 1.0, -0.5]])
    t = jnp.array([[1.0, 0.5, -0.5], [2.0, -1.0, 0.0]])
    temp = 2.0
    gs, gt = jax.grad(lambda a, b: jq.qat.distillation_loss(a, b, temperature=temp), argnums=(0, 1))(s, t)
    want = temp * (jax.nn.softmax(s / temp) - jax.nn.softmax(t / temp)) / s.shape[0]
    np.testing.assert_allclose(np.asarray(gs), np.asarray(want), rtol=1e-5, atol=1e-7)
    assert not np.any(np.asarray(gt))


def test_distillation_loss_rejects_bad_input():
    with pytest.raises(ValueError, match="temperature must be > 0, got 0"):
        jq.qat.distillation_loss(jnp.zeros((1, 2)), jnp.zeros((1, 2)), temperature=0.0)
    with pytest.raises(ValueError, match=r"\(1, 3\).*\(1, 2\)"):
        jq.qat.distillation_loss(jnp.zeros((1, 3)), jnp.zeros((1, 2)))
