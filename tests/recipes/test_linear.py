"""The recipe linear's custom VJP: every GEMM multiplies the operands the recipe prescribes, and nothing else.

A recording GEMM captures the dequantized operands of fprop, dgrad and wgrad; the tests rebuild each from
jq.numerics and compare bit for bit (or, for stochastically rounded operands, check the grid and the mean).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jq.numerics import (
    E2M1,
    E4M3,
    E5M2,
    minifloat_floor_ceil,
    nvfp4_fake_quant,
    nvfp4_quantize,
    random_hadamard_transform,
)
from jq.recipes import (
    DelayedScaling,
    Float8BlockOperand,
    Float8BlockScaling,
    Float8CurrentOperand,
    Float8CurrentScaling,
    NVFP4BlockScaling,
    OperandContext,
    fake_gemm,
    fp8_gemm,
    linear,
)

from ._helpers import normal, vjp_operands

T, K, N = 20, 64, 48  # T not a multiple of 16: every NVFP4 wgrad here also exercises the padding RHT needs
X, W, DY = normal(0, (T, K)), normal(1, (N, K), 0.5), normal(2, (T, N), 1e-3)
KEY = jax.random.key(7)

nvfp4 = jax.jit(nvfp4_fake_quant, static_argnames="two_d")
# the wgrad view of a [T, *] tensor: transpose, zero-pad T to 32 (zero tokens add nothing to dy^T x), RHT along T
rht_t = jax.jit(lambda a: random_hadamard_transform(jnp.pad(a.T, ((0, 0), (0, -T % 16))), axis=-1))


@pytest.fixture(scope="module")
def nvfp4_rtn():
    """NVFP4 recipe with SR off, so every operand is deterministic."""
    return vjp_operands(NVFP4BlockScaling(stochastic_rounding=False), X, W, DY)


def test_nvfp4_fprop_operands(nvfp4_rtn):
    y, _, _, ops = nvfp4_rtn
    xq, wq = ops["fprop"]
    np.testing.assert_array_equal(xq, nvfp4(X))  # 1x16 along K
    np.testing.assert_array_equal(wq, nvfp4(W, two_d=True))  # 16x16 tiles
    np.testing.assert_array_equal(y, jax.jit(fake_gemm, static_argnames="which")(*map(_q, ops["fprop"]), which="fprop"))


def _q(a):
    from jq.recipes import QOperand

    return QOperand(jnp.asarray(a))


def test_nvfp4_dgrad_uses_the_same_2d_weight_and_1d_gradient_blocks(nvfp4_rtn):
    _, dx, _, ops = nvfp4_rtn
    dyq, wtq = ops["dgrad"]
    np.testing.assert_array_equal(dyq, nvfp4(DY))  # 1x16 along N, no RHT
    np.testing.assert_array_equal(wtq, ops["fprop"][1].T)  # the fprop W, transposed: same numbers
    np.testing.assert_allclose(dx, dyq @ wtq.T, rtol=1e-5, atol=1e-9)


def test_nvfp4_wgrad_operands_get_rht_along_tokens(nvfp4_rtn):
    _, _, dw, ops = nvfp4_rtn
    dytq, xtq = ops["wgrad"]
    np.testing.assert_array_equal(dytq, nvfp4(rht_t(DY)))
    np.testing.assert_array_equal(xtq, nvfp4(rht_t(X)))
    np.testing.assert_allclose(dw, dytq @ xtq.T, rtol=1e-5, atol=1e-9)


def test_rht_toggle_changes_wgrad_only(nvfp4_rtn):
    y, dx, dw, ops = nvfp4_rtn
    y2, dx2, dw2, ops2 = vjp_operands(NVFP4BlockScaling(stochastic_rounding=False, rht=False), X, W, DY)
    for gemm in ("fprop", "dgrad"):
        for a, b in zip(ops[gemm], ops2[gemm]):
            np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(y, y2)
    np.testing.assert_array_equal(dx, dx2)
    np.testing.assert_array_equal(ops2["wgrad"][0], nvfp4(DY.T))  # plain 1x16 along T, no padding needed
    np.testing.assert_array_equal(ops2["wgrad"][1], nvfp4(X.T))
    assert not np.array_equal(dw, dw2)


def test_weight_2d_toggle_changes_the_weight_operands_only(nvfp4_rtn):
    _, _, dw, ops = nvfp4_rtn
    _, _, dw2, ops2 = vjp_operands(NVFP4BlockScaling(stochastic_rounding=False, weight_2d=False), X, W, DY)
    np.testing.assert_array_equal(ops2["fprop"][1], nvfp4(W))  # 1x16 along K
    np.testing.assert_array_equal(ops2["dgrad"][1], nvfp4(W.T))  # re-quantized 1x16 along N
    assert not np.array_equal(ops2["fprop"][1], ops["fprop"][1])
    for a, b in ((ops["fprop"][0], ops2["fprop"][0]), (ops["dgrad"][0], ops2["dgrad"][0])):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(ops["wgrad"], ops2["wgrad"]):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(dw, dw2)  # wgrad does not involve W


@jax.jit
def _neighbours(a):
    """The dequantized NVFP4 grid points just below and above each element of ``a`` (1x16 blocks)."""
    q, s, gs, layout = nvfp4_quantize(a)
    step = layout.merge(jnp.broadcast_to(s * gs, q.shape))
    lo, hi = minifloat_floor_ceil(jnp.abs(a) / step, E2M1)
    return jnp.sign(a) * lo * step, jnp.sign(a) * hi * step


def test_sr_toggle_changes_gradient_operands_only(nvfp4_rtn):
    _, _, _, ops = nvfp4_rtn
    _, _, _, sr = vjp_operands(NVFP4BlockScaling(), X, W, DY, key=KEY)
    for gemm, i in (("fprop", 0), ("fprop", 1), ("dgrad", 1), ("wgrad", 1)):
        np.testing.assert_array_equal(sr[gemm][i], ops[gemm][i])
    for gemm, src in (("dgrad", DY), ("wgrad", rht_t(DY))):
        down, up = _neighbours(src)
        got = sr[gemm][0]
        assert ((got == down) | (got == up)).all()  # on the grid, one of the two neighbours
        assert not np.array_equal(got, ops[gemm][0])  # ... and not the round-to-nearest choice everywhere


def test_step_is_reproducible_from_the_key():
    r = NVFP4BlockScaling()
    a = vjp_operands(r, X, W, DY, key=KEY)
    b = vjp_operands(r, X, W, DY, key=KEY)
    c = vjp_operands(r, X, W, DY, key=jax.random.key(8))
    for u, v in zip(a[:3], b[:3]):
        np.testing.assert_array_equal(u, v)
    np.testing.assert_array_equal(a[0], c[0])  # the forward draws no random bits
    assert not np.array_equal(a[1], c[1]) and not np.array_equal(a[2], c[2])


def _sr_test_gradient():
    """dy whose NVFP4 steps are exact: row 0 block 0 holds the tensor amax 10.5 (gs = 2^-8, r = 448); every
    other block has max 6 * 2^-8 (r = 1) and elements 1.25 or 2.5 steps, ties that round-to-nearest-even
    always rounds down (to 1 and 2) and that 8-bit SR rounds up with probability exactly 1/2."""
    rng = np.random.default_rng(3)
    step = 2.0**-8
    dy = step * rng.choice([1.25, 2.5], size=(T, N))
    dy[:, ::16] = 6 * step
    dy[0, 0] = 10.5
    dy[0, 1:16] = 1.75 * rng.choice([1.25, 2.5], size=15)  # step of block (0, 0) is 448 * 2^-8 = 1.75
    return jnp.asarray(dy, jnp.float32)


def test_sr_dgrad_is_unbiased_while_round_to_nearest_is_biased():
    dy, n = _sr_test_gradient(), 256
    down, up = (np.asarray(t, np.float64) for t in _neighbours(dy))
    _, _, _, ops = vjp_operands(NVFP4BlockScaling(stochastic_rounding=False), X, W, dy)
    dy_rtn, wtq = (np.asarray(t, np.float64) for t in ops["dgrad"])
    exact = np.asarray(dy, np.float64) @ wtq.T  # dgrad with the quantized W but an unrounded dy
    var = ((up - np.asarray(dy)) * (np.asarray(dy) - down)) @ (wtq.T) ** 2  # sum of independent Bernoulli variances
    sigma_mean = np.sqrt(var / n)

    def dx(key):
        return jax.vjp(lambda x: linear(NVFP4BlockScaling(), x, W, key=key), X)[1](dy)[0]

    mean = np.asarray(jax.jit(jax.vmap(dx))(jax.random.split(KEY, n)), np.float64).mean(0)
    assert (np.abs(mean - exact) <= 5 * sigma_mean + 1e-6).all()
    rtn_error = np.abs(dy_rtn @ wtq.T - exact)
    assert (dy_rtn <= np.asarray(dy)).all() and (dy_rtn < np.asarray(dy)).mean() > 0.9  # RTN rounds these down
    assert rtn_error.mean() > 10 * sigma_mean.mean()


def test_fp8_current_scaling_operands_per_gemm():
    _, _, _, ops = vjp_operands(Float8CurrentScaling(), X, W, DY)
    x8, w8, dy8 = jax.jit(
        lambda *ops: [
            Float8CurrentOperand(tensor=t, fmt=f)(a, OperandContext()).dequantized
            for t, f, a in zip(("x", "w", "dy"), (E4M3, E4M3, E5M2), ops)
        ]
    )(X, W, DY)
    np.testing.assert_array_equal(ops["fprop"][0], x8)
    np.testing.assert_array_equal(ops["fprop"][1], w8)
    np.testing.assert_array_equal(ops["dgrad"][0], dy8)  # E5M2 gradient
    np.testing.assert_array_equal(ops["dgrad"][1], w8.T)
    np.testing.assert_array_equal(ops["wgrad"][0], dy8.T)  # per-tensor: the transpose is the same numbers
    np.testing.assert_array_equal(ops["wgrad"][1], x8.T)


def test_float8_block_scaling_requantizes_x_along_tokens_for_wgrad():
    x = normal(4, (256, K)) * jnp.exp(normal(5, (256, 1)))  # rows of very different magnitude
    _, _, _, ops = vjp_operands(Float8BlockScaling(), x, W, normal(6, (256, N)))
    q = jax.jit(lambda a: Float8BlockOperand(tensor="x", fmt=E4M3)(a, OperandContext()).dequantized)
    np.testing.assert_array_equal(ops["fprop"][0], q(x))  # 1x128 along K
    np.testing.assert_array_equal(ops["wgrad"][1], q(x.T))  # 1x128 along T, from high precision
    assert not np.array_equal(ops["wgrad"][1], ops["fprop"][0].T)


def test_fp8_gemm_equals_the_emulated_gemm():
    r = Float8CurrentScaling()
    ref = vjp_operands(r, X, W, DY)

    @jax.jit
    def run(x, w, dy):
        y, pb = jax.vjp(lambda x, w: linear(r, x, w, gemm=fp8_gemm), x, w)
        return (y, *pb(dy))

    for a, b in zip(ref[:3], run(X, W, DY)):
        np.testing.assert_allclose(b, a, rtol=2e-5, atol=1e-6 * np.abs(a).max())


def test_fp8_gemm_refuses_block_scaled_operands():
    with pytest.raises(ValueError, match="not a per-tensor FP8 operand"):
        jax.eval_shape(lambda: linear(NVFP4BlockScaling(stochastic_rounding=False), X, W, gemm=fp8_gemm))


def test_wgrad_with_padded_tokens_still_approximates_dy_t_x(nvfp4_rtn):
    _, _, dw, ops = nvfp4_rtn
    assert ops["wgrad"][0].shape == (N, 32) and ops["wgrad"][1].shape == (K, 32)  # T = 20 padded to 32
    exact = np.asarray(DY).T @ np.asarray(X)
    assert np.linalg.norm(dw - exact) / np.linalg.norm(exact) < 0.2  # NVFP4 operands: ~10 % error


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(recipe=NVFP4BlockScaling()), "pass key="),
        (dict(recipe=DelayedScaling()), "pass state="),
        (dict(recipe=Float8CurrentScaling(), w=W.T), r"expects x \[T, K\] and w \[N, K\]"),
    ],
)
def test_bad_calls_say_what_is_missing(kwargs, match):
    args = dict(recipe=None, x=X, w=W) | kwargs
    with pytest.raises(ValueError, match=match):
        linear(args["recipe"], args["x"], args["w"])
