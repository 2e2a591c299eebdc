"""What a dimension of an ONNX tensor type says: a fixed size, or dynamic.

A ``TensorShapeProto.Dimension`` is fixed only when it carries a *positive* ``dim_value``. A ``dim_param``
(``"batch"``), an empty dimension, and a ``dim_value <= 0`` are all dynamic: several exporters (older
PyTorch and Keras converters, hand-edited graphs) still write ``dim_value: -1`` (or 0) for a free batch
dimension, and ONNX Runtime and TensorRT treat those as dynamic too.

Example:
  >>> static_dims(model.graph.input[0].type)     # ["batch", 3, 224, 224] or [-1, 3, 224, 224]
  [None, 3, 224, 224]
"""

from __future__ import annotations

import onnx

__all__ = ["dim_size", "static_dims"]


def dim_size(dim: onnx.TensorShapeProto.Dimension) -> int | None:
    """The fixed size of ``dim``, or None when it is dynamic (``dim_param``, unset, or ``dim_value <= 0``)."""
    if dim.HasField("dim_value") and dim.dim_value > 0:
        return int(dim.dim_value)
    return None


def static_dims(type_proto: onnx.TypeProto) -> list[int | None] | None:
    """Per-dimension fixed sizes of a tensor type (None for dynamic ones); None when the rank is unknown."""
    if not type_proto.HasField("tensor_type") or not type_proto.tensor_type.HasField("shape"):
        return None
    return [dim_size(d) for d in type_proto.tensor_type.shape.dim]
