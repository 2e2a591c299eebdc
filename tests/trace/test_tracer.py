"""Tracing: sites, weights traced back to params, stable names, canonical views, nested jaxprs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jq
from jq.trace import name_from_keypath, trace
from tests import _models as M


def _sites(traced):
    return {s.name: s for s in traced.sites}


def test_linen_mlp_sites_and_names():
    x = jnp.ones((2, 8))
    params, apply = M.linen(M.MLP(), x)
    t = trace(apply, params, x)
    assert [s.name for s in t.sites] == ["fc1", "fc2"]
    fc1 = _sites(t)["fc1"]
    assert fc1.kind == "linear" and fc1.roles == {0: "input_quantizer", 1: "weight_quantizer"}
    assert fc1.view.shape == (32, 8)  # canonical [out, in] of a [in=8, out=32] kernel
    assert set(t.quantizers) >= {"fc1.input_quantizer", "fc1.weight_quantizer", "fc2.output_quantizer"}


def test_names_are_stable_across_shapes_and_retraces():
    params, apply = M.linen(M.TinyTransformer(), jnp.zeros((1, 5), jnp.int32))
    a = trace(apply, params, jnp.zeros((1, 5), jnp.int32))
    b = trace(apply, params, jnp.zeros((3, 9), jnp.int32))
    assert list(a.quantizers) == list(b.quantizers)


def test_conv_sites_use_pytorch_oihw_view():
    x = jnp.ones((2, 12, 12, 1))
    params, apply = M.linen(M.CNN(), x)
    s = _sites(trace(apply, params, x))
    assert s["conv1"].kind == "conv" and s["conv1"].view.shape == (8, 1, 3, 3)
    assert s["conv2"].view.shape == (16, 8, 3, 3)
    assert s["head"].kind == "linear"


def test_attention_bmm_sites_get_qkv_names():
    x = jnp.zeros((1, 6), jnp.int32)
    params, apply = M.linen(M.TinyTransformer(), x)
    t = trace(apply, params, x)
    names = set(t.quantizers)
    for q in ("q_bmm_quantizer", "k_bmm_quantizer", "v_bmm_quantizer", "softmax_quantizer"):
        assert f"block0_attn.{q}" in names and f"block1_attn.{q}" in names
    # DenseGeneral with two output dims: canonical view flattens them into one out axis
    assert _sites(t)["block0_attn.query"].view.shape == (16, 16)
    assert _sites(t)["block0_attn.out"].view.shape == (16, 16)


def test_scan_over_layers_gives_a_layer_axis():
    x = jnp.ones((2, 5))
    params, apply = M.linen(M.ScanStack(n_layers=3), x)
    t = trace(apply, params, x)
    assert len(t.layer_scans) == 1
    assert t.quantizers["layers.fc.weight_quantizer"].layer_axes == (3,)
    assert t.quantizers["embed_proj.weight_quantizer"].layer_axes == ()


def test_nnx_and_plain_functions():
    state, apply = M.nnx_apply()
    assert [s.name for s in trace(apply, state, jnp.ones((2, 8))).sites] == ["l1", "l2"]
    t = trace(M.plain_fn, M.plain_params(), jnp.ones((2, 8)))
    assert [s.name for s in t.sites] == ["w1", "w2"]


def test_recurses_into_jit_remat_custom_vjp_cond_while():
    p = M.plain_params()

    @jax.custom_vjp
    def custom(x, w):
        return x @ w

    custom.defvjp(lambda x, w: (x @ w, (x, w)), lambda r, g: (g @ r[1].T, r[0].T @ g))

    def f(p, x):
        h = jax.jit(lambda a: a @ p["w1"])(x)
        h = jax.checkpoint(lambda a: jnp.tanh(a))(h)
        h = jax.lax.cond(h.sum() > 0, lambda a: a @ p["w2"], lambda a: -a @ p["w2"], h)
        h = jax.lax.while_loop(lambda c: c[0] < 2, lambda c: (c[0] + 1, jnp.tanh(c[1])), (0, h))[1]
        return custom(h, p["w2"].T)

    t = trace(f, p, jnp.ones((2, 8)))
    assert sorted({s.name for s in t.sites}) == ["w1", "w2", "w2_1"]  # w2 and w2.T are different views
    assert len(t.sites) == 4  # w1, w2 in each cond branch, w2.T in the custom_vjp


def test_weight_through_layout_ops_keeps_its_origin():
    p = {"W": jnp.arange(32.0).reshape(4, 8)}  # [out, in]
    t = trace(lambda p, x: x @ p["W"].T.astype(jnp.float32), p, jnp.ones((2, 8)))
    (s,) = t.sites
    assert s.name == "W" and s.kind == "linear"
    assert [type(c).__name__ for c in s.weight.chain] and s.view.shape == (4, 8)


def test_dense_kernel_and_transposed_weight_quantize_identically(rng):
    """ModelOpt configs carry over: a Flax Dense kernel [in, out] and x @ W.T with W [out, in]."""
    import flax.linen as nn

    w = jnp.asarray(rng.standard_normal((24, 64)), jnp.float32)  # [out, in]
    x = jnp.asarray(rng.standard_normal((5, 64)), jnp.float32)
    dense = nn.Dense(24, use_bias=False)
    p_dense = {"params": {"kernel": w.T}}
    p_plain = {"W": w}
    for cfg in (jq.INT8_DEFAULT_CFG, jq.INT4_BLOCKWISE_WEIGHT_ONLY_CFG, jq.NVFP4_DEFAULT_CFG, jq.MXFP4_DEFAULT_CFG):
        qa = jq.quantize(p_dense, dense.apply, cfg, calib_data=[(x,)], progress=False)
        qb = jq.quantize(p_plain, lambda p, x: x @ p["W"].T, cfg, calib_data=[(x,)], progress=False)
        np.testing.assert_array_equal(qa.apply(qa.params, x), qb.apply(qb.params, x))
        fa, fb = jq.fold_weights(qa), jq.fold_weights(qb)
        np.testing.assert_array_equal(fa.params["params"]["kernel"].T, fb.params["W"])


def test_skipped_sites_have_reasons():
    t = trace(lambda p, x: (x @ jnp.ones((8, 3))) @ (p["a"] @ p["b"]), {"a": jnp.ones((3, 3)), "b": jnp.ones((3, 3))},
              jnp.ones((2, 8)))
    reasons = sorted(k.reason for k in t.skipped)
    assert any("constant" in r for r in reasons) and any("both operands are weights" in r for r in reasons)
    assert [s.name for s in t.sites] == ["a"]  # (x@c) @ (a@b): a derived weight, named after its largest leaf


@pytest.mark.parametrize("path,want", [
    (("params", "Block_0", "Dense_1", "kernel"), "Block_0.Dense_1"),
    (("l1", "kernel", "value"), "l1"),
    (("w1",), "w1"),
    ((0,), "param0"),
    (("layers", 3, "mlp", "weight"), "layers.3.mlp"),
])
def test_name_from_keypath(path, want):
    keys = [jax.tree_util.SequenceKey(k) if isinstance(k, int) else jax.tree_util.DictKey(k) for k in path]
    assert name_from_keypath(keys) == want


def test_ragged_dot_expert_weights_are_batched_sites():
    p = {"experts": jax.random.normal(jax.random.key(0), (3, 8, 5))}
    f = lambda p, x, g: jax.lax.ragged_dot(x, p["experts"], g)  # noqa: E731
    t = trace(f, p, jnp.ones((6, 8)), jnp.array([2, 2, 2], jnp.int32))
    (s,) = t.sites
    assert s.view.batch == 1 and s.view.shape == (3, 5, 8)  # [experts, out, in]


def test_keys_found_by_the_softmax_axis_not_operand_order():
    """einsum("bskd,btkd->bkts") with the keys written first still puts k_bmm_quantizer on the keys.

    jnp.einsum emits ``dot_general(q, k)`` here (operand order swapped), and q and k have the same sequence
    length from the same ``x``: the keys are told by the axis the softmax normalises, kept in place up to p·v."""
    def attn(p, x):
        q, k, v = x @ p["wq"], x @ p["wk"], x @ p["wv"]
        q, k, v = (a.reshape(2, 5, 2, 4) for a in (q, k, v))
        s = jnp.einsum("bskd,btkd->bkts", k, q)  # keys first
        w = jax.nn.softmax(s, axis=-1)
        return jnp.einsum("bkts,bskd->btkd", w, v).reshape(2, 5, 8)

    p = {n: jnp.ones((8, 8)) for n in ("wq", "wk", "wv")}
    t = trace(attn, p, jnp.ones((2, 5, 8)))
    (qk,) = [s for s in t.sites if s.attention_role == "qk"]
    k_operand = [op for op, slot in qk.roles.items() if slot == "k_bmm_quantizer"][0]
    (wk_site,) = [s for s in t.sites if s.name == "wk"]
    producers = {v: e for e in t.jaxpr.eqns for v in e.outvars}
    reshape = producers[qk.eqn.invars[k_operand]]
    assert reshape.primitive.name == "reshape" and producers[reshape.invars[0]] is wk_site.eqn
