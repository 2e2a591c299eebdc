"""``jq.calibrate``: (re)calibrate a quantized model with a registered algorithm.

Example:
  >>> qm = jq.calibrate(qm, batches, algorithm={"method": "smoothquant", "alpha": 0.8})
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from jq.calib import algorithms
from jq.calib.base import CalibData
from jq.config import warn_unused

__all__ = ["calibrate"]


def calibrate(qm, calib_data: Iterable | None = None, forward_loop: Callable | None = None, algorithm=None, *,
              progress: bool = True, share_sibling_weight_amax: bool = False, _warn_unused: bool = False):
    """(Re)calibrate ``qm``: weights from its params, activations from data, with an algorithm.

    Args:
      qm: a :class:`~jq.QuantizedModel`.
      calib_data: batches (each a tuple of positional args, ``{"args", "kwargs"}`` or one array).
      forward_loop: alternatively ``forward_loop(run)`` calling ``run(*args, **kwargs)`` per batch.
      algorithm: overrides the config's: ``"max"``, ``None`` (nothing to calibrate), ``"smoothquant"``
        (``{"method": "smoothquant", "alpha": 1.0}``), ``"awq_lite"`` (``{"method": "awq_lite",
        "alpha_step": 0.1}``), or an algorithm object (:mod:`jq.calib.algorithms`). Multi-pass algorithms read
        the data several times (a one-shot iterable is materialised into a list first).
      progress: progress bars.
      share_sibling_weight_amax: sibling layers that read the same input (q/k/v, gate/up) always share one input
        amax; with this their per-tensor weight amaxes (NVFP4 global amax, FP8 per-tensor) are shared too, as
        fused serving kernels need.

    Returns:
      A new model; ``qm`` is unchanged.

    Raises:
      ValueError: an unknown algorithm or option (listing the valid ones), NaN/inf in the data (naming the
        quantizer and batch), an algorithm that needs data given none.
    """
    alg = algorithms.make(qm.config.algorithm if algorithm is None else algorithm)
    data = CalibData.create(calib_data, forward_loop, progress=progress,
                            share_sibling_weight_amax=share_sibling_weight_amax, passes=alg.passes)
    if alg.needs_data and data.empty:
        raise ValueError(f"calibration algorithm {alg.name!r} needs calibration data (calib_data or forward_loop)")
    out = alg.calibrate(qm, data)
    if not out.is_traced:
        raise ValueError("no calibration batch was seen and nothing was traced: give calib_data or example_args")
    if _warn_unused:
        warn_unused(out.config, out.traced.quantizers, out.traced.roles)
    return out
