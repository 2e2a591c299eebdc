"""``HighPrecisionGemms``: a recipe with some of its three GEMMs left unquantized (the NVFP4 paper's switch).

The NVFP4 pretraining report (arXiv:2509.25149, "precision switch") trains most of the run in NVFP4 and moves
the last ~18 % of the tokens to higher precision; most of the recovered loss comes from the *forward* GEMM.
Switching recipes mid-run is the training loop's choice (a second jitted step); this wrapper is the recipe to
switch to when only some GEMMs should leave the low-precision format::

    tail = HighPrecisionGemms(recipe=NVFP4BlockScaling(), gemms=("fprop",))   # fprop bf16/f32, backward NVFP4

The operands of the named GEMMs are passed through unquantized (``QOperand(a)`` in float32, so
:func:`~jq.recipes.gemm.fake_gemm` multiplies them exactly, :func:`~jq.recipes.gemm.bf16_gemm` in bf16);
every other operand is quantized as ``recipe`` says. State, key and update are ``recipe``'s.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jq.recipes.operands import OperandContext, QOperand

__all__ = ["GEMM_SLOTS", "HighPrecisionGemms", "HighPrecisionOperand", "PartlyHighPrecision"]

# GEMM name -> its two operand slots of GemmPlan
GEMM_SLOTS = {"fprop": ("fprop_x", "fprop_w"), "dgrad": ("dgrad_dy", "dgrad_w"), "wgrad": ("wgrad_dy", "wgrad_x")}


@dataclasses.dataclass(frozen=True, kw_only=True)
class HighPrecisionOperand:
    """The identity operand quantizer: ``QOperand(a as float32)`` (no rounding, no scale).

    Example:
      >>> HighPrecisionOperand(tensor="x")(jnp.full((2, 16), 0.3), OperandContext()).dequantized[0, 0]
      Array(0.3, dtype=float32)
    """

    tensor: str
    contraction_multiple = 1

    def __call__(self, a: jax.Array, ctx: OperandContext) -> QOperand:
        return QOperand(a.astype(jnp.float32))


@dataclasses.dataclass(frozen=True, kw_only=True)
class PartlyHighPrecision:
    """``recipe`` with the operand slots :meth:`high_precision_slots` names left unquantized; state, key and update
    are ``recipe``'s. Subclasses say which slots (:class:`HighPrecisionGemms`: those of whole GEMMs)."""

    recipe: object

    def __post_init__(self):
        if not hasattr(self.recipe, "plan"):
            raise ValueError(f"{type(self).__name__}.recipe must be a training recipe, got {self.recipe!r}")

    def high_precision_slots(self) -> tuple[str, ...]:
        raise NotImplementedError

    @property
    def stateful(self) -> bool:
        return self.recipe.stateful

    @property
    def needs_key(self) -> bool:
        return self.recipe.needs_key

    def init_state(self, shape: tuple[int, ...] = ()):
        return self.recipe.init_state(shape)

    def update_state(self, state, observation):
        return self.recipe.update_state(state, observation)

    def plan(self):
        plan = self.recipe.plan()
        keep = {slot: HighPrecisionOperand(tensor=getattr(plan, slot).tensor) for slot in self.high_precision_slots()}
        return dataclasses.replace(plan, **keep)


@dataclasses.dataclass(frozen=True, kw_only=True)
class HighPrecisionGemms(PartlyHighPrecision):
    """``recipe`` with the operands of ``gemms`` (a subset of fprop / dgrad / wgrad) left unquantized.

    Attributes:
      recipe: the low-precision recipe (any of :mod:`jq.recipes.recipes`).
      gemms: the GEMMs run on unquantized operands; default ``("fprop",)``.

    Example:
      >>> r = HighPrecisionGemms(recipe=NVFP4BlockScaling(), gemms=("fprop",))
      >>> type(r.plan().fprop_x).__name__, type(r.plan().dgrad_dy).__name__
      ('HighPrecisionOperand', 'NVFP4Operand')
    """

    gemms: tuple[str, ...] = ("fprop",)

    def __post_init__(self):
        bad = [g for g in self.gemms if g not in GEMM_SLOTS]
        if bad or not self.gemms:
            raise ValueError(f"HighPrecisionGemms.gemms must be a non-empty subset of {list(GEMM_SLOTS)}, "
                             f"got {self.gemms!r}")
        super().__post_init__()

    def high_precision_slots(self) -> tuple[str, ...]:
        return tuple(slot for g in self.gemms for slot in GEMM_SLOTS[g])
