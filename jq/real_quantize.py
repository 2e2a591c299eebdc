"""Real quantization to :class:`~jq.qtensor.QTensor` storage through the kernel registry: the Pallas kernels on a
GPU where they serve the spec, else :func:`jq.qtensor.quantize` / :func:`jq.qtensor.dequantize`.

The registry ops ``quantize`` (``fn(x, spec, amax=None) -> QTensor``) and ``dequantize`` (``fn(qt, dtype=None) ->
array``) are registered here, on import: the kernels take and return arrays, and this module reads the spec and
builds the QTensor. (Moved out of ``kernels/dispatch.py`` so that ``kernels`` imports nothing of jq but
:mod:`jq.numerics`; the explicit registration of ``jq/backends`` replaces it.)

Example:
  >>> from jq.config import QuantizerSpec
  >>> qt = quantize(jnp.ones((4, 32)), QuantizerSpec(num_bits=(4, 3)), backend="cpu")
  >>> qt.data.dtype, float(dequantize(qt, backend="cpu")[0, 0])
  (dtype(float8_e4m3fn), 1.0)
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from jq import qtensor
from kernels import registry
from kernels._common import on_gpu
from kernels.dispatch import KERNEL_DTYPES, _fp8_mode, kernels_enabled
from kernels.fp8 import fp8_dequantize, fp8_quantize
from kernels.mx import mx_quantize
from kernels.nvfp4 import nvfp4_dequantize, nvfp4_quantize

__all__ = ["quantize", "dequantize"]


for _b in registry.BACKENDS:
    registry.register("quantize", "*", _b, "reference", priority=-1, note="jq.qtensor.quantize")(qtensor.quantize)
    registry.register("dequantize", "*", _b, "reference", priority=-1,
                      note="jq.qtensor.dequantize")(qtensor.dequantize)


def _quant_supports(spec=None, shape=(), dtype=None, **_):
    if spec is None or not kernels_enabled() or spec.rotate or jnp.dtype(dtype) not in KERNEL_DTYPES:
        return False
    if spec.kind == "nvfp4":
        sizes = dict(spec.block_sizes.sizes)
        return all(v == 16 for v in sizes.values()) and set(sizes) in ({-1}, {-1, -2}) and len(shape) >= len(sizes)
    if spec.kind == "fp8":
        return _fp8_mode(spec, tuple(shape)) is not None
    if spec.kind in ("mxfp8", "mxfp4", "mxint8"):
        return True
    return False


def _quantize_gpu(x, spec, amax=None):
    kind = spec.kind
    shape, dtype = tuple(x.shape), str(x.dtype)
    if kind == "nvfp4":
        two_d = len(spec.block_sizes.sizes) == 2
        a = None if amax is None else jnp.reshape(amax, ())
        data, scale, gs = nvfp4_quantize(x, a, two_d=two_d, interpret=False)
        return qtensor.QTensor(data, scale, gs, spec, shape, dtype, 0)
    if kind == "fp8":
        mode = _fp8_mode(spec, shape)
        a = amax
        if a is not None:
            a = jnp.reshape(a, (-1,)) if mode == "row" else jnp.reshape(a, ())
        q, s = fp8_quantize(x, a, fmt=spec.fp8_name, per_row=(mode == "row"), interpret=False)
        if mode == "row":
            s = s.reshape(x.shape[:-1] + (1,))
        return qtensor.QTensor(q, s.astype(jnp.float32), None, spec, shape, dtype, 0)
    data, scale = mx_quantize(x, kind, interpret=False)
    return qtensor.QTensor(data, scale, None, spec, shape, dtype, 0)


registry.register("quantize", "*", "gpu", "pallas_triton", priority=10, supports=_quant_supports,
                  note="NVFP4 / FP8 / MX quantize kernels")(_quantize_gpu)


def _dequant_supports(qt=None, **_):
    if qt is None or not kernels_enabled():
        return False
    if qt.spec.kind == "nvfp4":
        return qt.batch == 0 and jnp.dtype(qt.dtype) in KERNEL_DTYPES
    if qt.spec.kind == "fp8":
        return qt.scale.size == 1 or (len(qt.shape) >= 1 and qt.scale.size == int(np.prod(qt.shape[:-1])))
    return False


def _dequantize_gpu(qt, dtype=None):
    dtype = jnp.dtype(dtype or qt.dtype)
    if qt.spec.kind == "nvfp4":
        return nvfp4_dequantize(qt.data, qt.scale, qt.global_scale, qt.shape,
                                two_d=len(qt.spec.block_sizes.sizes) == 2, dtype=dtype, interpret=False)
    s = qt.scale.reshape(-1) if qt.scale.size > 1 else qt.scale.reshape(())
    return fp8_dequantize(qt.data, s, dtype=dtype, interpret=False)


registry.register("dequantize", "*", "gpu", "pallas_triton", priority=10, supports=_dequant_supports,
                  note="NVFP4 / FP8 dequantize kernels")(_dequantize_gpu)


def quantize(x, spec, amax=None, backend: str | None = None) -> qtensor.QTensor:
    """Real-quantize ``x`` with ``spec`` through the registry (``backend`` None: ``"gpu"`` on a GPU, else
    ``"cpu"``); the kernel where it serves the spec, else :func:`jq.qtensor.quantize` (same QTensor, bit for bit).
    """
    backend = backend or ("gpu" if on_gpu() else "cpu")
    impl = registry.select("quantize", spec.kind, backend, spec=spec, shape=tuple(x.shape), dtype=x.dtype)
    return impl.fn(x, spec, amax)


def dequantize(qt: qtensor.QTensor, dtype=None, backend: str | None = None):
    """Dequantize ``qt`` through the registry (in its original dtype unless ``dtype`` is given)."""
    backend = backend or ("gpu" if on_gpu() else "cpu")
    impl = registry.select("dequantize", qt.spec.kind, backend, qt=qt)
    return impl.fn(qt, dtype)
