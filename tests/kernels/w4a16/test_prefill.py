"""The W4A16 prefill GEMM (Pallas-Triton, interpret mode here): it reads the decode GEMM's packed weight in place and
computes ``x @ (emulate_decode(pw) * factor).T`` (the decode GEMM's numbers) up to f32 summation order, for NVFP4
and INT4, ragged M / N / K, both MMA orientations and both places of the activation permutation; it lowers for
CUDA; W4A16 sites route calls of many tokens to it behind an explicit threshold."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jq.formats.linear import W4A16Linear
from jq_kernels.w4a16 import emulate_decode, pack_w4, w4a16_matmul
from jq_kernels.w4a16.prefill import (
    CONFIGS,
    PrefillConfig,
    permute_k,
    prefill_plan,
    w4a16_prefill_matmul,
)
from tests.kernels.w4a16._weights import I4, NV1, packed, quantize, weight

N, K, M = 100, 300, 40  # packed to [128, 384]: ragged N, K (zero codes past K) and M (not a multiple of bm)


def _x(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.bfloat16)


def _refs(x, pw, qt):
    """(f64 ``x @ decoded.T``, f64 ``sum |x| |decoded|`` (the f32 summation-error scale), f64 ``x @ dequantize.T``)."""
    xf = np.asarray(x, np.float64)
    w = emulate_decode(pw)[: pw.n, : pw.k].astype(np.float64) * float(pw.factor)
    wd = np.asarray(qt.dequantize(jnp.float32), np.float64)
    return xf @ w.T, np.abs(xf) @ np.abs(w).T, xf @ wd.T


@pytest.fixture(scope="module", params=[NV1, I4], ids=["nvfp4", "int4"])
def case(request):
    qt = quantize(weight((N, K), 3), request.param)
    return qt, packed(qt)


@pytest.mark.parametrize("cfg", [
    PrefillConfig(),  # bm 64 (40 tokens), bn 128, bk 64: six K steps, INT4 half a group per step
    PrefillConfig(block_m=32, block_n=64, block_k=128, swap_ab=True),  # grid (2, 2), W as the A operand
    PrefillConfig(block_m=16, block_n=64, block_k=256, x_permute="kernel"),  # bk 256 halved to 128; x permuted in
], ids=lambda c: c.name)
def test_matches_the_decode_numerics(case, cfg):
    qt, pw = case
    x = _x((M, K))
    y = np.asarray(w4a16_prefill_matmul(x, pw, cfg=cfg, out_dtype=jnp.float32, interpret=True), np.float64)
    ref, scale, ref_dq = _refs(x, pw, qt)
    assert y.shape == (M, N)
    # same products, f32 sums in another order: |error| <= a few ulps of the sum of |terms|
    np.testing.assert_array_less(np.abs(y - ref), 1e-6 * scale + 1e-30)
    # against dequantize-then-matmul: NVFP4 code * scale is exact in bf16; INT4 rounds code * amax/7 to bf16
    tol = 1e-6 if pw.fmt == "nvfp4" else 2.0**-8
    np.testing.assert_array_less(np.abs(y - ref_dq), tol * scale + 1e-30)


def test_bf16_output_and_leading_dims(case):
    qt, pw = case
    x = _x((2, 20, K), 1)
    y = w4a16_prefill_matmul(x, pw, cfg=PrefillConfig(block_m=16, block_n=64), interpret=True)
    assert y.shape == (2, 20, N) and y.dtype == jnp.bfloat16
    ref, scale, _ = _refs(x.reshape(40, K), pw, qt)
    err = np.abs(np.asarray(y, np.float64).reshape(40, N) - ref)
    np.testing.assert_array_less(err, 2.0**-8 * np.abs(ref) + 1e-6 * scale + 1e-30)  # bf16 output rounding


E2M1 = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]


@pytest.mark.parametrize("fmt", ["nvfp4", "int4"])
def test_every_code_decodes_exactly(fmt):
    """x = I (128 tokens) reads the decoded weight back: element (n, c) holds code (n + c) % 16 and comes out as
    its value (E2M1 with sign bit 3; INT4 two's complement, -8 included) times the scales, exactly."""
    n_idx, c_idx = np.meshgrid(np.arange(64), np.arange(128), indexing="ij")
    codes = ((n_idx + c_idx) % 16).astype(np.uint8)
    packed_codes = jnp.asarray(codes[:, 0::2] | (codes[:, 1::2] << 4))
    if fmt == "nvfp4":
        scales = jnp.full((64, 8), 0.5, jnp.float8_e4m3fn).at[::3].set(448.0).at[1::5].set(2.0**-9)
        pw = pack_w4(packed_codes, scales, 0.25, fmt="nvfp4", shape=(64, 128))
        mag = np.asarray(E2M1)[codes & 7] * np.where(codes >= 8, -1.0, 1.0)
        want = mag * np.repeat(np.asarray(scales, np.float64), 16, axis=1) * 0.25
    else:
        s = jnp.full((64, 1), 1.0, jnp.float32).at[::2].set(0.25)  # s = 7 / amax: weight = code / s (1 and 4)
        pw = pack_w4(packed_codes, s, fmt="int4", shape=(64, 128))
        want = np.where(codes >= 8, codes.astype(np.float64) - 16, codes) * np.where(n_idx % 2 == 0, 4.0, 1.0)
    y = w4a16_prefill_matmul(jnp.eye(128, dtype=jnp.bfloat16), pw, cfg=PrefillConfig(block_n=64),
                             out_dtype=jnp.float32, interpret=True)
    np.testing.assert_array_equal(np.asarray(y, np.float64).T, want)


def test_nan_scale_reaches_the_output():
    """An NVFP4 block with a NaN scale makes its rows' outputs NaN (as dequantize does), the others stay finite."""
    codes = jnp.full((64, 64), 0x22, jnp.uint8)  # E2M1 1.0
    scales = jnp.ones((64, 8), jnp.float32).at[5, 3].set(jnp.nan).astype(jnp.float8_e4m3fn)
    pw = pack_w4(codes, scales, 2.0, fmt="nvfp4", shape=(64, 128))
    y = np.asarray(w4a16_prefill_matmul(jnp.ones((16, 128), jnp.bfloat16), pw, cfg=PrefillConfig(block_n=64),
                                        out_dtype=jnp.float32, interpret=True))
    assert np.isnan(y[:, 5]).all() and np.isfinite(np.delete(y, 5, axis=1)).all()
    assert (np.delete(y, 5, axis=1) == 256.0).all()  # 128 * 1.0 * 1.0 * 2.0


def test_permute_k_is_the_tile_column_order():
    """Tile column ``4 lc + 2 c8 + e`` of a chunk is weight column ``8 c8 + 2 lc + e``; K pads with zeros."""
    x = jnp.arange(40.0).reshape(1, 40)
    out = np.asarray(permute_k(x, 48))[0]
    want = [16 * c + 8 * c8 + 2 * lc + e for c in range(3) for lc in range(4) for c8 in range(2) for e in range(2)]
    np.testing.assert_array_equal(out, [v if v < 40 else 0 for v in want])


def test_plan_blocks_and_padding():
    pw = packed(quantize(weight((N, K), 3), NV1))
    p = prefill_plan(40, pw, PrefillConfig(block_n=256, block_k=256))
    assert (p["bm"], p["m_pad"], p["bn"], p["np_"], p["bk"], p["kp"], p["steps"], p["grid"]) == (
        64, 64, 128, 128, 128, 384, 3, (1, 1))
    assert prefill_plan(1000, pw)["grid"] == (8, 1) and prefill_plan(1000, pw)["m_pad"] == 1024


@pytest.mark.parametrize("kw,match", [
    ({"block_n": 32}, "block_n"), ({"block_n": 512}, "block_n"), ({"block_k": 96}, "block_k"),
    ({"block_m": 8}, "block_m"), ({"num_stages": 0}, "num_stages"), ({"x_permute": "host"}, "x_permute"),
    ({"decode": "lut"}, "decode"),
])
def test_bad_config_raises(kw, match):
    with pytest.raises(ValueError, match=match):
        PrefillConfig(**kw)


def test_config_names_round_trip():
    for cfg in CONFIGS:
        assert PrefillConfig.from_name(cfg.name) == cfg
    with pytest.raises(ValueError, match="not a config name"):
        PrefillConfig.from_name("n128k64")


def test_rejects_wrong_operands():
    qt = quantize(weight((64, 256), 8), NV1)
    with pytest.raises(ValueError, match="K=128"):
        w4a16_prefill_matmul(jnp.zeros((4, 128), jnp.bfloat16), packed(qt), interpret=True)
    with pytest.raises(ValueError, match="dtype='f16'"):
        w4a16_prefill_matmul(jnp.zeros((4, 256), jnp.bfloat16), packed(qt, "f16"), interpret=True)
    with pytest.raises(TypeError, match="PackedW4"):
        w4a16_prefill_matmul(jnp.zeros((4, 256), jnp.bfloat16), jnp.zeros((64, 256)))


def _lower(fn, *args):
    return jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",)).as_text()


@pytest.mark.parametrize("spec", [NV1, I4], ids=["nvfp4", "int4"])
@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c.name)
def test_lowers_for_cuda(spec, cfg):
    """The Python half of the Triton lowering (unsupported primitives show here, not in interpret mode)."""
    pw = packed(quantize(weight((256, 512), 4), spec))
    x = jax.ShapeDtypeStruct((200, 512), jnp.bfloat16)
    txt = _lower(lambda x, p: w4a16_prefill_matmul(x, p, cfg=cfg, interpret=False), x, pw)
    assert txt.count("__gpu$xla.gpu.triton") == 1 and "mosaic_gpu" not in txt


def test_matmul_routes_by_token_count():
    """``w4a16_matmul``: >= prefill_min_tokens tokens -> one Triton call; fewer (or no threshold) -> the Mosaic
    decode GEMM in 64-token chunks."""
    pw = packed(quantize(weight((128, 256), 7), I4))
    x = jax.ShapeDtypeStruct((2, 70, 256), jnp.bfloat16)
    pre = _lower(lambda x, p: w4a16_matmul(x, p, prefill_min_tokens=140, interpret=False), x, pw)
    assert pre.count("__gpu$xla.gpu.triton") == 1 and "mosaic_gpu" not in pre
    dec = _lower(lambda x, p: w4a16_matmul(x, p, prefill_min_tokens=141, interpret=False), x, pw)
    assert dec.count("stablehlo.custom_call @mosaic_gpu") == 3 and "triton" not in dec
    assert jax.eval_shape(lambda x, p: w4a16_matmul(x, p, prefill_min_tokens=64, interpret=False), x, pw).shape == (
        2, 70, 128)


def test_linear_policy_threshold():
    lin = W4A16Linear("nvfp4", prefill_min_tokens=64)
    assert [lin.gemm(t) for t in (1, 63, 64, 4096)] == ["decode_kernel"] * 2 + ["prefill_kernel"] * 2
    assert W4A16Linear("nvfp4").gemm(4096) == "decode_kernel"  # default: today's behaviour
    with pytest.raises(ValueError, match="prefill_min_tokens"):
        W4A16Linear("int4", prefill_min_tokens=0)


def _bf16_value(bits):
    """bf16 bit patterns -> float64 values, subnormals included, without float32 arithmetic (the callback may run
    on an XLA thread with flush-to-zero / denormals-are-zero set)."""
    bits = np.asarray(bits, np.int64)
    e, m = (bits >> 7) & 0xFF, bits & 0x7F
    v = np.where(e > 0, np.ldexp(1.0 + m / 128.0, e - 127), np.ldexp(m / 128.0, -126))
    return np.where(bits & 0x8000, -v, v)


def _emulated_asm(asm, *, args, constraints, pack, result_shape_dtypes):
    """numpy model of the prefill kernel's two inline-PTX decodes (instruction by instruction, RN bf16x2 products
    via :func:`jq_kernels.w4a16.emulate.round_to_bf16`), run through ``jax.pure_callback`` in interpret mode."""
    from jq_kernels.w4a16.emulate import bf16_bits_to_f32, round_to_bf16
    from jq_kernels.w4a16.prefill import INT4_PAIR_PTX, NVFP4_PAIR_PTX

    assert pack == 1 and asm in (NVFP4_PAIR_PTX, INT4_PAIR_PTX)

    def model(*ops):
        ops = [np.asarray(o, np.uint64) for o in ops]
        m32 = np.uint64(0xFFFFFFFF)
        if asm == NVFP4_PAIR_PTX:
            w, sd, left, right, b = ops
            t = ((w << left) & m32) >> right
            u = ((w << b) & m32) & np.uint64(0x80008000)
            v = (t & np.uint64(0x01C001C0)) | u
        else:
            w, sd, sh = ops
            v = ((w >> sh) & np.uint64(0x000F000F)) ^ np.uint64(0x43084308)
        out = np.zeros(v.shape, np.uint64)
        for h in (0, 1):
            a = _bf16_value((v >> np.uint64(16 * h)) & np.uint64(0xFFFF))
            s = bf16_bits_to_f32((sd >> np.uint64(16 * h)) & np.uint64(0xFFFF)).astype(np.float64)
            if asm == INT4_PAIR_PTX:
                a = round_to_bf16((a - 136).astype(np.float32)).astype(np.float64)
            prod = (a * s).astype(np.float32)  # exact products, normal range
            bits = round_to_bf16(prod).view(np.uint32).astype(np.uint64) >> np.uint64(16)
            out |= bits << np.uint64(16 * h)
        return out.astype(np.uint32).view(np.int32)

    return [jax.pure_callback(model, result_shape_dtypes[0], *args)]


@pytest.mark.parametrize("cfg", [PrefillConfig(block_m=32, block_n=64, decode="ptx"),
                                 PrefillConfig(block_m=16, block_n=64, block_k=256, swap_ab=True, decode="ptx")],
                         ids=lambda c: c.name)
def test_ptx_decode_path_with_emulated_asm(case, cfg, monkeypatch):
    """The PTX decode's operands (shifts, bf16x2 scale pairs), the split of each result into two bf16 weights and the
    accumulator factor, with the asm replaced by its numpy model: the decode numerics again."""
    from jax.experimental.pallas import triton as pltr

    from jq_kernels.w4a16 import prefill as P

    qt, pw = case
    monkeypatch.setattr(pltr, "elementwise_inline_asm", _emulated_asm)
    monkeypatch.setattr(P.C, "resolve_interpret", lambda interpret: False)  # let the PTX config past the guard
    pallas_call = P.pl.pallas_call
    monkeypatch.setattr(P.pl, "pallas_call", lambda *a, **kw: pallas_call(*a, **{**kw, "interpret": True}))
    x = _x((M, K))
    y = np.asarray(P.w4a16_prefill_matmul(x, pw, cfg=cfg, out_dtype=jnp.float32), np.float64)
    ref, scale, _ = _refs(x, pw, qt)
    np.testing.assert_array_less(np.abs(y - ref), 1e-6 * scale + 1e-30)


def test_ptx_decode_refuses_interpret_mode():
    pw = packed(quantize(weight((64, 128), 2), NV1))
    with pytest.raises(ValueError, match="GPU only"):
        w4a16_prefill_matmul(jnp.zeros((4, 128), jnp.bfloat16), pw, cfg=PrefillConfig(decode="ptx"), interpret=True)
