"""Training recipes (seed 003, TransformerEngine's recipes): quantized forward *and* backward GEMMs.

``recipe_dot`` runs one matmul site under a recipe with a custom VJP: fprop, dgrad and wgrad each multiply
operands quantized as the recipe says (NVFP4 with RHT and stochastic rounding, FP8 current / delayed /
blockwise scaling, MXFP8). Recipes are frozen objects; DelayedScaling keeps explicit pytree state::

    recipe = jq.recipes.NVFP4BlockScaling()
    y = jq.recipes.recipe_dot(recipe, x, kernel, dimension_numbers=(((1,), (0,)), ((), ())),
                              key=step_key, site_id=0)

See docs/training_recipes.md for the operand table and the state mechanism.
"""

from jq.recipes.dot import recipe_dot
from jq.recipes.apply import RecipeHandler, init_recipe_state, recipe_apply, recipe_sites
from jq.recipes.gemm import bf16_gemm, fake_gemm, fp8_gemm
from jq.recipes.high_precision import GEMM_SLOTS, HighPrecisionGemms, HighPrecisionOperand
from jq.recipes.linear import linear
from jq.recipes.operands import (
    Float8BlockOperand,
    Float8CurrentOperand,
    Float8DelayedOperand,
    MXFP8Operand,
    NVFP4Operand,
    OperandContext,
    QOperand,
    fp8_scale_from_amax,
    tensor_amax,
)
from jq.recipes.recipes import (
    DelayedScaling,
    Float8BlockScaling,
    Float8CurrentScaling,
    GemmPlan,
    MXFP8BlockScaling,
    NVFP4BlockScaling,
)
from jq.recipes.state import (
    DelayedScalingState,
    TensorScalingState,
    merge_observations,
    observation,
)

__all__ = [
    "recipe_dot",
    "recipe_apply",
    "init_recipe_state",
    "recipe_sites",
    "RecipeHandler",
    "linear",
    "fake_gemm",
    "bf16_gemm",
    "fp8_gemm",
    "NVFP4BlockScaling",
    "Float8CurrentScaling",
    "DelayedScaling",
    "Float8BlockScaling",
    "MXFP8BlockScaling",
    "HighPrecisionGemms",
    "HighPrecisionOperand",
    "GEMM_SLOTS",
    "GemmPlan",
    "QOperand",
    "OperandContext",
    "NVFP4Operand",
    "Float8CurrentOperand",
    "Float8DelayedOperand",
    "Float8BlockOperand",
    "MXFP8Operand",
    "fp8_scale_from_amax",
    "tensor_amax",
    "DelayedScalingState",
    "TensorScalingState",
    "observation",
    "merge_observations",
]
