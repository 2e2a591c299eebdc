"""FP8 (E4M3 / E5M2) with one amax-derived scale per tensor, per axis, per block or per token.

``s = maxv * (1 / amax)`` (maxv 448 for E4M3, 57344 for E5M2; ``amax <= 2^-24`` counts as 1),
``y = fp8(clamp(x s, ±maxv)) * (1 / s)`` (:mod:`jq.numerics.fp8`; PyTorch's arithmetic, which ModelOpt's
reference uses). Storage: ``float8_e4m3fn`` / ``float8_e5m2`` values and the float32 ``s``. Per-token scaling is
ModelOpt's ``block_sizes={-1: None}`` with ``type="dynamic"``.

Checkpoints: ``FP8`` (per-tensor weight and static per-tensor input), ``FP8_PER_CHANNEL_PER_TOKEN`` (one
scale per output channel ``weight_scale[out]``, inputs quantized per token at run time: no ``input_scale``) and
``FP8_BLOCK_SCALES`` (DeepSeek-V3's block FP8, TensorRT-LLM's name: one scale per ``[bn, bk]`` weight tile,
``weight_scale_inv[ceil(out / bn), ceil(in / bk)]``, inputs quantized per token in groups of ``bk`` at run time).

Kernels (GPU): fused Pallas-Triton fake-quant / quantize / dequantize for per-tensor, per-row and per-token scales;
the real-quantized linear layer runs cuBLASLt's fp8 GEMM through XLA (:class:`~jq.formats.linear.FP8Linear`).
"""

from __future__ import annotations

import jax.numpy as jnp
import ml_dtypes
import numpy as np

from jq import numerics as nx
from jq.formats.base import KernelBinding
from jq.formats.linear import FP8Linear, kernels_enabled
from jq.formats.scaled import ScaledFormat
from jq.qtensor import QTensor
from jq_kernels import fp8 as fp8_kernels

__all__ = ["FP8Format", "FP8", "weight_tile", "expand_tiles"]

_NAMES = {(4, 3): "e4m3", (5, 2): "e5m2"}
_DTYPES = {"e4m3": jnp.float8_e4m3fn, "e5m2": jnp.float8_e5m2}
_ONNX = {"e4m3": "FLOAT8E4M3FN", "e5m2": "FLOAT8E5M2"}
KERNEL_DTYPES = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float32), jnp.dtype(jnp.float16))
MIN_KERNEL_ELEMENTS = 256  # below this a kernel launch is not worth it (XLA fuses the reference)


def element_name(spec) -> str:
    """``"e4m3"`` or ``"e5m2"``."""
    return _NAMES[spec.num_bits]


def weight_tile(spec) -> tuple[int, int] | None:
    """``(bn, bk)`` of a weight spec with static 2-D tiles (``block_sizes={-1: bk, -2: bn}`` on the canonical
    ``[out, in]`` view), else None."""
    bs = spec.block_sizes
    if bs is None or bs.type != "static" or bs.scale_bits is not None or spec.axis is not None:
        return None
    sizes = {a if a >= 0 else a + 2: n for a, n in bs.sizes}  # axes of the 2-D view: -1 -> 1, -2 -> 0
    if len(bs.sizes) != 2 or set(sizes) != {0, 1} or None in sizes.values():
        return None
    return sizes[0], sizes[1]


def expand_tiles(scale: np.ndarray, tile, shape) -> np.ndarray:
    """One value per element of an ``[out, in]`` tensor of ``shape`` from one per ``tile = (bn, bk)`` block
    (ragged last tiles cut).

    Example:
      >>> expand_tiles(np.array([[1.0, 2.0]]), (2, 2), (2, 3))  # [[1, 1, 2], [1, 1, 2]]
    """
    bn, bk = tile
    full = np.repeat(np.repeat(np.asarray(scale, np.float32), bn, axis=0), bk, axis=1)
    return full[: shape[0], : shape[1]]


class FP8Format(ScaledFormat):
    """FP8 E4M3 / E5M2 with static or dynamic per-tensor / per-axis / per-block / per-token scales."""

    name = "fp8"
    hf_algorithms = ("FP8", "FP8_PER_CHANNEL_PER_TOKEN", "FP8_BLOCK_SCALES")

    def claims(self, spec) -> bool:
        bs = spec.block_sizes
        return spec.num_bits in _NAMES and (bs is None or bs.scale_bits is None)

    def validate(self, spec) -> None:
        if spec.unsigned or spec.narrow_range:
            raise ValueError("unsigned and narrow_range apply to integer quantization only")
        bs = spec.block_sizes
        if bs is not None and self.is_dynamic(spec) and len(bs.axes) > 1 \
                and any(v is not None for v in bs.axes.values()):
            raise ValueError("dynamic block quantization without scale_bits supports the last axis only")

    # -- element arithmetic -----------------------------------------------------------------------------
    def element_fake_quant(self, x, amax, spec):
        return nx.fp8_fake_quant(x, amax, element_name(spec))

    def element_quantize(self, x, amax, spec):
        return nx.fp8_quantize(x, amax, element_name(spec))

    def element_dequantize(self, q, scale):
        return nx.fp8_dequantize(q, scale)

    def encode(self, q, spec):
        return q.astype(_DTYPES[element_name(spec)])  # exact: q is on the grid and within range

    def decode(self, data, spec, n):
        return data.astype(jnp.float32)

    # -- description -----------------------------------------------------------------------------------
    def element_name(self, spec) -> str:
        return element_name(spec)

    def bits_per_element(self, spec) -> float:
        return 8.0

    # -- export ------------------------------------------------------------------------------------------
    def export_scale(self, spec, amax):
        # jq's own dequantization multiplier 1/s: DequantizeLinear reproduces jq's values bit for bit
        return np.asarray(nx.fp8_dequant_scale(nx.fp8_quant_scale(jnp.asarray(amax, jnp.float32),
                                                                  element_name(spec))), np.float32)

    def onnx_form(self, spec, *, is_weight):
        name = element_name(spec)
        return self.onnx_granularity(spec, 19, _ONNX[name], 448.0 if name == "e4m3" else 57344.0)

    def onnx_values(self, qt, shape):
        data = np.asarray(qt.data)[tuple(slice(0, n) for n in shape)]
        return data.astype(ml_dtypes.float8_e4m3fn if element_name(qt.spec) == "e4m3" else ml_dtypes.float8_e5m2)

    # -- checkpoints -------------------------------------------------------------------------------------
    def hf_algorithm(self, wspec, ispec):
        if element_name(wspec) != "e4m3" or ispec is None or ispec.format is not self or element_name(ispec) != "e4m3":
            return None
        if wspec.block_sizes is not None:
            tile = weight_tile(wspec)
            if tile is not None and ispec.is_dynamic and ispec.axis is None and ispec.block_sizes is not None \
                    and dict(ispec.block_sizes.sizes) == {-1: tile[1]} and tile[0] == tile[1]:
                return "FP8_BLOCK_SCALES", {"weight_block_size": list(tile)}
            return None
        if wspec.axis is None and ispec.axis is None and ispec.block_sizes is None and not ispec.is_dynamic:
            return "FP8", {}
        per_token = ispec.is_dynamic and ispec.block_sizes is not None and dict(ispec.block_sizes.sizes) == {-1: None}
        if wspec.axis in (0, (0,)) and per_token:  # axis 0 of the canonical [out, in] weight: per output channel
            return "FP8_PER_CHANNEL_PER_TOKEN", {}
        return None

    def hf_tensors(self, qt, wspec, amax, algo):
        scale = self.export_scale(wspec, amax)
        data = np.asarray(qt.data)[tuple(slice(0, n) for n in qt.shape)]  # without a ragged tile's padding
        if algo == "FP8_BLOCK_SCALES":  # the dequantization multiplier 1/s per tile (DeepSeek's name)
            return {"weight": data, "weight_scale_inv": scale.reshape(amax.shape)}
        return {"weight": data, "weight_scale": scale.reshape(()) if algo == "FP8" else scale.reshape(-1)}

    def hf_dequantize(self, tensors, layer_config):
        w = tensors["weight"].astype(np.float32)
        if "weight_scale_inv" in tensors:
            return w * expand_tiles(tensors["weight_scale_inv"], layer_config["weight_block_size"], w.shape)
        scale = tensors["weight_scale"].astype(np.float32)
        return w * (scale if scale.ndim == 0 else scale[:, None])

    # -- kernels ----------------------------------------------------------------------------------------
    def kernel_mode(self, spec, cshape) -> str | None:
        """How the Pallas kernels scale ``spec`` on a canonical tensor of ``cshape``: ``"tensor"``, ``"row"``
        (one scale per row of the 2-D view: per output channel or per token) or None (not served)."""
        if spec.rotate:
            return None
        if spec.block_sizes is None:
            if spec.axis is None:
                return "tensor"
            axes = (spec.axis,) if isinstance(spec.axis, int) else tuple(spec.axis)
            return "row" if len(cshape) == 2 and len(axes) == 1 and axes[0] % 2 == 0 else None
        sizes = dict(spec.block_sizes.sizes)
        if set(sizes) == {-1} and (sizes[-1] is None or sizes[-1] == cshape[-1]) and spec.axis is None:
            return "row"  # per-token (ModelOpt's {-1: None}) scaling
        return None

    def kernel_bindings(self):
        return (
            KernelBinding("fake_quant", "gpu", "pallas_triton", self._fake_quant_gpu, 10, self._serves_fake_quant,
                          "fused FP8 quantize-dequantize (jq_kernels/fp8.py)"),
            KernelBinding("quantize", "gpu", "pallas_triton", self._quantize_gpu, 10, self._serves_quantize,
                          "FP8 quantize kernel (jq_kernels/fp8.py)"),
            KernelBinding("dequantize", "gpu", "pallas_triton", self._dequantize_gpu, 10, self._serves_dequantize,
                          "FP8 dequantize kernel (jq_kernels/fp8.py)"),
        )

    def _serves_fake_quant(self, spec=None, view=None, shape=(), dtype=None, **_):
        if not kernels_enabled() or view is None or view.batch or jnp.dtype(dtype) not in KERNEL_DTYPES:
            return False
        if len(shape) < 1 or int(np.prod(shape)) < MIN_KERNEL_ELEMENTS:
            return False
        return self.kernel_mode(spec, tuple(view.shape)) is not None

    def _fake_quant_gpu(self, x, *amax, spec, view):
        c = x if view.is_identity else view.to_canonical(x)
        mode = self.kernel_mode(spec, tuple(c.shape))
        a = amax[0] if amax else None
        if a is not None:
            a = jnp.reshape(a, (-1,)) if mode == "row" else jnp.reshape(a, ())
        y = fp8_kernels.fp8_fake_quant(c, a, fmt=element_name(spec), per_row=(mode == "row"), interpret=False)
        return y if view.is_identity else view.from_canonical(y, x.shape)

    def _serves_quantize(self, spec=None, shape=(), dtype=None, **_):
        return (kernels_enabled() and jnp.dtype(dtype) in KERNEL_DTYPES
                and self.kernel_mode(spec, tuple(shape)) is not None)

    def _quantize_gpu(self, x, spec, amax=None):
        mode = self.kernel_mode(spec, tuple(x.shape))
        if amax is not None:
            amax = jnp.reshape(amax, (-1,)) if mode == "row" else jnp.reshape(amax, ())
        q, s = fp8_kernels.fp8_quantize(x, amax, fmt=element_name(spec), per_row=(mode == "row"), interpret=False)
        if mode == "row":
            s = s.reshape(x.shape[:-1] + (1,))
        return QTensor(q, s.astype(jnp.float32), None, spec, tuple(x.shape), str(x.dtype), 0)

    def _serves_dequantize(self, qt=None, **_):
        return kernels_enabled() and (qt.scale.size == 1 or (
            len(qt.shape) >= 1 and qt.scale.size == int(np.prod(qt.shape[:-1]))))

    def _dequantize_gpu(self, qt, dtype=None):
        s = qt.scale.reshape(-1) if qt.scale.size > 1 else qt.scale.reshape(())
        return fp8_kernels.fp8_dequantize(qt.data, s, dtype=jnp.dtype(dtype or qt.dtype), interpret=False)

    def linear_kernel(self, wspec, ispec):
        if self.hf_algorithm(wspec, ispec) == ("FP8", {}) and not wspec.rotate and not ispec.rotate:
            return FP8Linear()
        return None


FP8 = FP8Format()
