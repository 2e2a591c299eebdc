"""Lowering of jq's ``jq_fake_quant`` primitive to ONNX: a jax2onnx leaf plugin.

Each ``jq_fake_quant`` equation becomes the ONNX form of its quantizer (see :mod:`jq.export.formats`):

* INT / FP8 activation: ``QuantizeLinear(x, scale, zero_point) -> DequantizeLinear(., scale, zero_point)``
  with ``scale = amax / maxb`` (INT) or jq's FP8 multiplier ``1 / (448 / amax)``, per tensor or per axis;
  ``zero_point`` is a zero of the quantized type (it also fixes Q's output type).
* INT / FP8 weight: the same pair on the weight initializer, or, with ``dq_only``, the weight stored
  quantized (``INT8``/``INT4``/``FLOAT8E4M3FN`` initializer from :func:`jq.qtensor.quantize`) feeding a single
  ``DequantizeLinear``. Per-channel and blocked scales use the operand axis the canonical ``[out, in]`` axis
  maps to (:mod:`jq.export.layout`); 2D blocks become 1D blocks along ``in`` with the scales repeated.
* NVFP4 activation (TensorRT's form)::

      x_fp4, s_fp8 = trt::TRT_FP4DynamicQuantize(x, gs; axis=-1, block_size=16, scale_type=FLOAT8E4M3FN)
      s   = DequantizeLinear(s_fp8, gs)
      y   = DequantizeLinear(x_fp4, s; axis=-1, block_size=16)

  with ``gs = amax / 2688``.
* NVFP4 weight: ``FLOAT4E2M1`` initializer, ``FLOAT8E4M3FN`` block-scale initializer and fp32 ``gs``:
  ``DequantizeLinear(w_fp4, DequantizeLinear(s_fp8, gs); axis, block_size=16)``.

Scales and zero points are initializers computed here from the constant ``amax`` operand
(``ctx.try_evaluate_const``), so no scale arithmetic is left in the graph. Every node and initializer is
named after its quantizer (``fc1.input_quantizer/QuantizeLinear``, ``fc1.input_quantizer.scale``,
``fc1.weight``) when the equation carries the quantizer's name in its name stack, as
:func:`jq.export.to_onnx` arranges.

:func:`lowering_scope` registers the plugin with jax2onnx (once), sets the options of one export and
collects what was emitted.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import onnx_ir as ir
from jax2onnx.plugins.plugin_system import PrimitiveLeafPlugin, register_primitive

from jq.config import QuantizerSpec
from jq.export.formats import QDQFormat, resolve_format
from jq.export.layout import WeightLayout
from jq.export.scales import export_scale
from jq.fake_quant import jq_fake_quant_p
from jq.qtensor import quantize as qtensor_quantize
from jq.formats import block_layout

__all__ = ["LoweringOptions", "EmittedQuantizer", "lowering_scope", "NAME_SCOPE_PREFIX", "JqFakeQuantPlugin",
           "register_plugin"]

NAME_SCOPE_PREFIX = "jq_quantizer="  # name-stack entry that carries a quantizer's name into the equation

_COMPUTE_TYPES = {"Float": (ir.DataType.FLOAT, np.float32), "Half": (ir.DataType.FLOAT16, np.float16),
                  "BFloat16": (ir.DataType.BFLOAT16, ml_dtypes.bfloat16)}
_NP_ELEM = {ir.DataType.INT8: np.int8, ir.DataType.UINT8: np.uint8, ir.DataType.INT4: ml_dtypes.int4,
            ir.DataType.UINT4: ml_dtypes.uint4, ir.DataType.FLOAT8E4M3FN: ml_dtypes.float8_e4m3fn,
            ir.DataType.FLOAT8E5M2: ml_dtypes.float8_e5m2, ir.DataType.FLOAT4E2M1: ml_dtypes.float4_e2m1fn}
# Layout-only primitives the constant folder may evaluate to recognise a weight behind a cast or transpose.
_CONST_PRIMITIVES = (jax.lax.convert_element_type_p, jax.lax.reshape_p, jax.lax.transpose_p,
                     jax.lax.squeeze_p, jax.lax.broadcast_in_dim_p, jax.lax.copy_p,
                     jax.lax.mul_p, jax.lax.div_p)  # W / pre_quant_scale (AWQ, SmoothQuant) is a constant weight


@dataclasses.dataclass(frozen=True)
class LoweringOptions:
    """How ``jq_fake_quant`` is lowered.

    Attributes:
      dq_only: store INT/FP8 weights quantized with a ``DequantizeLinear`` only (NVFP4 weights always are).
    """

    dq_only: bool = False


@dataclasses.dataclass
class EmittedQuantizer:
    """What the plugin emitted for one quantizer occurrence (collected by :func:`lowering_scope`)."""

    name: str
    format: QDQFormat
    is_weight: bool
    nodes: list
    scale: str  # name of the scale initializer (NVFP4: the global scale)
    axis: int | None = None
    layout: str = "operand"  # "operand" or "canonical" (weights reshaped/transposed after the DQ)


@dataclasses.dataclass
class _State:
    options: LoweringOptions
    emitted: list = dataclasses.field(default_factory=list)
    names: set = dataclasses.field(default_factory=set)


_STATE: contextvars.ContextVar[_State | None] = contextvars.ContextVar("jq_export_lowering", default=None)


@contextlib.contextmanager
def lowering_scope(options: LoweringOptions = LoweringOptions()):
    """Lower ``jq_fake_quant`` with ``options`` inside the block; yields the list of :class:`EmittedQuantizer`."""
    register_plugin()
    token = _STATE.set(_State(options))
    try:
        yield _STATE.get().emitted
    finally:
        _STATE.reset(token)


def quantizer_name_of(eqn) -> str | None:
    """The quantizer name carried in the equation's name stack (see :data:`NAME_SCOPE_PREFIX`), if any."""
    stack = str(getattr(eqn.source_info, "name_stack", ""))
    for part in reversed(stack.split("/")):
        if part.startswith(NAME_SCOPE_PREFIX):
            return part[len(NAME_SCOPE_PREFIX):]
    return None


# ----------------------------------------------------------------------------------------------------
# graph-building helpers


class _Builder:
    """Named initializers and nodes on top of a jax2onnx lowering context."""

    def __init__(self, ctx, state: _State):
        self.ctx, self.state = ctx, state

    def unique(self, base: str) -> str:
        names = self.state.names
        graph_inits = getattr(getattr(self.ctx.builder, "graph", None), "initializers", {})
        name = base
        while name in names or name in graph_inits:
            name = self.ctx.fresh_name(base)
        names.add(name)
        return name

    def const(self, base: str, array) -> ir.Value:
        array = np.asarray(array)
        name = self.unique(base)
        tensor = ir.tensor(array, name=name)
        value = ir.Value(name=name, shape=ir.Shape(array.shape), type=ir.TensorType(tensor.dtype),
                         const_value=tensor)
        self.ctx.builder.initializers.append(value)
        return value

    def node(self, op: str, inputs, base: str, out_types, out_shapes, domain: str = "", **attrs):
        """Add node ``base`` (its name) of type ``op``; outputs are named ``base:0``, ``base:1`` ... ."""
        node_name = self.unique(base)
        names = [self.unique(f"{node_name}:{i}") for i in range(len(out_types))]
        kw = dict(attrs)
        if domain:
            kw["_domain"] = domain
        res = getattr(self.ctx.builder, op)(*inputs, _outputs=names, **kw)
        outs = list(res) if isinstance(res, (list, tuple)) else [res]
        for v, t, s in zip(outs, out_types, out_shapes):
            v.type = ir.TensorType(t)
            v.shape = s if isinstance(s, ir.Shape) or s is None else ir.Shape(s)
        producer = outs[0].producer()
        if producer is not None:
            producer.name = node_name
        return outs


def _shape_of(value: ir.Value, fallback) -> ir.Shape:
    return value.shape if value.shape is not None else ir.Shape(tuple(fallback))


def _zero_point(elem: ir.DataType, shape=()) -> np.ndarray:
    """Zeros of the quantized type (the zero point; it also fixes ``QuantizeLinear``'s output type)."""
    return np.zeros(shape, _NP_ELEM[elem])


def _repeat_blocks(stats: np.ndarray, spec_axes: dict, onnx_axis: int, full_shape) -> np.ndarray:
    """Expand per-block statistics along every blocked axis except ``onnx_axis`` to full length."""
    for ax, size in spec_axes.items():
        if ax == onnx_axis:
            continue
        stats = np.repeat(stats, size, axis=ax)[(slice(None),) * ax + (slice(0, full_shape[ax]),)]
    return stats


# ----------------------------------------------------------------------------------------------------
# the lowering


def _canonical_axes(spec: QuantizerSpec, ndim: int, batch: int) -> dict[int, int]:
    """Absolute canonical axes -> block size of a blocked spec."""
    return dict(block_layout(spec, (1,) * ndim, batch).sizes) if spec.block_sizes is not None else {}


def _kept_axis(amax: np.ndarray, name: str) -> int | None:
    """The one non-unit axis of a keep-dims amax (None: per tensor); several raise ``ValueError``."""
    nonunit = [k for k, n in enumerate(amax.shape) if n != 1]
    if len(nonunit) > 1:
        raise ValueError(f"quantizer {name!r}: its amax {amax.shape} keeps {len(nonunit)} axes; ONNX per-axis "
                         f"scales keep one")
    return nonunit[0] if nonunit else None


class _Lowering:
    """One ``jq_fake_quant`` equation: reads its constants, resolves the format and emits the nodes."""

    def __init__(self, ctx, eqn, state: _State):
        self.ctx, self.eqn, self.state = ctx, eqn, state
        self.b = _Builder(ctx, state)
        self.spec: QuantizerSpec = eqn.params["spec"]
        self.view = eqn.params["view"]
        self.name = quantizer_name_of(eqn) or ctx.fresh_name("jq_quantizer")
        for prim in _CONST_PRIMITIVES:
            ctx.register_constant_evaluator(prim)
        self.x_var, self.out_var = eqn.invars[0], eqn.outvars[0]
        self.amax = None
        if len(eqn.invars) > 1:
            self.amax = ctx.try_evaluate_const(eqn.invars[1])
            if self.amax is None:
                raise ValueError(f"quantizer {self.name!r}: its amax is not a build-time constant (is it sliced by a "
                                 f"scan over layers? unroll the layers to export)")
            self.amax = np.asarray(self.amax, np.float32)
        self.w = ctx.try_evaluate_const(self.x_var)
        self.is_weight = self.w is not None
        self.fmt = resolve_format(self.name, self.spec, is_weight=self.is_weight)
        opset = getattr(ctx, "opset", None) or getattr(ctx.builder, "opset", 0)
        if opset and opset < self.fmt.min_opset:
            raise ValueError(f"quantizer {self.name!r} ({self.spec.describe()}) needs opset >= {self.fmt.min_opset}, "
                             f"the export uses {opset}")
        if self.amax is None:
            raise ValueError(f"quantizer {self.name!r} ({self.spec.describe()}) has no calibrated amax to export")
        self.ctype, self.cnp = _COMPUTE_TYPES[self.spec.trt_high_precision_dtype]
        self.out_dtype = np.dtype(self.out_var.aval.dtype)
        self.site = self.name.rsplit(".", 1)[0]

    # -- helpers --------------------------------------------------------------------------------------
    def record(self, nodes, scale, axis=None, layout="operand"):
        self.state.emitted.append(EmittedQuantizer(self.name, self.fmt, self.is_weight,
                                                   [n.name for n in nodes if n is not None], scale, axis, layout))

    def scale_const(self, scale: np.ndarray, suffix="scale"):
        return self.b.const(f"{self.name}.{suffix}", np.asarray(scale, np.float32).astype(self.cnp))

    def to_compute(self, value: ir.Value, shape) -> ir.Value:
        if np.dtype(self.x_var.aval.dtype) == np.dtype(self.cnp):
            return value
        (v,) = self.b.node("Cast", [value], f"{self.name}/Cast", [self.ctype], [shape], to=self.ctype)
        return v

    def bind(self, y: ir.Value, shape):
        out_type = ir.DataType.from_numpy(self.out_dtype)
        if y.type is not None and y.type.dtype != out_type:
            (y,) = self.b.node("Cast", [y], f"{self.name}/CastBack", [out_type], [shape], to=out_type)
        self.ctx.bind_value_for_var(self.out_var, y)

    # -- entry --------------------------------------------------------------------------------------------
    def run(self):
        if self.is_weight:
            return self.two_level_weight() if self.fmt.two_level else self.weight()
        return self.dynamic_block_activation() if self.fmt.dynamic_quantize_op else self.activation()

    def qdq(self, x: ir.Value, shape, scale: np.ndarray, axis, block_size):
        """Q -> DQ on ``x`` (compute dtype) with ``scale``; returns the DQ output and the nodes."""
        attrs = {}
        if axis is not None:
            attrs["axis"] = int(axis)
        if block_size is not None:
            attrs["block_size"] = int(block_size)
        s = self.scale_const(scale)
        z = self.b.const(f"{self.name}.zero_point", _zero_point(self.fmt.element_type, np.shape(scale)))
        (q,) = self.b.node("QuantizeLinear", [x, s, z], f"{self.name}/QuantizeLinear", [self.fmt.element_type],
                           [shape], **attrs)
        (y,) = self.b.node("DequantizeLinear", [q, s, z], f"{self.name}/DequantizeLinear", [self.ctype],
                           [shape], **attrs)
        return y, [q.producer(), y.producer()], s.name

    def dq(self, data: np.ndarray, scale: np.ndarray, axis, block_size):
        """DQ of a stored quantized weight ``data``; returns the output and the node."""
        attrs = {}
        if axis is not None:
            attrs["axis"] = int(axis)
        if block_size is not None:
            attrs["block_size"] = int(block_size)
        d = self.b.const(f"{self.site}.weight", data)
        s = self.scale_const(scale)
        z = self.b.const(f"{self.name}.zero_point", _zero_point(self.fmt.element_type, np.shape(scale)))
        (y,) = self.b.node("DequantizeLinear", [d, s, z], f"{self.name}/DequantizeLinear", [self.ctype],
                           [data.shape], **attrs)
        return y, [y.producer()], s.name

    # -- activations ----------------------------------------------------------------------------------
    def activation(self):
        x = self.ctx.get_value_for_var(self.x_var, name_hint=self.ctx.fresh_name("jq_in"))
        shape = _shape_of(x, self.x_var.aval.shape)
        if self.fmt.granularity == "block":
            raise ValueError(f"quantizer {self.name!r} ({self.spec.describe()}): static per-block activation scales "
                             f"depend on the calibration shape and cannot be exported")
        scale = export_scale(self.spec, self.amax)
        axis = _kept_axis(self.amax, self.name) if self.amax.ndim else None
        if axis is not None:
            scale = scale.reshape(-1)
        xc = self.to_compute(x, shape)
        y, nodes, sname = self.qdq(xc, shape, scale, axis, None)
        self.record(nodes, sname, axis)
        self.bind(y, shape)

    def dynamic_block_activation(self):
        """An activation whose block scales are computed at run time (TensorRT's NVFP4 form)."""
        domain, op = self.fmt.dynamic_quantize_op
        bsize, scale_type = self.fmt.block_size, self.fmt.block_scale_type
        x = self.ctx.get_value_for_var(self.x_var, name_hint=self.ctx.fresh_name("jq_in"))
        shape = _shape_of(x, self.x_var.aval.shape)
        gs = self.scale_const(export_scale(self.spec, self.amax).reshape(()), "global_scale")
        xc = self.to_compute(x, shape)
        last = shape.dims[-1]
        flat = len(shape) > 3 and isinstance(last, int)
        if flat:  # TensorRT quantizes 2-D/3-D tensors: fold the leading axes (blocks stay along the last one)
            (orig_shape,) = self.b.node("Shape", [xc], f"{self.name}/Shape", [ir.DataType.INT64], [[len(shape)]])
            target = self.b.const(f"{self.name}.flat_shape", np.asarray([-1, last], np.int64))
            qshape = ir.Shape([ir.SymbolicDim(None), last])
            (xc,) = self.b.node("Reshape", [xc, target], f"{self.name}/Flatten", [self.ctype], [qshape])
        else:
            qshape = shape
        dims = list(qshape.dims)
        dims[-1] = -(-int(last) // bsize) if isinstance(last, int) else ir.SymbolicDim(None)
        xq, sq = self.b.node(op, [xc, gs], f"{self.name}/{op}", [self.fmt.element_type, scale_type],
                             [qshape, ir.Shape(dims)], domain=domain, axis=-1, block_size=bsize,
                             scale_type=int(scale_type))
        (s,) = self.b.node("DequantizeLinear", [sq, gs], f"{self.name}/DequantizeLinear_scale", [self.ctype],
                           [ir.Shape(dims)])
        (y,) = self.b.node("DequantizeLinear", [xq, s], f"{self.name}/DequantizeLinear", [self.ctype], [qshape],
                           axis=-1, block_size=bsize)
        nodes = [xq.producer(), s.producer(), y.producer()]
        if flat:
            (y,) = self.b.node("Reshape", [y, orig_shape], f"{self.name}/Unflatten", [self.ctype], [shape])
        self.record(nodes, gs.name, -1)
        self.bind(y, shape)

    # -- weights ----------------------------------------------------------------------------------------
    def weight(self):
        spec, view = self.spec, self.view
        w = np.asarray(self.w)
        lay = WeightLayout.create(view, w.shape)
        canonical = np.asarray(view.to_canonical(jnp.asarray(w)))
        amax = self.amax
        scale = export_scale(spec, amax)
        gran, axis, block = self.fmt.granularity, None, None
        if gran == "block":
            blocked = _canonical_axes(spec, canonical.ndim, view.batch)
            axis = max(blocked)
            block = blocked[axis]
            stats = scale.reshape(block_layout(spec, canonical.shape, view.batch).num_blocks_shape)
            scale = _repeat_blocks(stats, blocked, axis, canonical.shape)
        elif amax.ndim:
            axis = _kept_axis(amax.reshape(amax.shape + (1,) * (canonical.ndim - amax.ndim)), self.name)
            scale = scale.reshape(-1) if axis is not None else scale.reshape(())
        in_operand = lay.direct
        if in_operand and axis is not None:
            if gran == "block":
                scale = lay.stats_to_operand(scale)
            op_axis = lay.operand_axis(axis)
        else:
            op_axis = axis
        if self.state.options.dq_only:
            qt = qtensor_quantize(jnp.asarray(canonical), spec, jnp.asarray(amax), batch=view.batch)
            data = spec.format.onnx_values(qt, canonical.shape)
            data = lay.to_operand(data) if in_operand else data
            y, nodes, sname = self.dq(data, scale, op_axis, block)
        else:
            base = w if in_operand else canonical
            x = self.b.const(f"{self.site}.weight", base.astype(self.cnp))
            y, nodes, sname = self.qdq(x, ir.Shape(base.shape), scale, op_axis, block)
        if not in_operand:
            y = self._canonical_to_operand(y, lay)
        self.record(nodes, sname, op_axis, "operand" if in_operand else "canonical")
        self.bind(y, ir.Shape(w.shape))

    def _canonical_to_operand(self, y: ir.Value, lay: WeightLayout) -> ir.Value:
        permuted = lay.permuted_shape
        if tuple(self.view.shape) != permuted:
            shp = self.b.const(f"{self.name}.operand_shape", np.asarray(permuted, np.int64))
            (y,) = self.b.node("Reshape", [y, shp], f"{self.name}/Reshape", [self.ctype], [permuted])
        inv = lay.inverse_perm
        if inv != tuple(range(len(inv))):
            (y,) = self.b.node("Transpose", [y], f"{self.name}/Transpose", [self.ctype], [lay.shape], perm=list(inv))
        return y

    def two_level_weight(self):
        """A weight stored quantized with block scales that a per-tensor scale dequantizes (NVFP4)."""
        spec, view = self.spec, self.view
        if view.batch:
            raise ValueError(f"quantizer {self.name!r}: {self.fmt.kind} weights with batch (expert) axes are not "
                             f"exported yet")
        w = np.asarray(self.w)
        lay = WeightLayout.create(view, w.shape)
        canonical = view.to_canonical(jnp.asarray(w))
        qt = qtensor_quantize(canonical, spec, jnp.asarray(self.amax))
        data = spec.format.onnx_values(qt, canonical.shape)
        block_scale = np.asarray(qt.scale)  # one per block (2D tiles: one per tile)
        ndim = canonical.ndim
        blocked = dict(spec.format.blocks(spec, canonical.shape).sizes)
        block_scale = _repeat_blocks(block_scale, blocked, ndim - 1, canonical.shape)
        in_operand = lay.direct
        axis = ndim - 1
        if in_operand:
            data = lay.to_operand(data)
            block_scale = lay.stats_to_operand(block_scale)
            axis = lay.operand_axis(ndim - 1)
        d = self.b.const(f"{self.site}.weight", data)
        s8 = self.b.const(f"{self.name}.block_scale", block_scale)
        gs = self.scale_const(np.asarray(qt.global_scale, np.float32).reshape(()), "global_scale")
        (s,) = self.b.node("DequantizeLinear", [s8, gs], f"{self.name}/DequantizeLinear_scale", [self.ctype],
                           [block_scale.shape])
        (y,) = self.b.node("DequantizeLinear", [d, s], f"{self.name}/DequantizeLinear", [self.ctype], [data.shape],
                           axis=int(axis), block_size=self.fmt.block_size)
        if not in_operand:
            y = self._canonical_to_operand(y, lay)
        self.record([s.producer(), y.producer()], gs.name, axis, "operand" if in_operand else "canonical")
        self.bind(y, ir.Shape(w.shape))


class JqFakeQuantPlugin(PrimitiveLeafPlugin):
    """jax2onnx lowering of ``jq_fake_quant`` (see the module docstring)."""

    def lower(self, ctx, eqn) -> None:
        state = _STATE.get() or _State(LoweringOptions())
        _Lowering(ctx, eqn, state).run()


@functools.cache
def register_plugin() -> type:
    """Register :class:`JqFakeQuantPlugin` with jax2onnx (once; :func:`lowering_scope` calls it)."""
    return register_primitive(jaxpr_primitive=jq_fake_quant_p.name, since="jq", context="primitives.jq",
                              component="jq_fake_quant")(JqFakeQuantPlugin)
