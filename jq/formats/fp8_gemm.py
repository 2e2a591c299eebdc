"""Which GEMM serves a real-quantized FP8 linear layer, chosen by shape: the fp8 GEMM or the weight-dequant GEMM.

Two ways to compute ``y = (q(x) @ w_q.T) (1/s_x) (1/s_w)`` on E4M3 operands (:func:`jq_kernels.fp8_linear.fp8_linear`):

* ``"w8a8"``: one fp8 ``dot_general`` (cuBLASLt's fp8 GEMM on Hopper): compute-efficient, the choice for many
  tokens;
* ``"dequant"``: the E4M3 weight (stored, 1 byte per element) and the E4M3 activation upcast to bf16 as the
  operands of a bf16 GEMM. Every E4M3 value is a bf16 value and bf16 products are exact in the f32 accumulator,
  so both give the same number up to accumulation order; at a few tokens the GEMM is bound by reading the
  weight, which stays 1 byte per element.

:class:`FP8GemmPolicy` picks ``"dequant"`` for at most ``dequant_max_tokens`` rows (tokens in the call) and
``"w8a8"`` above. The default threshold (32, the decode batch sizes of issue 15) is to be set from the
``fp8_gemm`` rows of ``benchmarks/llm_decode.py`` on the target GPU; ``mode`` forces one path.

Example:
  >>> FP8GemmPolicy().choose(tokens=8, n=4096, k=4096)
  'dequant'
  >>> FP8GemmPolicy(mode="w8a8").choose(tokens=8, n=4096, k=4096)
  'w8a8'
"""

from __future__ import annotations

import dataclasses

__all__ = ["FP8GemmPolicy", "FP8_GEMMS"]

FP8_GEMMS = ("w8a8", "dequant")
_MODES = ("auto",) + FP8_GEMMS


@dataclasses.dataclass(frozen=True, kw_only=True)
class FP8GemmPolicy:
    """Shape rule for the FP8 linear layer's GEMM.

    Attributes:
      mode: ``"auto"`` (by shape), or ``"w8a8"`` / ``"dequant"`` to force one path.
      dequant_max_tokens: ``auto`` uses ``"dequant"`` for ``tokens <= dequant_max_tokens`` (0 disables it).
      dequant_min_weight: ``auto`` keeps ``"w8a8"`` for weights of fewer than this many elements ``n * k``
        (small weights are not bandwidth-bound; 0 means every weight qualifies).
    """

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
        """``"w8a8"`` or ``"dequant"`` for a GEMM of ``tokens`` rows and a weight ``[n, k]``."""
        if tokens < 1 or n < 1 or k < 1:
            raise ValueError(f"FP8GemmPolicy.choose: tokens, n, k must be positive, got {tokens}, {n}, {k}")
        if self.mode != "auto":
            return self.mode
        if tokens <= self.dequant_max_tokens and n * k >= self.dequant_min_weight:
            return "dequant"
        return "w8a8"
