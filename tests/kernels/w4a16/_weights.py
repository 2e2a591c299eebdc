"""Quantized test weights for the decode-GEMM tests: jq.qtensor storage and its packed form."""

import jax.numpy as jnp
import numpy as np

from jq import qtensor
from jq.config import QuantizerSpec
from jq_kernels.w4a16 import pack_w4

NV1 = QuantizerSpec(num_bits=(2, 1), block_sizes={-1: 16, "type": "dynamic", "scale_bits": (4, 3)})
I4 = QuantizerSpec(num_bits=4, block_sizes={-1: 128})
FMT = {"nvfp4": "nvfp4", "int": "int4"}  # QuantizerSpec.kind -> pack_w4's fmt


def weight(shape, seed):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def packed(qt, dtype="bf16"):
    """``pack_w4`` of a canonical ``[N, K]`` QTensor's arrays."""
    return pack_w4(qt.data, qt.scale, qt.global_scale, fmt=FMT[qt.spec.kind], shape=qt.shape, dtype=dtype)


def quantize(w, spec):
    return qtensor.quantize(w, spec)
