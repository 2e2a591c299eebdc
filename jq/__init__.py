"""jq: the quantization toolkit for JAX.

Post-training quantization with calibration, quantization-aware training in ordinary optax loops, Pallas
GPU kernels, ONNX Q/DQ export for TensorRT and a Q/DQ placement autotuner. The public API::

    import jq
    qm = jq.quantize(params, apply_fn, jq.NVFP4_DEFAULT_CFG, calib_data=batches)
    y = qm.apply(qm.params, x)
    jq.print_quant_summary(qm)
"""

from jq import formats, numerics, presets, qat, trace
from jq.calib.auto_quantize import auto_quantize
from jq.calibrate import calibrate
from jq.config import Algorithm, BlockSizes, QuantConfig, QuantizerSpec, as_config
from jq.fake_quant import fake_quant, jq_fake_quant_p
from jq.presets import (
    FP8_2D_BLOCKWISE_WEIGHT_ONLY_CFG,
    FP8_BLOCKWISE_CFG,
    FP8_DEFAULT_CFG,
    FP8_KV_CFG,
    FP8_PER_CHANNEL_PER_TOKEN_CFG,
    INT4_AWQ_CFG,
    INT4_AWQ_CLIP_CFG,
    INT4_AWQ_FULL_CFG,
    INT4_BLOCKWISE_WEIGHT_ONLY_CFG,
    INT8_DEFAULT_CFG,
    INT8_SMOOTHQUANT_CFG,
    INT8_SMOOTHQUANT_PER_TOKEN_CFG,
    INT8_WEIGHT_ONLY_CFG,
    MXFP4_DEFAULT_CFG,
    MXFP4_MLP_WEIGHT_ONLY_CFG,
    MXFP6_DEFAULT_CFG,
    MXFP8_DEFAULT_CFG,
    MXINT8_DEFAULT_CFG,
    NVFP4_AWQ_CLIP_CFG,
    NVFP4_AWQ_FULL_CFG,
    NVFP4_AWQ_LITE_CFG,
    NVFP4_DEFAULT_CFG,
    NVFP4_EXPERTS_ONLY_CFG,
    NVFP4_KV_CFG,
    NVFP4_MLP_ONLY_CFG,
    NVFP4_OMLP_ONLY_CFG,
    NVFP4_SVDQUANT_DEFAULT_CFG,
    W4A8_AWQ_BETA_CFG,
    W4A16_NVFP4_CFG,
    get_preset,
    merge_presets,
)
from jq.inspect import disable_quantizer, enable_quantizer, fold_weights, print_quant_summary, quant_summary
from jq.model import QuantizedModel
from jq.quantize import quantize

__version__ = "0.1.0"


def __getattr__(name):  # lazy: jax2onnx/onnx (export) and Pallas GEMMs (deploy) load only when used
    if name in ("export", "deploy"):
        import importlib
        return importlib.import_module(f"jq.{name}")
    raise AttributeError(f"module 'jq' has no attribute {name!r}")
