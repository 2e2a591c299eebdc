"""Parity with ModelOpt 0.47's own PyTorch reference numerics (CPU).

The vectors in ``tests/data/modelopt`` were produced by ``make_vectors.py`` in a throwaway environment with
nvidia-modelopt 0.47.0 and a CPU torch 2.13.0 (see its README for the commands and every quirk observed).
This suite needs no torch: it replays each case through jq and compares.

What must hold:

* fake quant (INT2..8 and FP8, per tensor / axis / block, fp32 and bf16): jq's calibrated amax equals
  ModelOpt's and the output is identical bit for bit;
* NVFP4 real quant: packed E2M1 bytes, E4M3 block-scale bytes, the global scale and the dequantized values
  are identical; ModelOpt's CPU path gives NaN for an all-zero tensor where jq gives zeros (documented);
* MXFP8: identical; MXFP4: identical except at exact ties, where ModelOpt's real-quant path rounds toward
  zero and jq rounds to even (OCP; documented in ``jq.numerics.mx``);
* ModelOpt's INT8/INT4/FP8 *real*-quant paths dequantize with ``amax / maxb`` instead of dividing by
  ``maxb / amax``: jq (whose real and fake quant agree exactly) is within 2 ulp of them.
"""

import json
import pathlib

import jax.numpy as jnp
import numpy as np
import pytest

from jq.config import QuantizerSpec
from jq.numerics import E2M1, e2m1_encode, mx_quantize, MXFP4, pack_nibbles, round_to_minifloat
from jq.qtensor import dequantize, e4m3_bits, quantize
from jq.quantizer import compute_amax, fake_quant_reference

DATA = pathlib.Path(__file__).parents[1] / "data" / "modelopt"
MANIFEST = json.loads((DATA / "manifest.json").read_text())
VECTORS = np.load(DATA / "modelopt_vectors.npz")
NVFP4 = {"num_bits": (2, 1), "block_sizes": {-1: 16, "type": "dynamic", "scale_bits": (4, 3)}}

# Cases that cannot be compared element by element, and why.
KNOWN_DIFFERENCES = {
    "int4_awq_block128_pad200": "ModelOpt's INT4QTensor blocks the flattened tensor (blocks span rows when the "
                                "last dim is not a multiple of 128); jq pads each row, like ModelOpt's fake quant "
                                "(compared exactly in int4_block128_pad200)",
}


def _arrays(case):
    return {k: VECTORS[f"{case['name']}/{k}"] for k in case["arrays"]}


def _spec(d) -> QuantizerSpec:
    d = {k: v for k, v in d.items() if k != "fake_quant"}
    if "block_size" in d:  # direct NVFP4QTensor calls
        return QuantizerSpec(**NVFP4)
    if d.get("block_sizes"):
        d["block_sizes"] = {int(k) if k.lstrip("-").isdigit() else k: v for k, v in d["block_sizes"].items()}
    return QuantizerSpec.from_dict(d)


def _input(case, arrays):
    x = jnp.asarray(arrays["x"])
    return x.astype(jnp.bfloat16) if case["input_dtype"] == "bfloat16" else x


def _cases(pred):
    return [pytest.param(c, id=c["name"]) for c in MANIFEST if pred(c)]


def test_every_vector_is_checked():
    checked = sum(1 for c in MANIFEST if c["name"] not in KNOWN_DIFFERENCES)
    assert checked + len(KNOWN_DIFFERENCES) == len(MANIFEST) == 78


@pytest.mark.parametrize("case", _cases(lambda c: c["kind"] == "fake_quant"))
def test_fake_quant_matches_bit_for_bit(case):
    a = _arrays(case)
    x, spec = _input(case, a), _spec(case["spec"])
    amax = compute_amax(x, spec)
    explicit = "explicit" in case["arrays"]["amax"]["note"]
    if not explicit:  # jq's max calibration finds ModelOpt's amax (values; shapes differ by keep-dims layout)
        np.testing.assert_array_equal(np.asarray(amax).ravel(), a["amax"].astype(np.float32).ravel())
    use = jnp.asarray(a["amax"].astype(np.float32)).reshape(np.shape(amax))
    y = np.asarray(fake_quant_reference(x, spec, use).astype(jnp.float32))
    np.testing.assert_array_equal(y, a["y"])


@pytest.mark.parametrize("case", _cases(lambda c: c["kind"] in ("real_quant", "e2m1_table")
                                        and _spec(c["spec"]).kind == "nvfp4"
                                        and c["name"] != "e2m1_nvfp4_explicit_scale1"))
def test_nvfp4_storage_matches_bit_for_bit(case):
    a = _arrays(case)
    x, spec = _input(case, a), _spec(case["spec"])
    amax = jnp.asarray(a["amax"].astype(np.float32)) if "amax" in a else None
    qt = quantize(x, spec, amax)
    if case["name"] == "nvfp4_all_zero":
        assert np.isnan(a["deq"]).all()  # ModelOpt's CPU quirk
        np.testing.assert_array_equal(dequantize(qt, jnp.float32), 0.0)
        return
    np.testing.assert_array_equal(np.asarray(qt.data), a["packed"])
    np.testing.assert_array_equal(e4m3_bits(qt.scale), a["scale"])
    assert np.float32(qt.global_scale) == a["global_scale"]
    if "deq" in a:
        np.testing.assert_array_equal(np.asarray(dequantize(qt), np.float32), a["deq"])


def test_e2m1_table_with_unit_scales():
    (case,) = [c for c in MANIFEST if c["name"] == "e2m1_nvfp4_explicit_scale1"]
    a = _arrays(case)
    x = jnp.asarray(a["x"])
    q = round_to_minifloat(x, E2M1)
    np.testing.assert_array_equal(np.asarray(q), a["deq"])
    np.testing.assert_array_equal(np.asarray(pack_nibbles(e2m1_encode(q, negative=x < 0))), a["packed"])


@pytest.mark.parametrize("case", _cases(lambda c: c["kind"] in ("real_quant", "e2m1_table")
                                        and _spec(c["spec"]).kind in ("mxfp8", "mxfp4")))
def test_mx_storage(case):
    a = _arrays(case)
    x, spec = _input(case, a), _spec(case["spec"])
    qt = quantize(x, spec)
    deq = np.asarray(dequantize(qt), np.float32)
    np.testing.assert_array_equal(np.asarray(qt.scale).ravel(), a["scale"].ravel())  # E8M0 codes
    if spec.kind == "mxfp8":
        np.testing.assert_array_equal(deq, a["deq"])
        return
    q, k, layout = mx_quantize(x.astype(jnp.float32), MXFP4)
    scaled = np.abs(np.asarray(layout.merge(jnp.ldexp(layout.split(x.astype(jnp.float32)), -k))))
    ties = np.isin(scaled, [0.75, 1.75, 3.5])
    np.testing.assert_array_equal(deq[~ties], a["deq"][~ties])
    if ties.any():  # ModelOpt rounds these toward zero, jq to the even neighbour (one grid step up)
        assert (np.abs(deq[ties]) > np.abs(a["deq"][ties])).all()


@pytest.mark.parametrize("case", _cases(lambda c: c["kind"] == "real_quant" and c["name"] not in KNOWN_DIFFERENCES
                                        and _spec(c["spec"]).kind in ("int", "fp8")))
def test_int_fp8_real_quant_within_two_ulp(case):
    a = _arrays(case)
    x, spec = _input(case, a), _spec(case["spec"])
    y = np.asarray(fake_quant_reference(x, spec, compute_amax(x, spec)), np.float32)
    ulp = np.spacing(np.abs(a["deq"]).astype(np.float32))
    assert (np.abs(y - a["deq"]) <= 2 * ulp).all()
