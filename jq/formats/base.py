"""The format protocol: everything jq does that depends on the numeric format of a quantizer.

A :class:`Format` is one object per format family (INT, FP8, NVFP4, the MX formats). A
:class:`~jq.config.QuantizerSpec` resolves to its format once (``spec.format``); from then on the calibrator,
the ``jq_fake_quant`` primitive, real-quantized storage (:mod:`jq.qtensor`), the ONNX exporter, the Hugging
Face checkpoint writer and the kernel dispatcher ask the format instead of switching on a name. The methods
take the spec because one family covers many variants (bit widths, per-tensor/axis/block scaling).

Tensors handed to a format are in the quantizer's *canonical* layout (``[*batch, out, in]`` for weights, the
activation as it is otherwise); ``batch`` leading axes are kept apart in every statistic (experts, vmapped
axes). The contracts every format keeps (tested for each in ``tests/formats``):

* ``dequantize(quantize(x, spec, amax)) == fake_quant(x, spec, amax)`` bit for bit;
* ``fake_quant`` is built on :mod:`jq.numerics`, the single reference of the arithmetic;
* ``compute_amax`` returns what max calibration keeps (None when the format needs no calibrated amax).

Example:
  >>> from jq.config import QuantizerSpec
  >>> spec = QuantizerSpec(num_bits=8, axis=0)
  >>> spec.format.name, spec.format.describe(spec)
  ('int', 'int8 per-axis0')
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jq.numerics.blocks import BlockLayout

__all__ = [
    "Format",
    "QDQForm",
    "KernelBinding",
    "UnsupportedExport",
    "spec_axes",
    "block_layout",
    "broadcastable_amax",
]


class UnsupportedExport(ValueError):
    """A quantizer whose format (or variant) has no form in an export target; the message says why."""


@dataclasses.dataclass(frozen=True)
class QDQForm:
    """How a quantizer is written in ONNX, described structurally (no onnx import needed here).

    Attributes:
      format: the format's name (for messages and reports).
      element_type: ONNX ``TensorProto`` data type name of the quantized values (``"INT8"``, ``"INT4"``,
        ``"FLOAT8E4M3FN"``, ``"FLOAT4E2M1"`` ...).
      granularity: ``"tensor"``, ``"axis"`` or ``"block"``.
      min_opset: smallest default-domain opset with this form.
      block_size: elements per block along the ONNX block axis (``"block"`` only).
      qmax: the largest quantized magnitude (127, 7, 448, 6 ...).
      block_scale_type: for two-level scaling (NVFP4), the ONNX type the per-block scales are stored in; they are
        dequantized by a per-tensor scale before they scale the values. None for one-level scales.
      dynamic_quantize_op: ``(domain, op_type)`` of the node that quantizes an activation and computes its block
        scales at run time (TensorRT's ``("trt", "TRT_FP4DynamicQuantize")``); None when ``QuantizeLinear`` does.
      whole_blocks: True when the target needs the blocked axis to be a multiple of ``block_size`` (TensorRT's
        DynamicQuantize does); False when a zero-padded last block is written as ONNX's ``ceil(n / block_size)``
        scales (``DequantizeLinear`` with ``block_size``).
    """

    format: str
    element_type: str
    granularity: str
    min_opset: int
    block_size: int | None = None
    qmax: float = 0.0
    block_scale_type: str | None = None
    dynamic_quantize_op: tuple[str, str] | None = None
    whole_blocks: bool = False  # the target needs the blocked axis to be a multiple of block_size

    @property
    def kind(self) -> str:
        """Alias of :attr:`format` (the name earlier versions used)."""
        return self.format


@dataclasses.dataclass(frozen=True)
class KernelBinding:
    """A kernel that can serve an op for some specs of a format, on one platform.

    ``fn`` has the op's call contract (see :mod:`jq.dispatch`); ``supports(**ctx)`` says whether it serves a
    call (spec, view, shape, dtype ...). The dispatcher picks the highest ``priority`` that supports the call.
    """

    op: str
    platform: str
    name: str
    fn: Callable
    priority: int = 0
    supports: Callable[..., bool] | None = None
    note: str = ""


def spec_axes(axes, ndim: int, batch: int) -> tuple[int, ...]:
    """Axes of a spec (relative to the non-batch part) as absolute axes of a rank-``ndim`` tensor.

    Example:
      >>> spec_axes(-1, 3, 1)
      (2,)
    """
    if axes is None:
        return ()
    axes = (axes,) if isinstance(axes, int) else tuple(axes)
    inner = ndim - batch
    out = []
    for a in axes:
        if not -inner <= a < inner:
            raise ValueError(f"axis {a} is out of range for a quantized tensor of rank {inner}")
        out.append(batch + (a % inner))
    return tuple(out)


def block_layout(spec, shape: Sequence[int], batch: int = 0) -> BlockLayout:
    """The :class:`~jq.numerics.BlockLayout` of a spec's ``block_sizes`` on a tensor of ``shape``."""
    sizes = {}
    for a, size in spec.block_sizes.sizes:
        (ax,) = spec_axes(a, len(shape), batch)
        sizes[ax] = size
    return BlockLayout.create(shape, sizes)


def broadcastable_amax(amax: jax.Array, ndim: int) -> jax.Array:
    """A per-batch amax stored squeezed, with singleton axes appended to broadcast against rank ``ndim``."""
    amax = jnp.asarray(amax, jnp.float32)
    if amax.ndim and amax.ndim < ndim:
        amax = amax.reshape(amax.shape + (1,) * (ndim - amax.ndim))
    return amax


class Format:
    """One numeric format family. Subclasses override what their family supports; the defaults raise.

    Attributes:
      name: short name (``"int"``, ``"fp8"``, ``"nvfp4"``, ``"mxfp8"`` ...), used in descriptions and reports.
      hf_algorithms: the ModelOpt ``quant_algo`` names this format writes in Hugging Face checkpoints.
      hf_padded_blocks: True when its checkpoint layout takes a weight whose blocked axis is not a multiple of the
        block size (``ceil(n / block)`` scales, the last block zero-padded); False: the export refuses such a layer
        (ModelOpt does: "not divisible for block size").
    """

    name: str = ""
    hf_algorithms: tuple[str, ...] = ()
    hf_padded_blocks: bool = False  # checkpoints store a zero-padded last block as ceil(n / block) scales

    # -- resolution and validation -------------------------------------------------------------------
    def claims(self, spec) -> bool:
        """Whether this format serves ``spec`` (the first format that claims a spec is its format)."""
        raise NotImplementedError

    def validate(self, spec) -> None:
        """Raise ``ValueError`` naming the field when ``spec`` is not a valid variant of this format."""

    # -- calibration geometry --------------------------------------------------------------------------
    def is_dynamic(self, spec) -> bool:
        """True when the scale comes from the tensor at each call (no calibrated amax for the elements)."""
        return spec.type == "dynamic" or (spec.block_sizes is not None and spec.block_sizes.type == "dynamic")

    def needs_amax(self, spec) -> bool:
        """True when the quantizer needs a calibrated amax."""
        return not self.is_dynamic(spec)

    def compute_amax(self, x: jax.Array, spec, batch: int = 0) -> jax.Array | None:
        """The statistic max calibration keeps for ``x`` (float32), or None when none is needed."""
        raise NotImplementedError

    def blocks(self, spec, shape: Sequence[int], batch: int = 0) -> BlockLayout | None:
        """The layout of the per-block scales on a tensor of ``shape`` (None without per-block scales)."""
        return None

    def padded_axes(self, spec, shape: Sequence[int], batch: int = 0) -> tuple[int, ...]:
        """Axes of a tensor of ``shape`` whose length is not a multiple of the block size (zero-padded)."""
        return tuple(a for a, _, _ in self.padding(spec, shape, batch))

    def padding(self, spec, shape: Sequence[int], batch: int = 0) -> tuple[tuple[int, int, int], ...]:
        """``(axis, length, block size)`` for each axis of a tensor of ``shape`` whose length is not a multiple of
        its block size: the last block is zero-padded to ``ceil(length / block) * block`` elements.

        Example:
          >>> spec = QuantizerSpec(num_bits=4, block_sizes={-1: 128})
          >>> spec.format.padding(spec, (32, 40))
          ((1, 40, 128),)
        """
        layout = self.blocks(spec, shape, batch)
        return () if layout is None else tuple((a, shape[a], b) for a, b in layout.sizes if shape[a] % b)

    # -- reference numerics ---------------------------------------------------------------------------
    def fake_quant(self, x: jax.Array, spec, amax: jax.Array | None, *, batch: int = 0,
                   random_bits: jax.Array | None = None) -> jax.Array:
        """Quantize-dequantize ``x`` (reference, any backend); ``amax`` None means computed from ``x``."""
        raise NotImplementedError

    def quantize(self, x: jax.Array, spec, amax: jax.Array | None, *, batch: int = 0):
        """Real-quantized storage of ``x`` as a :class:`~jq.qtensor.QTensor`."""
        raise NotImplementedError

    def dequantize(self, qt, dtype) -> jax.Array:
        """Float values of a :class:`~jq.qtensor.QTensor` of this format."""
        raise NotImplementedError

    def clip_mask(self, x: jax.Array, spec, amax: jax.Array | None, batch: int = 0) -> jax.Array | None:
        """Where the clipped straight-through estimator passes gradients (None: everywhere)."""
        if amax is None:
            return None
        return jnp.abs(x) <= broadcastable_amax(amax, x.ndim)

    # -- description --------------------------------------------------------------------------------
    def describe(self, spec) -> str:
        """Short human-readable form, e.g. ``int8 per-axis0`` or ``nvfp4 b16``."""
        return self.name

    def bits_per_element(self, spec) -> float:
        """Storage cost per element, scales included (NVFP4 4.5)."""
        raise NotImplementedError

    # -- deployment scales and ONNX --------------------------------------------------------------------
    def export_scale(self, spec, amax) -> np.ndarray:
        """The dequantization scale a deployment loads for a calibrated amax (float32, ``amax``'s shape)."""
        raise UnsupportedExport(f"{self.describe(spec)} has no amax-derived scale")

    def weight_scales(self, qt, spec, amax) -> tuple[np.ndarray | None, np.ndarray | None]:
        """``(weight_scale, weight_scale_2)`` of a weight stored as ``qt`` (ModelOpt's checkpoint fields)."""
        if amax is None:
            return None, None
        scale = self.export_scale(spec, amax)
        if spec.block_sizes is None and spec.axis is not None:
            scale = scale.reshape(-1)  # keep-dims per-channel amax -> one scale per channel
        return scale, None

    def onnx_form(self, spec, *, is_weight: bool) -> QDQForm:
        """The ONNX form of the quantizer; :class:`UnsupportedExport` saying why when it has none."""
        raise UnsupportedExport(f"{self.name} has no ONNX Q/DQ form in jq")

    def onnx_values(self, qt, shape: Sequence[int]) -> np.ndarray:
        """The quantized values of ``qt``, unpacked and cut to ``shape``, as a numpy array of the ONNX type."""
        raise UnsupportedExport(f"{self.name} weights cannot be stored quantized in ONNX")

    # -- Hugging Face checkpoints -------------------------------------------------------------------
    def hf_algorithm(self, wspec, ispec) -> tuple[str, dict] | None:
        """ModelOpt's ``quant_algo`` (and layer fields) for a linear layer with this weight format, or None."""
        return None

    def hf_tensors(self, qt, wspec, amax, algo: str) -> dict[str, np.ndarray]:
        """The per-layer tensors (``weight``, ``weight_scale`` ...) of a weight stored as ``qt``."""
        raise NotImplementedError

    def hf_dequantize(self, tensors: dict[str, np.ndarray], layer_config: dict) -> np.ndarray:
        """The float32 ``[out, in]`` weight a serving stack reads from ``tensors`` (keys without the prefix)."""
        raise NotImplementedError

    def hf_sibling_tensors(self, algo: str) -> tuple[str, ...]:
        """Weight-side tensors that fused siblings (q/k/v, gate/up) must share for serving stacks."""
        return ()

    # -- kernels --------------------------------------------------------------------------------------
    def kernel_bindings(self) -> tuple[KernelBinding, ...]:
        """Kernels that can serve this format's ops (the jnp reference always can)."""
        return ()

    def linear_kernel(self, wspec, ispec) -> Any:
        """A real-quantized linear kernel (:mod:`jq.backends.linear`) for this weight/input pair, or None."""
        return None

    def __repr__(self):
        return f"<format {self.name}>"
