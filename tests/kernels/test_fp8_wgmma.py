"""The fp8 wgmma decode GEMM (Mosaic GPU) equals the exact dot of its E4M3 operands up to float32 summation order.

Reference values: E4M3 x E4M3 products are exact, so the float64 sum of the products is the exact dot; every float32
ordering of it lies within ``K * 2^-24 * sum |products|`` of it. The kernel runs in jax's GPU interpreter on the
CPU (grid, pipeline, K splits, padding; :mod:`tests.kernels.mosaic_interpret`) and lowers for CUDA (Mosaic's
wgmma operand checks); the shared-memory layout, the compile and the timings need a GPU
(``benchmarks/kernel_bench/fp8_decode_sweep.py``, methods ``wgmma:<config>``).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jq_kernels import fp8_wgmma as W
from tests.kernels import mosaic_interpret


def _operands(b, n, k, seed=0):
    kx, kw = jax.random.split(jax.random.key(seed))
    x = (jax.random.normal(kx, (b, k)) * 40).astype(jnp.float8_e4m3fn)
    w = (jax.random.normal(kw, (n, k)) * 40).astype(jnp.float8_e4m3fn)
    return x, w


def _check(y, x, w, scale):
    xf, wf = np.asarray(x, np.float64), np.asarray(w, np.float64)
    ref, tol = xf @ wf.T * scale, np.abs(xf) @ np.abs(wf).T * (xf.shape[1] * 2.0**-24) * scale
    err = np.abs(np.asarray(y, np.float64) - ref)
    assert np.all(err <= tol + 1e-30), float(np.max(err - tol))


@pytest.mark.parametrize("b,n,k,cfg", [
    (1, 128, 512, W.FP8WgmmaConfig(block_k=128, split_k=4)),        # one step per K range
    (3, 256, 1024, W.FP8WgmmaConfig(rows=2, split_k=2)),            # two 64-row tiles per CTA
    (9, 192, 640, W.FP8WgmmaConfig(stages=2)),                      # K 640: block_k falls back to 128
    (64, 64, 256, W.FP8WgmmaConfig(block_k=256, stages=1)),         # the largest token tile
])
def test_equals_the_exact_dot_up_to_float32_order(b, n, k, cfg):
    mosaic_interpret.require()
    x, w = _operands(b, n, k, seed=b)
    with mosaic_interpret.gpu_interpret():
        y = W.fp8_wgmma_matmul(x, w, jnp.float32(0.5), cfg=cfg)
    assert y.shape == (b, n) and y.dtype == jnp.float32
    _check(y, x, w, 0.5)


STREAM_K_CASES = [  # (tokens, N, K, SMs): runs crossing row groups, a shorter last run, slots no CTA reaches
    (3, 256, 1024, 3),   # 4 groups x 8 steps over 3 CTAs of 11 steps
    (1, 128, 640, 4),    # 2 groups x 5 steps over 4 CTAs of 3 (the last run 1 step)
    (9, 192, 512, 5),    # 3 groups x 4 steps over 4 CTAs of 3
    (2, 64, 384, 7),     # one group of 3 steps over 3 CTAs of 1
]


@pytest.mark.parametrize("b,n,k,sms", STREAM_K_CASES)
@pytest.mark.parametrize("rows", [1, 2])
def test_stream_k_equals_the_exact_dot_and_fills_unreached_slots_with_zeros(b, n, k, sms, rows, monkeypatch):
    mosaic_interpret.require()
    monkeypatch.setattr(W.C, "num_sms", lambda: sms)
    cfg = W.FP8WgmmaConfig(schedule="stream_k", block_k=128, rows=rows)
    x, w = _operands(b, n, k, seed=b + sms)
    p = W.wgmma_plan(n, k, b, cfg)
    with mosaic_interpret.gpu_interpret():
        part = np.asarray(W.fp8_wgmma_partials(x, w, cfg))
    assert part.shape == (p["split"], p["n_pad"], p["tokens"])
    _check(part.sum(0)[:n, :b].T, x, w, 1.0)
    # slot s of row group g is CTA (first(g) + s)'s share of the group's K steps, or zero where that CTA is past it
    rows_per_group = 64 * p["rows"]
    for g in range(p["groups"]):
        first, last = (g * p["n_steps"]) // p["steps"], (g * p["n_steps"] + p["n_steps"] - 1) // p["steps"]
        for slot in range(last - first + 1, p["split"]):
            assert not part[slot, g * rows_per_group:(g + 1) * rows_per_group].any(), (g, slot)


def test_stream_k_plan_gives_every_cta_an_equal_run():
    p = W.wgmma_plan(4096, 4096, 1, W.FP8WgmmaConfig(schedule="stream_k", ctas_per_sm=2), sms=132)
    # 64 groups x 16 steps, runs of 4: every group meets exactly 4 CTAs (4 slots, not the misaligned bound's 5)
    assert (p["total"], p["steps"], p["ctas"], p["split"]) == (1024, 4, 256, 4)
    p = W.wgmma_plan(28672, 4096, 1, W.FP8WgmmaConfig(schedule="stream_k"), sms=132)
    assert (p["total"], p["steps"], p["ctas"], p["split"]) == (7168, 55, 131, 2)  # 448 x 16 over 131 runs of 55
    with pytest.raises(ValueError, match="split_k must be 0"):
        W.FP8WgmmaConfig(schedule="stream_k", split_k=2)
    with pytest.raises(ValueError, match="schedule must be one of"):
        W.FP8WgmmaConfig(schedule="ws")


def test_ragged_n_is_padded_to_whole_tiles():
    mosaic_interpret.require()
    x, w = _operands(2, 100, 256, seed=3)
    assert W.wgmma_plan(100, 256, 2)["n_pad"] == 128
    with mosaic_interpret.gpu_interpret():
        y = W.fp8_wgmma_matmul(x, w, jnp.float32(1.0), out_dtype=jnp.bfloat16)
    assert y.shape == (2, 100) and y.dtype == jnp.bfloat16
    ref = np.asarray(x, np.float64) @ np.asarray(w, np.float64).T
    # a bf16 output: the exact dot rounded once (half an ulp, 2^-9 relative) plus the f32 summation error
    np.testing.assert_allclose(np.asarray(y.astype(jnp.float32), np.float64), ref, rtol=2**-8,
                               atol=1e-6 * np.abs(ref).max())


def test_split_partials_are_the_dots_of_their_k_ranges():
    mosaic_interpret.require()
    x, w = _operands(4, 64, 1024, seed=4)
    cfg = W.FP8WgmmaConfig(block_k=128, split_k=4)
    with mosaic_interpret.gpu_interpret():
        part = W.fp8_wgmma_partials(x, w, cfg)
    assert part.shape == (4, 64, 8)
    for s in range(4):
        cols = slice(256 * s, 256 * (s + 1))
        _check(np.asarray(part[s, :, :4]).T, x[:, cols], w[:, cols], 1.0)
    assert np.all(np.asarray(part[:, :, 4:]) == 0)  # padded token columns stay zero


def test_plan_split_fills_every_sm_and_balances_the_busiest_one():
    # fused 8B layer shapes, one token, 132 SMs: >= 1 CTA per SM where the K steps (of 256) allow >= 4 per CTA, then
    # the least wave_cost; gate/up takes 2 ranges of 8 steps (7 CTAs on the busiest SM, 6.8 on average) over 448
    # CTAs of 16 steps (4 on some SMs, 3 on others)
    plans = {name: W.wgmma_plan(n, k, 1, sms=132) for name, n, k in
             (("qkv", 6144, 4096), ("o", 4096, 4096), ("gate_up", 28672, 4096), ("down", 4096, 14336))}
    assert {k: (p["groups"], p["split"], p["steps"]) for k, p in plans.items()} == {
        "qkv": (96, 4, 4), "o": (64, 4, 4), "gate_up": (448, 2, 8), "down": (64, 4, 14)}
    assert all(p["tokens"] == 8 and p["bk"] == 256 for p in plans.values())
    # no floor reachable (o needs split 8 = 2 steps per CTA for 2 CTAs per SM): the least cost, the smaller split
    assert W.wgmma_plan(4096, 4096, 1, W.FP8WgmmaConfig(ctas_per_sm=2), sms=132)["split"] == 2


def test_wave_cost_counts_the_busiest_sm_and_the_partials():
    assert W.wave_cost(132, 1, 8, 132, 100, 0) == 8 * 100 * 132
    assert W.wave_cost(133, 1, 8, 132, 100, 0) == 2 * 8 * 100 * 132  # one CTA more: a second wave
    assert W.wave_cost(132, 2, 8, 132, 100, 10) == 2 * 4 * 100 * 132 + 2 * 2 * 10


def test_plan_pads_tokens_to_eight_and_caps_stages_by_shared_memory():
    assert [W.wgmma_plan(64, 256, b)["tokens"] for b in (1, 8, 9, 33, 64)] == [8, 8, 16, 40, 64]
    p = W.wgmma_plan(512, 8192, 64, W.FP8WgmmaConfig(rows=4, block_k=512, stages=8, split_k=1))
    assert p["stages"] == W.SMEM_PIPELINE_BYTES // ((256 + 64) * 512) == 1
    assert W.wgmma_plan(192, 256, 1, W.FP8WgmmaConfig(rows=2))["rows"] == 1  # 3 tiles: 2 does not divide


def test_bad_inputs_name_the_value():
    x, w = _operands(2, 64, 128)
    with pytest.raises(ValueError, match="float8_e4m3fn"):
        W.fp8_wgmma_partials(x.astype(jnp.bfloat16), w)
    with pytest.raises(ValueError, match=r"x \[B, K\] and w \[N, K\]"):
        W.fp8_wgmma_partials(x, w[:, :64])
    with pytest.raises(ValueError, match="tokens must be in 1..64, got 65"):
        W.wgmma_plan(64, 128, 65)
    with pytest.raises(ValueError, match="block_k a multiple of 128"):
        W.FP8WgmmaConfig(block_k=192)
    with pytest.raises(ValueError, match="want rows,block_k,stages,split_k"):
        W.parse_wgmma_configs("2,256")


def test_parse_configs_and_names():
    cfgs = W.parse_wgmma_configs("1,256,4,0; 2,512,3,2; sk3:1,256,4,0")
    assert [c.name for c in cfgs] == ["wgmma/r1k256p4s0", "wgmma/r2k512p3s2", "wgmma/r1k256p4s0c3-sk"]
    assert cfgs[1] == W.FP8WgmmaConfig(rows=2, block_k=512, stages=3, split_k=2)
    assert cfgs[2] == W.FP8WgmmaConfig(schedule="stream_k", ctas_per_sm=3)
    assert all(W.FP8WgmmaConfig.from_name(c.name) == c for c in cfgs)
    with pytest.raises(ValueError, match="the only prefix is sk"):
        W.parse_wgmma_configs("grid:1,256,4,0")


@pytest.mark.parametrize("b,n,k,cfg", [(1, 28672, 8192, W.FP8WgmmaConfig()), (32, 6144, 4096, W.FP8WgmmaConfig(rows=2)),
                                       (64, 4096, 14336, W.FP8WgmmaConfig(block_k=512, stages=3)),
                                       (1, 4096, 14336, W.FP8WgmmaConfig(schedule="stream_k", ctas_per_sm=2)),
                                       (32, 6144, 4096, W.FP8WgmmaConfig(schedule="stream_k", rows=2))])
def test_mosaic_lowering_for_cuda(b, n, k, cfg):
    """Mosaic's Python lowering accepts the e4m3 wgmma on the K-major token view (it rejects a transposed fp8
    operand) and the kernel is one custom call next to the XLA epilogue."""
    fn = jax.jit(lambda x, w: W.fp8_wgmma_matmul(x, w, jnp.float32(1.0), cfg=cfg))
    txt = fn.trace(jax.ShapeDtypeStruct((b, k), jnp.float8_e4m3fn),
                   jax.ShapeDtypeStruct((n, k), jnp.float8_e4m3fn)).lower(lowering_platforms=("cuda",)).as_text()
    assert txt.count("stablehlo.custom_call @mosaic_gpu") == 1
