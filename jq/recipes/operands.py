"""GEMM operand quantizers of the training recipes: one object per way of quantizing one GEMM operand.

Every GEMM of a linear layer is written in "NT" form, ``out[M, P] = a[M, C] @ b[P, C]^T``, so each operand
is contracted along its *last* axis (the layout cuBLASLt's FP8 GEMM wants: both operands K-major):

    fprop  y [T, N]  = x [T, K]    . W [N, K]
    dgrad  dx[T, K]  = dy[T, N]    . W^T [K, N]
    wgrad  dW[N, K]  = dy^T [N, T] . x^T [K, T]

An operand quantizer maps such an operand to a :class:`QOperand` (its fake-quantized float32 value, plus the
raw grid values and per-tensor scale when a real FP8 GEMM could consume them). 1D blocks therefore always
run along the GEMM's contraction axis; 2D blocks tile the last two axes (transpose-invariant, so the
quantized ``W`` of fprop and the quantized ``W^T`` of dgrad are the same numbers). Values are computed with
``jq.numerics`` (the grids and rounding are exactly jq's formats); FP8 scales follow TransformerEngine's
``compute_scale_from_amax``: ``s = fp8_max / amax`` correctly rounded, ``s = 1`` for a zero or non-finite
amax, optionally truncated to a power of two.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from jq.numerics import (
    E4M3,
    E5M2,
    MXFP8,
    BlockLayout,
    MinifloatFormat,
    MXFormat,
    exact_divide,
    four_over_six_fake_quant,
    fp8_dequantize,
    mx_fake_quant,
    nvfp4_fake_quant,
    pow2,
    random_hadamard_transform,
    round_to_minifloat,
)

__all__ = [
    "QOperand",
    "OperandContext",
    "NVFP4Operand",
    "Float8CurrentOperand",
    "Float8DelayedOperand",
    "Float8BlockOperand",
    "MXFP8Operand",
    "MXFP8_E5M2",
    "tensor_amax",
    "fp8_scale_from_amax",
]

# MXFP8 with E5M2 elements (TE's MXFP8BlockScaling(fp8_format=HYBRID) gradients); jq.numerics has the E4M3 one.
MXFP8_E5M2 = MXFormat("mxfp8_e5m2", E5M2.max_value, E5M2)

SR_RANDOM_BITS_DTYPE = jnp.uint8  # 8 random bits per element, as the hardware SR cast consumes for E2M1


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class QOperand:
    """One quantized GEMM operand ``[M, C]`` (contracted along ``C``).

    Attributes:
      dequantized: the fake-quantized operand in float32 (what the emulated GEMM multiplies).
      values: for per-tensor FP8 only, the scaled values ``round(clamp(a * s))`` on the FP8 grid (exactly
        castable to ``float8_*``), else None.
      scale_inv: for per-tensor FP8 only, ``1 / s`` (float32 scalar): ``dequantized = values * scale_inv``.
      fmt: the element format of ``values`` (static), else None.
    """

    dequantized: jax.Array
    values: jax.Array | None = None
    scale_inv: jax.Array | None = None
    fmt: MinifloatFormat | None = dataclasses.field(default=None, metadata=dict(static=True))


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, kw_only=True)
class OperandContext:
    """What an operand quantizer may use besides the operand: SR random bits' key, a delayed scale, mesh axes."""

    key: jax.Array | None = None
    scale: jax.Array | None = None
    axis_names: tuple[str, ...] = dataclasses.field(default=(), metadata=dict(static=True))


def tensor_amax(a: jax.Array, axis_names: Sequence[str] = ()) -> jax.Array:
    """``max|a|`` in float32, max-reduced over the mesh axes ``axis_names`` (``lax.pmax``) when given.

    Inside ``shard_map`` a tensor sharded over mesh axes must use the amax of the whole tensor, or the
    shards would quantize with different scales (TE reduces amax over the tensor-parallel group).
    """
    amax = jnp.max(jnp.abs(a.astype(jnp.float32)))
    return jax.lax.pmax(amax, tuple(axis_names)) if axis_names else amax


def fp8_scale_from_amax(
    amax: jax.Array, max_value: float, *, power_2: bool = False, epsilon: float = 0.0
) -> jax.Array:
    """TransformerEngine's FP8 scale: ``s = max_value / max(amax, epsilon)`` (correctly rounded).

    ``s = 1`` where the amax is 0, inf or NaN; an overflowing ``s`` becomes the float32 maximum; with
    ``power_2`` the mantissa is dropped (``s = 2^floor(log2 s)``), so ``1/s`` is exact.

    Example:
      >>> fp8_scale_from_amax(jnp.float32(3.5), 448.0)   # 448 / 3.5
      Array(128., dtype=float32)
      >>> fp8_scale_from_amax(jnp.float32(3.0), 448.0, power_2=True)   # 149.33 -> 128
      Array(128., dtype=float32)
    """
    amax = jnp.maximum(jnp.asarray(amax, jnp.float32), jnp.float32(epsilon))
    bad = (amax == 0) | ~jnp.isfinite(amax)
    s = exact_divide(jnp.float32(max_value), jnp.where(bad, 1.0, amax))
    s = jnp.minimum(s, jnp.finfo(jnp.float32).max)
    if power_2:
        _, e = jnp.frexp(s)  # s = m 2^e with m in [0.5, 1): floor(log2 s) = e - 1
        s = pow2(e - 1)
    return jnp.where(bad, 1.0, s)


def _fp8_scaled(a: jax.Array, scale: jax.Array, fmt: MinifloatFormat) -> tuple[jax.Array, jax.Array]:
    """``q = fmt(clamp(a * s, ±max))`` and ``q * (1/s)``; ``scale`` broadcasts against ``a``."""
    q = round_to_minifloat(jnp.clip(a.astype(jnp.float32) * scale, -fmt.max_value, fmt.max_value), fmt)
    return q, fp8_dequantize(q, scale)


def _sr_bits(key: jax.Array | None, shape, who: str) -> jax.Array:
    if key is None:
        raise ValueError(f"{who}: stochastic rounding needs a PRNG key (pass key=...)")
    return jax.random.bits(key, shape, SR_RANDOM_BITS_DTYPE)


@dataclasses.dataclass(frozen=True, kw_only=True)
class NVFP4Operand:
    """NVFP4 (E2M1 values, E4M3 scales per 16 elements, FP32 global scale) with the recipe's options.

    ``a' = RHT(a)`` along ``C`` (``rht``; ``C`` a multiple of 16), then ``nvfp4_fake_quant(a', amax)`` with
    ``amax = pmax(max|a'|)``, 1x16 blocks along ``C`` or 16x16 tiles (``two_d``), and stochastic rounding
    from ``jax.random.bits(ctx.key)`` (``stochastic_rounding``) instead of round-to-nearest-even, or each
    block's amax mapped to 6 or 4, whichever errs less (``four_over_six``,
    :func:`jq.numerics.four_over_six_fake_quant`; round to nearest only).

    Example:
      >>> q = NVFP4Operand(tensor="x")(jnp.ones((2, 16)), OperandContext())
      >>> q.dequantized.shape
      (2, 16)
    """

    tensor: str
    two_d: bool = False
    rht: bool = False
    stochastic_rounding: bool = False
    four_over_six: bool = False

    def __post_init__(self):
        if self.four_over_six and self.stochastic_rounding:
            raise ValueError(f"NVFP4Operand({self.tensor!r}): four_over_six compares round-to-nearest errors; "
                             f"it cannot be combined with stochastic_rounding")

    @property
    def contraction_multiple(self) -> int:
        return 16 if self.rht else 1

    def __call__(self, a: jax.Array, ctx: OperandContext) -> QOperand:
        a = a.astype(jnp.float32)
        if self.rht:
            a = random_hadamard_transform(a, axis=-1)
        amax = tensor_amax(a, ctx.axis_names)
        if self.four_over_six:
            return QOperand(four_over_six_fake_quant(a, amax, two_d=self.two_d))
        bits = _sr_bits(ctx.key, a.shape, f"NVFP4 {self.tensor} operand") if self.stochastic_rounding else None
        deq = nvfp4_fake_quant(a, amax, two_d=self.two_d, random_bits=bits)
        return QOperand(deq)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Float8CurrentOperand:
    """Per-tensor FP8 with the amax of this tensor now: ``s = fp8_scale_from_amax(pmax(max|a|))``."""

    tensor: str
    fmt: MinifloatFormat = E4M3
    power_2: bool = False
    epsilon: float = 0.0
    contraction_multiple = 1

    def __call__(self, a: jax.Array, ctx: OperandContext) -> QOperand:
        s = fp8_scale_from_amax(tensor_amax(a, ctx.axis_names), self.fmt.max_value, power_2=self.power_2, epsilon=self.epsilon)
        q, deq = _fp8_scaled(a, s, self.fmt)
        return QOperand(deq, q, 1.0 / s, self.fmt)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Float8DelayedOperand:
    """Per-tensor FP8 with the scale kept in the recipe state (``ctx.scale``, from the amax history)."""

    tensor: str
    fmt: MinifloatFormat = E4M3
    contraction_multiple = 1

    def __call__(self, a: jax.Array, ctx: OperandContext) -> QOperand:
        if ctx.scale is None:
            raise ValueError(f"delayed-scaling {self.tensor} operand needs the scale from the recipe state")
        s = jnp.asarray(ctx.scale, jnp.float32)
        q, deq = _fp8_scaled(a, s, self.fmt)
        return QOperand(deq, q, 1.0 / s, self.fmt)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Float8BlockOperand:
    """Blockwise FP8 (TE's Float8BlockScaling): one FP32 scale per 1x``block`` row segment along ``C``, or per
    ``block``x``block`` tile (``two_d``); ``s_b = fp8_scale_from_amax(amax_b)``, powers of two by default."""

    tensor: str
    fmt: MinifloatFormat = E4M3
    two_d: bool = False
    block: int = 128
    power_2: bool = True
    epsilon: float = 0.0
    contraction_multiple = 1

    def __call__(self, a: jax.Array, ctx: OperandContext) -> QOperand:
        sizes = {-1: self.block, -2: self.block} if self.two_d else {-1: self.block}
        layout = BlockLayout.create(a.shape, sizes)
        s = fp8_scale_from_amax(layout.block_amax(a), self.fmt.max_value, power_2=self.power_2, epsilon=self.epsilon)
        _, deq = _fp8_scaled(layout.split(a), s, self.fmt)
        return QOperand(layout.merge(deq))


@dataclasses.dataclass(frozen=True, kw_only=True)
class MXFP8Operand:
    """MXFP8: 1x32 blocks along ``C`` with E8M0 (power-of-two) scales, ``jq.numerics.mx_fake_quant``."""

    tensor: str
    fmt: MXFormat = MXFP8
    contraction_multiple = 1

    def __call__(self, a: jax.Array, ctx: OperandContext) -> QOperand:
        return QOperand(mx_fake_quant(a.astype(jnp.float32), self.fmt))
