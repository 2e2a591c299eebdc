"""The transform evaluates apply_fn with quantizers at every site, through every control-flow construct.

Reference: the same computation written by hand with ``fake_quant_reference`` on each operand.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, PartitionSpec as P

import jq
from jq.presets import with_output_head
from jq.numerics import fp8_fake_quant, int_fake_quant
from tests import _models as M

INT8 = with_output_head(jq.INT8_DEFAULT_CFG)  # every layer, the output head too: these check the arithmetic


def _fq_int8_act(x, amax):
    return int_fake_quant(x, amax, 8)


def _fq_int8_weight(w, in_axis=0):  # per output channel of a [in, out] weight
    amax = jnp.max(jnp.abs(w), axis=in_axis, keepdims=True)
    return int_fake_quant(w, amax, 8)


def test_plain_function_equals_hand_written_reference(rng):
    p = M.plain_params()
    x = jnp.asarray(rng.standard_normal((4, 8)), jnp.float32)
    qm = jq.quantize(p, M.plain_fn, INT8, calib_data=[(x,)], progress=False)
    h_float = jnp.tanh(x @ p["w1"])  # calibration runs with quantization off (ModelOpt's order)
    h = jnp.tanh(_fq_int8_act(x, jnp.max(jnp.abs(x))) @ _fq_int8_weight(p["w1"]))
    want = _fq_int8_act(h, jnp.max(jnp.abs(h_float))) @ _fq_int8_weight(p["w2"])
    np.testing.assert_array_equal(qm.apply(qm.params, x), want)
    np.testing.assert_array_equal(jax.jit(qm.apply)(qm.params, x), jax.jit(lambda: want)())


def test_scan_over_layers_uses_per_layer_state(rng):
    x = jnp.asarray(rng.standard_normal((3, 5)), jnp.float32)
    params, apply = M.linen(M.ScanStack(n_layers=3), x)
    qm = jq.quantize(params, apply, INT8, calib_data=[(x,)], progress=False)
    kernel = params["params"]["layers"]["fc"]["kernel"]  # [3, 16, 16]
    amax = qm.qstate["layers.fc.weight_quantizer"]["amax"]
    assert amax.shape == (3, 16, 1)
    np.testing.assert_array_equal(amax[:, :, 0], jnp.max(jnp.abs(kernel), axis=1))
    in_amax = qm.qstate["layers.fc.input_quantizer"]["amax"]
    assert in_amax.shape == (3,) and len(set(np.asarray(in_amax).tolist())) == 3  # one per layer
    # unrolled reference: layer i uses its own amaxes
    ln = lambda v, p: (v - v.mean(-1, keepdims=True)) / jnp.sqrt(v.var(-1, keepdims=True) + 1e-6) * p["scale"] + p["bias"]  # noqa: E731
    pp = params["params"]
    xe = _fq_int8_act(x, qm.qstate["embed_proj.input_quantizer"]["amax"])
    h = xe @ _fq_int8_weight(pp["embed_proj"]["kernel"]) + pp["embed_proj"]["bias"]
    for i in range(3):
        li = jax.tree_util.tree_map(lambda a: a[i], pp["layers"])
        n = ln(h, li["norm"])
        y = _fq_int8_act(n, in_amax[i]) @ _fq_int8_weight(li["fc"]["kernel"]) + li["fc"]["bias"]
        h = h + jnp.tanh(y)
    want = _fq_int8_act(h, qm.qstate["out_proj.input_quantizer"]["amax"]) @ _fq_int8_weight(
        pp["out_proj"]["kernel"]) + pp["out_proj"]["bias"]
    np.testing.assert_allclose(qm.apply(qm.params, x), want, rtol=2e-5, atol=2e-5)


def test_while_and_cond_calibrate_over_all_iterations_and_branches(rng):
    p = M.plain_params()
    x = jnp.asarray(rng.standard_normal((2, 8)), jnp.float32)

    def f(p, x):
        h = jnp.tanh(x @ p["w1"])
        h = jax.lax.while_loop(lambda c: c[0] < 3, lambda c: (c[0] + 1, c[1] * 2.0), (0, h))[1]
        return jax.lax.cond(x.sum() > 1e9, lambda a: a @ p["w2"], lambda a: (a * 0.5) @ p["w2"], h)

    qm = jq.quantize(p, f, jq.FP8_DEFAULT_CFG, calib_data=[(x,)], progress=False)
    h = jnp.tanh(x @ p["w1"]) * 8.0
    np.testing.assert_allclose(qm.qstate["w2.input_quantizer"]["amax"], jnp.max(jnp.abs(h * 0.5)), rtol=1e-6)
    hq = jnp.tanh(fp8_fake_quant(x, jnp.max(jnp.abs(x))) @ fp8_fake_quant(p["w1"], jnp.max(jnp.abs(p["w1"])))) * 8
    want = fp8_fake_quant(hq * 0.5, jnp.max(jnp.abs(h * 0.5))) @ fp8_fake_quant(p["w2"], jnp.max(jnp.abs(p["w2"])))
    np.testing.assert_allclose(qm.apply(qm.params, x), want, rtol=1e-6)


def test_while_loop_with_a_site_in_the_body(rng):
    p = {"w": jnp.asarray(rng.standard_normal((8, 8)), jnp.float32) / 3}
    x = jnp.asarray(rng.standard_normal((2, 8)), jnp.float32)
    f = lambda p, x: jax.lax.fori_loop(0, 4, lambda i, h: jnp.tanh(h @ p["w"]), x)  # noqa: E731
    loop_f = lambda p, x: jax.lax.while_loop(lambda c: c[0] < 4, lambda c: (c[0] + 1, jnp.tanh(c[1] @ p["w"])),
                                             (0, x))[1]  # noqa: E731
    for fn in (f, loop_f):
        qm = jq.quantize(p, fn, INT8, calib_data=[(x,)], progress=False)
        hs, h = [], x
        for _ in range(4):
            hs.append(h)
            h = jnp.tanh(h @ p["w"])
        assert float(qm.qstate["w.input_quantizer"]["amax"]) == float(max(jnp.max(jnp.abs(v)) for v in hs))


def test_remat_keeps_gradients_and_policy():
    p = M.plain_params()
    f = lambda p, x: jax.checkpoint(M.plain_fn, policy=jax.checkpoint_policies.nothing_saveable)(p, x)  # noqa
    x = jnp.ones((2, 8))
    qa = jq.quantize(p, f, INT8, calib_data=[(x,)], progress=False)
    qb = jq.quantize(p, M.plain_fn, INT8, calib_data=[(x,)], progress=False)
    ga = jax.grad(lambda q: qa.apply(q, x).sum())(p)
    gb = jax.grad(lambda q: qb.apply(q, x).sum())(p)
    jax.tree_util.tree_map(np.testing.assert_allclose, ga, gb)
    assert "remat" in str(jax.make_jaxpr(lambda q: qa.apply(q, x))(p))


def test_shard_map_with_two_devices(rng):
    assert jax.device_count() == 2
    mesh = Mesh(np.array(jax.devices()), ("d",))
    p = {"w": jnp.asarray(rng.standard_normal((8, 4)), jnp.float32)}
    x = jnp.asarray(rng.standard_normal((4, 8)), jnp.float32) * jnp.array([[1.0], [1.0], [5.0], [1.0]])

    def f(p, x):
        return jax.shard_map(lambda a, w: a @ w, mesh=mesh, in_specs=(P("d"), P()), out_specs=P("d"))(x, p["w"])

    qm = jq.quantize(p, f, INT8, calib_data=[(x,)], progress=False)
    # the activation amax is reduced over both devices (the 5x row lives on device 1)
    assert float(qm.qstate["w.input_quantizer"]["amax"]) == float(jnp.max(jnp.abs(x)))
    plain = jq.quantize(p, lambda p, x: x @ p["w"], INT8, calib_data=[(x,)], progress=False)
    np.testing.assert_array_equal(jax.jit(qm.apply)(qm.params, x), plain.apply(plain.params, x))


def test_custom_vjp_body_with_a_site_is_quantized():
    @jax.custom_vjp
    def layer(x, w):
        return x @ w

    layer.defvjp(lambda x, w: (x @ w, (x, w)), lambda r, g: (g @ r[1].T, r[0].T @ g))
    p = {"w": jnp.eye(4) * 0.37}
    x = jnp.linspace(-1, 1, 8).reshape(2, 4)
    qm = jq.quantize(p, lambda p, x: layer(x, p["w"]), jq.FP8_DEFAULT_CFG, calib_data=[(x,)], progress=False)
    want = fp8_fake_quant(x, jnp.float32(1.0)) @ fp8_fake_quant(p["w"], jnp.float32(0.37))
    np.testing.assert_array_equal(qm.apply(qm.params, x), want)


# One config per fake-quant code path under jit/grad/vmap: INT, FP8 per tensor (fp8_kv = FP8_DEFAULT_CFG plus the
# KV-cache quantizers, so it covers the plain FP8 preset's sites too), NVFP4 two-level blocks, MXFP8 E8M0 blocks.
# One transformer block: a second one repeats the same sites and only doubles the compile time.
# The re-trace at a new shape runs where quantizer state could depend on it: the KV quantizers (the sequence
# length changes) and NVFP4's blocks; INT8 and MXFP8 hold per-tensor/per-channel state like FP8.
@pytest.mark.parametrize("cfg,tol,new_shape", [
    (jq.INT8_DEFAULT_CFG, 0.05, False), (jq.NVFP4_DEFAULT_CFG, 0.4, True), (jq.MXFP8_DEFAULT_CFG, 0.1, False),
    (jq.merge_presets(jq.FP8_DEFAULT_CFG, jq.FP8_KV_CFG), 0.1, True)], ids=["int8", "nvfp4", "mxfp8", "fp8_kv"])
def test_small_transformer_under_jit_grad_vmap(cfg, tol, new_shape, rng):
    tokens = jnp.asarray(rng.integers(0, 32, (2, 8)), jnp.int32)
    params, apply = M.linen(M.TinyTransformer(n_layers=1), tokens)
    qm = jq.quantize(params, apply, cfg, calib_data=[(tokens,)], progress=False)
    y = jax.jit(qm.apply)(qm.params, tokens)
    ref = apply(params, tokens)
    assert y.shape == ref.shape and not np.array_equal(y, ref)
    assert float(jnp.mean(jnp.abs(y - ref))) < tol * float(jnp.mean(jnp.abs(ref)))  # random weights: loose
    # grad, vmap and a new shape each under jit (op-by-op they cost 4x the CPU time: ~60 s per config)
    g = jax.jit(jax.grad(lambda p: qm.apply(p, tokens).sum()))(qm.params)
    assert all(np.isfinite(np.asarray(v)).all() for v in jax.tree_util.tree_leaves(g))
    yv = jax.jit(jax.vmap(lambda t: qm.apply(qm.params, t[None])[0]))(tokens)
    np.testing.assert_allclose(yv, y, rtol=1e-5, atol=1e-5)
    if new_shape:
        longer = jnp.asarray(rng.integers(0, 32, (3, 12)), jnp.int32)
        assert jax.jit(qm.apply)(qm.params, longer).shape == (3, 12, 32)  # new shapes re-trace with the same state


def test_nnx_model_equals_the_same_weights_as_plain_jax(rng):
    state, apply = M.nnx_apply()
    x = jnp.asarray(rng.standard_normal((4, 32)), jnp.float32)[:, :8]
    qm = jq.quantize(state, apply, with_output_head(jq.NVFP4_DEFAULT_CFG), calib_data=[(x,)], progress=False)
    assert set(qm.qstate) == {"l1.weight_quantizer", "l1.input_quantizer", "l2.weight_quantizer",
                              "l2.input_quantizer"}
    plain = {"l1": {"kernel": state["l1"]["kernel"][...], "bias": state["l1"]["bias"][...]},
             "l2": {"kernel": state["l2"]["kernel"][...], "bias": state["l2"]["bias"][...]}}

    def fn(p, x):
        h = jax.nn.relu(x @ p["l1"]["kernel"] + p["l1"]["bias"])
        return h @ p["l2"]["kernel"] + p["l2"]["bias"]

    qp = jq.quantize(plain, fn, with_output_head(jq.NVFP4_DEFAULT_CFG), calib_data=[(x,)], progress=False)
    np.testing.assert_array_equal(jax.jit(qm.apply)(qm.params, x), qp.apply(qp.params, x))


def test_cnn_conv_sites(rng):
    x = jnp.asarray(rng.standard_normal((2, 12, 12, 1)), jnp.float32)
    params, apply = M.linen(M.CNN(), x)
    qm = jq.quantize(params, apply, INT8, calib_data=[(x,)], progress=False)
    assert qm.qstate["conv1.weight_quantizer"]["amax"].shape == (8, 1, 1, 1)  # per output channel (OIHW)
    y = jax.jit(qm.apply)(qm.params, x)
    np.testing.assert_allclose(y, apply(params, x), rtol=0.1, atol=0.05)
