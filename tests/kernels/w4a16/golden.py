"""The golden outputs of the pre-split decode-GEMM code (commit e520b16; see data/README.md)."""

import json
import pathlib

import jax.numpy as jnp
import numpy as np

from jq_kernels.w4a16 import pack_w4

_STEM = pathlib.Path(__file__).parent / "data" / "w4a16_golden_e520b16"


def load():
    """(npz arrays, json metadata)."""
    return np.load(str(_STEM) + ".npz"), json.loads(pathlib.Path(str(_STEM) + ".json").read_text())


def pack_case(arrays, case):
    """``pack_w4`` of a golden case's stored input storage."""
    name = case["key"].rsplit("/", 1)[0]
    scale = arrays[name + "/in_scale"]
    if case["fmt"] == "nvfp4":
        scale = jnp.asarray(scale.view(jnp.float8_e4m3fn))
        gs = arrays[name + "/in_global_scale"]
    else:
        scale, gs = jnp.asarray(scale), None
    return pack_w4(jnp.asarray(arrays[name + "/in_data"]), scale, gs, fmt=case["fmt"], shape=tuple(case["shape"]),
                   dtype=case["dtype"])
