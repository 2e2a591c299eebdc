"""The W4A16 decode GEMM entry points: ``y = x @ dequant(W).T`` for ``x [B, K]`` bf16 and a :class:`PackedW4`.

:func:`w4a16_matmul_mosaic` is one Mosaic GPU call for ``B <= 64`` (activation preparation, the kernel of
:mod:`jq_kernels.w4a16.schedules` and, with the default epilogue, one XLA fusion adding the partial sums);
:func:`w4a16_matmul` takes any leading dims and batch (64-token chunks) and picks the launch configuration.
Numerics: the result matches ``x @ dequant(W).T`` to f32-accumulation / output-dtype rounding (docs/kernels.md).
"""

from __future__ import annotations

import contextlib

import jax.numpy as jnp

from jq_kernels.w4a16.layout import PackedW4
from jq_kernels.w4a16.plan import MosaicConfig, default_config, plan
from jq_kernels.w4a16.prefill import PrefillConfig, w4a16_prefill_matmul
from jq_kernels.w4a16.schedules import mosaic_call

__all__ = ["w4a16_matmul", "w4a16_matmul_mosaic", "mosaic_config", "prep_x", "runs_prefill", "MAX_TOKENS"]

MAX_TOKENS = 64  # tokens per Mosaic call (the wgmma N side of one token tile)


def prep_x(x, kp, tpad, dtype="f16"):
    """Activations ``[B, K]`` -> the kernel's token operand and the factor that undoes its scaling.

    ``dtype="bf16"``: x as bf16, factor 1, not copied when K is a multiple of 128 and B < 8 or a multiple of 8 (the
    TMA tiling of the operand); else padded to Kp columns / Tpad rows (token rows past B that the copy leaves
    unwritten only reach accumulator columns that are dropped). ``"f16"``: f16 ``[Tpad, Kp]`` scaled by ``2^e``
    (amax * 2^e < 2^15), factor ``2^-e``.
    """
    if dtype == "bf16":
        xb = x.astype(jnp.bfloat16)
        b, k = x.shape
        pad_b = tpad - b if (b > 8 and b % 8) else 0  # TMA row tiling: B < 8 or a multiple of 8
        pad_k = kp - k  # columns past K must read as zeros (the weight codes there are 0; 0 * garbage may be NaN)
        if pad_b or pad_k:
            xb = jnp.pad(xb, [(0, pad_b), (0, pad_k)])
        return xb, jnp.float32(1.0)
    xf = x.astype(jnp.float32)
    amax = jnp.max(jnp.abs(xf))
    e = jnp.where(amax > 0, 14 - jnp.floor(jnp.log2(jnp.maximum(amax, 1e-30))), 0.0)
    e = jnp.clip(e, -100, 100)
    scale = jnp.exp2(e)
    xs = (xf * scale).astype(jnp.float16)
    xs = jnp.pad(xs, [(0, tpad - x.shape[0]), (0, kp - x.shape[1])])
    return xs, 1.0 / scale


def _finish(out, pw: PackedW4, b: int, inv_xscale, out_dtype):
    """XLA epilogue: ``y [B, N] = (sum of the partial-sum slots)^T * factor``, cast to ``out_dtype``."""
    acc = out[0] if out.shape[0] == 1 else jnp.sum(out, axis=0)
    factor = (pw.factor * inv_xscale).astype(jnp.float32)
    return (acc[: pw.n, :b].T * factor).astype(out_dtype)


def w4a16_matmul_mosaic(x, pw: PackedW4, cfg: MosaicConfig = MosaicConfig(), out_dtype=jnp.bfloat16):
    """The Mosaic GPU decode GEMM: ``y [B, N] = x [B, K] @ W.T`` for ``B <= 64`` (GPU; lowers from any jax).

    Example (lowering only on a CPU machine)::

        pw = pack_w4(codes, scales, gs, fmt="nvfp4", shape=(n, k))
        y = jax.jit(w4a16_matmul_mosaic)(x.astype(jnp.bfloat16), pw)
    """
    b, k = x.shape
    if k != pw.k:
        raise ValueError(f"w4a16_matmul_mosaic: x has K={k}, the packed weight K={pw.k}")
    if b > MAX_TOKENS:
        raise ValueError(f"w4a16_matmul_mosaic takes up to {MAX_TOKENS} tokens, got {b}; use w4a16_matmul")
    p = plan(pw, b, cfg)
    xs, inv_xscale = prep_x(x, p["kp"], p["tpad"], pw.dtype)
    if cfg.epilogue == "kernel":
        if jnp.dtype(out_dtype) not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16), jnp.dtype(jnp.float32)):
            raise ValueError(f"the in-kernel epilogue writes bf16, f16 or f32, not {jnp.dtype(out_dtype)}")
        factor = pw.factor if pw.dtype == "bf16" else pw.factor * inv_xscale
        y, _ = mosaic_call(xs, pw, cfg, b, factor, out_dtype)
        return y if pw.n == p["np_"] else y[:, : pw.n]
    return _finish(mosaic_call(xs, pw, cfg, b), pw, b, inv_xscale, out_dtype)


_CFG_OVERRIDE: list = []


@contextlib.contextmanager
def mosaic_config(cfg: MosaicConfig):
    """Within the block, :func:`w4a16_matmul` calls without ``cfg`` (e.g. from ``jq.deploy``) trace with ``cfg``
    instead of :func:`~jq_kernels.w4a16.plan.default_config` (benchmarks compare configs end to end this way)."""
    _CFG_OVERRIDE.append(cfg)
    try:
        yield cfg
    finally:
        _CFG_OVERRIDE.pop()


def runs_prefill(tokens: int, prefill_min_tokens: int | None) -> bool:
    """Whether :func:`w4a16_matmul` runs the prefill GEMM for ``tokens`` rows (None: never)."""
    return prefill_min_tokens is not None and tokens >= prefill_min_tokens


def w4a16_matmul(x, pw: PackedW4, *, cfg: MosaicConfig | None = None, out_dtype=jnp.bfloat16,
                 prefill_min_tokens: int | None = None, prefill_cfg: PrefillConfig | None = None,
                 interpret: bool | None = None):
    """``x @ dequant(W).T`` for any leading dims of ``x [..., K]``: the Pallas-Triton prefill GEMM
    (:func:`~jq_kernels.w4a16.prefill.w4a16_prefill_matmul`) when there are at least ``prefill_min_tokens`` tokens,
    else the Mosaic decode GEMM (more than 64 tokens: 64-token chunks).

    ``cfg`` None: the :func:`mosaic_config` override if any, else ``default_config(pw, min(64, tokens))``.
    ``prefill_min_tokens`` None: never the prefill GEMM. ``prefill_cfg``: its launch parameters (None: default);
    ``interpret``: its Pallas interpret mode (None: compiled on a GPU).
    """
    if not isinstance(pw, PackedW4):
        raise TypeError(f"w4a16_matmul takes a PackedW4 (jq_kernels.w4a16.pack_w4), got {type(pw).__name__}; "
                        "for a dequantized weight use w4a16_matmul_xla")
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    if runs_prefill(x2.shape[0], prefill_min_tokens):
        y = w4a16_prefill_matmul(x2, pw, cfg=prefill_cfg, out_dtype=out_dtype, interpret=interpret)
        return y.reshape(lead + (y.shape[-1],))
    cfg = cfg or (_CFG_OVERRIDE[-1] if _CFG_OVERRIDE else default_config(pw, min(MAX_TOKENS, x2.shape[0])))
    ys = [w4a16_matmul_mosaic(x2[s:s + MAX_TOKENS], pw, cfg, out_dtype) for s in range(0, x2.shape[0], MAX_TOKENS)]
    y = ys[0] if len(ys) == 1 else jnp.concatenate(ys, axis=0)
    return y.reshape(lead + (y.shape[-1],))
