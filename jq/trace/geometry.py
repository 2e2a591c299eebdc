"""Input-channel geometry of a site: where a per-input-channel vector lives on each operand.

SmoothQuant and AWQ move a per-input-channel scale ``s`` between the two operands of a linear site:
``x @ W == (x * s) @ (W / s)`` when ``s`` multiplies the activation's contracting dimensions and divides
the weight's in-features. ``s`` is flat, with the length of the canonical ``in`` axis (the contracting
dimensions flattened in the weight's order, which pairs one-to-one with the activation's).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["activation_channel_dims", "in_features", "broadcast_to_activation", "scale_weight",
           "channel_reduce"]


def activation_channel_dims(site) -> tuple[int, ...]:
    """Dims of the activation operand that carry input channels, paired in the weight's order."""
    act = 1 - site.weight_operand
    if site.primitive == "conv_general_dilated":
        return (site.params["dimension_numbers"].lhs_spec[1],)
    if site.primitive == "dot_general":
        (lc, rc), _ = site.params["dimension_numbers"]
    else:
        (lc, rc), _ = site.params["ragged_dot_dimension_numbers"].dot_dimension_numbers
    return tuple(lc if act == 0 else rc)


def in_features(site) -> int:
    """Length of the flat per-input-channel vector of a linear/conv site."""
    shape = site.shapes[1 - site.weight_operand]
    return math.prod(shape[d] for d in activation_channel_dims(site))


def broadcast_to_activation(site, s: jax.Array, act_shape) -> jax.Array:
    """``s`` (flat, in-features) shaped to broadcast against the activation operand."""
    dims = activation_channel_dims(site)
    s = jnp.reshape(s, [act_shape[d] for d in dims])
    order = np.argsort(dims)
    s = jnp.transpose(s, order)
    return jax.lax.broadcast_in_dim(s, tuple(act_shape), tuple(sorted(dims)))


def scale_weight(site, w: jax.Array, s: jax.Array) -> jax.Array:
    """``w`` times ``s`` along its in-features (the canonical view's in axis), in ``w``'s layout."""
    view = site.view
    c = view.to_canonical(w)
    axis = view.batch + 1  # canonical [*batch, out, in] or conv [O, I, *k]
    shape = [1] * c.ndim
    shape[axis] = c.shape[axis]
    c = (c * jnp.reshape(s, shape)).astype(w.dtype)
    return view.from_canonical(c, w.shape)


def channel_reduce(site, x: jax.Array, op: str) -> jax.Array:
    """Per-input-channel ``max|x|`` (``op="amax"``) or ``sum|x|`` (``"abssum"``) of the activation, flat."""
    dims = activation_channel_dims(site)
    a = jnp.abs(x.astype(jnp.float32))
    other = tuple(d for d in range(x.ndim) if d not in dims)
    r = jnp.max(a, axis=other) if op == "amax" else jnp.sum(a, axis=other)
    kept = [d for d in range(x.ndim) if d in dims]  # remaining axes are the channel dims, sorted
    r = jnp.transpose(r, [kept.index(d) for d in dims])
    return r.reshape(-1)
