"""ONNX work shared by ``jq.export`` and ``jq_autotune``, on onnx-ir, without JAX.

* :mod:`onnx_toolbox.values` - constants, single uses, new initializers, rewiring (what every pass asks).
* :mod:`onnx_toolbox.fold_bias` - a constant bias ``Add`` after ``Conv``/``Gemm`` folded into the op.
* :mod:`onnx_toolbox.gemm_c` - the all-zero ``C`` of ``Gemm`` dropped.
* :mod:`onnx_toolbox.fold_batchnorm` - ``Conv -> BatchNormalization`` folded into the ``Conv``.
* :mod:`onnx_toolbox.opset` - the IR version that goes with an opset; the ``trt`` domain import.
* :mod:`onnx_toolbox.shapes` - which dimensions are fixed (``dim_value <= 0`` is dynamic).
* :mod:`onnx_toolbox.tensorrt` - TensorRT engine build and timing (optional: imports TensorRT only when called).

Each fold is a function returning how many places it changed, and an ``onnx_ir.passes.InPlacePass``
wrapping it.

Example:
  >>> import onnx_ir as ir, onnx_toolbox as tb
  >>> model = ir.load("model.onnx")
  >>> tb.fold_batchnorm(model), tb.drop_zero_gemm_c(model), tb.fold_bias(model)
  (4, 1, 5)
  >>> ir.save(model, "model.folded.onnx")
"""

from onnx_toolbox.fold_batchnorm import FoldBatchNormPass, fold_batchnorm
from onnx_toolbox.fold_bias import FoldBiasPass, fold_bias
from onnx_toolbox.gemm_c import DropZeroGemmCPass, drop_zero_gemm_c
from onnx_toolbox.opset import (
    TRT_DOMAIN,
    FixIrVersionPass,
    TrtDomainPass,
    default_opset,
    ir_version_for_opset,
    set_trt_domain,
)
from onnx_toolbox.shapes import dim_size, static_dims
from onnx_toolbox.tensorrt import (
    BuildOptions,
    TimingResult,
    build_engine,
    cuda_python_available,
    profile_shapes,
    tensorrt_available,
    time_engine,
)

__all__ = [
    "fold_bias",
    "FoldBiasPass",
    "drop_zero_gemm_c",
    "DropZeroGemmCPass",
    "fold_batchnorm",
    "FoldBatchNormPass",
    "TRT_DOMAIN",
    "ir_version_for_opset",
    "default_opset",
    "set_trt_domain",
    "FixIrVersionPass",
    "TrtDomainPass",
    "dim_size",
    "static_dims",
    "BuildOptions",
    "TimingResult",
    "tensorrt_available",
    "cuda_python_available",
    "profile_shapes",
    "build_engine",
    "time_engine",
]
