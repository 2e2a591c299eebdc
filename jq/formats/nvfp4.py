"""NVFP4: E2M1 values, one E4M3 scale per 16-element block, one float32 per-tensor (global) scale.

``gs = amax / 2688``; per block ``s_b = e4m3(clamp(amax_b / (6 gs), 2^-9, 448)) * gs``; ``y = E2M1(x / s_b) *
s_b`` (:mod:`jq.numerics.nvfp4`). Blocks run along the contracting (last canonical) axis, or over 16x16 tiles
of the last two axes for weights (``block_sizes={-1: 16, -2: 16}``, TransformerEngine's 2D recipe). With
``block_sizes["type"] == "dynamic"`` (the presets) block scales come from the tensor at each call and the
global amax is calibrated unless ``type="dynamic"``; with ``"static"`` every block keeps a calibrated amax
(``amax`` has one entry per block; MSE and AWQ-clip calibration produce them), values beyond it saturate, and
the global scale is ``max(block amax) / 2688``. The straight-through estimator clips at the global amax
(dynamic blocks) or at each block's amax (static blocks).

Storage: E2M1 codes, two per byte (element ``2i`` in the low nibble), E4M3 block scales, fp32 ``gs``. ONNX:
TensorRT's form (a ``FLOAT4E2M1`` tensor with ``FLOAT8E4M3FN`` block scales dequantized by ``gs``; activations
through ``trt::TRT_FP4DynamicQuantize``). Checkpoints: ``NVFP4`` (W4A4) and ``W4A16_NVFP4``. Kernels (GPU):
fused Pallas-Triton quantize / fake-quant / dequantize; the Mosaic W4A16 decode GEMM for 1D weights.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from jq import numerics as nx
from jq.formats.base import Format, KernelBinding, QDQForm, UnsupportedExport
from jq.formats.linear import W4A16Linear, kernels_enabled
from jq.qtensor import QTensor
from jq_kernels import nvfp4 as nvfp4_kernels

__all__ = ["NVFP4Format", "NVFP4"]

KERNEL_DTYPES = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float32), jnp.dtype(jnp.float16))
MIN_KERNEL_ELEMENTS = 256


def two_d(spec) -> bool:
    """True for 16x16 tiles over the last two canonical axes."""
    return len(spec.block_sizes.sizes) == 2


def static_blocks(spec) -> bool:
    """True when every block keeps a calibrated amax (``block_sizes["type"] == "static"``)."""
    return spec.block_sizes.type == "static"


class NVFP4Format(Format):
    """NVFP4 with 1D (16) or 2D (16x16) blocks; static or dynamic global amax."""

    name = "nvfp4"
    hf_algorithms = ("NVFP4", "W4A16_NVFP4")

    def claims(self, spec) -> bool:
        return spec.block_sizes is not None and spec.block_sizes.scale_bits == (4, 3)

    def validate(self, spec) -> None:
        bs = spec.block_sizes
        if spec.num_bits != (2, 1):
            raise ValueError(f"E4M3 block scales (4, 3) are NVFP4's and need num_bits=(2, 1), got {spec.num_bits}")
        if static_blocks(spec) and spec.type == "dynamic":
            raise ValueError("NVFP4 with static (calibrated) block amaxes cannot have a dynamic global amax")
        if bs.axes not in ({-1: 16}, {-1: 16, -2: 16}):
            raise ValueError(f"NVFP4 uses 1D blocks {{-1: 16}} or 2D {{-1: 16, -2: 16}}, got {bs.axes}")

    # -- geometry ---------------------------------------------------------------------------------------
    def is_dynamic(self, spec) -> bool:
        return spec.type == "dynamic" or not static_blocks(spec)

    def needs_amax(self, spec) -> bool:
        return spec.type != "dynamic"  # the global amax (dynamic blocks) or every block amax (static blocks)

    def compute_amax(self, x, spec, batch=0):
        if not self.needs_amax(spec):
            return None
        x = jnp.asarray(x)
        if static_blocks(spec):
            layout = self.blocks(spec, x.shape)
            return layout.squeeze_stats(layout.block_amax(x))
        return nx.reduce_amax(x, tuple(range(batch)) if batch else None)

    def _amaxes(self, spec, amax, batch):
        """``(global amax, block amax or None)`` from the calibrated statistic."""
        if amax is None or not static_blocks(spec):
            return amax, None
        if batch:
            raise NotImplementedError("NVFP4 with static block amaxes on batched (expert) tensors")
        return jnp.max(amax), amax

    def blocks(self, spec, shape, batch=0):
        return nx.nvfp4_layout(tuple(shape), two_d(spec))

    # -- numerics ---------------------------------------------------------------------------------------
    def fake_quant(self, x, spec, amax, *, batch=0, random_bits=None):
        if amax is None:  # dynamic global amax: per call (per batch entry)
            amax = nx.reduce_amax(x, tuple(range(batch)) if batch else None)
        amax, block_amax = self._amaxes(spec, amax, batch)
        if block_amax is not None:
            return nx.nvfp4_fake_quant(x, amax, two_d=two_d(spec), random_bits=random_bits, block_amax=block_amax)
        tiles = two_d(spec)
        if batch:  # one global scale per batch entry
            fn = lambda xi, ai: nx.nvfp4_fake_quant(xi, ai, two_d=tiles)  # noqa: E731
            for _ in range(batch):
                fn = jax.vmap(fn)
            return fn(x, jnp.reshape(amax, x.shape[:batch]))
        return nx.nvfp4_fake_quant(x, amax, two_d=tiles, random_bits=random_bits)

    def quantize(self, x, spec, amax, *, batch=0):
        if batch:
            raise NotImplementedError("NVFP4 storage of batched tensors: quantize each entry separately")
        if amax is None:
            amax = nx.reduce_amax(x)
        amax, block_amax = self._amaxes(spec, amax, batch)
        q, s, gs, layout = nx.nvfp4_quantize(x, amax, two_d=two_d(spec), block_amax=block_amax)
        negative = layout.split(x) < 0  # ModelOpt's sign bit: x < 0 before rounding
        data = nx.pack_nibbles(nx.e2m1_encode(q, negative).reshape(layout.padded_shape))
        scale = layout.squeeze_stats(s).astype(jnp.float8_e4m3fn)  # exact: s is on the E4M3 grid
        return QTensor(data, scale, gs, spec, tuple(x.shape), str(x.dtype), batch)

    def dequantize(self, qt, dtype):
        layout = nx.nvfp4_layout(qt.shape, two_d(qt.spec))
        q = nx.e2m1_decode(nx.unpack_nibbles(qt.data)).reshape(layout.blocked_shape)
        s = layout.expand_stats(qt.scale.astype(jnp.float32))
        return nx.nvfp4_dequantize(q, s, qt.global_scale, layout, dtype)

    def clip_mask(self, x, spec, amax, batch=0):
        if amax is None or not static_blocks(spec):
            return super().clip_mask(x, spec, amax, batch)  # |x| <= global amax
        layout = self.blocks(spec, x.shape)
        bound = layout.merge(jnp.broadcast_to(layout.expand_stats(amax), layout.blocked_shape))
        return jnp.abs(x) <= bound

    # -- MSE calibration ----------------------------------------------------------------------------------
    def static_variant(self, spec):
        """``spec`` with static (calibrated) block amaxes: what an MSE block-scale search writes to."""
        return spec.replace(block_sizes=dataclasses.replace(spec.block_sizes, type="static"))

    def mse_block_amax(self, x, spec, batch=0):
        """Static block amaxes minimising each block's squared error (ModelOpt's NVFP4 MSE, ``fp8_scale_sweep``).

        With ``G = max|x|`` and ``gs = G / 2688`` fixed, every block tries each of the 126 positive E4M3 values
        ``v`` as its scale (``s_b = v gs``) and keeps the ``v`` with the smallest ``sum (E2M1(x/s_b) s_b - x)^2``;
        its amax is ``6 v gs`` (``G`` for ``v = 448``, so the global scale stays ``gs``). Max calibration's scale
        is one of the candidates, so no block is worse than with max; if no block picks 448, the block holding
        ``G`` keeps its max-calibrated 448 (the stored amaxes define ``gs`` through their maximum). None unless
        ``spec`` has static blocks.
        """
        if not static_blocks(spec):
            return None
        if batch:
            raise NotImplementedError("NVFP4 with static block amaxes on batched (expert) tensors")
        return _mse_block_amax(jnp.asarray(x), spec)


    # -- description -------------------------------------------------------------------------------------
    def describe(self, spec) -> str:
        axes = spec.block_sizes.axes
        gran = "b" + "x".join(str(axes[a]) for a in sorted(axes))
        return f"nvfp4 {gran}" + (" dyn-global" if spec.type == "dynamic" else "") + (
            " static" if static_blocks(spec) else "")

    def bits_per_element(self, spec) -> float:
        return 4.5  # 4-bit values + one 8-bit scale per 16 elements

    # -- export --------------------------------------------------------------------------------------------
    def export_scale(self, spec, amax):
        amax = jnp.asarray(amax, jnp.float32)
        return np.asarray(nx.nvfp4_global_scale(jnp.max(amax) if static_blocks(spec) else amax), np.float32)

    def weight_scales(self, qt, spec, amax):
        return np.asarray(qt.scale), np.asarray(qt.global_scale, np.float32)

    def onnx_form(self, spec, *, is_weight):
        if spec.rotate:
            raise UnsupportedExport("Hadamard rotation (rotate=True) has no Q/DQ form")
        if two_d(spec) and not is_weight:
            raise UnsupportedExport("2D 16x16 NVFP4 blocks are supported for weights only")
        if static_blocks(spec) and not is_weight:
            raise UnsupportedExport("static NVFP4 block amaxes are supported for weights only (TensorRT computes "
                                    "activation block scales at run time)")
        # TensorRT's DynamicQuantize (activations) needs the blocked axis to be a multiple of 16
        return QDQForm(self.name, "FLOAT4E2M1", "block", 23, 16, 6.0, block_scale_type="FLOAT8E4M3FN",
                       dynamic_quantize_op=("trt", "TRT_FP4DynamicQuantize"), whole_blocks=not is_weight)

    def onnx_values(self, qt, shape):
        codes = np.asarray(nx.unpack_nibbles(qt.data))[tuple(slice(0, n) for n in shape)]
        return codes.astype(np.uint8).view(ml_dtypes.float4_e2m1fn)

    # -- checkpoints ---------------------------------------------------------------------------------------
    def hf_algorithm(self, wspec, ispec):
        if ispec is None:
            return "W4A16_NVFP4", {"group_size": 16}
        if ispec.format is self:
            return "NVFP4", {"group_size": 16}
        return None

    def hf_tensors(self, qt, wspec, amax, algo):
        rows, cols = qt.shape
        if cols % 2:
            raise ValueError(f"NVFP4 packing needs an even number of input features, got {cols}")
        scale = np.asarray(qt.scale)
        if two_d(wspec):  # 16x16 tiles: one row of block scales per weight row
            scale = np.repeat(scale, 16, axis=0)[:rows]
        return {"weight": np.asarray(qt.data)[:rows, : cols // 2], "weight_scale": scale,
                "weight_scale_2": np.asarray(qt.global_scale, np.float32).reshape(())}

    def hf_dequantize(self, tensors, layer_config):
        q = np.asarray(nx.e2m1_decode(nx.unpack_nibbles(jnp.asarray(tensors["weight"]))))
        s = tensors["weight_scale"].astype(np.float32) * tensors["weight_scale_2"].astype(np.float32)
        return q * np.repeat(s, 16, axis=1)[:, : q.shape[1]]

    def hf_sibling_tensors(self, algo):
        return ("weight_scale_2",)

    # -- kernels -----------------------------------------------------------------------------------------
    def _kernel_blocks(self, spec) -> bool:
        sizes = dict(spec.block_sizes.sizes)
        return (set(sizes) in ({-1}, {-1, -2}) and all(v == 16 for v in sizes.values()) and not spec.rotate
                and not static_blocks(spec))  # the kernels compute block amaxes from the tensor

    def kernel_bindings(self):
        return (
            KernelBinding("fake_quant", "gpu", "pallas_triton", self._fake_quant_gpu, 10, self._serves_fake_quant,
                          "fused NVFP4 quantize-dequantize (jq_kernels/nvfp4.py)"),
            KernelBinding("quantize", "gpu", "pallas_triton", self._quantize_gpu, 10, self._serves_quantize,
                          "NVFP4 quantize kernel (jq_kernels/nvfp4.py)"),
            KernelBinding("dequantize", "gpu", "pallas_triton", self._dequantize_gpu, 10, self._serves_dequantize,
                          "NVFP4 dequantize kernel (jq_kernels/nvfp4.py)"),
        )

    def _serves_fake_quant(self, spec=None, view=None, shape=(), dtype=None, **_):
        if not kernels_enabled() or view is None or view.batch or jnp.dtype(dtype) not in KERNEL_DTYPES:
            return False
        if len(shape) < 1 or int(np.prod(shape)) < MIN_KERNEL_ELEMENTS:
            return False
        return self._kernel_blocks(spec) and len(view.shape) >= len(spec.block_sizes.sizes)

    def _fake_quant_gpu(self, x, *amax, spec, view):
        c = x if view.is_identity else view.to_canonical(x)
        a = jnp.reshape(amax[0], ()) if amax else None
        y = nvfp4_kernels.nvfp4_fake_quant(c, a, two_d=two_d(spec), interpret=False)
        return y if view.is_identity else view.from_canonical(y, x.shape)

    def _serves_quantize(self, spec=None, shape=(), dtype=None, **_):
        return (kernels_enabled() and jnp.dtype(dtype) in KERNEL_DTYPES and self._kernel_blocks(spec)
                and len(shape) >= len(spec.block_sizes.sizes))

    def _quantize_gpu(self, x, spec, amax=None):
        a = None if amax is None else jnp.reshape(amax, ())
        data, scale, gs = nvfp4_kernels.nvfp4_quantize(x, a, two_d=two_d(spec), interpret=False)
        return QTensor(data, scale, gs, spec, tuple(x.shape), str(x.dtype), 0)

    def _serves_dequantize(self, qt=None, **_):
        return kernels_enabled() and qt.batch == 0 and jnp.dtype(qt.dtype) in KERNEL_DTYPES

    def _dequantize_gpu(self, qt, dtype=None):
        return nvfp4_kernels.nvfp4_dequantize(qt.data, qt.scale, qt.global_scale, qt.shape, two_d=two_d(qt.spec),
                                              dtype=jnp.dtype(dtype or qt.dtype), interpret=False)

    def linear_kernel(self, wspec, ispec):
        one_d = not two_d(wspec) and not wspec.rotate
        if one_d and (ispec is None or (ispec.format is self and not two_d(ispec) and not ispec.rotate)):
            return W4A16Linear("nvfp4")
        return None


NVFP4 = NVFP4Format()


@functools.partial(jax.jit, static_argnums=1)
def _mse_block_amax(x, spec):
    """:meth:`NVFP4Format.mse_block_amax` (compiled once per spec and shape)."""
    layout = nx.nvfp4_layout(tuple(x.shape), two_d(spec))
    xb = layout.split(jnp.asarray(x)).astype(jnp.float32)
    g = jnp.max(jnp.abs(xb))
    gs = nx.nvfp4_global_scale(g)
    scales = jnp.asarray(np.arange(1, 127, dtype=np.uint8).view(ml_dtypes.float8_e4m3fn).astype(np.float32))

    def block_error(v):  # the arithmetic of nx.nvfp4_quantize with the block scale v
        s = v * gs
        q = nx.round_to_minifloat(nx.exact_divide(xb, s), nx.E2M1)
        return jnp.sum((q * s - xb) ** 2, axis=layout.in_block_axes, keepdims=True)

    v = scales[jnp.argmin(jax.lax.map(block_error, scales), axis=0)]
    top = scales[-1]
    holder = layout.block_amax(x) >= g  # the block(s) holding G
    v = jnp.where(jnp.any(v == top), v, jnp.where(holder, top, v))
    amax = jnp.minimum(jnp.where(v == top, g, 6.0 * gs * v), g)
    return layout.squeeze_stats(amax)
