#!/usr/bin/env python3
"""Torch-free sanity check of the ModelOpt parity vectors.

Needs only numpy (ml_dtypes is used if present for the E4M3 layout checks).

    python tests/data/modelopt/check_vectors_numpy.py [DIR]

Asserts that every array referenced by manifest.json exists in the npz with the
recorded shape and dtype, and that the npz holds nothing unreferenced.  With
ml_dtypes it also re-derives, in plain numpy, ModelOpt's `y` for every fake-quant
case and `deq` for the packed real-quant layouts, from the formulas written in
the manifest notes.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

try:
    import ml_dtypes
except ImportError:  # pragma: no cover
    ml_dtypes = None

KINDS = {"fake_quant", "real_quant", "e2m1_table"}
E2M1 = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6], dtype=np.float32)


def e4m3(bits: np.ndarray) -> np.ndarray:
    return bits.view(ml_dtypes.float8_e4m3fn).astype(np.float32)


def nibbles_low_first(packed: np.ndarray) -> np.ndarray:
    out = np.empty(packed.shape[:-1] + (packed.shape[-1] * 2,), dtype=np.uint8)
    out[..., 0::2] = packed & 0x0F
    out[..., 1::2] = packed >> 4
    return out


def check_layout(name: str, case: dict, a: dict) -> bool:
    """Rebuild deq from packed/scale for the real-quant layouts; True if checked."""
    call = case["call"]
    deq = a.get("deq")
    if deq is None or ml_dtypes is None:
        return False
    if "NVFP4QTensor" in call:
        nib = nibbles_low_first(a["packed"])
        val = E2M1[nib & 7] * np.where(nib & 8, -1.0, 1.0).astype(np.float32)
        val[nib == 8] = 0.0  # ModelOpt's table maps code 8 to +0
        s = e4m3(a["scale"]) * np.float32(a["global_scale"])
        rec = (val.reshape(*val.shape[:-1], -1, 16) * s[..., None]).reshape(val.shape)
    elif "MXFP4QTensor" in call:
        nib = nibbles_low_first(a["packed"])
        val = E2M1[nib & 7] * np.where(nib & 8, -1.0, 1.0).astype(np.float32)
        s = np.exp2(a["scale"].astype(np.float32) - 127)
        rec = (val.reshape(-1, 32) * s.reshape(-1, 1)).reshape(val.shape)
    elif "MXFP8QTensor" in call:
        q = e4m3(a["packed"])
        s = np.exp2(a["scale"].astype(np.float32) - 127)
        rec = (q.reshape(*q.shape[:-1], -1, 32) * s[..., None]).reshape(q.shape)
    elif call.startswith("INT4QTensor"):
        p = a["packed"].reshape(-1)
        q = np.empty(p.size * 2, dtype=np.float32)
        q[0::2] = (p >> 4).astype(np.float32) - 8  # HIGH nibble first
        q[1::2] = (p & 0x0F).astype(np.float32) - 8
        q = q.reshape(a["scale"].shape[0], -1)  # one row per block
        rec = (q / a["scale"]).reshape(-1)[: deq.size].reshape(deq.shape)
    else:
        return False
    rec = rec.astype(np.float32)
    if case["input_dtype"] == "bfloat16":
        rec = rec.astype(ml_dtypes.bfloat16).astype(np.float32)
    ok = np.array_equal(rec, deq, equal_nan=True)
    assert ok, f"{name}: documented layout does not reproduce deq"
    return True


def check_fake(name: str, case: dict, a: dict) -> bool:
    """Re-derive y from x and amax with the formulas in INT_FAKE_NOTE / FP8_FAKE_NOTE."""
    if case["kind"] != "fake_quant" or ml_dtypes is None:
        return False
    f32 = np.float32
    x, amax, y = a["x"], a["amax"].astype(f32), a["y"]
    st = case.get("quantizer_state", {})
    xr = x
    if "block_reshape_size" in st:  # static block quant: pad last axis, reshape to blocks
        if "padding" in st:
            xr = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, st["padding"][1])])
        xr = xr.reshape(st["block_reshape_size"])
    spec = case["spec"]
    with np.errstate(divide="ignore"):
        if isinstance(spec["num_bits"], int):
            uns = spec.get("unsigned", False)
            mb = f32(2.0 ** (spec["num_bits"] - 1 + int(uns)) - 1)
            lo = f32(0) if uns else (-mb if spec.get("narrow_range", False) else -mb - 1)
            zero = amax <= f32(2.0**-24)
            scale = np.where(zero, f32(0), mb / amax).astype(f32)
            out = np.clip(np.round(xr * scale), lo, mb)
            yy = out / np.where(zero, f32(1), scale)
        else:
            am = np.where(amax <= f32(2.0**-24), f32(1), amax)
            scale = (f32(448) * (f32(1) / am)).astype(f32)  # torch: 448.0 / t
            q = np.clip(xr * scale, -448, 448).astype(ml_dtypes.float8_e4m3fn).astype(f32)
            yy = q * (f32(1) / scale)
    yy = yy.astype(f32)
    if "block_reshape_size" in st:
        yy = yy.reshape(st["original_shape"])[..., : x.shape[-1]]
    if case["input_dtype"] == "bfloat16":
        yy = yy.astype(ml_dtypes.bfloat16).astype(f32)
    assert np.array_equal(yy, y), f"{name}: documented formula does not reproduce y"
    return True


BOUNDS = np.array([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5], dtype=np.float32)


def check_encode(name: str, case: dict, a: dict) -> bool:
    """Re-derive scales and packed codes from x for NVFP4 / MXFP4 / MXFP8 (manifest notes)."""
    if ml_dtypes is None or "packed" not in a or "scale" not in a:
        return False
    f32 = np.float32
    x = a["x"]
    call = case["call"]
    with np.errstate(all="ignore"):
        if "NVFP4QTensor" in call and x.shape[-1] % 16 == 0:
            gs = f32(a["global_scale"])
            blk = x.reshape(*x.shape[:-1], -1, 16)
            if case["spec"].get("weights_scaling_factor_2") == 1.0:  # explicit scales of 1
                sc = np.ones(blk.shape[:-1], f32)
            else:
                sc = np.abs(blk).max(-1).astype(f32) / (f32(6) * gs)
                sc[sc == 0] = 1.0
            s8 = np.clip(sc, 2.0**-9, 448).astype(ml_dtypes.float8_e4m3fn)
            xs = (blk / (s8.astype(f32) * gs)[..., None]).reshape(x.shape).astype(f32)
            ax = np.abs(xs)
            codes = np.searchsorted(BOUNDS, ax, side="left").astype(np.uint8)
            codes += np.isin(ax, BOUNDS[[1, 3, 5]]).astype(np.uint8)  # ties to even
            codes += (xs < 0).astype(np.uint8) << 3
            scale_bits = s8.view(np.uint8)
        elif "MXFP4QTensor" in call:
            blk = x.reshape(-1, 32)
            e = np.ceil(np.maximum(np.log2(np.abs(blk).max(-1, keepdims=True) / f32(6)), -127))
            xs = (blk / np.exp2(e).astype(f32)).reshape(x.shape).astype(f32)
            codes = (np.abs(xs)[..., None] > BOUNDS).sum(-1).astype(np.uint8)  # ties down
            codes += ((2 - np.sign(xs)) // 2).astype(np.uint8) << 3  # sign(0)=0 -> bit set
            scale_bits = (e + 127).astype(np.uint8)
        elif "MXFP8QTensor" in call:
            blk = x.reshape(*x.shape[:-1], -1, 32)
            d = np.abs(blk).max(-1).astype(f32) / f32(448)
            e = np.clip(np.ceil(np.where(d > 0, np.log2(d), -127)), -127, 127)
            scale_bits = (e + 127).astype(np.uint8)
            q = np.clip(blk * np.exp2(127 - scale_bits.astype(f32))[..., None], -448, 448)
            q = q.astype(f32).astype(ml_dtypes.float8_e4m3fn).view(np.uint8).reshape(x.shape)
            assert np.array_equal(q, a["packed"]), f"{name}: MXFP8 codes"
            assert np.array_equal(scale_bits, a["scale"]), f"{name}: MXFP8 scales"
            return True
        else:
            return False
    packed = (codes[..., 1::2] << 4) | codes[..., 0::2]
    assert np.array_equal(scale_bits, a["scale"]), f"{name}: scales not reproduced"
    assert np.array_equal(packed, a["packed"]), f"{name}: codes not reproduced"
    return True


def main(d: str) -> int:
    with open(os.path.join(d, "manifest.json")) as f:
        cases = json.load(f)
    assert isinstance(cases, list) and cases
    npzs: dict[str, np.lib.npyio.NpzFile] = {}
    seen: dict[str, set] = {}
    names = set()
    n_arrays = n_layout = n_fake = n_enc = 0
    for c in cases:
        name = c["name"]
        assert name not in names, f"duplicate case {name}"
        names.add(name)
        assert c["kind"] in KINDS, (name, c["kind"])
        for k in ("spec", "input_dtype", "shape", "call", "modelopt_version", "arrays", "npz"):
            assert k in c, (name, k)
        assert c["input_dtype"] in ("float32", "bfloat16"), (name, c["input_dtype"])
        if c["npz"] not in npzs:
            npzs[c["npz"]] = np.load(os.path.join(d, c["npz"]))
            seen[c["npz"]] = set()
        z = npzs[c["npz"]]
        assert "x" in c["arrays"], name
        arrays = {}
        for key, meta in c["arrays"].items():
            full = f"{name}/{key}"
            assert full in z.files, f"missing array {full}"
            arr = z[full]
            assert list(arr.shape) == meta["shape"], (full, arr.shape, meta["shape"])
            assert str(arr.dtype) == meta["dtype"], (full, arr.dtype, meta["dtype"])
            arrays[key] = arr
            seen[c["npz"]].add(full)
            n_arrays += 1
        assert list(arrays["x"].shape) == c["shape"], name
        if ml_dtypes is not None and c["input_dtype"] == "bfloat16":
            x = arrays["x"]
            assert np.array_equal(x, x.astype(ml_dtypes.bfloat16).astype(np.float32)), name
        n_layout += check_layout(name, c, arrays)
        n_fake += check_fake(name, c, arrays)
        n_enc += check_encode(name, c, arrays)
    for fn, z in npzs.items():
        extra = set(z.files) - seen[fn]
        assert not extra, f"unreferenced arrays in {fn}: {sorted(extra)[:5]}"
    print(
        f"{len(cases)} cases, {n_arrays} arrays OK; re-derived with numpy: {n_layout} real-quant "
        f"deq, {n_fake} fake-quant y, {n_enc} real-quant encodings (scales + codes from x)"
        + ("" if ml_dtypes else " (ml_dtypes missing: re-derivation skipped)")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__))))
