"""What INT and FP8 share: one scale from an amax, per tensor, per axis or per static block.

``amax`` is ``max|x|`` over the tensor (``axis=None``), over all axes but the kept ``axis`` (ModelOpt's
``axis`` = the axis *kept*), or per block of ``block_sizes`` (zero-padded partial blocks); ``batch`` leading
axes are always kept. A subclass supplies the element arithmetic (:meth:`ScaledFormat.element_fake_quant`,
:meth:`~ScaledFormat.element_quantize`, :meth:`~ScaledFormat.element_dequantize`) and the storage encoding.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from jq import numerics as nx
from jq.formats.base import Format, QDQForm, UnsupportedExport, block_layout, broadcastable_amax, spec_axes
from jq.qtensor import QTensor

__all__ = ["ScaledFormat"]


class ScaledFormat(Format):
    """Base of formats with one amax-derived scale per tensor / axis / block (INT, FP8)."""

    # -- element arithmetic (subclasses) ---------------------------------------------------------------
    def element_fake_quant(self, x, amax, spec):
        raise NotImplementedError

    def element_quantize(self, x, amax, spec) -> tuple[jax.Array, jax.Array]:
        """``(q, scale)``: values on the element grid (float32) and the multiplier used to get them."""
        raise NotImplementedError

    def element_dequantize(self, q, scale) -> jax.Array:
        raise NotImplementedError

    def encode(self, q: jax.Array, spec) -> jax.Array:
        """Storage of the element values ``q`` (float32 on the grid, padded layout)."""
        raise NotImplementedError

    def decode(self, data: jax.Array, spec, n: int) -> jax.Array:
        """Element values (float32) from storage; ``n`` is the padded length of the last axis."""
        raise NotImplementedError

    # -- geometry -------------------------------------------------------------------------------------
    def compute_amax(self, x, spec, batch=0):
        if not self.needs_amax(spec):
            return None
        x = jnp.asarray(x)
        batch_axes = tuple(range(batch))
        if spec.axis is None and spec.block_sizes is None:
            return nx.reduce_amax(x, batch_axes if batch else None)
        if spec.block_sizes is not None:
            layout = block_layout(spec, x.shape, batch)
            return layout.squeeze_stats(layout.block_amax(x))
        return nx.reduce_amax(x, batch_axes + spec_axes(spec.axis, x.ndim, batch))

    def _dynamic_amax(self, x, spec, batch):
        """Per-call amax with the spec's granularity (dynamic quantizers)."""
        axes = tuple(range(batch)) + spec_axes(spec.axis, x.ndim, batch)
        return nx.reduce_amax(x, axes if (batch or spec.axis is not None) else None)

    def blocks(self, spec, shape: Sequence[int], batch: int = 0):
        return None if spec.block_sizes is None else block_layout(spec, shape, batch)

    # -- numerics -------------------------------------------------------------------------------------
    def fake_quant(self, x, spec, amax, *, batch=0, random_bits=None):
        if spec.block_sizes is not None:
            layout = block_layout(spec, x.shape, batch)
            block_amax = layout.block_amax(x) if amax is None else layout.expand_stats(amax)
            return layout.merge(self.element_fake_quant(layout.split(x), block_amax, spec)).astype(x.dtype)
        if amax is None:
            amax = self._dynamic_amax(x, spec, batch)
        return self.element_fake_quant(x, broadcastable_amax(amax, x.ndim), spec)

    def quantize(self, x, spec, amax, *, batch=0):
        shape, dtype = tuple(x.shape), str(x.dtype)
        if spec.block_sizes is not None:
            layout = block_layout(spec, shape, batch)
            xb = layout.split(x)
            a = layout.block_amax(x) if amax is None else layout.expand_stats(amax)
        else:
            if amax is None:
                amax = self._dynamic_amax(x, spec, batch)
            layout, xb, a = None, x, broadcastable_amax(amax, x.ndim)
        q, s = self.element_quantize(xb, a, spec)
        if layout is not None:
            q = q.reshape(layout.padded_shape)
            s = layout.squeeze_stats(jnp.broadcast_to(s, a.shape))
        return QTensor(self.encode(q, spec), s.astype(jnp.float32), None, spec, shape, dtype, batch)

    def dequantize(self, qt, dtype):
        spec = qt.spec
        layout = block_layout(spec, qt.shape, qt.batch) if spec.block_sizes is not None else None
        n = layout.padded_shape[-1] if layout is not None else qt.shape[-1]
        q = self.decode(qt.data, spec, n)
        if layout is not None:
            q, s = q.reshape(layout.blocked_shape), layout.expand_stats(qt.scale)
        else:
            s = qt.scale
        y = self.element_dequantize(q, s)
        return (layout.merge(y) if layout is not None else y).astype(dtype)

    def clip_mask(self, x, spec, amax, batch=0):
        if amax is None:
            return None
        if spec.block_sizes is not None:
            layout = block_layout(spec, x.shape, batch)
            bound = layout.merge(jnp.broadcast_to(layout.expand_stats(amax), layout.blocked_shape))
            return jnp.abs(x) <= bound
        return jnp.abs(x) <= broadcastable_amax(amax, x.ndim)

    # -- description ------------------------------------------------------------------------------------
    def element_name(self, spec) -> str:
        raise NotImplementedError

    def describe(self, spec) -> str:
        if spec.block_sizes is not None:
            axes = spec.block_sizes.axes
            if all(v is None for v in axes.values()):
                gran = "per-token"
            else:
                gran = "b" + "x".join(str(axes[a]) for a in sorted(axes))
            gran += " dyn" if self.is_dynamic(spec) else ""
        elif spec.axis is not None:
            gran = f"per-axis{spec.axis}"
        else:
            gran = "per-tensor"
        return f"{self.element_name(spec)} {gran}"

    # -- ONNX -------------------------------------------------------------------------------------------
    def onnx_granularity(self, spec, base_opset: int, element_type: str, qmax: float) -> QDQForm:
        """The granularity part of the ONNX form shared by INT and FP8 (blocks need opset 21)."""
        if self.is_dynamic(spec):
            raise UnsupportedExport("dynamic (per-call) INT/FP8 scales are not build-time constants")
        if spec.block_sizes is not None:
            sizes = [s for _, s in spec.block_sizes.sizes]
            if any(s is None for s in sizes):
                raise UnsupportedExport("whole-axis blocks are per-token scaling, which is dynamic")
            return QDQForm(self.name, element_type, "block", max(base_opset, 21), int(sizes[-1]), qmax)
        if spec.axis is not None:
            axes = (spec.axis,) if isinstance(spec.axis, int) else tuple(spec.axis)
            if len(axes) != 1:
                raise UnsupportedExport(f"ONNX per-axis scales keep one axis, got axis={spec.axis}")
            return QDQForm(self.name, element_type, "axis", base_opset, None, qmax)
        return QDQForm(self.name, element_type, "tensor", base_opset, None, qmax)
