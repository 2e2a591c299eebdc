"""auto_quantize: a per-layer choice among quantization formats under an effective-bits budget.

* :mod:`.search` -- :func:`auto_quantize` (candidates, groups, costs, the resulting model);
* :mod:`.scores` -- gradient and KL sensitivity scores;
* :mod:`.solver` -- the exact multiple-choice knapsack solver (numpy);
* :mod:`.report` -- the report (table, plot) and the resumable score file.
"""

from jq.calib.auto_quantize.report import AutoQuantizeReport, GroupChoice
from jq.calib.auto_quantize.search import FLOAT_BITS, auto_quantize
from jq.calib.auto_quantize.solver import solve

__all__ = ["auto_quantize", "AutoQuantizeReport", "GroupChoice", "solve", "FLOAT_BITS"]
