"""jq's kernels: Pallas GPU implementations of the quantization ops, behind a dispatch registry.

* :mod:`kernels.registry` -- which implementation runs for ``(op, format, backend)``; user-overridable.
* :mod:`kernels.dispatch` -- the registrations (GPU -> Pallas kernel where it supports the case, else the
  jnp reference; CPU/TPU -> reference).
* :mod:`kernels.nvfp4`, :mod:`kernels.fp8`, :mod:`kernels.mx` -- Pallas-Triton quantize / dequantize /
  fused fake-quant kernels (bit-exact with :mod:`jq.numerics`).
* :mod:`kernels.gemm` -- real-quantized matmuls: the FP8 cuBLASLt path through XLA and the W4A16 decode GEMM
  (NVFP4 / INT4 weights) on Mosaic GPU, with their offline weight layouts.

Importing this package works on a CPU-only jax: nothing here compiles or touches a GPU until a kernel runs.
"""

from kernels import registry  # noqa: F401  (first: jq.fake_quant imports it)
from kernels import dispatch  # noqa: F401  (registers the GPU kernels)

try:  # the kernel modules only need jax.experimental.pallas, present in every supported jax
    from kernels import fp8, mx, nvfp4  # noqa: F401
    from kernels import gemm  # noqa: F401
except ImportError as _e:  # pragma: no cover - a jax without Pallas: the references still work
    import warnings as _w

    _w.warn(f"jq kernels unavailable ({_e}); every op runs its jnp reference", stacklevel=2)

__all__ = ["registry", "dispatch"]
