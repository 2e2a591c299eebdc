"""Small onnx-ir helpers the graph passes share: constants, single uses, new initializers, rewiring.

Every pass of :mod:`onnx_toolbox` (and the jq-specific passes in ``jq.export.passes``) asks the same few
questions of an ``onnx_ir`` graph: is this value a constant (an initializer, a ``Constant`` node, or an
``Identity`` of one), and what is its array? Is ``node`` its only reader? This module answers them once.

Example:
  >>> w = constant_array(node.inputs[1])           # numpy array, or None when computed at run time
  >>> b = add_initializer(model.graph, "conv/bias", np.zeros(8, np.float32))
  >>> node.replace_input_with(2, b)
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

__all__ = ["constant_array", "only_used_by", "add_initializer", "replace_value", "attribute", "drop_if_unused",
           "float_dtype"]


def constant_array(value: ir.Value | None) -> np.ndarray | None:
    """The numpy value of ``value`` when it is known before inference, else None.

    Constants are initializers (``const_value``), outputs of ``Constant`` nodes (any of their attribute
    forms) and ``Identity`` chains over either. External-data initializers are read from disk (their
    ``base_dir`` must be set, see ``onnx_ir.external_data.set_base_dir``).

    Example:
      >>> constant_array(gemm.inputs[2])    # array([0., 0., 0.], dtype=float32) for jax2onnx's zero C
    """
    seen = 0
    while value is not None and seen < 64:  # an Identity chain of a constant; bounded against cycles
        try:
            tensor = ir.convenience.get_const_tensor(value)
        except ValueError:  # a malformed Constant node: not a constant we can read
            return None
        if tensor is not None:
            return tensor.numpy()
        producer = value.producer()
        if producer is None or producer.op_type != "Identity" or producer.domain not in ("", "ai.onnx"):
            return None
        value, seen = producer.inputs[0], seen + 1
    return None


def only_used_by(value: ir.Value, node: ir.Node) -> bool:
    """True when every use of ``value`` is by ``node`` and it is not a graph output (safe to rewrite)."""
    return not value.is_graph_output() and all(use.node is node for use in value.uses())


def add_initializer(graph: ir.Graph, name: str, array: np.ndarray) -> ir.Value:
    """Register ``array`` as a new initializer named ``name`` (``name_1``, ``name_2``, ... when taken)."""
    base, i = name, 0
    taken = {v.name for v in graph.inputs} | set(graph.initializers)
    while name in taken:
        i += 1
        name = f"{base}_{i}"
    tensor = ir.tensor(np.asarray(array), name=name)
    value = ir.Value(name=name, shape=ir.Shape(np.shape(array)), type=ir.TensorType(tensor.dtype), const_value=tensor)
    graph.register_initializer(value)
    return value


def replace_value(old: ir.Value, new: ir.Value, *, keep_name: bool = False) -> None:
    """Point every user of ``old`` (graph outputs included) at ``new``.

    ``new`` takes ``old``'s name when ``old`` is a graph output (the graph's interface keeps its names) or
    when ``keep_name`` is set (e.g. a folded ``Conv`` then writes the tensor the ``Add`` after it wrote, so
    names that refer to it - calibration scales, Q/DQ placements - stay valid). The caller removes ``old``'s
    producer afterwards.
    """
    name = old.name
    rename = old.is_graph_output() or keep_name
    old.replace_all_uses_with(new, replace_graph_outputs=True)
    if rename and name:
        old.name = None
        new.name = name


def attribute(node: ir.Node, name: str, default=None):
    """The Python value of attribute ``name`` of ``node``, or ``default`` when absent."""
    attr = node.attributes.get(name)
    return default if attr is None else attr.value


def drop_if_unused(graph: ir.Graph, value: ir.Value | None) -> None:
    """Remove an initializer or ``Constant`` node that nothing reads any more (left behind by a fold)."""
    if value is None or value.uses() or value.is_graph_output() or value.is_graph_input():
        return
    if value.is_initializer() and value.name in graph.initializers and graph.initializers[value.name] is value:
        del graph.initializers[value.name]
        return
    producer = value.producer()
    if producer is not None and producer.graph is graph and producer.op_type == "Constant" \
            and not any(o.uses() for o in producer.outputs):
        graph.remove(producer, safe=True)


def float_dtype(value: ir.Value, default=np.float32) -> np.dtype:
    """The numpy dtype of a floating-point ``value`` (``default`` when unknown or not floating point)."""
    if value.type is not None and value.dtype is not None and value.dtype.is_floating_point():
        return value.dtype.numpy()
    return np.dtype(default)
