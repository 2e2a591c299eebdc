"""Which GEMM serves a real-quantized FP8 linear layer, chosen by shape: the fp8 GEMM, the weight-dequant GEMM or
one of the two FP8 decode kernels.

Four ways to compute ``y = (q(x) @ w_q.T) (1/s_x) (1/s_w)`` on E4M3 operands:

* ``"w8a8"``: one fp8 ``dot_general`` (cuBLASLt's fp8 GEMM on Hopper, :func:`jq_kernels.fp8_linear.fp8_linear`):
  compute-efficient, the choice for many tokens;
* ``"dequant"``: the E4M3 weight (stored, 1 byte per element) and the E4M3 activation upcast to bf16 as the
  operands of an XLA bf16 GEMM. Every E4M3 value is a bf16 value and bf16 products are exact in the f32
  accumulator, so both give the same number up to accumulation order;
* ``"decode_kernel"``: the Pallas-Triton decode GEMM :mod:`jq_kernels.fp8_decode` (swap-AB, split-K), which reads
  the stored E4M3 weight once at 1 byte per element; same numbers up to accumulation order; at most
  :data:`jq_kernels.fp8_decode.MAX_TOKENS` rows (above, the policy answers ``"w8a8"``);
* ``"wgmma_kernel"``: the Mosaic GPU decode GEMM :mod:`jq_kernels.fp8_wgmma` (TMA-fed fp8 wgmma, both operands in
  shared memory; the activation quantized by XLA first); same numbers up to accumulation order; at most
  :data:`jq_kernels.fp8_wgmma.MAX_TOKENS` rows. Not measured on a GPU yet, so never chosen by ``auto``.

:class:`FP8GemmPolicy` ``auto`` picks :attr:`FP8GemmPolicy.small_batch_gemm` for at most ``dequant_max_tokens`` rows
(tokens in the call) and ``"w8a8"`` above. The threshold (32, the decode batch sizes of issue 15) and the
small-batch GEMM are to be set from the ``fp8_decode`` GPU sweep (``benchmarks/gpu_suite.py``); ``mode`` forces
one path. :data:`GEMMS` maps each name to the function computing it.

Example:
  >>> FP8GemmPolicy().choose(tokens=8, n=4096, k=4096)
  'decode_kernel'
  >>> FP8GemmPolicy(mode="w8a8").choose(tokens=8, n=4096, k=4096)
  'w8a8'
  >>> FP8GemmPolicy(mode="decode_kernel").choose(tokens=128, n=4096, k=4096)
  'w8a8'
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax.numpy as jnp

from jq import numerics as nx
from jq_kernels import fp8 as fp8_kernels
# modules, attributes read at call time: jq_kernels imports jq.numerics (jq's __init__)
from jq_kernels import fp8_decode, fp8_linear, fp8_wgmma

__all__ = ["FP8GemmPolicy", "FP8_GEMMS", "GEMMS"]


# Each GEMM: ``(layer, x2 [B, K], w_q [N, K] float8_e4m3fn, w_inv = 1/s_w, amax of x, on_gpu) -> y [B, N] float32``
# with ``y = (q(x) @ w_q.T) (1/s_x) (1/s_w)``; ``layer`` is the :class:`jq.formats.linear.FP8Linear` serving the site
# (its kernel configs). Off the GPU (or with kernels off) the kernels run the w8a8 reference.

def _pallas_quantize_x(on_gpu):
    """The activation quantizer of the XLA GEMMs: jq's FP8 quantize kernel on the GPU, else jnp (None)."""
    if not on_gpu:
        return None
    return lambda v, a: fp8_kernels.fp8_quantize(v, a, interpret=False)


def w8a8_gemm(layer, x2, w_q, w_inv, amax, on_gpu):
    """One fp8 ``dot_general`` (cuBLASLt's fp8 GEMM on Hopper)."""
    del layer
    return fp8_linear.fp8_linear(x2, w_q, w_inv, amax, out_dtype=jnp.float32, quantize_x=_pallas_quantize_x(on_gpu))


def dequant_gemm(layer, x2, w_q, w_inv, amax, on_gpu):
    """An XLA bf16 GEMM on the E4M3 operands upcast (exact)."""
    del layer
    return fp8_linear.fp8_linear(x2, w_q, w_inv, amax, out_dtype=jnp.float32, quantize_x=_pallas_quantize_x(on_gpu),
                                 operand_dtype=jnp.bfloat16)


def decode_kernel_gemm(layer, x2, w_q, w_inv, amax, on_gpu):
    """The Pallas-Triton decode GEMM (``layer.decode_cfg``; interpret mode off the GPU with
    ``layer.kernel_interpret``)."""
    if not (on_gpu or layer.kernel_interpret):
        return w8a8_gemm(layer, x2, w_q, w_inv, amax, on_gpu)
    cfg = layer.decode_cfg or fp8_decode.FP8DecodeConfig()
    s_x = nx.fp8_quant_scale(amax, "e4m3")
    x_scale = None
    if cfg.x_in_kernel:  # the kernel quantizes each activation tile it loads (one launch)
        xq, x_scale = x2, s_x
    elif on_gpu:
        xq, s_x = _pallas_quantize_x(on_gpu)(x2, amax)
    else:
        q, s_x = nx.fp8_quantize(x2, amax, "e4m3")
        xq = q.astype(jnp.float8_e4m3fn)
    return fp8_decode.fp8_decode_matmul(xq, w_q, nx.fp8_dequant_scale(s_x) * w_inv, x_scale=x_scale,
                                        out_dtype=jnp.float32, cfg=cfg, interpret=not on_gpu)


def wgmma_kernel_gemm(layer, x2, w_q, w_inv, amax, on_gpu):
    """The Mosaic GPU decode GEMM (``layer.wgmma_cfg``); XLA quantizes the activation (jnp, exact: the values land
    on the E4M3 grid before the cast), so the quantization fuses into the op producing x instead of a launch."""
    if not on_gpu:
        return w8a8_gemm(layer, x2, w_q, w_inv, amax, on_gpu)
    q, s_x = nx.fp8_quantize(x2, amax, "e4m3")
    return fp8_wgmma.fp8_wgmma_matmul(q.astype(jnp.float8_e4m3fn), w_q, nx.fp8_dequant_scale(s_x) * w_inv,
                                      out_dtype=jnp.float32, cfg=layer.wgmma_cfg)


GEMMS = {"w8a8": w8a8_gemm, "dequant": dequant_gemm, "decode_kernel": decode_kernel_gemm,
         "wgmma_kernel": wgmma_kernel_gemm}
FP8_GEMMS = tuple(GEMMS)
_MODES = ("auto",) + FP8_GEMMS


@dataclasses.dataclass(frozen=True, kw_only=True)
class FP8GemmPolicy:
    """Shape rule for the FP8 linear layer's GEMM.

    Attributes:
      mode: ``"auto"`` (by shape), or ``"w8a8"`` / ``"dequant"`` / ``"decode_kernel"`` / ``"wgmma_kernel"`` to force
        one path (a decode kernel only up to its ``MAX_TOKENS`` rows, ``"w8a8"`` above).
      dequant_max_tokens: ``auto`` uses :attr:`small_batch_gemm` for ``tokens <= dequant_max_tokens`` (0 disables
        it).
      dequant_min_weight: ``auto`` keeps ``"w8a8"`` for weights of fewer than this many elements ``n * k``
        (small weights are not bandwidth-bound; 0 means every weight qualifies).
      small_batch_gemm (class attribute): the GEMM ``auto`` uses at few tokens: ``"decode_kernel"`` (run 26,
        H100: the Llama-3-8B shape decodes 1.59x / 1.57x / 1.51x bf16 at B = 1 / 8 / 32 with it against
        1.47x / 1.49x / 1.46x with ``"dequant"``; benchmarks/RESULTS.md).
    """

    small_batch_gemm: ClassVar[str] = "decode_kernel"

    mode: str = "auto"
    dequant_max_tokens: int = 32
    dequant_min_weight: int = 0

    def __post_init__(self):
        if self.mode not in _MODES:
            raise ValueError(f"FP8GemmPolicy.mode must be one of {_MODES}, got {self.mode!r}")
        if self.dequant_max_tokens < 0 or self.dequant_min_weight < 0:
            raise ValueError(f"FP8GemmPolicy thresholds must be >= 0, got dequant_max_tokens="
                             f"{self.dequant_max_tokens}, dequant_min_weight={self.dequant_min_weight}")

    def choose(self, *, tokens: int, n: int, k: int) -> str:
        """The GEMM (one of :data:`FP8_GEMMS`) for ``tokens`` rows and a weight ``[n, k]``."""
        if tokens < 1 or n < 1 or k < 1:
            raise ValueError(f"FP8GemmPolicy.choose: tokens, n, k must be positive, got {tokens}, {n}, {k}")
        if self.mode != "auto":
            gemm = self.mode
        elif tokens <= self.dequant_max_tokens and n * k >= self.dequant_min_weight:
            gemm = self.small_batch_gemm
        else:
            gemm = "w8a8"
        limit = {"decode_kernel": fp8_decode.MAX_TOKENS, "wgmma_kernel": fp8_wgmma.MAX_TOKENS}.get(gemm)
        return "w8a8" if limit is not None and tokens > limit else gemm
