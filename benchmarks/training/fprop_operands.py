"""Diagnostic for issue 14 item 4: which operand of NVFP4's forward GEMM costs the convergence gap.

Two runs of :mod:`benchmarks.training.convergence` (same flags, same model, batches and key) in which exactly one
operand of the six is NVFP4 (TE's quantization of it: ``x`` 1x16 round to nearest, ``W`` 16x16 round to
nearest) and every other operand, in all three GEMMs, is unquantized:

* ``nvfp4_fprop_x_only``: only the activation of the forward GEMM;
* ``nvfp4_fprop_w_only``: only the weight of the forward GEMM (dgrad's ``W`` stays unquantized).

Together with ``nvfp4_fprop_only`` and ``nvfp4_backward_only`` (in :data:`benchmarks.training.common.RUNS`)
they split the default recipe's gap. CPU (2 cores, ~4 minutes)::

    PYTHONPATH=. python3 -m benchmarks.training.fprop_operands --out /tmp/fprop_operands --width 128 --layers 2 \
        --heads 4 --block 128 --batch 16 --steps 1000 --chunk 100 --val-windows 128 --parallel 2

Any other flag is :mod:`benchmarks.training.convergence`'s; ``--runs`` defaults to the two runs above.
"""

from __future__ import annotations

import dataclasses
import sys

from benchmarks.training import common, convergence
from jq.recipes import GemmPlan, NVFP4BlockScaling
from jq.recipes.high_precision import PartlyHighPrecision

RUN_SLOTS = {"nvfp4_fprop_x_only": ("fprop_x",), "nvfp4_fprop_w_only": ("fprop_w",)}


@dataclasses.dataclass(frozen=True, kw_only=True)
class QuantizedSlots(PartlyHighPrecision):
    """``recipe`` with only the operand slots ``slots`` (of :attr:`jq.recipes.GemmPlan.SLOTS`) quantized, every other
    slot unquantized; state and keys are the wrapped recipe's."""

    slots: tuple[str, ...] = ()

    def __post_init__(self):
        bad = [s for s in self.slots if s not in GemmPlan.SLOTS]
        if bad:
            raise ValueError(f"QuantizedSlots.slots must be among {list(GemmPlan.SLOTS)}, got {bad}")
        super().__post_init__()

    def high_precision_slots(self) -> tuple[str, ...]:
        return tuple(s for s in GemmPlan.SLOTS if s not in self.slots)


def register() -> None:
    """Add the runs of :data:`RUN_SLOTS` to the convergence benchmark's run table."""
    for name, slots in RUN_SLOTS.items():
        spec = common.RunSpec(recipe=QuantizedSlots(recipe=NVFP4BlockScaling(), slots=slots))
        common.RUNS[name] = spec
        common.RECIPES[name] = spec.recipe


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    register()
    if "--runs" not in argv:
        argv += ["--runs", ",".join(RUN_SLOTS)]
    convergence.main(argv)


if __name__ == "__main__":
    main()
