"""Real-quantized linear layers: stored quantized weights and the GEMM that consumes them.

A format offers one of these for a ``(weight spec, input spec)`` pair through
:meth:`~jq.formats.base.Format.linear_kernel`; :func:`jq.deploy.realize` uses them to serve a site on stored
weights. Each has a ``name`` (the serving plan reports it), ``prepare(qt, platform)`` turning the weight's
:class:`~jq.qtensor.QTensor` (canonical ``[N, K]``) into what the GEMM reads, and ``apply(x2, stored, *,
input_amax, platform)`` computing ``x2 [B, K] @ W.T`` in float32.

* :class:`FP8Linear`: E4M3 weight (K-major) and the activation quantized per tensor with its calibrated amax;
  one fp8 ``dot_general`` that XLA runs as cuBLASLt's fp8 GEMM on Hopper, or, for a few tokens, a bf16 GEMM on
  the upcast E4M3 operands, the Pallas-Triton decode GEMM :mod:`jq_kernels.fp8_decode` or the Mosaic GPU one
  :mod:`jq_kernels.fp8_wgmma` (same numbers;
  :class:`~jq.formats.fp8_gemm.FP8GemmPolicy` chooses by shape; ``quantizes_input``: the kernel quantizes the
  activation itself).
* :class:`W4A16Linear`: 4-bit weights (NVFP4 or INT4 in groups of 128) with 16-bit activations; on a GPU the
  Mosaic decode GEMM of :mod:`jq_kernels.w4a16` (weights packed once), elsewhere ``x @ dequantize(W).T``. An
  enabled input quantizer (NVFP4 W4A4 on Hopper, which has no FP4 MMA) runs as fake quant before it.
"""

from __future__ import annotations

import dataclasses
import os

import jax.numpy as jnp
from jax import lax

from jq import numerics as nx
from jq.formats import fp8_gemm
from jq.formats.fp8_gemm import FP8GemmPolicy
from jq_kernels import fp8_decode, fp8_wgmma, w4a16

__all__ = ["FP8Linear", "W4A16Linear", "kernels_enabled"]


def kernels_enabled() -> bool:
    """False when ``JQ_KERNELS=reference`` (or ``off``/``0``/``none``) keeps every op on the jnp reference."""
    return os.environ.get("JQ_KERNELS", "").lower() not in ("reference", "off", "0", "none")


@dataclasses.dataclass(frozen=True)
class FP8Linear:
    """``y = (q(x) @ w_q.T) (1/s_x) (1/s_w)``: E4M3 operands, float32 accumulation; ``policy`` picks the GEMM
    (fp8 ``"w8a8"``, bf16 ``"dequant"``, the Pallas-Triton ``"decode_kernel"`` or the Mosaic ``"wgmma_kernel"``) from
    the call's token count and weight shape.

    ``decode_cfg``: the Triton decode kernel's launch parameters (None: its default; ``x_in_kernel`` decides whether
    the kernel quantizes the activation itself); ``wgmma_cfg``: the Mosaic kernel's (None: its default; XLA
    quantizes the activation before it). Both run compiled on a GPU with kernels enabled; the Triton kernel also in
    Pallas interpret mode where ``kernel_interpret`` (CPU tests of the kernel path); otherwise the ``"w8a8"``
    reference runs (same numbers up to summation order).
    """

    name: str = "fp8"
    quantizes_input: bool = True
    policy: FP8GemmPolicy = FP8GemmPolicy()
    decode_cfg: fp8_decode.FP8DecodeConfig | None = None  # None: the kernel's default
    kernel_interpret: bool = False
    wgmma_cfg: fp8_wgmma.FP8WgmmaConfig | None = None  # None: the kernel's default

    def gemm(self, tokens: int, stored) -> str:
        """The GEMM ``apply`` runs for ``tokens`` rows on this stored weight (one of
        :data:`jq.formats.fp8_gemm.FP8_GEMMS`)."""
        n, k = stored[0].shape
        return self.policy.choose(tokens=tokens, n=int(n), k=int(k))

    def prepare(self, qt, platform: str):
        """``(w_q float8_e4m3fn [N, K], 1/s_w)`` from an FP8 per-tensor QTensor (``qt.scale`` is ``s_w``); every
        GEMM (the decode kernel included) reads this layout."""
        return qt.data.astype(jnp.float8_e4m3fn), nx.fp8_dequant_scale(jnp.reshape(qt.scale, ()))

    def apply(self, x2, stored, *, input_amax, platform: str):
        w_q, w_inv = stored
        gemm = fp8_gemm.GEMMS[self.gemm(int(x2.shape[0]), stored)]
        return gemm(self, x2, w_q, w_inv, jnp.reshape(input_amax, ()), platform == "gpu" and kernels_enabled())


@dataclasses.dataclass(frozen=True)
class W4A16Linear:
    """4-bit weights, 16-bit activations; ``weight_format`` is the kernel's name for the code layout.

    On packed weights (GPU) a call of at least ``prefill_min_tokens`` tokens runs the Pallas-Triton prefill GEMM
    (:func:`jq_kernels.w4a16.w4a16_prefill_matmul`, launch parameters ``prefill_cfg``), fewer the Mosaic decode
    GEMM (64-token chunks). ``prefill_min_tokens`` None (the default until the GPU sweep
    ``benchmarks/kernel_bench/w4a16_prefill.py`` shows the prefill GEMM at least as fast): always the decode GEMM.
    """

    weight_format: str  # "nvfp4" or "int4"
    quantizes_input: bool = False
    prefill_min_tokens: int | None = None
    prefill_cfg: w4a16.PrefillConfig | None = None

    def __post_init__(self):
        if self.prefill_min_tokens is not None and self.prefill_min_tokens < 1:
            raise ValueError(f"W4A16Linear.prefill_min_tokens must be None or >= 1, got {self.prefill_min_tokens}")

    @property
    def name(self) -> str:
        return f"{self.weight_format}_w4a16"

    def gemm(self, tokens: int) -> str:
        """The packed-weight GEMM ``apply`` runs for ``tokens`` rows: ``"prefill_kernel"`` or ``"decode_kernel"``.

        Example:
          >>> W4A16Linear("int4", prefill_min_tokens=64).gemm(64), W4A16Linear("int4").gemm(4096)
          ('prefill_kernel', 'decode_kernel')
        """
        return "prefill_kernel" if w4a16.runs_prefill(tokens, self.prefill_min_tokens) else "decode_kernel"

    def prepare(self, qt, platform: str):
        """The decode-GEMM layout on a GPU (:func:`jq_kernels.w4a16.pack_w4`), else the QTensor itself."""
        if platform == "gpu" and kernels_enabled():
            return w4a16.pack_w4(qt.data, qt.scale, qt.global_scale, fmt=self.weight_format, shape=qt.shape)
        return qt

    def apply(self, x2, stored, *, input_amax, platform: str):
        if isinstance(stored, w4a16.PackedW4):
            return w4a16.w4a16_matmul(x2.astype(jnp.bfloat16), stored, out_dtype=jnp.float32,
                                      prefill_min_tokens=self.prefill_min_tokens, prefill_cfg=self.prefill_cfg)
        w = stored.dequantize(jnp.float32 if x2.dtype == jnp.float32 else jnp.bfloat16)
        precision = lax.Precision.HIGHEST if x2.dtype == jnp.float32 else None
        return lax.dot_general(x2.astype(w.dtype), w, (((1,), (1,)), ((), ())), precision=precision,
                               preferred_element_type=jnp.float32)
