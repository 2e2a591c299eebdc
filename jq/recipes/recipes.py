"""The training recipes (TransformerEngine's names and defaults) and how each quantizes each GEMM operand.

A linear layer runs three GEMMs (see :mod:`jq.recipes.operands` for the NT form)::

    fprop  y  = x . W^T        operands  x [T, K],     W [N, K]
    dgrad  dx = dy . W         operands  dy [T, N],    W^T [K, N]
    wgrad  dW = dy^T . x       operands  dy^T [N, T],  x^T [K, T]

A recipe's :meth:`plan` names the quantizer of each of those six operands (a :class:`GemmPlan`). Defaults are
TE's (``transformer_engine/common/recipe/__init__.py``, TE 2.x; the NVFP4 paper arXiv:2509.25149):

| recipe | x | W | dy |
|---|---|---|---|
| NVFP4BlockScaling | 1x16 RTN; wgrad: RHT + 1x16 RTN | 16x16 RTN (one quantized W for fprop and dgrad) | 1x16 SR; wgrad: RHT + 1x16 SR |
| Float8CurrentScaling | E4M3, amax now | E4M3, amax now | E5M2, amax now |
| DelayedScaling | E4M3, scale from history | E4M3, scale from history | E5M2, scale from history |
| Float8BlockScaling | E4M3 1x128 | E4M3 128x128 | E4M3 1x128 (pow-2 scales) |
| MXFP8BlockScaling | E4M3 1x32 E8M0 | E4M3 1x32 | E4M3 1x32 |

Blocks always run along the contraction axis of the GEMM at hand (so the wgrad operands ``dy^T`` and ``x^T``
are re-quantized along the token axis ``T``, from the high-precision tensors, as TE does).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp

from jq.numerics import E4M3, E5M2, MXFP8, MinifloatFormat
from jq.recipes.operands import (
    MXFP8_E5M2,
    Float8BlockOperand,
    Float8CurrentOperand,
    Float8DelayedOperand,
    MXFP8Operand,
    NVFP4Operand,
    fp8_scale_from_amax,
)
from jq.recipes.state import DelayedScalingState, TensorScalingState

__all__ = [
    "GemmPlan",
    "NVFP4BlockScaling",
    "Float8CurrentScaling",
    "DelayedScaling",
    "Float8BlockScaling",
    "MXFP8BlockScaling",
    "FORWARD_BACKWARD_FORMATS",
]

# TE's Format.E4M3 / Format.HYBRID: (forward x/W format, backward dy format). Pure E5M2 is refused, as in TE.
FORWARD_BACKWARD_FORMATS = {"e4m3": (E4M3, E4M3), "hybrid": (E4M3, E5M2)}


@dataclasses.dataclass(frozen=True, kw_only=True)
class GemmPlan:
    """The quantizer of each operand of the three GEMMs of a linear layer (each operand in NT form)."""

    fprop_x: Callable
    fprop_w: Callable
    dgrad_dy: Callable
    dgrad_w: Callable
    wgrad_dy: Callable
    wgrad_x: Callable

    SLOTS = ("fprop_x", "fprop_w", "dgrad_dy", "dgrad_w", "wgrad_dy", "wgrad_x")  # also the key fold-in index


def _formats(recipe_name: str, fp8_format: str) -> tuple[MinifloatFormat, MinifloatFormat]:
    try:
        return FORWARD_BACKWARD_FORMATS[fp8_format]
    except KeyError:
        raise ValueError(
            f"{recipe_name}.fp8_format must be one of {sorted(FORWARD_BACKWARD_FORMATS)} (TE refuses pure E5M2), got {fp8_format!r}"
        ) from None


class _Stateless:
    """Recipes whose scales come from the tensors of this step: no state, nothing to update."""

    stateful = False

    def init_state(self, shape: tuple[int, ...] = ()) -> None:
        return None

    def update_state(self, state, observation):
        return state

    @property
    def needs_key(self) -> bool:
        return False


@dataclasses.dataclass(frozen=True, kw_only=True)
class NVFP4BlockScaling(_Stateless):
    """TE's NVFP4 training recipe (seed 003): NVFP4 operands in all three GEMMs.

    Attributes (each is TE's ``disable_*`` flag negated; all on by default, as in TE):
      rht: 16x16 random Hadamard transform on both wgrad operands (``dy^T``, ``x^T``) along the token axis.
      stochastic_rounding: SR on the gradient operand ``dy`` (dgrad and wgrad); x and W round to nearest even.
      weight_2d: 16x16 weight blocks (one quantized W serves fprop and dgrad); else 1x16 along each GEMM's
        contraction axis (W quantized twice from high precision).
      four_over_six: jq's addition, off by default (not in TE): the round-to-nearest operands (x and W of fprop,
        W of dgrad, x^T of wgrad) map each block's amax to E2M1's 6 or 4, whichever gives the smaller squared
        error ("Four Over Six", arXiv:2512.02010; :func:`jq.numerics.four_over_six_fake_quant`). Still NVFP4
        encodings; the gradient operands (stochastically rounded) are unchanged.

    Example:
      >>> NVFP4BlockScaling(rht=False).plan().wgrad_x.rht
      False
      >>> NVFP4BlockScaling(four_over_six=True).plan().fprop_x.four_over_six
      True
    """

    rht: bool = True
    stochastic_rounding: bool = True
    weight_2d: bool = True
    four_over_six: bool = False

    @property
    def needs_key(self) -> bool:
        return self.stochastic_rounding

    def plan(self) -> GemmPlan:
        fos = self.four_over_six
        w = NVFP4Operand(tensor="w", two_d=self.weight_2d, four_over_six=fos)
        sr = self.stochastic_rounding
        return GemmPlan(
            fprop_x=NVFP4Operand(tensor="x", four_over_six=fos),
            fprop_w=w,
            dgrad_dy=NVFP4Operand(tensor="dy", stochastic_rounding=sr),
            dgrad_w=w,
            wgrad_dy=NVFP4Operand(tensor="dy", rht=self.rht, stochastic_rounding=sr),
            wgrad_x=NVFP4Operand(tensor="x", rht=self.rht, four_over_six=fos),
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class Float8CurrentScaling(_Stateless):
    """Per-tensor FP8 with the amax of this step (TE's ``Float8CurrentScaling``).

    Attributes:
      fp8_format: ``"hybrid"`` (TE default: E4M3 for x and W, E5M2 for dy) or ``"e4m3"`` (all E4M3).
      power_2_scales: round scales down to powers of two (TE's ``use_power_2_scales``, default off).
      amax_epsilon: floor for the amax (TE's ``QParams.amax_epsilon``, default 0).
    """

    fp8_format: str = "hybrid"
    power_2_scales: bool = False
    amax_epsilon: float = 0.0

    def __post_init__(self):
        _formats("Float8CurrentScaling", self.fp8_format)

    def plan(self) -> GemmPlan:
        fwd, bwd = _formats("Float8CurrentScaling", self.fp8_format)
        opts = dict(power_2=self.power_2_scales, epsilon=self.amax_epsilon)
        x = Float8CurrentOperand(tensor="x", fmt=fwd, **opts)
        w = Float8CurrentOperand(tensor="w", fmt=fwd, **opts)
        dy = Float8CurrentOperand(tensor="dy", fmt=bwd, **opts)
        return GemmPlan(fprop_x=x, fprop_w=w, dgrad_dy=dy, dgrad_w=w, wgrad_dy=dy, wgrad_x=x)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Float8BlockScaling(_Stateless):
    """Blockwise FP8 (TE's ``Float8BlockScaling``, DeepSeek-V3 style): 1x128 and 128x128 blocks.

    Attributes:
      fp8_format: ``"e4m3"`` (TE default: E4M3 everywhere) or ``"hybrid"``.
      x_block_scaling_dim, w_block_scaling_dim, grad_block_scaling_dim: 1 (1x128 along the contraction axis)
        or 2 (128x128); TE defaults 1 / 2 / 1 and refuses 2D operands on both sides of a GEMM.
      power_2_scales: power-of-two block scales (TE default on; off = TE's ``NVTE_FP8_BLOCK_SCALING_FP32_SCALES``).
      amax_epsilon: floor for the block amax.
    """

    fp8_format: str = "e4m3"
    x_block_scaling_dim: int = 1
    w_block_scaling_dim: int = 2
    grad_block_scaling_dim: int = 1
    power_2_scales: bool = True
    amax_epsilon: float = 0.0

    BLOCK = 128

    def __post_init__(self):
        _formats("Float8BlockScaling", self.fp8_format)
        dims = {"x": self.x_block_scaling_dim, "w": self.w_block_scaling_dim, "grad": self.grad_block_scaling_dim}
        for name, d in dims.items():
            if d not in (1, 2):
                raise ValueError(f"Float8BlockScaling.{name}_block_scaling_dim must be 1 or 2, got {d}")
        if sum(d == 2 for d in dims.values()) > 1:
            raise ValueError(f"Float8BlockScaling: at most one of x/w/grad may use 2D blocks (TE), got {dims}")

    def plan(self) -> GemmPlan:
        fwd, bwd = _formats("Float8BlockScaling", self.fp8_format)
        opts = dict(block=self.BLOCK, power_2=self.power_2_scales, epsilon=self.amax_epsilon)
        x = Float8BlockOperand(tensor="x", fmt=fwd, two_d=self.x_block_scaling_dim == 2, **opts)
        w = Float8BlockOperand(tensor="w", fmt=fwd, two_d=self.w_block_scaling_dim == 2, **opts)
        dy = Float8BlockOperand(tensor="dy", fmt=bwd, two_d=self.grad_block_scaling_dim == 2, **opts)
        return GemmPlan(fprop_x=x, fprop_w=w, dgrad_dy=dy, dgrad_w=w, wgrad_dy=dy, wgrad_x=x)


@dataclasses.dataclass(frozen=True, kw_only=True)
class MXFP8BlockScaling(_Stateless):
    """MXFP8 (TE's ``MXFP8BlockScaling``): 1x32 blocks along each GEMM's contraction axis, E8M0 scales.

    Attributes:
      fp8_format: ``"e4m3"`` (TE default: E4M3 everywhere) or ``"hybrid"`` (E5M2 elements for dy).
    """

    fp8_format: str = "e4m3"

    def __post_init__(self):
        _formats("MXFP8BlockScaling", self.fp8_format)

    def plan(self) -> GemmPlan:
        _, bwd = _formats("MXFP8BlockScaling", self.fp8_format)
        x, w = MXFP8Operand(tensor="x", fmt=MXFP8), MXFP8Operand(tensor="w", fmt=MXFP8)
        dy = MXFP8Operand(tensor="dy", fmt=MXFP8_E5M2 if bwd is E5M2 else MXFP8)
        return GemmPlan(fprop_x=x, fprop_w=w, dgrad_dy=dy, dgrad_w=w, wgrad_dy=dy, wgrad_x=x)


@dataclasses.dataclass(frozen=True, kw_only=True)
class DelayedScaling:
    """Per-tensor FP8 with scales from an amax history (TE's ``DelayedScaling``).

    Each quantized tensor (x, W, dy) of a site keeps ``amax_history [H]`` and ``scale`` (a
    :class:`~jq.recipes.state.TensorScalingState`). A step quantizes with the stored ``scale`` and observes
    ``max|t|``; :meth:`update_state` then pushes the observation into the history and sets
    ``scale = (fp8_max * 2^-margin) / amax`` with ``amax = max(history)`` (``"max"``) or the newest entry
    (``"most_recent"``), keeping the old scale when that amax is 0 or not finite (TE's kernel).

    Attributes (TE defaults):
      margin: 0.  fp8_format: ``"hybrid"``.  amax_history_len: 1024.
      amax_compute_algo: ``"max"``, ``"most_recent"``, or a callable ``history [..., H] -> amax [...]``.

    Example:
      >>> r = DelayedScaling(amax_history_len=4)
      >>> r.init_state().x.amax_history.shape
      (4,)
    """

    margin: int = 0
    fp8_format: str = "hybrid"
    amax_history_len: int = 1024
    amax_compute_algo: str | Callable = "max"

    stateful = True
    needs_key = False

    def __post_init__(self):
        _formats("DelayedScaling", self.fp8_format)
        if self.amax_history_len < 1:
            raise ValueError(f"DelayedScaling.amax_history_len must be >= 1, got {self.amax_history_len}")
        if not callable(self.amax_compute_algo) and self.amax_compute_algo not in ("max", "most_recent"):
            raise ValueError(
                "DelayedScaling.amax_compute_algo must be 'max', 'most_recent' or a callable, "
                f"got {self.amax_compute_algo!r}"
            )

    def formats(self) -> dict[str, MinifloatFormat]:
        fwd, bwd = _formats("DelayedScaling", self.fp8_format)
        return {"x": fwd, "w": fwd, "dy": bwd}

    def plan(self) -> GemmPlan:
        f = self.formats()
        x, w, dy = (Float8DelayedOperand(tensor=t, fmt=f[t]) for t in ("x", "w", "dy"))
        return GemmPlan(fprop_x=x, fprop_w=w, dgrad_dy=dy, dgrad_w=w, wgrad_dy=dy, wgrad_x=x)

    def init_state(self, shape: tuple[int, ...] = ()) -> DelayedScalingState:
        """Zero histories and scale 1 (TE's initial values); ``shape`` = leading axes (scan layers, experts)."""
        shape = tuple(shape)

        def one():
            return TensorScalingState(
                amax_history=jnp.zeros((*shape, self.amax_history_len), jnp.float32),
                scale=jnp.ones(shape, jnp.float32),
            )

        return DelayedScalingState(x=one(), w=one(), dy=one())

    def history_amax(self, history: jax.Array) -> jax.Array:
        """The amax the next scale is computed from: ``max`` / ``most_recent`` (index 0) / the callable."""
        if callable(self.amax_compute_algo):
            return jnp.asarray(self.amax_compute_algo(history), jnp.float32)
        if self.amax_compute_algo == "max":
            return jnp.max(history, axis=-1)
        return history[..., 0]

    def update_state(self, state, observation):
        """Roll each history by one step with the observed amax in front, then recompute the scales.

        ``state`` is one site's :class:`DelayedScalingState` or any pytree of them (a whole model's, with
        ``None`` for sites without state); ``observation`` is what ``jax.grad`` returns for it (see
        :mod:`jq.recipes.state`): the amax of this step sits at ``amax_history[..., 0]``.
        """
        is_site = lambda t: isinstance(t, DelayedScalingState)
        return jax.tree.map(self._update_site, state, observation, is_leaf=is_site)

    def _update_site(self, state: DelayedScalingState, observation: DelayedScalingState) -> DelayedScalingState:
        f = self.formats()

        def one(t: TensorScalingState, obs: TensorScalingState, fmt: MinifloatFormat) -> TensorScalingState:
            now = obs.amax_history[..., :1]
            history = jnp.concatenate([now, t.amax_history[..., :-1]], axis=-1)
            amax = self.history_amax(history)
            fresh = fp8_scale_from_amax(amax, fmt.max_value * 2.0**-self.margin)
            scale = jnp.where(jnp.isfinite(amax) & (amax > 0), fresh, t.scale)
            return TensorScalingState(amax_history=history, scale=scale)

        return DelayedScalingState(
            x=one(state.x, observation.x, f["x"]),
            w=one(state.w, observation.w, f["w"]),
            dy=one(state.dy, observation.dy, f["dy"]),
        )
