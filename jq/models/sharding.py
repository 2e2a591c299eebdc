"""Tensor-parallel placement of a Llama-family params tree on a device mesh (Megatron's layout).

Weights are ``[out, in]``. Column-parallel projections (q/k/v, gate/up, the output head) split their output
rows over the mesh axis, row-parallel ones (o, down) their input columns, so each attention head group and
each MLP slice stays on one device and only the two residual adds need a reduction::

    q/k/v_proj, gate/up_proj, lm_head:  P(axis, None)      biases P(axis)
    o_proj, down_proj:                  P(None, axis)      biases replicated
    embed_tokens:                       P(None, axis)      (hidden split: the gather stays local)
    norms:                              replicated

A dimension that the axis size does not divide stays replicated (e.g. 3 KV heads on 2 devices).

Example:
  >>> mesh = jax.make_mesh((2,), ("tp",), axis_types=(jax.sharding.AxisType.Auto,))
  >>> params = place(params, mesh)          # NamedSharding on every leaf
"""

from __future__ import annotations

import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jq.trace.sites import keypath_parts

__all__ = ["partition_spec_of", "partition_specs", "place"]

_COLUMN = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj", "lm_head")
_ROW = ("o_proj", "down_proj")


def partition_spec_of(name: str, shape: tuple, axis: str = "tp", axis_size: int | None = None) -> P:
    """The :class:`PartitionSpec` of the HF-named tensor ``name`` of ``shape``."""
    parts = name.split(".")
    module, leaf = (parts[-2] if len(parts) > 1 else ""), parts[-1]
    if module in _COLUMN:
        spec = P(axis, None) if leaf == "weight" else P(axis)
    elif module in _ROW:
        spec = P(None, axis) if leaf == "weight" else P()
    elif module == "embed_tokens":
        spec = P(None, axis)
    else:
        spec = P()
    if axis_size is not None:
        for dim, a in zip(shape, tuple(spec)):
            if a is not None and dim % axis_size:
                return P()
    return spec


def partition_specs(params, axis: str = "tp", axis_size: int | None = None):
    """A pytree of :class:`PartitionSpec` matching ``params`` (see the module table)."""
    return jax.tree_util.tree_map_with_path(  # the dotted HF name of each leaf's path
        lambda p, x: partition_spec_of(".".join(keypath_parts(p)), tuple(x.shape), axis, axis_size), params)


def place(params, mesh, axis: str = "tp"):
    """``params`` put on ``mesh`` with the tensor-parallel :class:`NamedSharding` of every leaf.

    The mesh axis must be ``AxisType.Auto`` (XLA propagates the shardings through the model, which carries
    no ``out_sharding`` annotations); ``jax.make_mesh`` creates ``Explicit`` axes unless told otherwise.
    """
    if axis not in mesh.shape:
        raise ValueError(f"mesh has no axis {axis!r}; its axes are {tuple(mesh.shape)}")
    kind = dict(zip(mesh.axis_names, mesh.axis_types))[axis]
    if kind != jax.sharding.AxisType.Auto:
        raise ValueError(f"mesh axis {axis!r} is {kind}; jq.models needs AxisType.Auto: "
                         f"jax.make_mesh(shape, names, axis_types=(jax.sharding.AxisType.Auto, ...))")
    size = mesh.shape[axis]
    specs = partition_specs(params, axis, size)
    return jax.tree_util.tree_map(lambda x, s: jax.device_put(x, NamedSharding(mesh, s)), params, specs)
