"""AWQ-full: AWQ-lite's per-channel scales, then AWQ-clip's per-block clip search (ModelOpt's ``awq_full``).

The clip targets are switched to static per-block amaxes first (:mod:`jq.calib.static_amax`; for NVFP4 the
same numbers as dynamic blocks until the search clips them), AWQ-lite (:class:`~jq.calib.awq.AWQLite`) finds
``pre_quant_scale`` and re-calibrates, and the clip search (:func:`~jq.calib.awq_clip.clip_search`) runs on
the smoothed weights and inputs. Passes over the data: AWQ-lite's three, then the search.

Example:
  >>> qm = jq.quantize(params, apply_fn, jq.NVFP4_AWQ_FULL_CFG, calib_data=batches)
"""

from __future__ import annotations

import dataclasses

from jq.calib.awq import AWQ_FORMATS, AWQLite
from jq.calib.awq_clip import check_clip_options, clip_ratios, clip_search, prepare_clip
from jq.calib.base import Algorithm

__all__ = ["AWQFull"]


@dataclasses.dataclass(frozen=True)
class AWQFull(Algorithm):
    """ModelOpt's ``awq_full``: the options of ``awq_lite`` and ``awq_clip`` together."""

    alpha_step: float = 0.1
    max_co_batch_size: int = 1024
    max_tokens_per_batch: int = 64
    min_clip_ratio: float = 0.5
    shrink_step: float = 0.05
    formats: tuple = AWQ_FORMATS
    name = "awq_full"
    passes = 4
    needs_data = True

    def __post_init__(self):
        check_clip_options(self)
        if isinstance(self.alpha_step, bool) or not isinstance(self.alpha_step, (int, float)) \
                or not 0 < self.alpha_step <= 1:
            raise ValueError(f"algorithm 'awq_full': alpha_step must be a number in (0, 1], got {self.alpha_step!r}")

    def calibrate(self, qm, data):
        qm, targets = prepare_clip(qm, data)
        qm = AWQLite(alpha_step=self.alpha_step, formats=self.formats).calibrate(qm, data)
        return clip_search(qm, data, targets, ratios=clip_ratios(self.min_clip_ratio, self.shrink_step),
                           max_tokens=self.max_tokens_per_batch, max_rows=self.max_co_batch_size)
