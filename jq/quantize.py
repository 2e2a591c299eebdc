"""``jq.quantize``: insert quantizers into any JAX function and calibrate them.

Example:
  >>> import flax.linen as nn, jq
  >>> model = nn.Dense(8); x = jnp.ones((4, 16)); params = model.init(jax.random.key(0), x)
  >>> qm = jq.quantize(params, model.apply, jq.INT8_DEFAULT_CFG, calib_data=[(x,)])
  >>> y = jax.jit(qm.apply)(qm.params, x)            # same signature as model.apply
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from jq.calib import algorithms
from jq.calibrate import calibrate
from jq.config import as_config
from jq.model import QuantizedModel

__all__ = ["quantize"]


def quantize(params, apply_fn: Callable, cfg, calib_data: Iterable | None = None,
             forward_loop: Callable | None = None, *, example_args: tuple | None = None,
             example_kwargs: dict | None = None, progress: bool = True) -> QuantizedModel:
    """Quantize ``apply_fn`` with the config ``cfg`` and calibrate it.

    Args:
      params: the model's params pytree (Flax linen variables, an nnx State, or any pytree of arrays).
      apply_fn: ``apply_fn(params, *args, **kwargs)``, any JAX function.
      cfg: a preset (``jq.INT8_DEFAULT_CFG`` ...), a ModelOpt-style dict or a :class:`~jq.config.QuantConfig`.
      calib_data: iterable of batches, each a tuple of positional args (or a single array).
      forward_loop: alternatively ``forward_loop(run)``, calling ``run(*args, **kwargs)`` on each batch.
      example_args, example_kwargs: inputs to trace with when no calibration data is given.
      progress: show a progress bar over calibration batches.

    Returns:
      A calibrated :class:`QuantizedModel`. Weights are calibrated from ``params``; activations from data.

    Raises:
      ValueError: bad config or algorithm (listing the valid names), NaN/inf in calibration data (naming the
        quantizer), nothing to trace with.
    """
    config = as_config(cfg)
    algorithms.make(config.algorithm)  # fail fast on an unknown algorithm or option
    qm = QuantizedModel.create(params, apply_fn, config)
    if example_args is not None or example_kwargs is not None:
        qm.cache.get(params, tuple(example_args or ()), dict(example_kwargs or {}))
    elif calib_data is None and forward_loop is None:
        raise ValueError("quantize needs calib_data, forward_loop or example_args to trace apply_fn")
    return calibrate(qm, calib_data, forward_loop, progress=progress, _warn_unused=True)
