"""Registry entries: which kernel serves ``(op, format, backend)``.

Ops and their call contracts:

* ``fake_quant`` -- ``fn(x, *amax, spec, view)`` (the contract of :mod:`jq.fake_quant`'s lowering). GPU: the
  fused Pallas-Triton NVFP4 and FP8 kernels where :func:`nvfp4_fake_quant_supports` /
  :func:`fp8_fake_quant_supports` hold; everything else, and every CPU/TPU call, runs the jnp reference.
* ``quantize`` / ``dequantize`` (QTensor in or out) -- registered by :mod:`jq.real_quantize`, which builds QTensors
  from the kernels' arrays (this package imports nothing of jq but :mod:`jq.numerics`).
* ``w4a16_matmul`` (formats ``nvfp4``, ``int4``) -- ``fn(x2d, stored) -> f32 [B, N]`` with ``stored`` from
  :func:`w4a16_pack_fn`: GPU ``mosaic`` (the decode GEMM, :func:`kernels.w4a16.w4a16_matmul`, weights packed by
  :func:`kernels.w4a16.pack_w4`), everywhere ``xla`` (``x @ dequantize(W).T``, QTensor storage).
* ``fp8_matmul`` (format ``fp8``) -- ``xla_cublaslt``: :func:`kernels.fp8_linear.fp8_linear` (XLA lowers the fp8
  ``dot_general`` to cuBLASLt's fp8 GEMM on Hopper; a plain XLA dot elsewhere).

Results are identical across implementations (bit for bit; the tests prove it in interpret mode and the GPU
smoke test on the device). The one documented exception is the fused RHT quantize (not used by the transform):
its 16-term Hadamard sums may be added in a different order than XLA's matmul, so it equals the reference
wherever those float32 sums are exact.

Users pin an implementation with :func:`kernels.registry.use` (e.g. ``use("fake_quant", "nvfp4", "gpu",
"reference")``), or set ``JQ_KERNELS=reference`` in the environment to keep every op on the reference.
"""

from __future__ import annotations

import os

import jax.numpy as jnp
import numpy as np

from kernels import registry

__all__ = ["nvfp4_fake_quant_supports", "fp8_fake_quant_supports", "KERNEL_DTYPES", "kernels_enabled",
           "w4_kernel_format", "w4a16_pack_fn"]

KERNEL_DTYPES = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float32), jnp.dtype(jnp.float16))
MIN_ELEMENTS = 256  # below this a kernel launch is not worth it (the reference is fused by XLA)


def kernels_enabled() -> bool:
    return os.environ.get("JQ_KERNELS", "").lower() not in ("reference", "off", "0", "none")


def _common_ok(spec, view, shape, dtype) -> bool:
    return (kernels_enabled() and spec.enable and not spec.rotate and view is not None and view.batch == 0
            and jnp.dtype(dtype) in KERNEL_DTYPES and len(shape) >= 1 and int(np.prod(shape)) >= MIN_ELEMENTS)


def _nvfp4_two_d(spec):
    return len(spec.block_sizes.sizes) == 2


def nvfp4_fake_quant_supports(spec=None, view=None, shape=(), dtype=None, has_amax=False, **_) -> bool:
    """NVFP4 with 16-element blocks along the last canonical axis (or 16x16 over the last two), no batch axes."""
    if spec is None or spec.kind != "nvfp4" or not _common_ok(spec, view, shape, dtype):
        return False
    sizes = dict(spec.block_sizes.sizes)
    cshape = tuple(view.shape)
    if _nvfp4_two_d(spec):
        return set(sizes) in ({-1, -2},) and all(v == 16 for v in sizes.values()) and len(cshape) >= 2
    return set(sizes) == {-1} and sizes[-1] == 16


def _fp8_mode(spec, cshape):
    """``"tensor"``, ``"row"`` (one scale per row of the 2D view) or None (not served by the kernel)."""
    if spec.kind != "fp8":
        return None
    if spec.block_sizes is None:
        if spec.axis is None:
            return "tensor"
        axes = (spec.axis,) if isinstance(spec.axis, int) else tuple(spec.axis)
        if len(cshape) == 2 and len(axes) == 1 and axes[0] % 2 == 0:
            return "row"
        return None
    sizes = dict(spec.block_sizes.sizes)
    if set(sizes) == {-1} and (sizes[-1] is None or sizes[-1] == cshape[-1]) and spec.axis is None:
        return "row"  # per-token (ModelOpt's {-1: None}) scaling
    return None


def fp8_fake_quant_supports(spec=None, view=None, shape=(), dtype=None, has_amax=False, **_) -> bool:
    """FP8 per tensor, per output channel of a 2D weight, or per token (``{-1: None}``)."""
    if spec is None or not _common_ok(spec, view, shape, dtype):
        return False
    return _fp8_mode(spec, tuple(view.shape)) is not None


def _canon(x, view):
    return x if view.is_identity else view.to_canonical(x)


def _uncanon(y, x, view):
    return y if view.is_identity else view.from_canonical(y, x.shape)


def _nvfp4_fake_quant_gpu(x, *amax, spec, view):
    from kernels.nvfp4 import nvfp4_fake_quant

    c = _canon(x, view)
    a = jnp.reshape(amax[0], ()) if amax else None
    return _uncanon(nvfp4_fake_quant(c, a, two_d=_nvfp4_two_d(spec), interpret=False), x, view)


def _fp8_fake_quant_gpu(x, *amax, spec, view):
    from kernels.fp8 import fp8_fake_quant

    c = _canon(x, view)
    mode = _fp8_mode(spec, tuple(c.shape))
    a = amax[0] if amax else None
    if a is not None:
        a = jnp.reshape(a, (-1,)) if mode == "row" else jnp.reshape(a, ())
    y = fp8_fake_quant(c, a, fmt=spec.fp8_name, per_row=(mode == "row"), interpret=False)
    return _uncanon(y, x, view)


registry.register("fake_quant", "nvfp4", "gpu", "pallas_triton", priority=10, supports=nvfp4_fake_quant_supports,
                  note="fused NVFP4 quantize-dequantize (kernels/nvfp4.py)")(_nvfp4_fake_quant_gpu)
registry.register("fake_quant", "fp8", "gpu", "pallas_triton", priority=10, supports=fp8_fake_quant_supports,
                  note="fused FP8 quantize-dequantize (kernels/fp8.py)")(_fp8_fake_quant_gpu)


# -- real-quantized matmuls ----------------------------------------------------------------------------


def _w4a16_xla(x2, qt):
    from kernels.w4a16 import w4a16_matmul_xla

    return w4a16_matmul_xla(x2, qt.dequantize(jnp.bfloat16), out_dtype=jnp.float32)


def _w4a16_mosaic(x2, pw):
    from kernels.w4a16 import w4a16_matmul

    return w4a16_matmul(x2.astype(jnp.bfloat16), pw, out_dtype=jnp.float32)


def _pack_identity(qt):
    return qt


def w4_kernel_format(spec) -> str:
    """The decode GEMM's ``fmt`` for a weight QuantizerSpec (``"nvfp4"``: 1D 16-blocks; ``"int4"``: signed 4-bit,
    blocks of 128 along K); ValueError for anything else. The one place here that reads a spec's format."""
    if spec.kind == "nvfp4":
        if len(spec.block_sizes.sizes) != 1:
            raise ValueError("the decode GEMM takes 1D (16-element) NVFP4 weight blocks")
        return "nvfp4"
    sizes = dict(spec.block_sizes.sizes) if spec.block_sizes is not None else {}
    if spec.kind != "int" or spec.num_bits != 4 or spec.unsigned or sizes.get(-1) != 128 or len(sizes) != 1:
        raise ValueError("the INT4 decode GEMM takes signed int4 weights with blocks of 128 along K")
    return "int4"


def _pack_mosaic(qt):
    from kernels.w4a16 import pack_w4

    return pack_w4(qt.data, qt.scale, qt.global_scale, fmt=w4_kernel_format(qt.spec), shape=qt.shape)


for _fmt in ("nvfp4", "int4"):
    for _b in registry.BACKENDS:
        registry.register("w4a16_matmul", _fmt, _b, "xla", priority=-1,
                          note="x @ dequantize(W).T through XLA")(_w4a16_xla)
    registry.register("w4a16_matmul", _fmt, "gpu", "mosaic", priority=10,
                      supports=lambda **ctx: kernels_enabled(),
                      note="Mosaic GPU decode GEMM (kernels/w4a16)")(_w4a16_mosaic)


def w4a16_pack_fn(impl):
    """How an implementation of ``w4a16_matmul`` wants its weights stored."""
    return _pack_mosaic if impl.name == "mosaic" else _pack_identity


def _fp8_xla(x2, w_q, w_inv, x_amax, quantize_x=None):
    from kernels.fp8_linear import fp8_linear

    return fp8_linear(x2, w_q, w_inv, x_amax, out_dtype=jnp.float32, quantize_x=quantize_x)


for _b in registry.BACKENDS:
    registry.register("fp8_matmul", "fp8", _b, "xla_cublaslt", priority=0,
                      note="fp8 dot_general (cuBLASLt fp8 GEMM on Hopper)")(_fp8_xla)
