"""FP8GemmPolicy: the shape rule choosing the FP8 linear layer's GEMM, and the GEMMs' equality on CPU (the Triton
decode kernel in Pallas interpret mode, the Mosaic one in jax's GPU interpreter)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jq
from jq import deploy
from jq import numerics as nx
from jq.formats.fp8_gemm import FP8GemmPolicy
from jq.formats.linear import FP8Linear
from jq.presets import with_output_head
from jq_kernels.fp8_decode import FP8DecodeConfig
from jq_kernels.fp8_wgmma import FP8WgmmaConfig
from tests.kernels import mosaic_interpret

SMALL = FP8DecodeConfig(block_n=32, block_k=64, target_programs=8)  # interpret grids of a few steps


def _layer_operands(seed, tokens, n, k):
    """``(x [tokens, k], stored FP8 weight (w_q [n, k], 1/s_w), input amax)`` of a random layer."""
    kx, kw = jax.random.split(jax.random.key(seed))
    x = jax.random.normal(kx, (tokens, k))
    w = jax.random.normal(kw, (n, k))
    q, s = nx.fp8_quantize(w, jnp.max(jnp.abs(w)), "e4m3")
    return x, (q.astype(jnp.float8_e4m3fn), nx.fp8_dequant_scale(s)), jnp.max(jnp.abs(x))


def test_auto_uses_the_small_batch_gemm_up_to_the_token_threshold():
    p = FP8GemmPolicy(dequant_max_tokens=32)
    assert [p.choose(tokens=t, n=4096, k=4096) for t in (1, 8, 32, 33, 4096)] == \
        ["decode_kernel", "decode_kernel", "decode_kernel", "w8a8", "w8a8"]


def test_small_weights_stay_on_w8a8():
    p = FP8GemmPolicy(dequant_min_weight=1 << 20)
    assert p.choose(tokens=1, n=512, k=512) == "w8a8"  # 2^18 elements
    assert p.choose(tokens=1, n=1024, k=1024) == "decode_kernel"  # 2^20 elements


def test_forced_modes_and_disabled_threshold():
    assert FP8GemmPolicy(mode="w8a8").choose(tokens=1, n=64, k=64) == "w8a8"
    assert FP8GemmPolicy(mode="dequant").choose(tokens=4096, n=64, k=64) == "dequant"
    assert FP8GemmPolicy(dequant_max_tokens=0).choose(tokens=1, n=64, k=64) == "w8a8"


def test_bad_policy_values_name_the_field():
    with pytest.raises(ValueError, match="mode"):
        FP8GemmPolicy(mode="fp16")
    with pytest.raises(ValueError, match="dequant_max_tokens"):
        FP8GemmPolicy(dequant_max_tokens=-1)
    with pytest.raises(ValueError, match="positive"):
        FP8GemmPolicy().choose(tokens=0, n=1, k=1)


def test_linear_kernel_asks_the_policy_per_call_shape():
    w = jax.random.normal(jax.random.key(0), (96, 64))
    q, s = nx.fp8_quantize(w, jnp.max(jnp.abs(w)), "e4m3")
    stored = (q.astype(jnp.float8_e4m3fn), nx.fp8_dequant_scale(s))
    kernel = FP8Linear(policy=FP8GemmPolicy(dequant_max_tokens=4))
    assert kernel.gemm(4, stored) == "decode_kernel" and kernel.gemm(5, stored) == "w8a8"


@pytest.mark.parametrize("tokens", [3, 40])
def test_dequant_gemm_equals_the_fp8_gemm(tokens):
    """E4M3 values are exact in bf16 and their products exact in f32: the two GEMMs agree to summation order."""
    x, stored, amax = _layer_operands(1, tokens, 128, 256)
    y = {m: FP8Linear(policy=FP8GemmPolicy(mode=m)).apply(x, stored, input_amax=amax, platform="cpu")
         for m in ("w8a8", "dequant")}
    ref = nx.fp8_fake_quant(x, amax, "e4m3") @ (stored[0].astype(jnp.float32) * stored[1]).T
    np.testing.assert_allclose(np.asarray(y["dequant"]), np.asarray(y["w8a8"]), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(np.asarray(y["dequant"]), np.asarray(ref), rtol=1e-4, atol=1e-3)


def test_decode_kernel_mode_is_forced_up_to_the_kernel_token_limit():
    p = FP8GemmPolicy(mode="decode_kernel")
    assert [p.choose(tokens=t, n=4096, k=4096) for t in (1, 32, 64, 65, 2048)] == \
        ["decode_kernel"] * 3 + ["w8a8"] * 2


def test_wgmma_kernel_mode_is_forced_up_to_its_token_limit_and_never_chosen_by_auto():
    p = FP8GemmPolicy(mode="wgmma_kernel")
    assert [p.choose(tokens=t, n=4096, k=4096) for t in (1, 64, 65)] == ["wgmma_kernel"] * 2 + ["w8a8"]
    assert "wgmma_kernel" not in {FP8GemmPolicy().choose(tokens=t, n=4096, k=4096) for t in (1, 8, 32, 64)}


@pytest.mark.parametrize("tokens", [1, 5])
def test_wgmma_kernel_equals_the_fp8_gemm(tokens):
    """The layer's GPU path (XLA quantizes x, the Mosaic kernel multiplies) in jax's GPU interpreter; off the GPU the
    mode runs the w8a8 reference."""
    mosaic_interpret.require()
    x, stored, amax = _layer_operands(5, tokens, 128, 384)
    kern = FP8Linear(policy=FP8GemmPolicy(mode="wgmma_kernel"), wgmma_cfg=FP8WgmmaConfig(block_k=128, split_k=3))
    assert kern.gemm(tokens, stored) == "wgmma_kernel"
    with mosaic_interpret.gpu_interpret():
        y = kern.apply(x, stored, input_amax=amax, platform="gpu")
    y8 = FP8Linear(policy=FP8GemmPolicy(mode="w8a8")).apply(x, stored, input_amax=amax, platform="cpu")
    np.testing.assert_allclose(np.asarray(y), np.asarray(y8), rtol=1e-5, atol=1e-5)
    ref = kern.apply(x, stored, input_amax=amax, platform="cpu")
    np.testing.assert_array_equal(np.asarray(ref), np.asarray(y8))


def test_auto_small_batch_gemm_is_one_class_constant(monkeypatch):
    # the decode kernel is the default at <= 32 tokens (measured faster end to end on the H100, run 26)
    p = FP8GemmPolicy()
    assert [p.choose(tokens=t, n=4096, k=4096) for t in (1, 32, 33)] == ["decode_kernel", "decode_kernel", "w8a8"]
    monkeypatch.setattr(FP8GemmPolicy, "small_batch_gemm", "dequant")
    assert [p.choose(tokens=t, n=4096, k=4096) for t in (1, 32, 33)] == ["dequant", "dequant", "w8a8"]


@pytest.mark.parametrize("x_in_kernel", [True, False])
@pytest.mark.parametrize("tokens", [1, 3])
def test_decode_kernel_equals_the_fp8_gemm(tokens, x_in_kernel):
    x, stored, amax = _layer_operands(4, tokens, 96, 192)
    cfg = dataclasses.replace(SMALL, x_in_kernel=x_in_kernel)
    kern = FP8Linear(policy=FP8GemmPolicy(mode="decode_kernel"), decode_cfg=cfg, kernel_interpret=True)
    assert kern.gemm(tokens, stored) == "decode_kernel"
    y = kern.apply(x, stored, input_amax=amax, platform="cpu")
    y8 = FP8Linear(policy=FP8GemmPolicy(mode="w8a8")).apply(x, stored, input_amax=amax, platform="cpu")
    np.testing.assert_allclose(np.asarray(y), np.asarray(y8), rtol=1e-5, atol=1e-5)
    # without kernel_interpret, off the GPU the mode runs the w8a8 reference
    ref = FP8Linear(policy=FP8GemmPolicy(mode="decode_kernel")).apply(x, stored, input_amax=amax, platform="cpu")
    np.testing.assert_array_equal(np.asarray(ref), np.asarray(y8))


def test_decode_kernel_through_deploy_equals_the_w8a8_model():
    """A tiny MLP served by jq.deploy with every FP8 site forced onto the decode kernel (interpret mode)."""
    import flax.linen as nn

    class MLP(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(128, name="fc2")(nn.relu(nn.Dense(256, name="fc1")(x)))

    m, x = MLP(), jax.random.normal(jax.random.key(0), (5, 192))
    qm = jq.quantize(m.init(jax.random.key(1), x), m.apply, with_output_head(jq.FP8_DEFAULT_CFG),
                     calib_data=[(x,)], progress=False)
    rm = deploy.realize(qm)
    assert set(rm.plan.values()) == {"fp8"}

    def served(**kw):
        kernels = {k: dataclasses.replace(v, **kw) for k, v in rm.kernels.items()}
        r = dataclasses.replace(rm, kernels=kernels)
        return np.asarray(jax.jit(r.apply)(r.weights, r.params, x))

    y_kernel = served(policy=FP8GemmPolicy(mode="decode_kernel"), decode_cfg=SMALL, kernel_interpret=True)
    y_w8a8 = served(policy=FP8GemmPolicy(mode="w8a8"))
    np.testing.assert_allclose(y_kernel, y_w8a8, rtol=1e-5, atol=1e-5 * float(np.max(np.abs(y_w8a8))))
    y_fake = np.asarray(jax.jit(qm.apply)(qm.params, x))
    assert np.linalg.norm(y_kernel - y_fake) / np.linalg.norm(y_fake) < 1e-5


@pytest.mark.parametrize("mode,kernel,absent", [("w8a8", "jq_fp8_quantize", "mosaic_gpu"),
                                                ("dequant", "jq_fp8_quantize", "mosaic_gpu"),
                                                ("decode_kernel", "jq_fp8_decode", "mosaic_gpu"),
                                                ("wgmma_kernel", "@mosaic_gpu", "triton")])
def test_each_gemm_lowers_to_its_kernel_on_the_gpu_path(mode, kernel, absent):
    """FP8Linear's GPU path for each forced GEMM, lowered for CUDA: the kernel that mode names, not another's."""
    x, stored, amax = _layer_operands(6, 4, 256, 512)
    lin = FP8Linear(policy=FP8GemmPolicy(mode=mode))
    fn = jax.jit(lambda x, w, s, a: lin.apply(x, (w, s), input_amax=a, platform="gpu"))
    txt = fn.trace(x, *stored, amax).lower(lowering_platforms=("cuda",)).as_text()
    assert kernel in txt and absent not in txt
