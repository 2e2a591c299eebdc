"""Calibration: per-quantizer calibrators, typed statistics, and the algorithms built on them.

* :mod:`jq.calib.calibrators` -- what one quantizer observes and the amax it keeps (``max``, ``histogram``,
  ``percentile``, ``entropy``, ``mse``, ``mse_sweep``);
* :mod:`jq.calib.stats` -- statistics that merge across batches, loops and devices (``Amax``, ``Sum``,
  ``Histogram`` ...);
* :mod:`jq.calib.histogram` -- the amax of a histogram (percentile, TensorRT's entropy, MSE);
* :mod:`jq.calib.mse` -- the MSE amax search (ModelOpt's multiplier sweep; NVFP4's E4M3 block scales);
* :mod:`jq.calib.weights` -- weights calibrated straight from the params;
* :mod:`jq.calib.collect` -- one pass over calibration data collecting statistics;
* :mod:`jq.calib.algorithms` -- the registered algorithms (``max``, ``smoothquant``, ``awq_lite``,
  ``percentile``, ``entropy``, ``mse`` (:mod:`jq.calib.amax_search`) ...), each one
  module with one entry point ``calibrate(model, data) -> quantizer state``.

This package's ``__init__`` imports nothing, so the config layer can use the calibrators without the
algorithms (which need the model).
"""
