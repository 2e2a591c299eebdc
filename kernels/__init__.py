"""jq's kernels: Pallas GPU implementations of the quantization ops, arrays in and arrays out.

* :mod:`kernels.nvfp4`, :mod:`kernels.fp8`, :mod:`kernels.mx` -- Pallas-Triton quantize / dequantize /
  fused fake-quant kernels (bit-exact with :mod:`jq.numerics`).
* :mod:`kernels.gemm` -- real-quantized matmuls: the FP8 cuBLASLt path through XLA and the W4A16 decode GEMM
  (NVFP4 / INT4 weights) on Mosaic GPU, with their offline weight layouts.

Kernels import nothing of ``jq`` but leaf helpers of :mod:`jq.numerics`; which kernel serves which quantizer is
decided in :mod:`jq.backends`. Importing this package registers nothing and touches no GPU.
"""
