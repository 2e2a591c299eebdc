"""The jq_fake_quant primitive: impl, abstract eval, jit, vmap (batching rule), STE JVP."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jq.config import QuantizerSpec
from jq.fake_quant import fake_quant, jq_fake_quant_p
from jq.quantizer import CanonicalView, fake_quant_reference

INT8 = QuantizerSpec(num_bits=8)
INT4_AXIS = QuantizerSpec(num_bits=4, axis=0)
NVFP4 = QuantizerSpec(num_bits=(2, 1), block_sizes={-1: 16, "type": "dynamic", "scale_bits": (4, 3)})


def test_is_a_primitive_in_the_jaxpr():
    jaxpr = jax.make_jaxpr(lambda x: fake_quant(x, jnp.float32(1), spec=INT8))(jnp.ones(4))
    assert [e.primitive for e in jaxpr.jaxpr.eqns] == [jq_fake_quant_p]
    assert jaxpr.jaxpr.eqns[0].params["spec"] == INT8


def test_disabled_spec_is_the_identity():
    x = jnp.ones(3)
    assert fake_quant(x, None, spec=INT8.replace(enable=False)) is x


def test_jit_equals_eager_equals_reference(rng):
    x = jnp.asarray(rng.standard_normal((8, 32)), jnp.float32)
    want = fake_quant_reference(x, NVFP4, jnp.max(jnp.abs(x)))
    np.testing.assert_array_equal(fake_quant(x, jnp.max(jnp.abs(x)), spec=NVFP4), want)
    np.testing.assert_array_equal(jax.jit(lambda v: fake_quant(v, jnp.max(jnp.abs(v)), spec=NVFP4))(x), want)


def test_weight_view_quantizes_the_canonical_layout(rng):
    w = jnp.asarray(rng.standard_normal((16, 4)), jnp.float32)  # Dense kernel [in, out]
    view = CanonicalView((1, 0), (4, 16), 0)
    amax = jnp.max(jnp.abs(w.T), axis=1, keepdims=True)  # per output channel
    got = fake_quant(w, amax, spec=INT4_AXIS, view=view)
    np.testing.assert_array_equal(got, fake_quant_reference(w.T, INT4_AXIS, amax).T)


def test_vmap_matches_a_loop(rng):
    x = jnp.asarray(rng.standard_normal((3, 4, 32)), jnp.float32)
    dyn = QuantizerSpec(num_bits=8, type="dynamic")  # per-call amax: per example under vmap
    got = jax.vmap(lambda v: fake_quant(v, None, spec=dyn))(x)
    for i in range(3):
        np.testing.assert_array_equal(got[i], fake_quant(x[i], None, spec=dyn))
    amax = jnp.array([1.0, 0.5, 2.0])
    got = jax.vmap(lambda v, a: fake_quant(v, a, spec=INT8))(x, amax)
    for i in range(3):
        np.testing.assert_array_equal(got[i], fake_quant(x[i], amax[i], spec=INT8))
    got = jax.vmap(lambda v: fake_quant(v, jnp.max(jnp.abs(v)), spec=NVFP4), in_axes=1, out_axes=1)(x)
    for j in range(4):
        np.testing.assert_array_equal(got[:, j], fake_quant(x[:, j], jnp.max(jnp.abs(x[:, j])), spec=NVFP4))


def test_clipped_ste_zeroes_gradients_beyond_amax():
    x = jnp.array([0.5, -1.0, 1.5, -3.0])
    g = jax.grad(lambda v: jnp.sum(fake_quant(v, jnp.float32(1.0), spec=INT8) * jnp.arange(1.0, 5.0)))(x)
    np.testing.assert_array_equal(g, [1.0, 2.0, 0.0, 0.0])


def test_pass_through_ste():
    spec = INT8.replace(pass_through_bwd=True)
    g = jax.grad(lambda v: jnp.sum(fake_quant(v, jnp.float32(1.0), spec=spec) * 3.0))(jnp.array([0.5, 7.0]))
    np.testing.assert_array_equal(g, [3.0, 3.0])


def test_per_block_clip_mask_and_no_gradient_to_amax():
    spec = QuantizerSpec(num_bits=4, block_sizes={-1: 2})
    x = jnp.array([[0.5, 0.9, 0.5, 0.9]])
    amax = jnp.array([[1.0, 0.6]])  # second block clips 0.9
    gx, ga = jax.grad(lambda v, a: jnp.sum(fake_quant(v, a, spec=spec)), argnums=(0, 1))(x, amax)
    np.testing.assert_array_equal(gx, [[1, 1, 1, 0]])
    np.testing.assert_array_equal(ga, 0)


def test_jvp_under_jit_and_vmap_of_grad(rng):
    x = jnp.asarray(rng.standard_normal((2, 16)), jnp.float32)
    f = lambda v: jnp.sum(fake_quant(v, jnp.max(jnp.abs(v)), spec=NVFP4) ** 2)  # noqa: E731
    g = jax.jit(jax.vmap(jax.grad(f)))(x)
    np.testing.assert_allclose(g, 2 * jax.vmap(lambda v: fake_quant(v, jnp.max(jnp.abs(v)), spec=NVFP4))(x))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_abstract_eval_keeps_shape_and_dtype(dtype):
    out = jax.eval_shape(lambda v: fake_quant(v, jnp.float32(1), spec=INT8), jax.ShapeDtypeStruct((3, 5), dtype))
    assert out.shape == (3, 5) and out.dtype == dtype


def test_nvfp4_dynamic_global_amax(rng):
    spec = NVFP4.replace(type="dynamic")  # the per-tensor amax comes from each call, not calibration
    from jq.quantizer import needs_amax

    assert needs_amax(NVFP4) and not needs_amax(spec)
    x = jnp.asarray(rng.standard_normal((3, 2, 32)), jnp.float32)
    got = jax.vmap(lambda v: fake_quant(v, None, spec=spec))(x)
    for i in range(3):
        np.testing.assert_array_equal(got[i], fake_quant(x[i], jnp.max(jnp.abs(x[i])), spec=NVFP4))
