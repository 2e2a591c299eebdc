"""Learnable amax (LSQ): the amax gradient is LSQ's formula, amaxes move in training, off changes nothing."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jq
from jq.config import QuantizerSpec
from jq.fake_quant import fake_quant
from jq.qat_amax import LearnableAmax, lsq_fake_quant, lsq_grad_scale


def lsq_step_grad(x, s, q_n, q_p):
    """LSQ's eq. 3 (Esser et al. 2020): d x_hat / d s = -v/s + round(v/s) inside, Q_n / Q_p outside."""
    v = x / s
    return np.where(v <= q_n, q_n, np.where(v >= q_p, q_p, np.round(v) - v))


def test_int8_amax_gradient_is_lsq_formula():
    """d/da sum(ct * fq(x, a)) = sum(ct * dx_hat/ds) / Q_p with s = a / Q_p (int8: Q_p = 127, Q_n = -128)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal(64).astype(np.float32) * 2.0
    ct = rng.standard_normal(64).astype(np.float32)
    a = np.float32(2.5)  # some |x| exceed it: both clipped branches occur
    assert (x > a).any() and (x < -a).any()
    spec = QuantizerSpec(num_bits=8)
    got = jax.grad(lambda a: jnp.sum(ct * lsq_fake_quant(jnp.asarray(x), a, spec)))(jnp.float32(a))
    s = a / 127.0
    assert ((x / s > -128) & (x / s < -127)).any()  # the code -128 range where LSQ's Q_n = -128 matters
    expected = np.sum(ct * lsq_step_grad(x, s, -128, 127)) / 127.0
    np.testing.assert_allclose(got, expected, rtol=1e-4)


def test_per_channel_amax_gradient_sums_over_its_channel():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((3, 16)), jnp.float32)
    a = jnp.asarray([0.5, 1.0, 4.0], jnp.float32)
    spec = QuantizerSpec(num_bits=4, axis=0)
    got = jax.grad(lambda a: jnp.sum(lsq_fake_quant(x, a, spec)))(a)
    xs = np.asarray(x)
    for c in range(3):
        expected = lsq_step_grad(xs[c], float(a[c]) / 7.0, -8, 7).sum() / 7.0
        np.testing.assert_allclose(got[c], expected, rtol=1e-4)


def test_fp8_and_nvfp4_gradient_matches_homogeneity_formula():
    """dy/da = (y - x [|x| <= a]) / a: the STE derivative of a f(x / a) for any homogeneous quantizer."""
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.standard_normal((4, 32)), jnp.float32)
    nvfp4 = QuantizerSpec.from_dict(jq.NVFP4_DEFAULT_CFG["quant_cfg"]["*input_quantizer"])
    for spec in (QuantizerSpec(num_bits=(4, 3)), nvfp4):
        a = jnp.float32(1.5)
        y = fake_quant(x, a, spec=spec)
        got = jax.grad(lambda a: jnp.sum(lsq_fake_quant(x, a, spec)))(a)
        inside = jnp.abs(x) <= a  # FP8 / NVFP4 saturate symmetrically at +-a
        np.testing.assert_allclose(got, jnp.sum((y - jnp.where(inside, x, 0)) / a), rtol=1e-5)


def test_gradient_to_x_is_the_clipped_ste_and_forward_is_unchanged():
    x = jnp.linspace(-3, 3, 13)
    spec = QuantizerSpec(num_bits=8)
    y, vjp = jax.vjp(lambda x: lsq_fake_quant(x, jnp.float32(2.0), spec), x)
    np.testing.assert_array_equal(y, fake_quant(x, jnp.float32(2.0), spec=spec))
    np.testing.assert_array_equal(vjp(jnp.ones_like(x))[0], (jnp.abs(x) <= 2.0).astype(jnp.float32))


def test_lsq_grad_scale_uses_elements_and_largest_code():
    assert lsq_grad_scale(QuantizerSpec(num_bits=8), 100) == pytest.approx(1 / np.sqrt(100 * 127))
    assert lsq_grad_scale(QuantizerSpec(num_bits=(4, 3)), 4) == pytest.approx(1 / np.sqrt(4 * 448))
    x = jnp.linspace(-3, 3, 13)
    raw = jax.grad(lambda a: lsq_fake_quant(x, a, QuantizerSpec(num_bits=8), None, 1.0).sum())(jnp.float32(2.0))
    lsq = jax.grad(lambda a: lsq_fake_quant(x, a, QuantizerSpec(num_bits=8), None, "lsq").sum())(jnp.float32(2.0))
    np.testing.assert_allclose(lsq, raw / np.sqrt(13 * 127), rtol=1e-6)


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="grad_scale"):
        LearnableAmax(grad_scale="sqrt")
    with pytest.raises(ValueError, match="trains nothing"):
        LearnableAmax(weights=False, activations=False)


def _model():
    rng = np.random.default_rng(3)
    w1 = jnp.asarray(rng.standard_normal((8, 16)) * 0.5, jnp.float32)
    w2 = jnp.asarray(rng.standard_normal((16, 1)) * 0.5, jnp.float32)
    x = jnp.asarray(rng.standard_normal((64, 8)), jnp.float32)
    y = jnp.sin(x[:, :1]) + 0.3 * x[:, 1:2]
    f = lambda p, x: jax.nn.relu(x @ p["w1"]) @ p["w2"]
    qm = jq.quantize({"w1": w1, "w2": w2}, f, jq.INT8_DEFAULT_CFG,
                     calib_data=[(x,)], progress=False)
    loss = lambda apply, p, b: jnp.mean((apply(p, b[0]) - b[1]) ** 2)
    return qm, loss, (x, y)


def test_amaxes_change_during_training_and_only_the_selected_ones():
    qm, loss, batch = _model()
    learn = LearnableAmax(activations=False)
    train = jq.qat.trainable(qm, learn)
    assert sorted(train["amax"]) == ["w1.weight_quantizer"]  # w2 is the output head: presets leave it float
    opt = optax.adam(1e-2)
    step = jq.qat.make_train_step(qm, loss, opt, learnable_amax=learn)
    state, losses = opt.init(train), []
    for _ in range(5):
        train, state, l = step(train, state, batch)
        losses.append(float(l))
    before = qm.qstate["w1.weight_quantizer"]["amax"]
    after = train["amax"]["w1.weight_quantizer"]["amax"]
    assert after.shape == before.shape and float(jnp.max(jnp.abs(after - before))) > 1e-3
    assert losses[-1] < losses[0]
    qm2 = jq.qat.with_trainable(qm, train)
    np.testing.assert_array_equal(qm2.qstate["w1.weight_quantizer"]["amax"], after)
    np.testing.assert_array_equal(qm2.qstate["w1.input_quantizer"]["amax"], qm.qstate["w1.input_quantizer"]["amax"])


def test_option_off_is_bit_identical_to_fixed_amax_qat():
    """``learnable_amax=None`` is the old step; and learnable amaxes with a zero learning rate for them
    give the fixed-amax run's params bit for bit (the forward and the gradient to the weights are unchanged)."""
    qm, loss, batch = _model()
    opt = optax.sgd(1e-2)
    fixed = jq.qat.make_train_step(qm, loss, opt)
    p, s = qm.params, opt.init(qm.params)
    for _ in range(3):
        p, s, l_fixed = fixed(p, s, batch)
    learn = LearnableAmax()
    train = jq.qat.trainable(qm, learn)
    labels = {"params": jax.tree.map(lambda _: "p", train["params"]), "amax": jax.tree.map(lambda _: "a", train["amax"])}
    frozen = optax.multi_transform({"p": opt, "a": optax.set_to_zero()}, labels)
    step = jq.qat.make_train_step(qm, loss, frozen, learnable_amax=learn)
    st = frozen.init(train)
    for _ in range(3):
        train, st, l_learn = step(train, st, batch)
    assert float(l_fixed) == float(l_learn)
    for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(train["params"])):
        np.testing.assert_array_equal(np.asarray(a).view(np.uint32), np.asarray(b).view(np.uint32))


def test_block_amaxes_are_refused_with_the_quantizer_name():
    from jq.qat_amax import check_learnable

    spec = QuantizerSpec.from_dict({"num_bits": 4, "block_sizes": {-1: 16, "type": "static"}})
    with pytest.raises(ValueError, match="'w.weight_quantizer'.*block amaxes"):
        check_learnable("w.weight_quantizer", spec, jnp.ones((4, 2)))
