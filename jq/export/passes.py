"""onnx-ir passes that turn jax2onnx's output into the graph TensorRT and ONNX Runtime expect.

jax2onnx 0.17 leaves a few things behind (REFERENCE §5); each pass fixes one. The jq-specific ones live here:

* :class:`FoldConstantLayoutPass` - ``Reshape``/``Transpose``/``Squeeze``/``Unsqueeze``/``Identity`` of constants
  (bias reshapes, kernel transposes) become initializers.
* :class:`PushTransposeIntoWeightPass` - a ``Transpose`` after a weight's ``DequantizeLinear`` (jax2onnx turns
  ``HWIO`` kernels into ``OIHW`` that way) is applied to the stored weight and its scales instead, so the DQ
  feeds the Conv/MatMul directly as TensorRT and ORT's QDQ fusions want.
* :class:`BoolWherePass` - ``Where`` on BOOL data (``jnp.tril`` of a boolean mask) as ``And``/``Or``/``Not``: ONNX
  Runtime has no BOOL ``Where`` kernel on CPU.
* :class:`ChannelsLastPoolPass` - Flax's NHWC ``max_pool`` written as a 4-D window becomes a 2-D NCHW pool.
* :class:`FillMissingTypesPass` - element types jax2onnx leaves unset on shape-computation values.
* :class:`ConvertFloatPass` - an FP16/BF16 copy of the graph (float initializers, value types, ``Cast`` targets,
  Q/DQ scales), graph inputs/outputs kept FP32 by casts: TensorRT builds strongly typed networks, so an FP32
  ONNX runs its unquantized layers in FP32 and the fair baseline is an FP16 graph.

The passes ``jq_autotune`` needs too come from :mod:`onnx_toolbox` (re-exported here):

* :class:`~onnx_toolbox.DropZeroGemmCPass` - the all-zero ``C`` jax2onnx gives every 2-D ``Gemm`` (it blocks
  ORT's QGemm fusion).
* :class:`~onnx_toolbox.FoldBiasPass` - ``Conv [-> Transpose] -> Add(bias)`` and ``Gemm -> Add(bias)`` become
  ``Conv(B=bias)`` and ``Gemm(C=bias)``.
* :class:`~onnx_toolbox.FixIrVersionPass` - ``ir_version`` matching the opset (jax2onnx always writes 10; opset
  23 needs 11); :func:`~onnx_toolbox.ir_version_for_opset`.
* :class:`~onnx_toolbox.TrtDomainPass` - the ``trt`` opset import ``TRT_FP4DynamicQuantize`` needs.

:func:`optimize` runs them in order. Every pass is an ``onnx_ir.passes.InPlacePass``.

Example:
  >>> model = ir.load("model.onnx")
  >>> optimize(model)
  >>> ir.save(model, "model.opt.onnx")
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass, TopologicalSortPass

from onnx_toolbox import DropZeroGemmCPass, FixIrVersionPass, FoldBiasPass, TrtDomainPass, ir_version_for_opset
from onnx_toolbox.values import add_initializer, attribute, constant_array, only_used_by, replace_value

__all__ = [
    "FoldConstantLayoutPass",
    "PushTransposeIntoWeightPass",
    "BoolWherePass",
    "ChannelsLastPoolPass",
    "FillMissingTypesPass",
    "ConvertFloatPass",
    "optimize",
    # shared with autotune, from onnx_toolbox
    "DropZeroGemmCPass",
    "FoldBiasPass",
    "FixIrVersionPass",
    "TrtDomainPass",
    "ir_version_for_opset",
]


class FoldConstantLayoutPass(ir.passes.InPlacePass):
    """Evaluate layout-only ops whose inputs are all constants (Reshape, Transpose, Squeeze, Unsqueeze, Identity)."""

    OPS = ("Reshape", "Transpose", "Squeeze", "Unsqueeze", "Identity")

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph, modified = model.graph, False
        for node in list(graph):
            if node.op_type not in self.OPS or node.domain not in ("", "ai.onnx"):
                continue
            ins = [constant_array(v) for v in node.inputs if v is not None]
            if not ins or any(a is None for a in ins):
                continue
            out = self._evaluate(node, ins)
            if out is None:
                continue
            new = add_initializer(graph, node.outputs[0].name or "folded", out)
            replace_value(node.outputs[0], new)
            graph.remove(node, safe=True)
            modified = True
        return ir.passes.PassResult(model, modified)

    @staticmethod
    def _evaluate(node: ir.Node, ins):
        x = ins[0]
        op = node.op_type
        if op == "Identity":
            return x
        if op == "Transpose":
            perm = attribute(node, "perm")
            return np.transpose(x, perm)
        if op == "Reshape":
            shape = [int(s) for s in ins[1]]
            if not attribute(node, "allowzero", 0):
                shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
            return np.reshape(x, shape)
        axes = [int(a) for a in (ins[1] if len(ins) > 1 else attribute(node, "axes", []))]
        if op == "Squeeze":
            return np.squeeze(x, axis=tuple(axes)) if axes else np.squeeze(x)
        if op == "Unsqueeze":
            rank = x.ndim + len(axes)
            for a in sorted(a % rank for a in axes):
                x = np.expand_dims(x, a)
            return x
        return None


class PushTransposeIntoWeightPass(ir.passes.InPlacePass):
    """``[Q ->] DQ -> Transpose`` on a constant weight: transpose the stored tensors instead.

    Per-axis and blocked ``axis`` attributes follow the permutation (``axis' = perm.index(axis)``); blocked
    scales, zero points and NVFP4's E4M3 block scales are transposed with the data.
    """

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph, modified = model.graph, False
        for node in list(graph):
            if node.op_type != "Transpose" or node.domain not in ("", "ai.onnx"):
                continue
            dq = node.inputs[0].producer()
            if dq is None or dq.op_type != "DequantizeLinear" or not only_used_by(dq.outputs[0], node):
                continue
            chain = self._weight_chain(dq)
            if chain is None:
                continue
            perm = list(attribute(node, "perm") or reversed(range(len(node.inputs[0].shape))))
            self._apply(graph, chain, perm)
            replace_value(node.outputs[0], dq.outputs[0])
            graph.remove(node, safe=True)
            modified = True
        return ir.passes.PassResult(model, modified)

    @staticmethod
    def _weight_chain(dq: ir.Node):
        """The Q/DQ nodes of a constant weight ending at ``dq`` (None if the data is not a constant)."""
        src = dq.inputs[0].producer()
        if src is None and constant_array(dq.inputs[0]) is not None:
            nodes = [dq]
        elif src is not None and src.op_type == "QuantizeLinear" and only_used_by(src.outputs[0], dq) \
                and constant_array(src.inputs[0]) is not None:
            nodes = [src, dq]
        else:
            return None
        scale_src = dq.inputs[1].producer() if len(dq.inputs) > 1 and dq.inputs[1] is not None else None
        if scale_src is not None:  # NVFP4: the scale is DequantizeLinear(e4m3 const, global scale)
            if scale_src.op_type != "DequantizeLinear" or constant_array(scale_src.inputs[0]) is None \
                    or not only_used_by(scale_src.outputs[0], dq):
                return None
        return nodes, scale_src

    def _apply(self, graph: ir.Graph, chain, perm):
        nodes, scale_src = chain
        rank = len(perm)
        first = nodes[0]
        self._set_input(graph, first, 0, np.transpose(constant_array(first.inputs[0]), perm))
        for n in nodes:
            axis = attribute(n, "axis")
            blocked = attribute(n, "block_size", 0)
            scale = constant_array(n.inputs[1]) if len(n.inputs) > 1 and n.inputs[1] is not None else None
            if (scale is not None and scale.ndim == rank) or (scale is None and blocked):
                for i in (1, 2):
                    if i < len(n.inputs) and n.inputs[i] is not None and constant_array(n.inputs[i]) is not None:
                        self._set_input(graph, n, i, np.transpose(constant_array(n.inputs[i]), perm))
            if axis is not None and (blocked or scale is None or (scale is not None and scale.ndim == 1)):
                n.attributes["axis"] = ir.AttrInt64("axis", perm.index(int(axis) % rank))
            out = n.outputs[0]
            if out.shape is not None and len(out.shape) == rank:
                out.shape = ir.Shape([out.shape[p] for p in perm])
        if scale_src is not None:
            self._set_input(graph, scale_src, 0, np.transpose(constant_array(scale_src.inputs[0]), perm))
            o = scale_src.outputs[0]
            if o.shape is not None and len(o.shape) == rank:
                o.shape = ir.Shape([o.shape[p] for p in perm])

    @staticmethod
    def _set_input(graph: ir.Graph, node: ir.Node, i: int, array: np.ndarray):
        old = node.inputs[i]
        if only_used_by(old, node) and old.is_initializer():
            old.const_value = ir.tensor(array, name=old.name)
            old.shape = ir.Shape(array.shape)
        else:
            node.replace_input_with(i, add_initializer(graph, (old.name or "weight") + "_t", array))


class BoolWherePass(ir.passes.InPlacePass):
    """``Where(c, a, b)`` with BOOL ``a``/``b`` -> ``Or(And(c, a), And(Not(c), b))``."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph, modified = model.graph, False
        for node in list(graph):
            if node.op_type != "Where" or node.outputs[0].dtype != ir.DataType.BOOL:
                continue
            c, a, b = node.inputs
            base = node.name or "where"
            new = [ir.node("Not", [c], name=f"{base}/not")]
            new.append(ir.node("And", [c, a], name=f"{base}/and_a"))
            new.append(ir.node("And", [new[0].outputs[0], b], name=f"{base}/and_b"))
            new.append(ir.node("Or", [new[1].outputs[0], new[2].outputs[0]], name=f"{base}/or"))
            for i, n in enumerate(new):
                n.outputs[0].name = f"{base}/out{i}"
                n.outputs[0].type = ir.TensorType(ir.DataType.BOOL)
            new[-1].outputs[0].shape = node.outputs[0].shape
            graph.insert_before(node, new)
            replace_value(node.outputs[0], new[-1].outputs[0])
            graph.remove(node, safe=True)
            modified = True
        return ir.passes.PassResult(model, modified)


class ChannelsLastPoolPass(ir.passes.InPlacePass):
    """Pooling over a channels-last tensor written as an N-D pool -> a 2-D (N-2-D) NCHW pool.

    jax2onnx writes Flax's ``max_pool`` on NHWC (a ``reduce_window`` with window ``(1, kh, kw, 1)``) as
    ``Unsqueeze -> [1, 1, B, H, W, C] -> MaxPool(kernel_shape=[1, kh, kw, 1]) -> Squeeze``: a 4-D pooling
    window that ONNX Runtime rejects ("Unsupported pooling size") and TensorRT cannot build. The pass replaces
    the pool by ``Squeeze -> Transpose(NCHW) -> MaxPool([kh, kw]) -> Transpose(NHWC) -> Unsqueeze``, the
    same values with a standard window.
    """

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph, modified = model.graph, False
        for node in list(graph):
            if node.op_type not in ("MaxPool", "AveragePool") or len(node.outputs) != 1:
                continue
            kernel = list(attribute(node, "kernel_shape") or [])
            x = node.inputs[0]
            if x.shape is None or len(x.shape) != len(kernel) + 2 or len(kernel) < 3:
                continue
            if x.shape[0] != 1 or x.shape[1] != 1 or kernel[0] != 1 or kernel[-1] != 1:
                continue
            m = len(kernel)
            strides = list(attribute(node, "strides") or [1] * m)
            dilations = list(attribute(node, "dilations") or [1] * m)
            pads = list(attribute(node, "pads") or [0] * (2 * m))
            if (strides[0], strides[-1], dilations[0], dilations[-1]) != (1, 1, 1, 1) or \
                    any(pads[i] for i in (0, m - 1, m, 2 * m - 1)):
                continue
            base = node.name or node.op_type.lower()
            unit_axes = add_initializer(graph, f"{base}/unit_axes", np.array([0, 1], np.int64))
            attrs = {"kernel_shape": kernel[1:-1], "strides": strides[1:-1], "dilations": dilations[1:-1],
                     "pads": pads[1:m - 1] + pads[m + 1:2 * m - 1]}
            for name in ("ceil_mode", "count_include_pad", "auto_pad", "storage_order"):
                value = attribute(node, name)
                if value is not None:
                    attrs[name] = value
            squeeze = ir.node("Squeeze", [x, unit_axes], name=f"{base}/squeeze")
            to_first = ir.node("Transpose", [squeeze.outputs[0]], attributes={"perm": [0, m - 1] + list(range(1, m - 1))},
                               name=f"{base}/to_nchw")
            pool = ir.node(node.op_type, [to_first.outputs[0]], attributes=attrs, name=f"{base}/nchw")
            to_last = ir.node("Transpose", [pool.outputs[0]], attributes={"perm": [0] + list(range(2, m)) + [1]},
                              name=f"{base}/to_nhwc")
            unsqueeze = ir.node("Unsqueeze", [to_last.outputs[0], unit_axes], name=f"{base}/unsqueeze")
            new = [squeeze, to_first, pool, to_last, unsqueeze]
            for n in new:
                n.outputs[0].name = f"{n.name}/out"
                n.outputs[0].type = node.outputs[0].type
            unsqueeze.outputs[0].shape = node.outputs[0].shape
            graph.insert_before(node, new)
            replace_value(node.outputs[0], unsqueeze.outputs[0])
            graph.remove(node, safe=True)
            modified = True
        return ir.passes.PassResult(model, modified)


_SAME_TYPE_OPS = ("Unsqueeze", "Squeeze", "Concat", "Reshape", "Identity", "Expand", "Slice", "Transpose", "Gather")


class FillMissingTypesPass(ir.passes.InPlacePass):
    """Give outputs of type-preserving ops (Unsqueeze, Concat, ...) their input's element type when unset."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        modified = False
        for node in model.graph:
            if node.op_type not in _SAME_TYPE_OPS or not node.inputs or node.inputs[0] is None:
                continue
            src = node.inputs[0].type
            for out in node.outputs:
                if out.type is None and src is not None:
                    out.type = src
                    modified = True
        return ir.passes.PassResult(model, modified)


_TARGET = {"float16": (ir.DataType.FLOAT16, np.float16), "bfloat16": (ir.DataType.BFLOAT16, ml_dtypes.bfloat16)}
_KEEP_FLOAT32_INPUTS = {("Resize", 2)}  # inputs the ONNX spec types as float32 only


class ConvertFloatPass(ir.passes.InPlacePass):
    """Convert every FP32 tensor of the graph to FP16 or BF16 (initializers, values, Cast/Constant attributes).

    FP16 initializers saturate at +-65504 (a ``-1e9`` attention-mask fill becomes -65504, not -inf). Ops whose
    schema has no FP16/BF16 type at the model's opset (e.g. ``Einsum`` in BF16 at opset 19) run in FP32 between
    casts.

    Args:
      dtype: ``"float16"`` or ``"bfloat16"``.
      keep_io_types: keep FP32 graph inputs/outputs and cast at the boundary (default True).
    """

    def __init__(self, dtype: str = "float16", keep_io_types: bool = True):
        super().__init__()
        if dtype not in _TARGET:
            raise ValueError(f"dtype must be one of {sorted(_TARGET)}, got {dtype!r}")
        self.ir_type, self.np_type = _TARGET[dtype]
        self.keep_io_types = keep_io_types

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        f32 = ir.DataType.FLOAT
        keep = set()
        for node in ir.traversal.RecursiveGraphIterator(graph):
            for op, i in _KEEP_FLOAT32_INPUTS:
                if node.op_type == op and len(node.inputs) > i and node.inputs[i] is not None:
                    keep.add(node.inputs[i])
        for init in list(graph.initializers.values()):
            if init.dtype == f32 and init not in keep:
                arr = init.const_value.numpy()
                if self.np_type == np.float16:  # saturate (e.g. -1e9 mask fills) instead of overflowing to inf
                    arr = np.clip(arr, -65504.0, 65504.0)
                arr = arr.astype(self.np_type)
                init.const_value = ir.tensor(arr, name=init.name)
                init.type = ir.TensorType(self.ir_type)
        for node in ir.traversal.RecursiveGraphIterator(graph):
            self._convert_attributes(node)
            for out in node.outputs:
                if out.type is not None and out.dtype == f32:
                    out.type = ir.TensorType(self.ir_type)
        ins = [v for v in graph.inputs if v.dtype == f32]
        for v in ins:
            if self.keep_io_types:
                new = ir.Value(name=v.name, type=ir.TensorType(f32), shape=v.shape)
                v.name = f"{v.name}_{self.ir_type.name.lower()}"
                cast = ir.node("Cast", [new], attributes={"to": self.ir_type}, name=f"{new.name}/Cast")
                cast.outputs[0].name, cast.outputs[0].type, cast.outputs[0].shape = v.name + "_c", \
                    ir.TensorType(self.ir_type), v.shape
                v.replace_all_uses_with(cast.outputs[0])
                graph.inputs[graph.inputs.index(v)] = new
                graph.insert_before(graph.node(0), cast) if len(graph) else graph.append(cast)
            else:
                v.type = ir.TensorType(self.ir_type)
        opset = model.opset_imports.get("", 0)
        for node in list(graph):
            if node.domain in ("", "ai.onnx") and not self._supports(node, opset):
                self._run_in_float32(graph, node)
        for i, v in enumerate(list(graph.outputs)):
            if v.dtype != self.ir_type:
                continue
            if self.keep_io_types:
                cast = ir.node("Cast", [v], attributes={"to": f32}, name=f"{v.name}/Cast")
                out = cast.outputs[0]
                name = v.name
                v.name = f"{name}_{self.ir_type.name.lower()}"
                out.name, out.type, out.shape = name, ir.TensorType(f32), v.shape
                graph.append(cast)
                graph.outputs[i] = out
        return ir.passes.PassResult(model, True)

    def _supports(self, node: ir.Node, opset: int) -> bool:
        """Whether the op's schema at ``opset`` accepts the target type where the node now has it."""
        try:
            schema = onnx.defs.get_schema(node.op_type, opset, "")
        except Exception:
            return True
        allowed = {c.type_param_str: set(c.allowed_type_strs) for c in schema.type_constraints}
        want = f"tensor({'float16' if self.ir_type == ir.DataType.FLOAT16 else 'bfloat16'})"
        params = list(schema.inputs)
        for i, v in enumerate(node.inputs):
            if v is None or v.dtype != self.ir_type or not params:
                continue
            type_str = params[min(i, len(params) - 1)].type_str
            if want not in allowed.get(type_str, {type_str}):
                return False
        return True

    def _run_in_float32(self, graph: ir.Graph, node: ir.Node) -> None:
        """Cast the node's half inputs to FP32 and its outputs back (ops without a half-precision schema)."""
        f32 = ir.DataType.FLOAT
        base = node.name or node.op_type
        for i, v in enumerate(list(node.inputs)):
            if v is None or v.dtype != self.ir_type:
                continue
            cast = ir.node("Cast", [v], attributes={"to": f32}, name=f"{base}/in{i}_f32")
            cast.outputs[0].name, cast.outputs[0].type, cast.outputs[0].shape = f"{base}/in{i}_f32", \
                ir.TensorType(f32), v.shape
            graph.insert_before(node, cast)
            node.replace_input_with(i, cast.outputs[0])
        for k, out in enumerate(node.outputs):
            if out.dtype != self.ir_type:
                continue
            new = ir.node("Cast", [out], attributes={"to": self.ir_type}, name=f"{base}/out{k}_half")
            half = new.outputs[0]
            half.name, half.type, half.shape = f"{base}/out{k}_half", ir.TensorType(self.ir_type), out.shape
            if out.is_graph_output():  # the graph output keeps its name
                half.name, out.name = out.name, f"{base}/out{k}_f32"
            out.replace_all_uses_with(half, replace_graph_outputs=True)
            new.replace_input_with(0, out)
            out.type = ir.TensorType(f32)
            graph.insert_after(node, new)

    def _convert_attributes(self, node: ir.Node) -> None:
        f32 = ir.DataType.FLOAT
        if node.op_type == "Cast" and attribute(node, "to") == f32:
            node.attributes["to"] = ir.AttrInt64("to", self.ir_type)
        if node.op_type in ("DequantizeLinear", "QuantizeLinear") and attribute(node, "output_dtype") == f32:
            node.attributes["output_dtype"] = ir.AttrInt64("output_dtype", self.ir_type)
        for key in ("value", "value_float"):
            a = node.attributes.get(key)
            if a is None or node.op_type not in ("Constant", "ConstantOfShape"):
                continue
            if a.type == ir.AttributeType.TENSOR and a.value.dtype == f32:
                node.attributes[key] = ir.AttrTensor(key, ir.tensor(a.value.numpy().astype(self.np_type)))


def optimize(model: ir.Model, *, fold_bias: bool = True, drop_zero_gemm_c: bool = True,
             float_dtype: str = "float32") -> ir.Model:
    """Run the export passes in order on ``model`` (in place) and return it.

    Args:
      fold_bias: fold bias ``Add`` nodes into Conv/Gemm.
      drop_zero_gemm_c: remove all-zero Gemm ``C`` inputs.
      float_dtype: ``"float32"`` (unchanged), ``"float16"`` or ``"bfloat16"`` (:class:`ConvertFloatPass`).
    """
    passes = [FoldConstantLayoutPass(), PushTransposeIntoWeightPass()]
    if drop_zero_gemm_c:
        passes.append(DropZeroGemmCPass())
    if fold_bias:
        passes.append(FoldBiasPass())
    passes += [BoolWherePass(), ChannelsLastPoolPass(), RemoveUnusedNodesPass(), TopologicalSortPass(),
               FillMissingTypesPass()]
    if float_dtype != "float32":
        passes.append(ConvertFloatPass(float_dtype))
    passes += [FixIrVersionPass(), TrtDomainPass()]
    for p in passes:
        p(model)
    return model
