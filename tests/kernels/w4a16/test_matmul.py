"""The decode-GEMM entry points: every schedule / epilogue / operand type lowers for CUDA from a CPU-only jax (the
Python half of the Mosaic compilation), the in-kernel epilogue's call signature, batching and argument checks."""

import jax
import jax.numpy as jnp
import pytest

from jq_kernels.w4a16 import MosaicConfig, plan, w4a16_matmul, w4a16_matmul_mosaic
from tests.kernels.w4a16._weights import I4, NV1, packed, quantize, weight


def _lower(fn, *args):
    return jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",)).as_text()


@pytest.mark.parametrize("spec", [NV1, I4], ids=["nvfp4", "int4"])
@pytest.mark.parametrize("b,cfg", [
    (4, MosaicConfig()), (33, MosaicConfig(rows=1, split_k=2, schedule="grid")),
    (16, MosaicConfig(schedule="grid", stages=4)),
    (4, MosaicConfig(schedule="ws")), (33, MosaicConfig(schedule="ws", rows=1, ctas=3)),
    (16, MosaicConfig(schedule="stream_k", ctas=5)), (1, MosaicConfig(schedule="stream_k", rows=1, ctas=2)),
    (4, MosaicConfig(epilogue="kernel")), (33, MosaicConfig(epilogue="kernel", ctas=5)),
    (1, MosaicConfig(epilogue="kernel", rows=1, ctas=2)),
], ids=lambda v: v if isinstance(v, int) else f"{v.schedule}-r{v.rows}-{v.epilogue}")
@pytest.mark.parametrize("dtype", ["f16", "bf16"])
def test_mosaic_kernel_lowers(spec, b, cfg, dtype):
    pw = packed(quantize(weight((256, 512), 4), spec), dtype)
    x = jax.ShapeDtypeStruct((b, 512), jnp.bfloat16)
    assert "mosaic_gpu" in _lower(lambda x, p: w4a16_matmul_mosaic(x, p, cfg), x, pw)


@pytest.mark.parametrize("out_dtype", [jnp.bfloat16, jnp.float32])
def test_kernel_epilogue_call_signature(out_dtype):
    """In-kernel epilogue: one Mosaic call returns y [B, N] in the output dtype (ragged N: an XLA slice of
    [B, Np]); the only other ops are the zeroing of the per-(row group, thread) counters; no f32 partial sums
    leave the call."""
    pw = packed(quantize(weight((200, 300), 6), NV1), "bf16")
    cfg = MosaicConfig(epilogue="kernel")
    x = jax.ShapeDtypeStruct((3, 300), jnp.bfloat16)
    out = jax.eval_shape(lambda x, p: w4a16_matmul_mosaic(x, p, cfg, out_dtype), x, pw)
    assert out.shape == (3, 200) and out.dtype == out_dtype
    txt = _lower(lambda x, p: w4a16_matmul_mosaic(x, p, cfg, out_dtype), x, pw)
    assert txt.count("stablehlo.custom_call @mosaic_gpu") == 1 and "stablehlo.transpose" not in txt
    assert "stablehlo.reduce" not in txt
    p = plan.plan(pw, 3, cfg)
    assert f"tensor<{p['groups'] * 128}xi32>" in txt  # the counters


def test_leading_dims_and_prefill_chunks():
    """``[2, 70, K]`` = 140 tokens: three Mosaic calls of <= 64 tokens, result ``[2, 70, N]``."""
    pw = packed(quantize(weight((128, 256), 7), I4), "bf16")
    x = jax.ShapeDtypeStruct((2, 70, 256), jnp.bfloat16)
    out = jax.eval_shape(lambda x, p: w4a16_matmul(x, p, out_dtype=jnp.float32), x, pw)
    assert out.shape == (2, 70, 128) and out.dtype == jnp.float32
    assert _lower(lambda x, p: w4a16_matmul(x, p), x, pw).count("stablehlo.custom_call @mosaic_gpu") == 3


def test_rejects_wrong_operands():
    pw = packed(quantize(weight((64, 256), 8), NV1), "bf16")
    with pytest.raises(ValueError, match="K=128"):
        w4a16_matmul_mosaic(jnp.zeros((4, 128), jnp.bfloat16), pw)
    with pytest.raises(ValueError, match="64 tokens"):
        w4a16_matmul_mosaic(jnp.zeros((65, 256), jnp.bfloat16), pw)
    with pytest.raises(TypeError, match="PackedW4"):
        w4a16_matmul(jnp.zeros((4, 256), jnp.bfloat16), jnp.zeros((64, 256)))
