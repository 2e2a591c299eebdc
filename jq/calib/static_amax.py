"""Per-block static amaxes for weight-updating calibration (AWQ-clip, GPTQ): the spec switch and its rules.

AWQ-clip and GPTQ choose one amax per weight block. Formats that keep per-block amaxes (INT blocks, NVFP4
with ``block_sizes["type"] == "static"``) store them in the quantizer state; a weight quantizer whose blocks
are dynamic is switched to its static variant by appending one config entry per quantizer
(:func:`with_static_blocks`), so the summary, :func:`jq.fold_weights` and the exporters see the spec the
amaxes belong to. A format with no static variant (MX: power-of-two scales always come from the tensor) is
reported by :func:`static_block_variant` returning None.

Two helpers keep a searched amax exact in formats whose tensor-level scale derives from the block amaxes
(NVFP4: ``global = max(block amax) / 2688``): :func:`pin_mask` marks the block holding the weight's largest
amax; that block keeps its amax, so the largest stored amax -- and with it the tensor-level scale -- is the
one every other block was searched (or GPTQ-quantized) against. Formats without a tensor-level scale (INT)
lose only the search of that one block per weight.

Example:
  >>> spec = QuantizerSpec(num_bits=(2, 1), block_sizes={-1: 16, "type": "dynamic", "scale_bits": (4, 3)})
  >>> static_block_variant(spec).describe()
  'nvfp4 b16 static'
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from jq.trace import geometry

__all__ = ["static_block_variant", "first_stage", "with_static_blocks", "escape_glob", "pin_mask",
           "tokens_by_channel"]


def first_stage(spec):
    """The first stage of a sequential (tuple) spec, or the spec itself."""
    return spec[0] if isinstance(spec, tuple) else spec


def static_block_variant(spec):
    """``spec`` with calibrated (static) per-block amaxes, or None when its format has no such variant.

    A spec that already has static block amaxes is returned as it is; one without blocks gives None.
    """
    bs = spec.block_sizes
    if bs is None:
        return None
    fmt = spec.format
    if fmt.needs_amax(spec) and not fmt.is_dynamic(spec) and bs.type == "static":
        return spec
    try:
        static = spec.replace(type="static", block_sizes=dataclasses.replace(bs, type="static"))
    except ValueError:  # the format rejects static blocks (MX)
        return None
    f = static.format
    if not f.needs_amax(static) or f.is_dynamic(static) or f.blocks(static, (1, 1)) is None:
        return None
    return static


def escape_glob(name: str) -> str:
    """A glob matching exactly ``name`` (``[``, ``*`` and ``?`` bracketed)."""
    return "".join(f"[{c}]" if c in "[]*?" else c for c in name)


def with_static_blocks(qm, names) -> object:
    """``qm`` with each weight quantizer in ``names`` switched to its static per-block variant (one exact-name
    config entry each; quantizers already static are left alone). Sequential specs switch their first stage."""
    entries = []
    for name in names:
        spec = qm.spec(name)
        stage = first_stage(spec)
        static = static_block_variant(stage)
        if static is None:
            raise ValueError(f"quantizer {name!r} ({stage.describe()}) has no static per-block variant")
        if static is stage:
            continue
        entries.append((escape_glob(name), (static,) + spec[1:] if isinstance(spec, tuple) else static))
    if not entries:
        return qm
    return qm.replace(config=qm.config.with_entries(*entries))


def pin_mask(amax: jax.Array, n_layers: int = 0) -> jax.Array:
    """True at the (first) largest block amax of each layer slice (the leading ``n_layers`` axes), else False."""
    def one(a):
        return (jnp.arange(a.size) == jnp.argmax(a.reshape(-1))).reshape(a.shape)

    fn = one
    for _ in range(n_layers):
        fn = jax.vmap(fn)
    return fn(jnp.asarray(amax))


def tokens_by_channel(site, x: jax.Array) -> jax.Array:
    """The activation operand of a linear site as ``[tokens, in]``, ``in`` in the canonical weight's order."""
    dims = geometry.activation_channel_dims(site)
    rest = [d for d in range(x.ndim) if d not in dims]
    c = math.prod(x.shape[d] for d in dims)
    return jnp.transpose(x, rest + list(dims)).reshape(-1, c)
