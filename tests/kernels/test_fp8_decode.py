"""The FP8 decode GEMM (swap-AB, split-K Pallas-Triton) equals the W8A8 GEMM up to float32 summation order.

Reference values: E4M3 x E4M3 products are exact, so the float64 sum of the products is the exact dot; every
float32 ordering of it lies within ``K * 2^-24 * sum |products|`` of it. Interpret mode on CPU; the Triton
lowering (Python half) is checked for CUDA; the Triton compile and the timings need a GPU
(``benchmarks/kernel_bench/fp8_decode_sweep.py``).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jq import numerics as nx
from jq_kernels import fp8_decode as D
from jq_kernels.fp8_linear import fp8_linear, prepare_fp8_weight

SMALL = D.FP8DecodeConfig(block_n=32, block_k=64)  # small tiles: interpret grids stay tiny


def _operands(b, n, k, seed=0):
    kx, kw = jax.random.split(jax.random.key(seed))
    x = (jax.random.normal(kx, (b, k)) * 3).astype(jnp.float8_e4m3fn)
    w = (jax.random.normal(kw, (n, k)) * 3).astype(jnp.float8_e4m3fn)
    return x, w


def _exact(x, w):
    """float64 dot of the E4M3 values and the bound on any float32 summation order's error."""
    xf, wf = np.asarray(x, np.float64), np.asarray(w, np.float64)
    return xf @ wf.T, np.abs(xf) @ np.abs(wf).T * (xf.shape[1] * 2.0**-24)


def _check(y, x, w, scale):
    ref, tol = _exact(x, w)
    err = np.abs(np.asarray(y, np.float64) - ref * scale)
    assert np.all(err <= tol * scale + 1e-30), float(np.max(err - tol * scale))


@pytest.mark.parametrize("b,n,k", [(1, 64, 256), (3, 96, 320), (16, 64, 128), (33, 32, 64)])
@pytest.mark.parametrize("operand", ["fp8", "bf16"])
def test_equals_the_exact_dot_up_to_float32_order(b, n, k, operand):
    x, w = _operands(b, n, k)
    cfg = D.FP8DecodeConfig(block_n=32, block_k=64, operand=operand)
    y = D.fp8_decode_matmul(x, w, jnp.float32(0.25), cfg=cfg, interpret=True)
    assert y.shape == (b, n) and y.dtype == jnp.float32
    _check(y, x, w, 0.25)


def test_ragged_n_and_k_are_padded():
    """N = 40 and K = 200 have no power-of-two block >= 16 / 32: the operands are zero-padded to the blocks."""
    x, w = _operands(3, 40, 200, seed=1)
    p = D.decode_plan(40, 200, 3, SMALL)
    assert (p["n_pad"], p["k_pad"], p["tile"]) == (64, 256, 16)
    _check(D.fp8_decode_matmul(x, w, jnp.float32(1.0), cfg=SMALL, interpret=True), x, w, 1.0)


@pytest.mark.parametrize("split", [2, 4])
def test_split_k_partials_are_the_dots_of_their_k_ranges(split):
    x, w = _operands(2, 32, 256, seed=2)
    cfg = D.FP8DecodeConfig(block_n=32, block_k=32, split_k=split)
    part = np.asarray(D.fp8_decode_partials(x, w, cfg=cfg, interpret=True))
    assert part.shape == (split, 32, 16)
    assert np.all(part[:, :, 2:] == 0)  # padded token columns stay zero
    r = 256 // split
    for s in range(split):
        _check(part[s, :, :2].T, x[:, s * r:(s + 1) * r], w[:, s * r:(s + 1) * r], 1.0)
    _check(D.fp8_decode_matmul(x, w, jnp.float32(1.0), cfg=cfg, interpret=True), x, w, 1.0)


def test_equals_the_w8a8_linear_layer():
    """Through the layer's numerics: x quantized with its amax, the weight stored by prepare_fp8_weight."""
    rng = np.random.default_rng(3)
    w = jnp.asarray(rng.standard_normal((64, 192)), jnp.float32)
    x = jnp.asarray(rng.standard_normal((5, 192)), jnp.float32)
    w_q, w_inv = prepare_fp8_weight(w, jnp.max(jnp.abs(w)))
    amax = jnp.float32(2.0)
    q, s_x = nx.fp8_quantize(x, amax, "e4m3")
    y = D.fp8_decode_matmul(q.astype(jnp.float8_e4m3fn), w_q, nx.fp8_dequant_scale(s_x) * w_inv, cfg=SMALL,
                            interpret=True)
    ref = fp8_linear(x, w_q, w_inv, amax, out_dtype=jnp.float32)
    np.testing.assert_allclose(np.asarray(y), np.asarray(ref), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("operand", ["fp8", "bf16"])
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
def test_in_kernel_activation_quantization_equals_the_prequantized_call(operand, dtype):
    """x quantized tile by tile in the kernel (e4m3(clip(x s_x))) gives the partials of the caller-quantized x, bit
    for bit (ragged K = 200 and 5 tokens: the zero padding quantizes to zero), and the w8a8 layer's output."""
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.standard_normal((5, 200)) * 2, dtype)
    w_q, w_inv = prepare_fp8_weight(jnp.asarray(rng.standard_normal((48, 200)), jnp.float32), jnp.float32(3.0))
    amax = jnp.float32(2.5)  # clips some of x: saturation is part of the contract
    q, s_x = nx.fp8_quantize(x, amax, "e4m3")
    cfg = D.FP8DecodeConfig(block_n=32, block_k=64, split_k=2, operand=operand)
    fused = D.fp8_decode_partials(x, w_q, x_scale=s_x, cfg=cfg, interpret=True)
    pre = D.fp8_decode_partials(q.astype(jnp.float8_e4m3fn), w_q, cfg=cfg, interpret=True)
    np.testing.assert_array_equal(np.asarray(fused), np.asarray(pre))
    y = D.fp8_decode_matmul(x, w_q, nx.fp8_dequant_scale(s_x) * w_inv, x_scale=s_x, cfg=cfg, interpret=True)
    ref = fp8_linear(x, w_q, w_inv, amax, out_dtype=jnp.float32)
    np.testing.assert_allclose(np.asarray(y), np.asarray(ref), rtol=1e-5, atol=1e-5)


def test_plan_auto_split_minimizes_the_grid_cost():
    p = D.decode_plan(28672, 8192, 1)  # 448 tiles of 64 rows fill the GPU: no split, no partial traffic to add
    assert (p["bn"], p["bk"], p["split"], p["steps"], p["tile"], p["programs"]) == (64, 256, 1, 32, 16, 448)
    p = D.decode_plan(1024, 4096, 32)  # 16 tiles: the K loop is cut to 2-step ranges (8 of them)
    assert (p["bn"], p["split"], p["steps"], p["tile"], p["programs"]) == (64, 8, 2, 32, 128)
    p = D.decode_plan(4096, 14336, 8)  # 56 steps of 256: splits are divisors of 56
    assert (p["split"], p["steps"]) == (4, 14)
    # every candidate (bn, split) costs at least the chosen one
    n, k, t = 4096, 4096, 32
    p = D.decode_plan(n, k, t)
    chosen = D.grid_cost(n, k, p["bn"], p["split"], p["tile"], 264)
    assert all(D.grid_cost(n, k, bn, d, p["tile"], 264) >= chosen * 0.99 for bn in (64, 128) for d in (1, 2, 4, 8))


def test_explicit_split_keeps_block_n():
    p = D.decode_plan(4096, 4096, 8, D.FP8DecodeConfig(split_k=3))
    assert (p["bn"], p["split"]) == (128, 2)  # the largest divisor of 16 steps <= 3


def test_grid_cost_counts_partials_and_an_unfilled_gpu():
    assert D.grid_cost(1024, 1024, 64, 1, 16, 16) == 1024 * 1024 + 8 * 1024 * 16  # 16 programs fill it
    assert D.grid_cost(1024, 1024, 64, 1, 16, 32) == 2 * D.grid_cost(1024, 1024, 64, 1, 16, 16)  # half filled


def test_token_tile_is_a_power_of_two_of_at_least_16():
    assert [D.decode_plan(64, 64, b)["tile"] for b in (1, 16, 17, 33, 64)] == [16, 16, 32, 64, 64]


def test_bad_inputs_name_the_value():
    x, w = _operands(2, 32, 64)
    with pytest.raises(ValueError, match="tokens must be in 1..64"):
        D.decode_plan(32, 64, 65)
    with pytest.raises(ValueError, match="x_scale is needed"):
        D.fp8_decode_partials(x.astype(jnp.bfloat16), w, interpret=True)
    with pytest.raises(ValueError, match="x_scale is needed"):
        D.fp8_decode_partials(x, w, x_scale=jnp.float32(1.0), interpret=True)
    with pytest.raises(ValueError, match="w must be float8_e4m3fn"):
        D.fp8_decode_partials(x, w.astype(jnp.bfloat16), interpret=True)
    with pytest.raises(ValueError, match=r"\[B, K\]"):
        D.fp8_decode_partials(x[:, :32], w, interpret=True)
    with pytest.raises(ValueError, match="block_n"):
        D.FP8DecodeConfig(block_n=48)
    with pytest.raises(ValueError, match="operand"):
        D.FP8DecodeConfig(operand="int8")


def test_parse_configs_round_trips_the_names():
    cfgs = D.parse_configs("fp8:128,256,0,4,4; bf16:64,512,2,8,3; fp8-xq:64,256,0,2,3")
    assert [c.name for c in cfgs] == ["fp8/n128k256s0w4p4", "bf16/n64k512s2w8p3", "fp8/n64k256s0w2p3-xq"]
    assert cfgs[0] == D.FP8DecodeConfig() and not cfgs[2].x_in_kernel
    assert [D.FP8DecodeConfig.from_name(c.name) for c in cfgs] == list(cfgs)
    with pytest.raises(ValueError, match="want operand"):
        D.parse_configs("fp8:128,256")


@pytest.mark.parametrize("x_dtype", [jnp.float8_e4m3fn, jnp.bfloat16])
@pytest.mark.parametrize("operand", ["fp8", "bf16"])
@pytest.mark.parametrize("b,n,k", [(1, 28672, 8192), (32, 1024, 4096), (8, 1536, 576)])
def test_triton_lowering_for_cuda(operand, b, n, k, x_dtype):
    """The Python half of the Triton lowering (fp8 loads, in-kernel quantization to fp8, the fp8 or upcast dot, a
    K range of 192 columns)."""
    cfg = D.FP8DecodeConfig(operand=operand)
    s_x = None if x_dtype == jnp.float8_e4m3fn else jnp.float32(3.0)
    fn = jax.jit(lambda x, w: D.fp8_decode_matmul(x, w, jnp.float32(1.0), x_scale=s_x, cfg=cfg, interpret=False))
    txt = fn.trace(jax.ShapeDtypeStruct((b, k), x_dtype),
                   jax.ShapeDtypeStruct((n, k), jnp.float8_e4m3fn)).lower(lowering_platforms=("cuda",)).as_text()
    assert "triton" in txt and "jq_fp8_decode" in txt


@pytest.mark.parametrize("operand", ["fp8", "bf16"])
@pytest.mark.parametrize("x_dtype,out_dtype", [(jnp.float8_e4m3fn, jnp.float32), (jnp.bfloat16, jnp.bfloat16)])
def test_fused_out_equals_the_unsplit_partials_path_bit_for_bit(operand, x_dtype, out_dtype):
    """``fused_out``: the kernel scales, transposes and casts its own accumulator: the same float32 sums as the
    split_k=1 partials path followed by XLA's epilogue, so the same values, and one launch."""
    x, w = _operands(5, 96, 320, seed=4)
    s_x = None
    if x_dtype != jnp.float8_e4m3fn:
        x, s_x = x.astype(x_dtype), jnp.float32(0.75)
    fused = D.FP8DecodeConfig(block_n=32, block_k=64, operand=operand, fused_out=True)
    unfused = D.FP8DecodeConfig(block_n=32, block_k=64, operand=operand, split_k=1)
    y = D.fp8_decode_matmul(x, w, jnp.float32(0.25), x_scale=s_x, cfg=fused, out_dtype=out_dtype, interpret=True)
    ref = D.fp8_decode_matmul(x, w, jnp.float32(0.25), x_scale=s_x, cfg=unfused, out_dtype=out_dtype, interpret=True)
    assert y.shape == (5, 96) and y.dtype == out_dtype
    np.testing.assert_array_equal(np.asarray(y), np.asarray(ref))
    if x_dtype == jnp.float8_e4m3fn:
        _check(y, x, w, 0.25)


def test_fused_out_plans_no_split_and_fills_the_gpu_with_smaller_row_blocks():
    # 4096 x 4096 at B = 1: split-K would make 64-row blocks x 4 K ranges; fused: 16-row blocks, whole K each
    p = D.decode_plan(4096, 4096, 1, D.FP8DecodeConfig(fused_out=True))
    assert (p["split"], p["bn"], p["programs"], p["steps"]) == (1, 16, 256, 16)
    assert D.decode_plan(4096, 4096, 1, D.FP8DecodeConfig())["split"] > 1
    # a weight with enough rows keeps the largest block that fills the GPU
    assert D.decode_plan(28672, 4096, 1, D.FP8DecodeConfig(fused_out=True))["bn"] == 64
    with pytest.raises(ValueError, match="split_k must be 0 or 1"):
        D.FP8DecodeConfig(fused_out=True, split_k=2)
    with pytest.raises(ValueError, match="needs the output factor"):
        D.fp8_decode_partials(*_operands(1, 32, 64), cfg=D.FP8DecodeConfig(fused_out=True), interpret=True)


def test_fused_out_config_names_and_specs_round_trip():
    for spec, name in (("fp8-fo:64,256,0,4,4", "fp8/n64k256s0w4p4-fo"),
                       ("bf16-xq-fo:32,128,1,4,3", "bf16/n32k128s1w4p3-xq-fo")):
        (cfg,) = D.parse_configs(spec)
        assert cfg.fused_out and cfg.name == name and D.FP8DecodeConfig.from_name(name) == cfg
    with pytest.raises(ValueError, match="suffixes are -xq and -fo"):
        D.parse_configs("fp8-zz:64,256,0,4,4")


@pytest.mark.parametrize("b,n,k", [(1, 4096, 4096), (8, 6144, 4096)])
def test_fused_out_triton_lowering_for_cuda(b, n, k):
    """The Python half of the fused kernel's Triton lowering (the in-register transpose and cast, the [tile, bn]
    output block)."""
    cfg = D.FP8DecodeConfig(fused_out=True)
    fn = jax.jit(lambda x, w: D.fp8_decode_matmul(x, w, jnp.float32(1.0), x_scale=jnp.float32(2.0), cfg=cfg,
                                                  out_dtype=jnp.bfloat16, interpret=False))
    txt = fn.trace(jax.ShapeDtypeStruct((b, k), jnp.bfloat16),
                   jax.ShapeDtypeStruct((n, k), jnp.float8_e4m3fn)).lower(lowering_platforms=("cuda",)).as_text()
    assert "jq_fp8_decode_fp8_qx_fo" in txt
