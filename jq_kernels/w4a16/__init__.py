"""W4A16 decode GEMM: ``y = x @ dequant(W).T`` for bf16 activations and NVFP4 (16-element E4M3-scaled blocks, fp32
global scale) or INT4 (groups of 128 along K) weights ``[N, K]``.

* :mod:`~jq_kernels.w4a16.layout` -- :func:`pack_w4`: the offline weight layout (:class:`PackedW4`).
* :mod:`~jq_kernels.w4a16.ptx` -- inline-PTX generators of the in-register decode.
* :mod:`~jq_kernels.w4a16.emulate` -- bit-exact numpy emulation of that decode (the CPU proof).
* :mod:`~jq_kernels.w4a16.plan` -- :class:`MosaicConfig`, launch plans and the per-shape default.
* :mod:`~jq_kernels.w4a16.decode`, :mod:`~jq_kernels.w4a16.schedules`, :mod:`~jq_kernels.w4a16.fixup` -- the Mosaic GPU
  kernel: decoded A fragments, grid / stream-K schedules, in-kernel stream-K epilogue.
* :mod:`~jq_kernels.w4a16.matmul` -- :func:`w4a16_matmul` / :func:`w4a16_matmul_mosaic` entry points.
* :mod:`~jq_kernels.w4a16.prefill` -- :func:`w4a16_prefill_matmul`: the Pallas-Triton prefill GEMM (many tokens)
  on the same packed weight.
* :mod:`~jq_kernels.w4a16.xla` -- the XLA reference path and XLA's native int4 path.

Design, layouts and measurements: ``docs/kernels.md``.

Example::

    pw = pack_w4(codes, scales, global_scale, fmt="nvfp4", shape=(n, k))   # once per weight
    y = w4a16_matmul(x, pw)                                                 # x [..., K] bf16, on a Hopper GPU
"""

from jq_kernels.w4a16.emulate import emulate_decode
from jq_kernels.w4a16.layout import PackedW4, bf16_scale_bytes, pack_w4
from jq_kernels.w4a16.matmul import mosaic_config, runs_prefill, w4a16_matmul, w4a16_matmul_mosaic
from jq_kernels.w4a16.plan import MosaicConfig, default_config
from jq_kernels.w4a16.prefill import PrefillConfig, w4a16_prefill_matmul
from jq_kernels.w4a16.xla import int4_xla_weights, w4a16_matmul_xla, w4a16_matmul_xla_int4

__all__ = [
    "PackedW4", "pack_w4", "bf16_scale_bytes", "emulate_decode", "MosaicConfig", "default_config", "mosaic_config",
    "w4a16_matmul", "w4a16_matmul_mosaic", "w4a16_matmul_xla", "int4_xla_weights", "w4a16_matmul_xla_int4",
    "PrefillConfig", "w4a16_prefill_matmul", "runs_prefill",
]
