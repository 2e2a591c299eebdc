"""ModelOpt's named presets, with the same names, formats and meaning (ModelOpt 0.4x ``config.py``).

Each preset is a plain ModelOpt-form dict (``{"quant_cfg": ..., "algorithm": ...}``) so that ModelOpt's
recipes for customising them work unchanged::

    cfg = copy.deepcopy(jq.INT4_AWQ_CFG)
    cfg["quant_cfg"]["*lm_head*"] = {"enable": False}

Every preset starts by disabling everything (``"default"``) and ends with the standard exclusions
(lm_head, routers and MoE gates, output layers, embeddings, norms). Output layers are excluded by name
(``*output_layer*``, ``output.*``) and by role: ``"@output_head"`` disables the layer whose result is the
model's output when it sits on top of other layers (the last ``Dense`` of an ``nn.Sequential`` classifier),
whatever its name; delete that key to quantize it. KV-cache presets are fragments meant to
be merged into a main preset with :func:`merge_presets`.

``FP8_BLOCKWISE_CFG`` (DeepSeek-V3's block FP8: 128 x 128 weight tiles, inputs per token in groups of 128) and
``INT8_SMOOTHQUANT_PER_TOKEN_CFG`` (SmoothQuant, alpha 0.5, per-token dynamic INT8 activations: TensorRT-LLM's
SmoothQuant with ``--per_token --per_channel``) is jq's addition. ``INT4_AWQ_CLIP_CFG`` and ``INT4_AWQ_FULL_CFG`` are jq's names for
``INT4_AWQ_CFG`` with ModelOpt's other AWQ algorithms (ModelOpt swaps the algorithm of ``INT4_AWQ_CFG`` and has no preset for them). ModelOpt presets jq
cannot honour are listed in :data:`UNAVAILABLE` with the reason; :func:`get_preset` raises it.
"""

from __future__ import annotations

import copy

__all__ = [
    "DEFAULT_DISABLED_QUANTIZER_CFG",
    "INT8_DEFAULT_CFG",
    "INT8_SMOOTHQUANT_CFG",
    "INT8_SMOOTHQUANT_PER_TOKEN_CFG",
    "INT8_WEIGHT_ONLY_CFG",
    "FP8_DEFAULT_CFG",
    "FP8_PER_CHANNEL_PER_TOKEN_CFG",
    "FP8_BLOCKWISE_CFG",
    "FP8_2D_BLOCKWISE_WEIGHT_ONLY_CFG",
    "INT4_BLOCKWISE_WEIGHT_ONLY_CFG",
    "INT4_AWQ_CFG",
    "W4A8_AWQ_BETA_CFG",
    "NVFP4_DEFAULT_CFG",
    "INT4_AWQ_CLIP_CFG",
    "INT4_AWQ_FULL_CFG",
    "NVFP4_AWQ_LITE_CFG",
    "NVFP4_AWQ_CLIP_CFG",
    "NVFP4_AWQ_FULL_CFG",
    "NVFP4_SVDQUANT_DEFAULT_CFG",
    "W4A16_NVFP4_CFG",
    "NVFP4_MLP_ONLY_CFG",
    "NVFP4_OMLP_ONLY_CFG",
    "NVFP4_EXPERTS_ONLY_CFG",
    "MXFP8_DEFAULT_CFG",
    "MXFP6_DEFAULT_CFG",
    "MXFP4_DEFAULT_CFG",
    "MXFP4_MLP_WEIGHT_ONLY_CFG",
    "MXINT8_DEFAULT_CFG",
    "FP8_KV_CFG",
    "NVFP4_KV_CFG",
    "PRESETS",
    "UNAVAILABLE",
    "get_preset",
    "merge_presets",
    "with_output_head",
    "with_block_size",
]

DEFAULT_DISABLED_QUANTIZER_CFG = {
    "*lm_head*": {"enable": False},
    "*proj_out.*": {"enable": False},  # Whisper's lm_head
    "*block_sparse_moe.gate*": {"enable": False},  # MoE routers
    "*router*": {"enable": False},
    "*mlp.gate.*": {"enable": False},
    "*mlp.shared_expert_gate.*": {"enable": False},
    "*output_layer*": {"enable": False},
    "output.*": {"enable": False},
    # The layer whose result is the model's output, whatever its name, when it sits on top of other layers
    # (a classifier or LM head; jq.trace.output_head). jq's addition, resolved after tracing.
    "@output_head": {"enable": False},
    # Embedding tables (ModelOpt: quantizers under nn.Embedding parents). In jq a lookup is a gather, never a
    # site; these catch a table reused as a tied output head. Projections such as "embed_proj" stay quantized.
    "embed.*": {"enable": False},
    "*.embed.*": {"enable": False},
    "*embedding*": {"enable": False},
    "*embed_tokens*": {"enable": False},
    "*wte*": {"enable": False},
    # Norm layers (ModelOpt: BatchNorm/LayerNorm parents); norms have no matmuls, so this only matters for
    # modules nested under a norm.
    "*layernorm*": {"enable": False},
    "*layer_norm*": {"enable": False},
    "*rmsnorm*": {"enable": False},
    "*batchnorm*": {"enable": False},
    "*batch_norm*": {"enable": False},
    "*.norm.*": {"enable": False},
    "default": {"enable": False},
}

_NVFP4 = {"num_bits": (2, 1), "block_sizes": {-1: 16, "type": "dynamic", "scale_bits": (4, 3)}, "axis": None,
          "enable": True}


def _mx(bits):
    return {"num_bits": bits, "block_sizes": {-1: 32, "type": "dynamic", "scale_bits": (8, 0)}, "enable": True}


def _preset(weight, inp, algorithm):
    return {"quant_cfg": {"*weight_quantizer": weight, "*input_quantizer": inp, **DEFAULT_DISABLED_QUANTIZER_CFG},
            "algorithm": algorithm}


_OFF = {"enable": False}
INT8_DEFAULT_CFG = _preset({"num_bits": 8, "axis": 0}, {"num_bits": 8, "axis": None}, "max")
INT8_SMOOTHQUANT_CFG = _preset({"num_bits": 8, "axis": 0}, {"num_bits": 8, "axis": None}, "smoothquant")
# jq's addition (no ModelOpt preset): SmoothQuant with per-token dynamic INT8 activations, TensorRT-LLM's
# SmoothQuant with --per_token --per_channel (the paper's O1); alpha 0.5 (the paper's default). Per-token scales keep an
# attention-sink token's massive activations from setting every other token's step (docs/models.md, SmolLM2).
INT8_SMOOTHQUANT_PER_TOKEN_CFG = _preset({"num_bits": 8, "axis": 0},
                                         {"num_bits": 8, "type": "dynamic", "block_sizes": {-1: None}},
                                         {"method": "smoothquant", "alpha": 0.5})
INT8_WEIGHT_ONLY_CFG = _preset({"num_bits": 8, "axis": 0}, _OFF, "max")
FP8_DEFAULT_CFG = _preset({"num_bits": (4, 3), "axis": None}, {"num_bits": (4, 3), "axis": None}, "max")
FP8_PER_CHANNEL_PER_TOKEN_CFG = _preset(
    {"num_bits": (4, 3), "axis": 0}, {"num_bits": (4, 3), "type": "dynamic", "block_sizes": {-1: None}}, "max")
# jq's addition (no ModelOpt preset takes inputs): DeepSeek-V3's block FP8, E4M3 weights in 128 x 128 tiles and
# inputs quantized per token in groups of 128 at run time (dynamic), as vLLM, SGLang and TensorRT-LLM run a
# block FP8 checkpoint (vLLM runs ModelOpt's FP8_PB_WO checkpoints this way too). Exported as quant_method "fp8"
# (jq.export.to_serving_checkpoint); for a layer width that 128 does not divide, set both 128s to a divisor.
FP8_BLOCKWISE_CFG = _preset({"num_bits": (4, 3), "block_sizes": {-1: 128, -2: 128}, "enable": True},
                            {"num_bits": (4, 3), "type": "dynamic", "block_sizes": {-1: 128}, "enable": True}, "max")
FP8_2D_BLOCKWISE_WEIGHT_ONLY_CFG = _preset(
    {"num_bits": (4, 3), "block_sizes": {-1: 128, -2: 128}, "enable": True}, _OFF, "max")
INT4_BLOCKWISE_WEIGHT_ONLY_CFG = _preset({"num_bits": 4, "block_sizes": {-1: 128}, "enable": True}, _OFF, "max")
INT4_AWQ_CFG = _preset({"num_bits": 4, "block_sizes": {-1: 128, "type": "static"}, "enable": True}, _OFF,
                       {"method": "awq_lite", "alpha_step": 0.1})
W4A8_AWQ_BETA_CFG = _preset(
    [{"num_bits": 4, "block_sizes": {-1: 128, "type": "static"}, "enable": True},
     {"num_bits": (4, 3), "axis": None, "enable": True}],
    {"num_bits": (4, 3), "axis": None, "enable": True}, "awq_lite")
INT4_AWQ_CLIP_CFG = _preset({"num_bits": 4, "block_sizes": {-1: 128, "type": "static"}, "enable": True}, _OFF,
                            {"method": "awq_clip"})
INT4_AWQ_FULL_CFG = _preset({"num_bits": 4, "block_sizes": {-1: 128, "type": "static"}, "enable": True}, _OFF,
                            {"method": "awq_full", "alpha_step": 0.1})
NVFP4_DEFAULT_CFG = _preset(_NVFP4, _NVFP4, "max")
NVFP4_AWQ_LITE_CFG = _preset(_NVFP4, _NVFP4, "awq_lite")
NVFP4_AWQ_CLIP_CFG = _preset(_NVFP4, _NVFP4, {"method": "awq_clip"})
NVFP4_AWQ_FULL_CFG = _preset(_NVFP4, _NVFP4, {"method": "awq_full", "alpha_step": 0.1})
# SVDQuant (ModelOpt's NVFP4_SVDQUANT_DEFAULT_CFG): AWQ-lite smoothing, a rank-32 float branch absorbing the
# outliers of W, NVFP4 on the residual.
NVFP4_SVDQUANT_DEFAULT_CFG = _preset(_NVFP4, _NVFP4, {"method": "svdquant", "lowrank": 32})
W4A16_NVFP4_CFG = _preset(_NVFP4, _OFF, "max")
MXFP8_DEFAULT_CFG = _preset(_mx((4, 3)), _mx((4, 3)), None)
MXFP6_DEFAULT_CFG = _preset(_mx((3, 2)), _mx((3, 2)), None)
MXFP4_DEFAULT_CFG = _preset(_mx((2, 1)), _mx((2, 1)), None)
MXINT8_DEFAULT_CFG = _preset(_mx(8), _mx(8), None)


def _only(patterns, weight, inp, algorithm):
    """A preset quantizing only the quantizers under ``patterns`` (``"*mlp*"`` ...), in ModelOpt's order."""
    quant_cfg = {"default": {"enable": False}}
    for p in patterns:
        quant_cfg[f"{p}weight_quantizer"] = weight
        if inp is not None:
            quant_cfg[f"{p}input_quantizer"] = inp
    return {"quant_cfg": {**quant_cfg, **DEFAULT_DISABLED_QUANTIZER_CFG}, "algorithm": algorithm}


# ModelOpt's MLP/MoE-only presets: dense MLPs (``*mlp*``, ``*.mixer.{up,down}_proj.``), block-sparse MoE and
# ``*.experts.*``; OMLP adds the attention output projections (``*o_proj*``).
_MOE = ("*.mixer.up_proj.", "*.mixer.down_proj.", "*block_sparse_moe*", "*.experts.*")
NVFP4_MLP_ONLY_CFG = _only(("*mlp*",) + _MOE, _NVFP4, _NVFP4, "max")
NVFP4_OMLP_ONLY_CFG = _only(("*o_proj*", "*mlp*") + _MOE[:3], _NVFP4, _NVFP4, "max")
NVFP4_EXPERTS_ONLY_CFG = _only(("*block_sparse_moe*", "*.experts.*"), _NVFP4, _NVFP4, "max")
MXFP4_MLP_WEIGHT_ONLY_CFG = _only(("*mlp*", "*block_sparse_moe*"), _mx((2, 1)), None, None)

FP8_KV_CFG = {"quant_cfg": {"*[kv]_bmm_quantizer": {"num_bits": (4, 3), "axis": None, "enable": True},
                            "default": {"enable": False}}, "algorithm": "max"}
NVFP4_KV_CFG = {"quant_cfg": {"*[kv]_bmm_quantizer": dict(_NVFP4), "default": {"enable": False}}, "algorithm": "max"}

PRESETS = {
    name: globals()[name]
    for name in __all__
    if name.endswith("_CFG") and name not in ("DEFAULT_DISABLED_QUANTIZER_CFG",)
}


# ModelOpt presets jq does not provide, and why.
UNAVAILABLE = {
    "FP8_AFFINE_KV_CFG": "affine (asymmetric, with a zero point) FP8 KV-cache quantization: jq's quantizers are "
                         "symmetric (ModelOpt's 'bias' field is not supported); use FP8_KV_CFG",
    "NVFP4_AFFINE_KV_CFG": "affine (asymmetric) NVFP4 KV-cache quantization: jq's quantizers are symmetric; use "
                           "NVFP4_KV_CFG",
    "NVFP4_MLP_WEIGHT_ONLY_CFG": "NVFP4 with 32-element blocks: jq's NVFP4 format has ModelOpt's standard 16-element "
                                 "blocks only; use MXFP4_MLP_WEIGHT_ONLY_CFG or W4A16_NVFP4_CFG",
}


def get_preset(name: str) -> dict:
    """A deep copy of the preset called ``name`` (case-insensitive; ``_CFG`` suffix optional).

    Raises:
      ValueError: an unknown name (listing the presets), or a ModelOpt preset jq cannot provide (saying why).
    """
    key = name.upper()
    key = key if key.endswith("_CFG") else key + "_CFG"
    if key in UNAVAILABLE:
        raise ValueError(f"preset {key} is not available in jq: {UNAVAILABLE[key]}")
    if key not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; available: {sorted(PRESETS)}")
    return copy.deepcopy(PRESETS[key])


def merge_presets(main: dict, *fragments: dict) -> dict:
    """Add fragments (e.g. ``FP8_KV_CFG``) to a main preset: their entries, minus ``default``, are appended.

    Example:
      >>> cfg = merge_presets(FP8_DEFAULT_CFG, FP8_KV_CFG)
      >>> cfg["quant_cfg"]["*[kv]_bmm_quantizer"]["num_bits"]
      (4, 3)
    """
    out = copy.deepcopy(main)
    for frag in fragments:
        for k, v in frag["quant_cfg"].items():
            if k != "default":
                out["quant_cfg"][k] = copy.deepcopy(v)
    return out


def with_output_head(preset: dict) -> dict:
    """A copy of ``preset`` that quantizes the output head too: its ``"@output_head"`` entry removed.

    Example:
      >>> "@output_head" in with_output_head(INT8_DEFAULT_CFG)["quant_cfg"]
      False
    """
    out = copy.deepcopy(preset)
    out["quant_cfg"].pop("@output_head", None)
    return out


def with_block_size(preset: dict, size: int) -> dict:
    """A copy of ``preset`` with every integer block size of its enabled quantizers set to ``size``: INT groups,
    FP8 tiles and input groups (``FP8_BLOCKWISE_CFG``'s 128 x 128 and 128); per-token sizes (None) and formats
    whose block is part of the format (NVFP4's 16, MX's 32: ``scale_bits`` set) are kept.

    Example:
      >>> with_block_size(FP8_BLOCKWISE_CFG, 64)["quant_cfg"]["*weight_quantizer"]["block_sizes"]
      {-1: 64, -2: 64}
    """
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        raise ValueError(f"block size must be a positive int, got {size!r}")
    out = copy.deepcopy(preset)
    changed = 0
    for entry in out["quant_cfg"].values():
        for spec in entry if isinstance(entry, list) else [entry]:
            blocks = spec.get("block_sizes") if isinstance(spec, dict) and spec.get("enable", True) else None
            if not blocks or blocks.get("scale_bits") is not None:
                continue
            for axis, n in list(blocks.items()):
                if not isinstance(axis, str) and n is not None:
                    blocks[axis] = size
                    changed += 1
    if not changed:
        raise ValueError("the preset has no integer block size to set (per-tensor, per-channel, per-token, NVFP4 and "
                         "MX quantizers keep theirs)")
    return out
