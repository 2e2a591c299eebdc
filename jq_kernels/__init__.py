"""jq's kernels: arrays and static parameters in, arrays out (no quantizer specs, no QTensor).

* :mod:`jq_kernels.nvfp4`, :mod:`jq_kernels.fp8`, :mod:`jq_kernels.mx` -- Pallas-Triton quantize / dequantize / fused
  fake-quant kernels, bit-exact with :mod:`jq.numerics`.
* :mod:`jq_kernels.fp8_linear` -- the FP8 linear layer through XLA's cuBLASLt fp8 GEMM.
* :mod:`jq_kernels.fp8_decode` -- the FP8 decode GEMM for a few tokens (Pallas-Triton, swap-AB, split-K).
* :mod:`jq_kernels.fp8_wgmma` -- the FP8 decode GEMM on Mosaic GPU (TMA-fed e4m3 wgmma, swap-AB, split-K).
* :mod:`jq_kernels.w4a16` -- the W4A16 decode GEMM (NVFP4 / INT4 weights) on Mosaic GPU, its offline weight layout,
  its PTX and their bit-exact CPU emulation.
* :mod:`jq_kernels._common` -- float-bit arithmetic and exact division shared by the Triton kernels.

Which kernel serves which quantizer is decided above this package, in :mod:`jq.backends` (from the kernels
each format declares). Importing ``kernels`` imports nothing else: ``kernels.<module>`` (or ``from
kernels import <module>``) loads a module on first use, and nothing compiles or touches a GPU until a kernel runs.
Design notes and measurements: ``docs/kernels.md``.
"""

import importlib

__all__ = ["nvfp4", "fp8", "mx", "fp8_linear", "fp8_decode", "fp8_wgmma", "w4a16"]


def __getattr__(name):
    if name in __all__:
        return importlib.import_module(f"jq_kernels.{name}")
    raise AttributeError(f"module 'jq_kernels' has no attribute {name!r}")
