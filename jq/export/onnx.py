"""Export a :class:`~jq.QuantizedModel` to ONNX with Q/DQ nodes, through jax2onnx.

The quantized function is first traced by jq itself (``jax.make_jaxpr`` of ``qm.apply`` with the params
closed over, so weights and amaxes become constants), with each quantizer evaluated under a name scope
that carries its name. jax2onnx then converts that jaxpr; the :mod:`jq.export.qdq` plugin lowers every
``jq_fake_quant`` equation to ``QuantizeLinear``/``DequantizeLinear`` (or TensorRT's NVFP4 form) with scales
as initializers, and :func:`jq.export.passes.optimize` fixes what jax2onnx leaves behind. Tracing before
jax2onnx matters: jax2onnx patches Flax modules while it traces, which would hide the ``dot_general`` sites
jq quantizes.

The default opset is the smallest that has every format in the model, and at least 19:
INT8 -> 19, FP8 -> 19, INT4 -> 21, NVFP4 -> 23. A dynamic batch dimension (axis 0 of every input) is on by
default.

Example:
  >>> qm = jq.quantize(params, model.apply, jq.INT8_DEFAULT_CFG, calib_data=[(x,)])
  >>> proto = jq.export.to_onnx(qm, (x,), "model.onnx")
  >>> import onnxruntime as ort
  >>> y = ort.InferenceSession("model.onnx").run(None, {"input_0": np.asarray(x)})[0]
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence

import jax
import numpy as np
import onnx
import onnx_ir as ir
from jax.extend.core import jaxpr_as_fun
from jax2onnx import to_onnx as _jax2onnx

from jq.export import qdq
from jq.export.formats import QDQFormat, min_opset_for, resolve_format, spec_stages
from jq.export.passes import optimize
from jq.handlers import FakeQuant
from jq.transform import Evaluator

__all__ = ["ExportOptions", "OnnxExport", "export", "to_onnx", "to_onnx_float", "export_formats", "run_onnxruntime",
           "DEFAULT_MIN_OPSET"]

DEFAULT_MIN_OPSET = 19


@dataclasses.dataclass(frozen=True)
class ExportOptions:
    """Options of :func:`to_onnx`.

    Attributes:
      opset: default-domain opset; None picks the smallest the model's formats need (>= 19).
      dq_only: store INT/FP8 weights pre-quantized with a ``DequantizeLinear`` only (NVFP4 weights always are).
      dynamic_batch: make axis 0 of every array input symbolic (``"batch"``).
      fold_bias: fold bias ``Add`` nodes into ``Conv``/``Gemm``.
      drop_zero_gemm_c: remove the zero ``C`` jax2onnx gives 2-D ``Gemm`` nodes.
      float_dtype: ``"float32"``, or ``"float16"``/``"bfloat16"`` for a half-precision graph (FP32 inputs/outputs).
      input_names, output_names: graph input/output names (default ``input_0``..., ``output_0``...).
      check: run ``onnx.checker`` (with shape inference) on the result.
      model_name: the graph name.
    """

    opset: int | None = None
    dq_only: bool = False
    dynamic_batch: bool = True
    fold_bias: bool = True
    drop_zero_gemm_c: bool = True
    float_dtype: str = "float32"
    input_names: tuple[str, ...] | None = None
    output_names: tuple[str, ...] | None = None
    check: bool = True
    model_name: str = "jq_model"

    def __post_init__(self):
        if self.float_dtype not in ("float32", "float16", "bfloat16"):
            raise ValueError(f"float_dtype must be 'float32', 'float16' or 'bfloat16', got {self.float_dtype!r}")
        if self.opset is not None and self.opset < 13:
            raise ValueError(f"opset must be >= 13 (per-axis QuantizeLinear), got {self.opset}")


@dataclasses.dataclass
class OnnxExport:
    """The result of :func:`export`: the onnx-ir model, its proto, the opset and the emitted quantizers."""

    model: ir.Model
    proto: onnx.ModelProto
    opset: int
    quantizers: list  # of jq.export.qdq.EmittedQuantizer
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]


class NamedFakeQuant(FakeQuant):
    """Fake quantization with every quantizer run under a name scope carrying its name (read by the plugin)."""

    def quantizer(self, q, x):
        with jax.named_scope(qdq.NAME_SCOPE_PREFIX + q.name):
            return super().quantizer(q, x)


def export_formats(qm) -> dict[str, tuple[QDQFormat, ...]]:
    """``{quantizer name: formats of its enabled stages}``; ``ValueError`` naming any that cannot be exported."""
    out = {}
    for name, slot in qm.traced.quantizers.items():
        stages = spec_stages(qm.spec(name))
        if stages:
            out[name] = tuple(resolve_format(name, s, is_weight=slot.is_weight) for s in stages)
            for s, f in zip(stages, out[name]):
                _check_whole_blocks(name, s, f, slot)
    return out


def _check_whole_blocks(name: str, spec, form: QDQFormat, slot) -> None:
    """Refuse a quantizer whose blocked axis is not a multiple of the block size when its ONNX form needs whole
    blocks (TensorRT's DynamicQuantize); forms written with ``ceil(n / block)`` scales take a padded last block."""
    if not form.form.whole_blocks or not slot.shape:
        return
    for axis, n, block in spec.format.padding(spec, slot.shape, slot.batch):
        op = "/".join(form.dynamic_quantize_op or ("QuantizeLinear",))
        raise ValueError(f"quantizer {name!r} ({spec.describe()}) cannot be exported to ONNX: axis {axis} of its "
                         f"tensor {tuple(slot.shape)} has {n} elements, not a multiple of the {block}-element blocks "
                         f"that {op} needs (jq zero-pads the last block, TensorRT does not). Disable it with "
                         f"jq.disable_quantizer(qm, {name!r}) or give the layer a multiple of {block} features.")


def _abstract_args(example_args: Sequence, dynamic_batch: bool) -> list[jax.ShapeDtypeStruct]:
    batch = jax.export.symbolic_shape("batch")[0] if dynamic_batch else None
    out = []
    for i, a in enumerate(example_args):
        if isinstance(a, jax.ShapeDtypeStruct):
            out.append(a)
            continue
        if not hasattr(a, "shape") or not hasattr(a, "dtype"):
            raise ValueError(f"example_args[{i}] is a {type(a).__name__}; pass arrays (or ShapeDtypeStructs), and "
                             f"non-array arguments through static_kwargs")
        shape = tuple(a.shape)
        if batch is not None and shape:
            shape = (batch,) + shape[1:]
        out.append(jax.ShapeDtypeStruct(shape, a.dtype))
    return out


def _convert(fn: Callable, example_args, opts: ExportOptions, opset: int):
    """Trace ``fn`` (flat outputs) on abstract inputs, convert with jax2onnx, run the passes."""
    sds = _abstract_args(example_args, opts.dynamic_batch)
    closed = jax.make_jaxpr(fn)(*sds)
    n_out = len(closed.jaxpr.outvars)
    in_names = tuple(opts.input_names or (f"input_{i}" for i in range(len(sds))))
    out_names = tuple(opts.output_names or (f"output_{i}" for i in range(n_out)))
    if len(in_names) != len(sds) or len(out_names) != n_out:
        raise ValueError(f"the model has {len(sds)} inputs and {n_out} outputs; got input_names={in_names} and "
                         f"output_names={out_names}")
    with qdq.lowering_scope(qdq.LoweringOptions(dq_only=opts.dq_only)) as emitted:
        model = _jax2onnx(jaxpr_as_fun(closed), sds, model_name=opts.model_name, opset=opset, return_mode="ir")
    if not isinstance(model, ir.Model):
        model = ir.serde.deserialize_model(model)
    for v, name in zip(model.graph.inputs, in_names):
        v.name = name
    for v, name in zip(model.graph.outputs, out_names):
        v.name = name
    optimize(model, fold_bias=opts.fold_bias, drop_zero_gemm_c=opts.drop_zero_gemm_c, float_dtype=opts.float_dtype)
    proto = ir.serde.serialize_model(model)
    if opts.check:
        onnx.checker.check_model(proto, full_check=True)
    return OnnxExport(model, proto, opset, list(emitted), in_names, out_names)


def _options(options: ExportOptions | None, opset, overrides) -> ExportOptions:
    opts = options or ExportOptions()
    if opset is not None:
        overrides = dict(overrides, opset=opset)
    return dataclasses.replace(opts, **overrides) if overrides else opts


def export(qm, example_args: Sequence, opset: int | None = None, *, options: ExportOptions | None = None,
           static_kwargs: Mapping | None = None, **overrides) -> OnnxExport:
    """Like :func:`to_onnx`, returning an :class:`OnnxExport` (model, proto, emitted quantizers) and writing nothing."""
    opts = _options(options, opset, overrides)
    formats = export_formats(qm)
    need = min_opset_for(f for fs in formats.values() for f in fs)
    if opts.opset is not None and opts.opset < need:
        worst = next(n for n, fs in formats.items() if max(f.min_opset for f in fs) == need)
        raise ValueError(f"quantizer {worst!r} ({', '.join(str(s.describe()) for s in spec_stages(qm.spec(worst)))}) "
                         f"needs opset >= {need}; got opset={opts.opset}")
    opset = opts.opset or max(DEFAULT_MIN_OPSET, need)
    kwargs = dict(static_kwargs or {})

    def quantized(*args):  # QuantizedModel.apply, with quantizer names carried into the jaxpr
        traced, flat = qm.trace(*args, **kwargs)
        return Evaluator(traced, qm.specs(traced), qm.qstate, NamedFakeQuant()).run(flat)

    return _convert(quantized, example_args, opts, opset)


def to_onnx(qm, example_args: Sequence, path: str | os.PathLike | None = None, opset: int | None = None, *,
            options: ExportOptions | None = None, static_kwargs: Mapping | None = None,
            **overrides) -> onnx.ModelProto:
    """Export the quantized model ``qm`` to ONNX with Q/DQ nodes.

    Args:
      qm: a calibrated :class:`~jq.QuantizedModel`.
      example_args: positional inputs of ``qm.apply`` after the params (arrays or ``jax.ShapeDtypeStruct``);
        their shapes fix the graph's (axis 0 is made dynamic unless ``dynamic_batch=False``).
      path: where to write the ``.onnx`` file (None: only return the proto).
      opset: default-domain opset (None: the smallest the formats need, at least 19).
      options: :class:`ExportOptions`; keyword ``overrides`` replace single fields (``dq_only=True``).
      static_kwargs: non-array keyword arguments of ``apply_fn`` (``train=False``), baked into the graph.

    Returns:
      The ``onnx.ModelProto`` (checked with ``onnx.checker`` unless ``check=False``).

    Raises:
      ValueError: a quantizer whose format has no ONNX form (naming it and the supported formats), an opset
        too small for a format, an amax that is not a build-time constant.

    Example:
      >>> jq.export.to_onnx(qm, (x,), "int8.onnx", dq_only=True)
    """
    res = export(qm, example_args, opset, options=options, static_kwargs=static_kwargs, **overrides)
    if path is not None:
        ir.save(res.model, os.fspath(path))
    return res.proto


def to_onnx_float(params, apply_fn: Callable, example_args: Sequence, path: str | os.PathLike | None = None,
                  opset: int | None = None, *, options: ExportOptions | None = None,
                  static_kwargs: Mapping | None = None, **overrides) -> onnx.ModelProto:
    """Export the *unquantized* model through the same tracing and passes (the baseline to compare against).

    With ``float_dtype="float16"`` this is the fair TensorRT baseline: a strongly typed network runs an FP32
    graph's layers in FP32.

    Example:
      >>> jq.export.to_onnx_float(params, model.apply, (x,), "fp16.onnx", float_dtype="float16")
    """
    opts = _options(options, opset, overrides)
    kwargs = dict(static_kwargs or {})

    def fn(*args):
        return jax.tree_util.tree_leaves(apply_fn(params, *args, **kwargs))

    res = _convert(fn, example_args, opts, opts.opset or DEFAULT_MIN_OPSET)
    if path is not None:
        ir.save(res.model, os.fspath(path))
    return res.proto


_ORT_LEVELS = ("disabled", "basic", "extended", "all")
_MATMULNBITS_ACCURACY = (0, 1, 2, 3, 4)


def run_onnxruntime(model, inputs: Sequence, *, threads: int = 1, optimization: str = "basic",
                    matmulnbits_accuracy_level: int | None = 0) -> list[np.ndarray]:
    """Run a model (proto, ``ir.Model`` or path) in ONNX Runtime on CPU with positional ``inputs``.

    The session's two settings that change the numbers are explicit:

    * ``optimization`` - the graph optimization level: ``"disabled"``, ``"basic"`` (default), ``"extended"`` or
      ``"all"`` (ONNX Runtime's own default). ``"basic"`` keeps the graph's arithmetic, so it is the one to check
      parity with.
    * ``matmulnbits_accuracy_level`` - the session entry ``session.qdq_matmulnbits_accuracy_level`` (default 0;
      ``None`` leaves it unset, i.e. ORT's default 4). From ``"extended"`` on, ORT fuses a blocked INT4
      ``DequantizeLinear -> MatMul/Gemm`` into ``MatMulNBits``, which computes at this level: 0 or 1 in FP32 on
      the dequantized weights (jq's numbers up to float rounding), 2 FP16, 3 BF16, 4 int8 activations
      quantized per block of K (each moved by up to ``amax_block / 254``: measured 0.6 % of max|logits| on the
      test CNN's INT4 head, 1.3 % reported on another model). It has no effect at ``"disabled"``/``"basic"``.

    Other extended fusions (measured with ORT 1.31.1 and 1.32.0): ORT 1.31 moves FP8 Q/DQ across ``Transpose``
    (no FP8 kernel) and then rejects the graph; 1.32 runs those graphs. ORT has no FP4 kernels on CPU: NVFP4
    graphs (``trt::TRT_FP4DynamicQuantize``, ``FLOAT4E2M1``) do not run here.

    Example:
      >>> (logits,) = run_onnxruntime("int8.onnx", [tokens])
      >>> (fast,) = run_onnxruntime("int4.onnx", [x], optimization="all", matmulnbits_accuracy_level=None)  # ORT's defaults
    """
    import onnxruntime as ort

    if optimization not in _ORT_LEVELS:
        raise ValueError(f"optimization must be one of {_ORT_LEVELS}, got {optimization!r}")
    if matmulnbits_accuracy_level is not None and matmulnbits_accuracy_level not in _MATMULNBITS_ACCURACY:
        raise ValueError(f"matmulnbits_accuracy_level must be None or one of {_MATMULNBITS_ACCURACY}, "
                         f"got {matmulnbits_accuracy_level!r}")
    if isinstance(model, (str, os.PathLike)):
        model = onnx.load(os.fspath(model))
    if isinstance(model, ir.Model):
        model = ir.serde.serialize_model(model)
    levels = {"disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
              "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
              "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.graph_optimization_level = levels[optimization]
    if matmulnbits_accuracy_level is not None:
        so.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", str(matmulnbits_accuracy_level))
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    return sess.run(None, {n: np.asarray(x) for n, x in zip(names, inputs)})
