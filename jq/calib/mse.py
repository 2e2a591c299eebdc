"""MSE amax search: the amax (per tensor, axis or block) minimising the squared quantization error.

ModelOpt's ``MseCalibrator``: starting from the max-calibrated ``amax0``, try ``amax0 * m`` for the
multipliers ``m = linspace(start, stop, ceil((stop - start) / step) + 1)`` (0.25 to 4.0, 39 values by
default) and keep, for every amax entry, the ``m`` minimising ``sum (fq(x; amax0 m) - x)^2`` over the
elements that entry scales::

    losses[..., k] = sum_{elements of the entry} (fake_quant(x, amax0 * m_k) - x)^2
    amax           = amax0 * m_{argmin_k losses[..., k]}

For activations this takes two passes over the data (the max first, then the losses summed over batches).
For formats with two-level block scales whose blocks keep static amaxes (NVFP4), the format searches the
block scales itself (``format.mse_block_amax``: every E4M3 block scale, ModelOpt's ``fp8_scale_sweep``).

Example:
  >>> from jq.config import QuantizerSpec
  >>> spec = QuantizerSpec(num_bits=4)
  >>> x = jnp.concatenate([jnp.linspace(-1, 1, 99), jnp.array([20.0])])
  >>> bool(sweep_amax(x, spec, 0, multipliers()) < 20.0)   # clipping the outlier wins
  True
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = ["multipliers", "reduce_to_amax", "sweep_losses", "pick", "sweep_amax", "block_sweep_of", "block_sweep"]


def multipliers(start: float = 0.25, stop: float = 4.0, step: float = 0.1) -> np.ndarray:
    """ModelOpt's candidate multipliers: ``linspace(start, stop, ceil((stop - start) / step) + 1)``."""
    n = math.ceil((stop - start) / step) + 1
    return np.linspace(start, stop, n).astype(np.float32)


def reduce_to_amax(err: jax.Array, amax: jax.Array, spec, batch: int = 0) -> jax.Array:
    """Sum a per-element ``err`` over the elements each entry of ``amax`` scales (amax's shape back).

    ``amax`` has the shape max calibration gives (``spec.format.compute_amax``): per block (the format's
    block layout), per tensor (``()``), kept axes with singleton dims, or squeezed leading batch axes.
    """
    layout = spec.format.blocks(spec, err.shape, batch)
    if layout is not None and amax.shape == layout.num_blocks_shape:
        return layout.squeeze_stats(jnp.sum(layout.split(err), axis=layout.in_block_axes, keepdims=True))
    if amax.ndim == 0:
        return jnp.sum(err)
    if amax.ndim == err.ndim:  # kept axes, keepdims
        axes = tuple(a for a in range(err.ndim) if amax.shape[a] == 1 and err.shape[a] != 1)
        return jnp.sum(err, axis=axes, keepdims=True)
    return jnp.sum(err, axis=tuple(range(amax.ndim, err.ndim))).reshape(amax.shape)  # squeezed batch axes


def sweep_losses(x: jax.Array, spec, batch: int, amax0: jax.Array, ms) -> jax.Array:
    """``losses[..., k]`` (amax's shape, candidates last) for the candidates ``amax0 * ms[k]``."""
    return _sweep_losses(jnp.asarray(x), jnp.asarray(amax0, jnp.float32), jnp.asarray(ms, jnp.float32), spec, batch)


@functools.partial(jax.jit, static_argnums=(3, 4))
def _sweep_losses(x, amax0, ms, spec, batch):
    xf = x.astype(jnp.float32)
    amax0 = jnp.asarray(amax0, jnp.float32)

    def one(m):
        y = spec.format.fake_quant(x, spec, amax0 * m, batch=batch).astype(jnp.float32)
        return reduce_to_amax((y - xf) ** 2, amax0, spec, batch)

    return jnp.moveaxis(lax.map(one, ms), 0, -1)


def pick(losses: jax.Array, amax0: jax.Array, ms) -> jax.Array:
    """``amax0 * ms[argmin]`` per entry (the first minimum, as ModelOpt)."""
    best = jnp.argmin(losses, axis=-1)
    return (jnp.asarray(amax0, jnp.float32) * jnp.asarray(ms, jnp.float32)[best]).astype(jnp.float32)


def sweep_amax(x: jax.Array, spec, batch: int, ms) -> jax.Array:
    """The MSE amax of one tensor (weights): max calibration, then the multiplier search."""
    amax0 = spec.format.compute_amax(x, spec, batch)
    return pick(sweep_losses(x, spec, batch, amax0, ms), amax0, ms)


def block_sweep_of(spec):
    """The format's own search over its block scales (``format.mse_block_amax``), or None."""
    return getattr(spec.format, "mse_block_amax", None)


def block_sweep(x: jax.Array, spec, batch: int = 0) -> jax.Array | None:
    """The static block amaxes of the format's block-scale search (None when it has none for ``spec``)."""
    search = block_sweep_of(spec)
    return None if search is None else search(x, spec, batch)
