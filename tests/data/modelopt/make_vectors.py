#!/usr/bin/env python3
"""Generate ModelOpt parity test vectors for jq.

Runs in a THROWAWAY environment that has torch (CPU build) and nvidia-modelopt
installed (see README.md in this folder for the exact versions and commands).
The jq test suite never imports this file; it only loads the outputs:

    manifest.json        list of cases (name, kind, spec, dtype, shape, call, arrays, notes)
    unsupported.json     every case we tried that ModelOpt refused on CPU, with the error
    modelopt_vectors.npz arrays keyed "{case}/{array}"

Usage (inside the throwaway venv):

    python tests/data/modelopt/make_vectors.py --out tests/data/modelopt

All inputs come from fixed seeds (torch.Generator per case), so re-running gives
identical array contents.  Only ModelOpt's CPU / pure-PyTorch code paths are
called; no ModelOpt code is copied here.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import traceback
import warnings

import numpy as np
import torch

import modelopt
from modelopt.torch.quantization import tensor_quant
from modelopt.torch.quantization.config import QuantizerAttributeConfig
from modelopt.torch.quantization.nn import TensorQuantizer
from modelopt.torch.quantization.qtensor import (
    FP8QTensor,
    INT4QTensor,
    INT8QTensor,
    MXFP4QTensor,
    MXFP8QTensor,
    NVFP4QTensor,
)
from modelopt.torch.quantization.utils import reduce_block_amax, reduce_block_padding

warnings.simplefilter("ignore")

MODELOPT_VERSION = modelopt.__version__
TORCH_VERSION = torch.__version__
NPZ_NAME = "modelopt_vectors.npz"

TQ_CALL = (
    "TensorQuantizer(QuantizerAttributeConfig(**spec)); max calibration: "
    "disable_quant(); enable_calib(); q(x); load_calib_amax(); disable_calib(); enable_quant(); "
    "y = q(x)"
)
TQ_CALL_EXPLICIT = (
    "TensorQuantizer(QuantizerAttributeConfig(**spec)); q.amax = <explicit amax>; y = q(x)"
)
TQ_REAL_CALL = (
    "TensorQuantizer(QuantizerAttributeConfig(**spec, fake_quant=False)); {calib}"
    "qt = q(x)  (-> TensorQuantizer._real_quantize -> {qtensor}.quantize); "
    "deq = q(qt)  (-> TensorQuantizer.dequantize -> {qtensor}.dequantize)"
)


# --------------------------------------------------------------------------- helpers
def jsonable(obj):
    """Spec -> JSON-safe: tuples -> lists, non-str dict keys -> str."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, torch.dtype):
        return str(obj).replace("torch.", "")
    return obj


def to_np(t: torch.Tensor) -> tuple[np.ndarray, str]:
    """Tensor -> (numpy array, description of what the stored bits mean)."""
    t = t.detach().cpu()
    if t.dtype in (torch.bfloat16, torch.float16):
        return t.float().numpy(), f"float32 (exact values of {str(t.dtype)[6:]})"
    if t.dtype == torch.float8_e4m3fn:
        return t.view(torch.uint8).numpy(), "uint8 bit pattern of float8_e4m3fn"
    if t.dtype == torch.float8_e5m2:
        return t.view(torch.uint8).numpy(), "uint8 bit pattern of float8_e5m2"
    if t.dtype == torch.float32:
        return t.numpy(), "float32"
    a = t.numpy()
    return a, str(a.dtype)


def dtype_name(t: torch.Tensor) -> str:
    return str(t.dtype).replace("torch.", "")


def randn(seed: int, shape, scale=1.0, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * scale).to(dtype)


def calibrate(q: TensorQuantizer, x: torch.Tensor) -> None:
    """ModelOpt's max calibration on one batch."""
    q.disable_quant()
    q.enable_calib()
    q(x)
    q.load_calib_amax()
    q.disable_calib()
    q.enable_quant()


class Recorder:
    def __init__(self):
        self.cases: list[dict] = []
        self.unsupported: list[dict] = []
        self.arrays: dict[str, np.ndarray] = {}

    def add(self, name, kind, spec, x, call, arrays: dict, notes=None, extra=None):
        assert not any(c["name"] == name for c in self.cases), name
        arr_meta = {}
        for key, (val, note) in arrays.items():
            if isinstance(val, torch.Tensor):
                a, how = to_np(val)
                src_dtype = dtype_name(val)
            else:
                a = np.asarray(val)
                how, src_dtype = str(a.dtype), str(a.dtype)
            self.arrays[f"{name}/{key}"] = np.array(a, order="C", copy=True)  # keeps 0-d
            arr_meta[key] = {
                "shape": list(a.shape),
                "dtype": str(a.dtype),
                "torch_dtype": src_dtype,
                "stored_as": how,
                "note": note,
            }
        case = {
            "name": name,
            "kind": kind,
            "spec": jsonable(spec),
            "input_dtype": dtype_name(x),
            "shape": list(x.shape),
            "call": call,
            "modelopt_version": MODELOPT_VERSION,
            "torch_version": TORCH_VERSION,
            "arrays": arr_meta,
            "notes": notes or [],
        }
        if extra:
            case.update(jsonable(extra))
        self.cases.append(case)
        print(f"  ok   {name}")

    def fail(self, name, kind, spec, x, call, exc: BaseException, why=""):
        msg = str(exc).strip().splitlines()
        self.unsupported.append(
            {
                "name": name,
                "kind": kind,
                "spec": jsonable(spec),
                "input_dtype": dtype_name(x) if x is not None else None,
                "shape": list(x.shape) if x is not None else None,
                "call": call,
                "modelopt_version": MODELOPT_VERSION,
                "error_type": type(exc).__name__,
                "error_message": " | ".join(m.strip() for m in msg[:4]),
                "raised_at": traceback.extract_tb(exc.__traceback__)[-1].filename.split(
                    "site-packages/"
                )[-1]
                + ":"
                + str(traceback.extract_tb(exc.__traceback__)[-1].lineno),
                "why": why,
            }
        )
        print(f"  FAIL {name}: {type(exc).__name__}: {msg[0] if msg else ''}")


R = Recorder()


def amax_note(q: TensorQuantizer, x: torch.Tensor) -> str:
    a = q.amax
    if a is None:
        return "no amax"
    if a.numel() == 1:
        return f"per-tensor amax, torch shape {tuple(a.shape)} (0-d), dtype {dtype_name(a)}"
    s = f"amax torch shape {tuple(a.shape)} dtype {dtype_name(a)}, broadcast against "
    if hasattr(q, "_block_reshape_size"):
        s += (
            f"the block-reshaped input {tuple(q._block_reshape_size)} "
            f"(input {tuple(x.shape)}"
            + (f", zero-padded to {tuple(q._original_shape)}" if hasattr(q, "_padding") else "")
            + ")"
        )
    else:
        s += f"the input {tuple(x.shape)}"
    return s


def tq_extra(q: TensorQuantizer) -> dict:
    e = {}
    for attr in ("_block_reshape_size", "_padding", "_original_shape", "_axis"):
        if hasattr(q, attr) and getattr(q, attr) is not None:
            v = getattr(q, attr)
            e[attr.lstrip("_")] = list(v) if isinstance(v, (tuple, torch.Size)) else v
    return {"quantizer_state": e} if e else {}


# --------------------------------------------------------------------------- fake quant
INT_FAKE_NOTE = (
    "ModelOpt CPU INT fake quant (tensor_quant._tensor_quant), all in float32: "
    "max_bound = 2^(num_bits-1+unsigned) - 1; min_bound = 0 if unsigned, -max_bound if "
    "narrow_range, else -max_bound-1; scale = max_bound / amax (tensor/tensor, correctly "
    "rounded); where amax <= 2^-24 the scale is 0 for quantizing and 1 for dequantizing (y = 0); "
    "y = clamp(round_half_even(x * scale), min_bound, max_bound) / scale (a division), then cast "
    "to the input dtype"
)
FP8_FAKE_NOTE = (
    "ModelOpt CPU FP8 fake quant (tensor_quant._fp8_eager): amax as float32; amax <= 2^-24 is "
    "replaced by 1.0; scale = 448.0 / amax, which torch evaluates as fl(fl(1/amax) * 448) "
    "(python scalar / tensor = reciprocal then multiply); y = float(E4M3_RNE(clamp(x * scale, "
    "-448, 448))) * fl(1/scale), then cast to the input dtype"
)


def fake_case(name, spec, x, amax=None, notes=None, kind="fake_quant"):
    call = TQ_CALL if amax is None else TQ_CALL_EXPLICIT
    try:
        q = TensorQuantizer(QuantizerAttributeConfig(**spec))
        with torch.no_grad():
            if amax is None:
                calibrate(q, x)
            else:
                q.amax = amax
            y = q(x)
    except Exception as e:  # noqa: BLE001
        R.fail(name, kind, spec, x, call, e)
        return None
    notes = list(notes or [])
    notes.append(INT_FAKE_NOTE if isinstance(spec["num_bits"], int) else FP8_FAKE_NOTE)
    R.add(
        name,
        kind,
        spec,
        x,
        call,
        {
            "x": (x, "input"),
            "amax": (q.amax, amax_note(q, x) + (" (explicit)" if amax is not None else "")),
            "y": (y, f"fake-quant output (torch dtype {dtype_name(y)})"),
        },
        notes,
        extra=tq_extra(q),
    )
    return q, y


def int_cases():
    print("INT fake quant")
    xs = randn(101, (32, 64))
    for nb in (2, 3, 4, 8):
        fake_case(f"int{nb}_per_tensor", {"num_bits": nb}, xs)
        fake_case(f"int{nb}_per_tensor_narrow", {"num_bits": nb, "narrow_range": True}, xs)
        fake_case(
            f"int{nb}_per_tensor_unsigned",
            {"num_bits": nb, "unsigned": True},
            randn(102, (32, 64)).abs(),
        )
    fake_case("int8_per_tensor_bf16", {"num_bits": 8}, randn(103, (32, 64), dtype=torch.bfloat16))
    fake_case("int4_per_tensor_bf16", {"num_bits": 4}, randn(103, (32, 64), dtype=torch.bfloat16))
    # unsigned on negative input -> ModelOpt raises
    fake_case("int8_unsigned_negative_input", {"num_bits": 8, "unsigned": True}, xs)

    w = randn(104, (32, 128), scale=0.05)
    for nb in (4, 8):
        fake_case(f"int{nb}_axis0", {"num_bits": nb, "axis": 0}, w)
        fake_case(f"int{nb}_axis0_narrow", {"num_bits": nb, "axis": 0, "narrow_range": True}, w)
    fake_case("int8_axis_neg1", {"num_bits": 8, "axis": -1}, w)
    fake_case("int8_axis_tuple0", {"num_bits": 8, "axis": (0,)}, w)
    fake_case("int8_axis0_bf16", {"num_bits": 8, "axis": 0}, w.to(torch.bfloat16))
    fake_case("int8_axis_0_2_3d", {"num_bits": 8, "axis": (0, 2)}, randn(105, (4, 8, 32)))

    wb = randn(106, (16, 256), scale=0.05)
    for nb in (4, 8):
        for bs in (16, 128):
            fake_case(f"int{nb}_block{bs}", {"num_bits": nb, "block_sizes": {-1: bs}}, wb)
    wp = randn(107, (8, 200), scale=0.05)
    for bs in (16, 128):
        fake_case(
            f"int4_block{bs}_pad200",
            {"num_bits": 4, "block_sizes": {-1: bs}},
            wp,
            notes=[
                "last dim 200 is not a multiple of the block size: ModelOpt zero-pads the last "
                "axis on the right (TensorQuantizer._setup_for_blockquant / F.pad), quantizes, "
                "then slices back; amax rows include the padded block (zeros never raise amax)."
            ],
        )
    fake_case(
        "int8_block16_bf16", {"num_bits": 8, "block_sizes": {-1: 16}}, wb.to(torch.bfloat16)
    )

    # tiny / zero amax
    tiny = randn(108, (16, 64)).clamp(-1, 1) * 2.0**-25  # |x| <= 2^-25
    fake_case(
        "int8_tiny_amax",
        {"num_bits": 8},
        tiny,
        notes=["all |x| <= 2^-25 so calibrated amax <= 2^-24 (ModelOpt epsilon): output all zero"],
    )
    edge = torch.zeros(4, 16)
    edge[0, 0] = 2.0**-24
    edge[0, 1] = -(2.0**-25)
    fake_case(
        "int8_amax_eq_eps",
        {"num_bits": 8},
        edge,
        notes=["amax == 2^-24 exactly: ModelOpt's test is amax <= 2^-24 -> treated as zero amax"],
    )
    edge2 = edge.clone()
    edge2[0, 0] = 2.0**-23
    fake_case(
        "int8_amax_2x_eps",
        {"num_bits": 8},
        edge2,
        notes=["amax == 2^-23 (> epsilon): quantized normally"],
    )
    fake_case("int8_all_zero", {"num_bits": 8}, torch.zeros(8, 64))
    fake_case("int4_all_zero_block16", {"num_bits": 4, "block_sizes": {-1: 16}}, torch.zeros(8, 64))
    mixed = randn(109, (8, 64))
    mixed[0] = 0.0
    mixed[1] = mixed[1].clamp(-1, 1) * 2.0**-26
    fake_case(
        "int8_axis0_zero_and_tiny_rows",
        {"num_bits": 8, "axis": 0},
        mixed,
        notes=["row 0 all zero, row 1 |x| <= 2^-26: both rows have amax <= 2^-24 -> zeros"],
    )
    fake_case(
        "int8_explicit_tiny_amax",
        {"num_bits": 8},
        randn(110, (8, 64)),
        amax=torch.tensor(2.0**-25),
        notes=["explicit amax 2^-25 with O(1) inputs: scale forced to 0 -> output all zero"],
    )

    # exact ties: amax == maxbound -> scale == 1, x contains k + 0.5
    for nb in (4, 8):
        mb = 2 ** (nb - 1) - 1
        vals = torch.arange(-mb, mb + 1, dtype=torch.float32)  # max|x| == mb exactly
        halves = vals[:-1] + 0.5  # -mb+0.5 .. mb-0.5: every one an exact tie
        t = torch.cat([vals, halves])
        t = torch.cat([t, torch.zeros((-t.numel()) % 16)]).reshape(-1, 16)
        fake_case(
            f"int{nb}_ties",
            {"num_bits": nb},
            t,
            notes=[
                f"calibrated amax == {mb} == maxbound so scale == 1.0 and y == round(x); inputs "
                "k+0.5 are exact ties (torch.round = round-half-to-even)"
            ],
        )
    # explicit amax smaller than max|x| -> clipping; narrow vs full range
    big = randn(111, (8, 64))
    a = big.abs().max() * 0.5
    fake_case("int8_explicit_amax_clip", {"num_bits": 8}, big, amax=a)
    fake_case("int8_explicit_amax_clip_narrow", {"num_bits": 8, "narrow_range": True}, big, amax=a)
    fake_case("int4_explicit_amax_clip", {"num_bits": 4}, big, amax=a)


def fp8_cases():
    print("FP8 fake quant")
    # seed 209: its amax makes 1/(448/amax) != amax/448 in fp32 (see fp8_e4m3_real_per_tensor)
    xs = randn(209, (32, 64))
    fake_case("fp8_e4m3_per_tensor", {"num_bits": (4, 3)}, xs)
    fake_case("fp8_e4m3_per_tensor_bf16", {"num_bits": (4, 3)}, xs.to(torch.bfloat16))
    # seed 212: torch's `448.0 / amax` (python scalar / tensor) is evaluated as
    # reciprocal(amax) * 448 -> two roundings; for this amax it differs from the correctly
    # rounded fp32 448/amax, and every output element changes with it.
    xr = randn(212, (32, 64))
    r = fake_case(
        "fp8_e4m3_per_tensor_scale_rounding",
        {"num_bits": (4, 3)},
        xr,
        notes=[
            "amax chosen (seed 212) so that ModelOpt's scale = 448.0 / amax, which torch "
            "evaluates as fl(fl(1/amax) * 448), differs from the correctly rounded fp32 "
            "448/amax; see scale_check"
        ],
    )
    if r is not None:
        q, y = r
        a32 = q.amax.float()
        s_torch = 448.0 / a32
        s_true = torch.tensor(448.0) / a32  # tensor / tensor: correctly rounded
        y_true = (xr * s_true).clamp(-448, 448).to(torch.float8_e4m3fn).float() * (1 / s_true)
        R.cases[-1]["scale_check"] = {
            "scale_modelopt_448.0/amax": float(s_torch),
            "scale_equals_fl(fl(1/amax)*448)": bool(s_torch == torch.reciprocal(a32) * 448.0),
            "scale_correctly_rounded_fp32_448/amax": float(s_true),
            "y_elements_that_differ_if_correctly_rounded_scale_used": int((y_true != y).sum()),
        }
    w = randn(202, (32, 128), scale=0.05)
    fake_case("fp8_e4m3_axis0", {"num_bits": (4, 3), "axis": 0}, w)
    fake_case("fp8_e4m3_axis0_bf16", {"num_bits": (4, 3), "axis": 0}, w.to(torch.bfloat16))
    wb = randn(203, (256, 384), scale=0.02)
    wb[0:128, 128:256] *= 50.0  # make per-block amax differ a lot
    wb[128:256, 0:128] *= 0.01
    wb = wb.to(torch.bfloat16).float()  # bf16-representable fp32 values: keeps the npz small
    fake_case(
        "fp8_e4m3_block128x128",
        {"num_bits": (4, 3), "block_sizes": {-1: 128, -2: 128}},
        wb,
        notes=[
            "input dtype is float32, but its values were rounded to bf16-representable numbers "
            "to keep the npz small (the quantizer still sees a float32 tensor)"
        ],
    )
    tiny = randn(204, (16, 64)).clamp(-1, 1) * 2.0**-25
    fake_case(
        "fp8_e4m3_tiny_amax",
        {"num_bits": (4, 3)},
        tiny,
        notes=[
            "calibrated amax <= 2^-24: ModelOpt's _fp8_eager replaces amax by 1.0 (scale 448) "
            "instead of zeroing; x*448 underflows E4M3 here, so y is 0"
        ],
    )
    fake_case(
        "fp8_e4m3_explicit_tiny_amax",
        {"num_bits": (4, 3)},
        randn(205, (16, 64)),
        amax=torch.tensor(2.0**-25),
        notes=[
            "explicit amax 2^-25 (<= 2^-24) with O(1) inputs: amax is replaced by 1.0, so the "
            "result equals fake quant with amax=1 (values clamp at +-1*448/448), NOT zero"
        ],
    )
    fake_case("fp8_e4m3_all_zero", {"num_bits": (4, 3)}, torch.zeros(8, 64))
    sat = randn(206, (16, 64))
    fake_case(
        "fp8_e4m3_saturation",
        {"num_bits": (4, 3)},
        sat,
        amax=sat.abs().max() * 0.25,
        notes=["explicit amax = max|x|/4: x*448/amax is clamped to +-448 before the E4M3 cast"],
    )
    wsat = randn(207, (16, 64))
    fake_case(
        "fp8_e4m3_axis0_saturation",
        {"num_bits": (4, 3), "axis": 0},
        wsat,
        amax=wsat.abs().amax(dim=1, keepdim=True) * 0.5,
        notes=["explicit per-row amax = rowmax/2 (shape (16,1)) -> saturation per row"],
    )
    # exact E4M3 ties with amax == 448 (scale 1): midpoints between neighbouring E4M3 values
    grid = torch.arange(0, 127, dtype=torch.uint8).view(torch.float8_e4m3fn).float()  # 0..448
    mids = (grid[:-1] + grid[1:]) / 2
    t = torch.cat([grid, mids, torch.tensor([460.0, 464.0, 480.0, 1000.0, 2.0**-10, 2.0**-11])])
    t = torch.cat([t, -t])
    t = torch.cat([t, torch.zeros((-t.numel()) % 16)]).reshape(-1, 16)
    fake_case(
        "fp8_e4m3_ties",
        {"num_bits": (4, 3)},
        t,
        amax=torch.tensor(448.0),
        notes=[
            "explicit amax 448 -> scale exactly 1; x holds every non-negative finite E4M3 value, "
            "every midpoint between neighbours (exact ties), values above 448 (clamped), "
            "2^-10 (half the smallest subnormal, tie with 0) and 2^-11, and all negatives"
        ],
    )
    # E5M2 attempts (ModelOpt only allows E5M2 as a dynamic MX block format)
    fake_case("fp8_e5m2_per_tensor", {"num_bits": (5, 2)}, xs)
    fake_case("fp8_e5m2_axis0", {"num_bits": (5, 2), "axis": 0}, w)
    try:
        tensor_quant.scaled_e4m3(xs, xs.abs().max(), None, 5, 2, None, False)
    except Exception as e:  # noqa: BLE001
        R.fail(
            "fp8_e5m2_scaled_e4m3_direct",
            "fake_quant",
            {"E": 5, "M": 2},
            xs,
            "modelopt.torch.quantization.tensor_quant.scaled_e4m3(x, amax, None, 5, 2, None, False)",
            e,
        )
    # direct low-level function, equals TensorQuantizer per-tensor path
    amax = xs.abs().max()
    y = tensor_quant.scaled_e4m3(xs, amax, None, 4, 3, None, False)
    R.add(
        "fp8_e4m3_scaled_e4m3_direct",
        "fake_quant",
        {"num_bits": (4, 3)},
        xs,
        "modelopt.torch.quantization.tensor_quant.scaled_e4m3(x, amax, None, 4, 3, None, False)",
        {
            "x": (xs, "input"),
            "amax": (amax, "per-tensor amax = max|x| (0-d)"),
            "y": (y, "fake-quant output"),
        },
        [FP8_FAKE_NOTE],
    )
    xi = randn(208, (16, 64))
    amax = xi.abs().amax(dim=1, keepdim=True)
    y = tensor_quant.fake_tensor_quant(xi, amax, None, 4, False, True)
    R.add(
        "int4_fake_tensor_quant_direct_axis0_narrow",
        "fake_quant",
        {"num_bits": 4, "axis": 0, "narrow_range": True},
        xi,
        "modelopt.torch.quantization.tensor_quant.fake_tensor_quant(x, amax, None, 4, False, True)"
        "  (CPU -> _tensor_quant)",
        {
            "x": (xi, "input"),
            "amax": (amax, "per-row amax (16,1)"),
            "y": (y, "fake-quant output"),
        },
        [INT_FAKE_NOTE],
    )


# --------------------------------------------------------------------------- real quant
def real_tq(name, spec, x, qtensor_name, amax=None, calib=True, notes=None, kind="real_quant",
            intermediates=None, extra=None):
    rspec = dict(spec, fake_quant=False)
    if amax is not None:
        calib_desc = "q.amax = <explicit amax>; "
    elif calib:
        calib_desc = "max calibration (as for fake quant); "
    else:
        calib_desc = ""
    call = TQ_REAL_CALL.format(calib=calib_desc, qtensor=qtensor_name)
    try:
        q = TensorQuantizer(QuantizerAttributeConfig(**rspec))
        with torch.no_grad():
            if amax is not None:
                q.amax = amax
            elif calib:
                calibrate(q, x)
            qt = q(x)
            deq = q(qt)
    except Exception as e:  # noqa: BLE001
        R.fail(name, kind, rspec, x, call, e)
        return None
    arrays = {"x": (x, "input")}
    if q.amax is not None:
        arrays["amax"] = (q.amax, amax_note(q, x) + (" (explicit)" if amax is not None else ""))
    arrays["packed"] = (qt._quantized_data, f"{type(qt).__name__}._quantized_data")
    arrays["scale"] = (q._scale, "TensorQuantizer._scale after _real_quantize")
    if getattr(q, "_double_scale", None) is not None:
        arrays["global_scale"] = (
            q._double_scale,
            "TensorQuantizer._double_scale = weights_scaling_factor_2 = amax / (6 * 448)",
        )
    arrays["deq"] = (deq, f"dequantized (torch dtype {dtype_name(deq)})")
    for k, v in (intermediates or {}).items():
        arrays[k] = v
    R.add(name, kind, rspec, x, call, arrays, notes, extra=extra)
    return q, qt, deq


def nvfp4_intermediates(x, sf2):
    xp = reduce_block_padding(x, {-1: 16})
    pba = reduce_block_amax(xp, {-1: 16}).float()
    pbs, _ = NVFP4QTensor.get_weights_scaling_factor(xp, 16, sf2, keep_high_precision=True)
    return {
        "block_amax": (pba, "reduce_block_amax(x, {-1: 16}) as float32, shape (rows, cols/16)"),
        "block_scale_hp": (
            pbs,
            "NVFP4QTensor.get_weights_scaling_factor(..., keep_high_precision=True): "
            "block_amax / (6 * global_scale), zeros replaced by 1.0, before the E4M3 cast",
        ),
    }


NVFP4_SPEC = {"num_bits": (2, 1), "block_sizes": {-1: 16, "type": "dynamic", "scale_bits": (4, 3)}}
NVFP4_NOTES = [
    "ModelOpt's NVFP4 fake-quant path (TensorQuantizer fake_quant=True -> dynamic_block_quant) "
    "needs CUDA (see unsupported.json), so the CPU reference is real quant + dequant",
    "packed: uint8, element 2j in the LOW nibble, element 2j+1 in the HIGH nibble; nibble = "
    "sign<<3 | E2M1 magnitude code (0,0.5,1,1.5,2,3,4,6)",
    "scale: E4M3 block scales (uint8 bits), shape (rows, cols/16); global_scale: float32 0-d",
    "deq = e2m1(code) * (float(scale_e4m3) * global_scale)",
    "NVFP4QTensor.quantize: global_scale = amax.float() / (6*448); block scale = "
    "block_amax / (6 * global_scale), ==0 -> 1.0, clamp [2^-9, 448], cast to E4M3 (RNE); "
    "x_scaled = x / (float(scale_e4m3) * global_scale) (a division, in float32); E2M1 code via "
    "searchsorted on bounds (0.25,0.75,1.25,1.75,2.5,3.5,5) plus 1 at exactly 0.75/1.75/3.5, i.e. "
    "round-half-to-even; |x_scaled| > 5 -> 6 (saturates)",
    "sign bit = (x < 0): a negative value that rounds to 0 gets nibble 0x8, which "
    "dequantizes to +0.0 (ModelOpt's table maps code 8 to 0, not -0); -0.0 input gets nibble 0",
]


def nvfp4_case(name, x, amax=None, notes=None):
    with torch.no_grad():
        if amax is not None:
            a = amax
        else:
            qc = TensorQuantizer(QuantizerAttributeConfig(**NVFP4_SPEC))
            calibrate(qc, x)
            a = qc.amax
        sf2 = a.float() / (6.0 * 448.0)
        inter = nvfp4_intermediates(x, sf2)
    return real_tq(
        name,
        NVFP4_SPEC,
        x,
        "NVFP4QTensor",
        amax=amax,
        calib=True,
        notes=NVFP4_NOTES + list(notes or []),
        intermediates=inter,
    )


def nvfp4_cases():
    print("NVFP4")
    x32 = randn(301, (32, 64))
    x16 = randn(302, (16, 256), scale=0.03)
    # fake quant attempts (CUDA-only in ModelOpt)
    fake_case("nvfp4_fake_fp32_32x64", NVFP4_SPEC, x32)
    fake_case("nvfp4_fake_bf16_16x256", NVFP4_SPEC, x16.to(torch.bfloat16))
    fake_case(
        "nvfp4_fake_2d_16x16",
        {"num_bits": (2, 1), "block_sizes": {-1: 16, -2: 16, "type": "dynamic", "scale_bits": (4, 3)}},
        x32,
    )
    # real quant + dequant (CPU)
    nvfp4_case("nvfp4_fp32_32x64", x32)
    nvfp4_case("nvfp4_bf16_32x64", x32.to(torch.bfloat16))
    nvfp4_case("nvfp4_fp32_16x256", x16)
    nvfp4_case("nvfp4_bf16_16x256", x16.to(torch.bfloat16))
    nvfp4_case(
        "nvfp4_all_zero",
        torch.zeros(8, 64),
        notes=[
            "all-zero input: amax 0 -> global_scale 0 -> block_amax/(6*0) = 0/0 = NaN (not caught "
            "by the ==0 -> 1.0 fix-up) -> NaN E4M3 block scales (bits 0xFF observed), "
            "x/(NaN*0) = NaN encodes as nibble 7 (packed 0x77; |NaN| sorts past every bound in "
            "searchsorted), and deq is NaN everywhere"
        ],
    )
    xz = randn(303, (8, 64))
    xz[2, 16:32] = 0.0
    nvfp4_case(
        "nvfp4_one_zero_block",
        xz,
        notes=["row 2 block 1 is all zero: its block scale becomes 1.0 (E4M3 0x38) and deq is 0"],
    )
    xw = randn(304, (4, 64))
    xw[0] *= 1000.0
    xw[1, :16] *= 1e-4
    xw[1, 16:32] *= 1e-2
    xw[2, :16] *= 1e-6
    nvfp4_case(
        "nvfp4_wide_range",
        xw,
        notes=[
            "blocks ~1e-4/1e-6 of the global amax: block_amax/(6*global_scale) falls below 2^-9 "
            "and is clamped to 2^-9 (smallest E4M3 subnormal) before the cast"
        ],
    )
    xs = randn(305, (8, 64))
    nvfp4_case(
        "nvfp4_global_amax_too_small",
        xs,
        amax=xs.abs().max() * 0.25,
        notes=[
            "explicit per-tensor amax = max|x|/4: block scales above 448 clamp to 448 and "
            "x/scale above 6 saturates to E2M1 6"
        ],
    )
    # odd last dim: real quant pads, dequant cannot reshape back
    xp = randn(306, (8, 40))
    real_tq("nvfp4_pad_8x40", NVFP4_SPEC, xp, "NVFP4QTensor")
    qt, s, s2 = NVFP4QTensor.quantize(xp, 16)
    R.add(
        "nvfp4_pad_8x40_quantize_only",
        "real_quant",
        {"block_size": 16},
        xp,
        "NVFP4QTensor.quantize(x, 16)  (dequantize of this result raises, see unsupported.json "
        "nvfp4_pad_8x40)",
        {
            "x": (xp, "input, last dim 40 = 2.5 blocks"),
            "packed": (qt._quantized_data, "packed E2M1 of the zero-padded (8, 48) tensor"),
            "scale": (s, "E4M3 block scales of the padded tensor, shape (8, 3)"),
            "global_scale": (s2, "max|x| / (6*448)"),
        },
        NVFP4_NOTES[1:]
        + [
            "NVFP4QTensor.quantize zero-pads the last axis to a multiple of 16 (40 -> 48) and "
            "keeps the padded codes (packed (8, 24)) while recording the original shape (8, 40); "
            "its dequantize then fails to reshape 384 values into (8, 40), so no deq here"
        ],
    )
    # low-level entry point, no TensorQuantizer
    x = randn(307, (16, 64))
    qt, s, s2 = NVFP4QTensor.quantize(x, 16)
    deq = qt.dequantize(scale=s, double_scale=s2, block_sizes={-1: 16})
    R.add(
        "nvfp4_qtensor_direct_16x64",
        "real_quant",
        {"block_size": 16},
        x,
        "NVFP4QTensor.quantize(x, 16) (global scale from max|x|); "
        "qt.dequantize(scale=s, double_scale=s2, block_sizes={-1: 16})",
        {
            "x": (x, "input"),
            "packed": (qt._quantized_data, "packed E2M1, low nibble = even element"),
            "scale": (s, "E4M3 block scales (uint8 bits)"),
            "global_scale": (s2, "weights_scaling_factor_2 = max|x| / (6*448)"),
            "deq": (deq, "dequantized"),
            **nvfp4_intermediates(x, s2),
        },
        NVFP4_NOTES[1:],
    )


MX_NOTES_FP4 = [
    "MXFP4QTensor.quantize: e8m0 = ceil(max(log2(block_amax/6), -127)) (NOT the OCP "
    "floor(log2(amax)) - 2 rule), scale stored as uint8 e8m0+127; x / 2^e8m0 cast to E2M1 with "
    "code = #(bounds strictly below |x|) -> exact ties round toward ZERO (0.75->0.5, 1.75->1.5, "
    "3.5->3), unlike NVFP4QTensor (round-half-even)",
    "sign bit = (2 - torch.sign(x)) // 2, so an exact 0 gets sign bit 1 (nibble 0x8) and "
    "dequantizes to -0.0",
    "packed: low nibble = even element, high nibble = odd element; blocks run over x.view(-1, 32)"
    " so scale has shape (numel/32, 1) (flattened, not (rows, cols/32))",
    "ModelOpt's MXFP4 fake-quant path is a CUDA extension only (see unsupported.json)",
]
MX_NOTES_FP8 = [
    "MXFP8QTensor.quantize: e8m0 = clamp(ceil(log2(block_amax/448)), -127, 127) "
    "(block_amax == 0 -> -127), scale uint8 = e8m0 + 127; q = E4M3(clamp(x * 2^(127-scale), "
    "+-448)); deq = float(q) * 2^(scale-127)",
    "packed holds the E4M3 element bits (uint8), same shape as x",
    "ModelOpt's MXFP8 fake-quant path is a CUDA extension only (see unsupported.json)",
]


def mx_cases():
    print("MX")
    mxfp8 = {"num_bits": (4, 3), "block_sizes": {-1: 32, "type": "dynamic", "scale_bits": (8, 0)}}
    mxfp4 = {"num_bits": (2, 1), "block_sizes": {-1: 32, "type": "dynamic", "scale_bits": (8, 0)}}
    mxint8 = {"num_bits": 8, "block_sizes": {-1: 32, "type": "dynamic", "scale_bits": (8, 0)}}
    x = randn(401, (16, 256), scale=0.05)
    x[0, :32] = 0.0  # all-zero block
    x[1, :32] = torch.linspace(-448.0, 448.0, 32)  # amax exactly 448 -> e8m0 0
    x[2, :32] = torch.linspace(-449.0, 449.0, 32)  # just above -> e8m0 1
    x[3, :32] *= 1e-30  # tiny block
    fake_case("mxfp8_fake_fp32", mxfp8, x)
    fake_case("mxfp4_fake_fp32", mxfp4, x)
    fake_case("mxint8_fake_fp32", mxint8, x)
    n8 = [
        "row 0 block 0 all zero (scale 0); row 1 block 0 amax exactly 448 (scale 127); row 2 "
        "block 0 amax 449 (scale 128 in fp32; in the bf16 case 449 rounds to 448 -> 127); row 3 "
        "block 0 scaled by 1e-30"
    ]
    real_tq("mxfp8_fp32_16x256", mxfp8, x, "MXFP8QTensor", calib=False, notes=MX_NOTES_FP8 + n8)
    real_tq(
        "mxfp8_bf16_16x256", mxfp8, x.to(torch.bfloat16), "MXFP8QTensor", calib=False,
        notes=MX_NOTES_FP8 + n8,
    )
    x4 = randn(402, (16, 256))
    x4[0, :32] = 0.0
    x4[1, :32] = torch.linspace(-6.0, 6.0, 32)
    x4[2, :32] = torch.linspace(-6.1, 6.1, 32)
    x4[3, :32] = torch.linspace(-7.0, 7.0, 32)
    n4 = [
        "row 0 block 0 all zero (scale 0 = 2^-127, nibbles 0x8 -> -0.0); row 1 block 0 has "
        "amax 6.0 (scale 127), row 2 block 0 amax 6.1 and row 3 block 0 amax 7.0 (scale 128: "
        "ceil(log2(amax/6)) = 1, so nothing saturates; OCP floor rule would give 127 and clamp)"
    ]
    real_tq("mxfp4_fp32_16x256", mxfp4, x4, "MXFP4QTensor", calib=False, notes=MX_NOTES_FP4 + n4)
    real_tq(
        "mxfp4_bf16_16x256", mxfp4, x4.to(torch.bfloat16), "MXFP4QTensor", calib=False,
        notes=MX_NOTES_FP4 + n4,
    )
    real_tq("mxint8_real", mxint8, x, "(none)", calib=False)


# --------------------------------------------------------------------------- E2M1 table
def e2m1_inputs():
    bounds = [0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0]
    pos = []
    for b in bounds:
        pos += [b - 0.1, b, b + 0.1]
    pos += [0.0, 6.0, 7.0, 100.0]
    vals = pos + [-v for v in pos]  # includes -0.0
    return vals


def e2m1_cases():
    print("E2M1 table")
    vals = e2m1_inputs()
    n = len(vals)
    # (a) explicit block scale 1.0 (E4M3) and global scale 1.0: x/(1*1) == x exactly
    row = torch.tensor(vals + [0.0] * ((-n) % 16), dtype=torch.float32).reshape(1, -1)
    nb = row.shape[1] // 16
    s = torch.ones(1, nb).to(torch.float8_e4m3fn)
    s2 = torch.tensor(1.0)
    qt, s_out, s2_out = NVFP4QTensor.quantize(
        row.clone(), 16, weights_scaling_factor=s, weights_scaling_factor_2=s2
    )
    deq = qt.dequantize(scale=s_out, double_scale=s2_out, block_sizes={-1: 16})
    R.add(
        "e2m1_nvfp4_explicit_scale1",
        "e2m1_table",
        {"block_size": 16, "weights_scaling_factor": "E4M3 1.0 for every block",
         "weights_scaling_factor_2": 1.0},
        row,
        "NVFP4QTensor.quantize(x, 16, weights_scaling_factor=ones(E4M3), "
        "weights_scaling_factor_2=tensor(1.0)); qt.dequantize(scale, double_scale, {-1: 16})",
        {
            "x": (row, f"{n} table inputs then zero padding to a multiple of 16"),
            "packed": (qt._quantized_data, "packed E2M1 (low nibble = even element)"),
            "scale": (s_out, "E4M3 block scales (all 1.0 = 0x38)"),
            "global_scale": (s2_out, "1.0"),
            "deq": (deq, "E2M1 value chosen for each input (scale 1)"),
        },
        [
            "block scale and global scale passed explicitly as 1.0, so x / (1.0 * 1.0) == x: "
            "deq is exactly the E2M1 rounding of each input, including +-7 and +-100 saturating "
            "to +-6",
            f"first {n} entries are the table (b-0.1, b, b+0.1 for each bound b, then 0, 6, 7, 100,"
            " then the negatives of all of these incl. -0.0); the rest is zero padding",
        ],
        extra={"table_len": n},
    )
    # (b) natural: each block's amax is 6.0 and global amax 2688 = 6*448 -> global scale 1,
    #     block scale 6/(6*1) = 1 exactly, computed by ModelOpt itself.
    small = [v for v in vals if abs(v) <= 6.0 and abs(v) != 6.0]
    blocks = []
    for i in range(0, len(small), 15):
        chunk = small[i : i + 15]
        chunk = chunk + [0.0] * (15 - len(chunk))
        blocks.append([6.0] + chunk)
    xb = torch.tensor(blocks, dtype=torch.float32).reshape(1, -1)
    real_tq(
        "e2m1_nvfp4_natural_scale1",
        NVFP4_SPEC,
        xb,
        "NVFP4QTensor",
        amax=torch.tensor(2688.0),
        kind="e2m1_table",
        notes=[
            "every 16-block starts with 6.0 and holds only |v| < 6 otherwise, so block_amax == 6;"
            " the quantizer amax is set to 2688 = 6*448, so global_scale == 1.0 exactly and "
            "ModelOpt computes block scale 6/(6*1) = 1.0 (E4M3 0x38) itself",
            "table values whose magnitude is >= 6 (+-6, +-7, +-100) are left out here (they "
            "would change the block scale); see e2m1_nvfp4_explicit_scale1 for them",
        ],
    )
    # (c) MXFP4 with scale exactly 1: every 32-block has amax 6 -> e8m0 = ceil(log2(1)) = 0
    blocks = []
    for i in range(0, len(small), 31):
        chunk = small[i : i + 31]
        chunk = chunk + [0.0] * (31 - len(chunk))
        blocks.append([6.0] + chunk)
    xm = torch.tensor(blocks, dtype=torch.float32).reshape(1, -1)
    r = real_tq(
        "e2m1_mxfp4_scale1",
        {"num_bits": (2, 1), "block_sizes": {-1: 32, "type": "dynamic", "scale_bits": (8, 0)}},
        xm,
        "MXFP4QTensor",
        calib=False,
        kind="e2m1_table",
        notes=MX_NOTES_FP4
        + [
            "every 32-block starts with 6.0, so e8m0 scale = 127 (2^0) and deq is the raw E2M1 "
            "choice; compare with e2m1_nvfp4_natural_scale1 on the same values for ties",
        ],
    )
    if r is not None:
        # record where the two ModelOpt CPU paths disagree (tie rounding evidence)
        _, _, deq_mx = r
        xn = R.arrays["e2m1_nvfp4_natural_scale1/x"].reshape(-1)
        dn = R.arrays["e2m1_nvfp4_natural_scale1/deq"].reshape(-1)
        nv_map = {float(a): float(b) for a, b in zip(xn, dn)}
        diffs = []
        for a, b in zip(xm.reshape(-1).tolist(), deq_mx.reshape(-1).tolist()):
            if a in nv_map and nv_map[a] != b:
                diffs.append({"x": a, "mxfp4_real_quant": b, "nvfp4_real_quant": nv_map[a]})
        uniq = {d["x"]: d for d in diffs}
        R.cases[-1]["tie_differences_vs_nvfp4"] = sorted(uniq.values(), key=lambda d: d["x"])
        R.cases[-1]["notes"].append(
            "tie_differences_vs_nvfp4 lists every input where MXFP4QTensor and NVFP4QTensor "
            "(both at scale 1) pick different E2M1 values"
        )


# --------------------------------------------------------------------------- INT4 / INT8 / FP8 real
def int_real_cases():
    print("INT4 / INT8 / FP8 real quant")
    x = randn(501, (16, 256), scale=0.05)
    qt, sc = INT4QTensor.quantize(x, 128)
    deq = qt.dequantize(scale=sc, block_sizes={-1: 128})
    int4_notes = [
        "INT4QTensor (AWQ-style): blocks of 128 over x.view(-1) (padded with zeros at the END of "
        "the flattened tensor, so a block can span rows when the last dim is not a multiple)",
        "scale = 7 / block_amax (an INVERSE scale, float32, shape (num_blocks, 1)); torch "
        "evaluates python-int / tensor as reciprocal(block_amax) * 7 (two roundings), which the "
        "stored scale reflects; "
        "q = clamp(round(x*scale), -8, 7) + 8 stored as uint4",
        "packed: element 2j in the HIGH nibble, element 2j+1 in the LOW nibble (opposite of "
        "NVFP4/MXFP4); deq = (nibble - 8) / scale",
    ]
    R.add(
        "int4_awq_block128",
        "real_quant",
        {"num_bits": 4, "block_sizes": {-1: 128}},
        x,
        "INT4QTensor.quantize(x, 128); qt.dequantize(scale=scales, block_sizes={-1: 128})",
        {
            "x": (x, "input"),
            "packed": (qt._quantized_data, "uint8, 2 elements per byte"),
            "scale": (sc, "7 / block_amax, shape (num_blocks, 1)"),
            "deq": (deq, "dequantized"),
        },
        int4_notes,
    )
    xp = randn(502, (8, 200), scale=0.05)
    qt, sc = INT4QTensor.quantize(xp, 128)
    deq = qt.dequantize(scale=sc, block_sizes={-1: 128})
    R.add(
        "int4_awq_block128_pad200",
        "real_quant",
        {"num_bits": 4, "block_sizes": {-1: 128}},
        xp,
        "INT4QTensor.quantize(x, 128); qt.dequantize(scale=scales, block_sizes={-1: 128})",
        {
            "x": (xp, "input"),
            "packed": (qt._quantized_data, "uint8; reshaped to (8, -1) after flat padding"),
            "scale": (sc, "7 / block_amax over the FLATTENED tensor (1600 -> 1664 = 13 blocks)"),
            "deq": (deq, "dequantized"),
        },
        int4_notes
        + ["8x200 = 1600 elements -> padded to 1664; blocks cross row boundaries (no per-row pad)"],
    )
    xz = randn(503, (2, 256), scale=0.05)
    xz[0, :128] = 0.0
    qt, sc = INT4QTensor.quantize(xz, 128)
    deq = qt.dequantize(scale=sc, block_sizes={-1: 128})
    R.add(
        "int4_awq_zero_block",
        "real_quant",
        {"num_bits": 4, "block_sizes": {-1: 128}},
        xz,
        "INT4QTensor.quantize(x, 128); qt.dequantize(scale=scales, block_sizes={-1: 128})",
        {
            "x": (xz, "input"),
            "packed": (qt._quantized_data, "uint8"),
            "scale": (sc, "first block scale is +inf (7/0)"),
            "deq": (deq, "dequantized"),
        },
        int4_notes
        + [
            "all-zero block: scale = 7/0 = inf, x*scale = 0*inf = NaN, NaN.round().clamp() + 8 "
            "is cast NaN -> uint8 (undefined in C; this CPU build gave 0, so every nibble of the "
            "block is 0), and deq = (0-8)/inf = -0.0"
        ],
    )
    # INT8 real quant per channel
    w = randn(504, (32, 64), scale=0.05)
    real_tq(
        "int8_real_axis0",
        {"num_bits": 8, "axis": 0},
        w,
        "INT8QTensor",
        calib=False,
        notes=[
            "INT8QTensor.quantize computes its own amax (ignores calibration): scale = amax/127; "
            "q = clamp(round(x / scale), -128, 127) int8; deq = q * scale"
        ],
    )
    # FP8 real quant
    xs = randn(209, (32, 64))  # same input as fp8_e4m3_per_tensor (fake quant)
    r = real_tq(
        "fp8_e4m3_real_per_tensor",
        {"num_bits": (4, 3)},
        xs,
        "FP8QTensor",
        notes=[
            "scale = amax/448 (calibrated amax); q = E4M3(x / scale) (no clamp before cast); "
            "deq = float(q) * scale. Same x and calibrated amax as fp8_e4m3_per_tensor; see "
            "cross_check_vs_fake_quant"
        ],
    )
    if r is not None:
        q, qt, deq = r
        y = torch.from_numpy(R.arrays["fp8_e4m3_per_tensor/y"])
        amax = q.amax.float()
        codes_fake = (xs * (448.0 / amax)).clamp(-448, 448).to(torch.float8_e4m3fn)
        R.cases[-1]["cross_check_vs_fake_quant"] = {
            "against": "fp8_e4m3_per_tensor/y",
            "elements": int(xs.numel()),
            "e4m3_codes_equal": bool(
                (codes_fake.view(torch.uint8) == qt._quantized_data.view(torch.uint8)).all()
            ),
            "dequantized_values_differ": int((y != deq).sum()),
            "max_rel_diff": float(((y - deq).abs() / y.abs().clamp_min(1e-30)).max()),
            "fake_factor_1_over_(448/amax)": float(1.0 / (448.0 / amax)),
            "real_factor_amax/448": float(amax / 448.0),
            "explanation": "same E4M3 codes; fake quant multiplies them by the fp32 reciprocal "
            "1/(448/amax), real dequant by amax/448, and these fp32 factors can differ in the "
            "last bit",
        }
    wb = randn(506, (136, 200), scale=0.02)
    real_tq(
        "fp8_e4m3_real_block128x128_pad136x200",
        {"num_bits": (4, 3), "block_sizes": {-1: 128, -2: 128}},
        wb,
        "FP8QTensor",
        calib=False,
        notes=[
            "no calibration: FP8QTensor.quantize zero-pads both axes to multiples of 128 "
            "(136x200 -> 256x256), computes per-block amax itself; scale = block_amax / 448, "
            "shape (2, 2); packed (E4M3 bits) and deq are cropped back to 136x200"
        ],
    )


WHY = {
    "int8_unsigned_negative_input": "unsigned INT fake quant rejects negative inputs "
    "(_tensor_quant raises before quantizing)",
    "fp8_e5m2_per_tensor": "QuantizerAttributeConfig only accepts E5M2 (and every FP format "
    "except E4M3/E2M1) with dynamic block_sizes, i.e. as an MX format",
    "fp8_e5m2_axis0": "same config validation as fp8_e5m2_per_tensor",
    "fp8_e5m2_scaled_e4m3_direct": "the FP fake-quant function only implements E4M3",
    "nvfp4_fake_fp32_32x64": "NVFP4 fake quant goes through dynamic_block_quant, whose "
    "implementation asserts a CUDA amax (then uses a Triton kernel or the CUDA MX extension); "
    "there is no CPU fake-quant path for NVFP4 in this ModelOpt",
    "nvfp4_fake_bf16_16x256": "same as nvfp4_fake_fp32_32x64",
    "nvfp4_fake_2d_16x16": "config validation: dynamic block quantization only supports the "
    "last axis, so 2D 16x16 NVFP4 blocks cannot be expressed",
    "nvfp4_pad_8x40": "NVFP4QTensor.quantize pads 40 -> 48, but its dequantize reshapes the "
    "padded 8*48 values to the original (8, 40) and raises (quantize outputs are stored as "
    "nvfp4_pad_8x40_quantize_only)",
    "mxfp8_fake_fp32": "MX fake quant is only implemented by the CUDA extension "
    "modelopt_cuda_ext_mx",
    "mxfp4_fake_fp32": "same as mxfp8_fake_fp32",
    "mxint8_fake_fp32": "same as mxfp8_fake_fp32; MXINT8 has no other implementation",
    "mxint8_real": "TensorQuantizer._real_quantize supports only MXFP4 and MXFP8 among the MX "
    "formats",
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.manual_seed(0)

    int_cases()
    fp8_cases()
    nvfp4_cases()
    mx_cases()
    e2m1_cases()
    int_real_cases()

    npz_path = os.path.join(args.out, NPZ_NAME)
    np.savez_compressed(npz_path, **R.arrays)
    env = {
        "python": platform.python_version(),
        "torch": TORCH_VERSION,
        "modelopt": MODELOPT_VERSION,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "npz": NPZ_NAME,
    }
    for c in R.cases:
        c["npz"] = NPZ_NAME
    for u in R.unsupported:
        u["why"] = WHY.get(u["name"], u["why"])
    with open(os.path.join(args.out, "manifest.json"), "w") as f:
        json.dump(R.cases, f, indent=1, sort_keys=False)
        f.write("\n")
    with open(os.path.join(args.out, "unsupported.json"), "w") as f:
        json.dump({"environment": env, "unsupported": R.unsupported}, f, indent=1)
        f.write("\n")
    print(f"{len(R.cases)} cases, {len(R.unsupported)} unsupported, {len(R.arrays)} arrays")
    print(json.dumps(env, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
