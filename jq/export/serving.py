"""Quantized Hugging Face checkpoints that serving stacks load (vLLM, TensorRT-LLM, SGLang): ModelOpt's layout.

:func:`to_serving_checkpoint` writes a directory a serving stack opens like the original model::

    config.json                     the model's config.json + "quantization_config" (ModelOpt's, see below)
    hf_quant_config.json            {"producer": ..., "quantization": {"quant_algo", "kv_cache_quant_algo",
                                     "group_size", "exclude_modules", ...}}
    model.safetensors               or model-0000k-of-0000n.safetensors + model.safetensors.index.json
                                    ({"metadata": {"total_size"}, "weight_map": {name: file}}) past max_shard_bytes

Tensor names are the HF ones: a quantized linear site's tensors go under its HF module (``name_map(site)``,
default :func:`jq.models.site_to_hf_module`, the inverse of jq.models' import map), every other param under
its params path (jq.models' params tree spells the HF names). Per quantized module (see
:mod:`jq.export.hf_checkpoint` for values, dtypes and packing): ``weight``, ``weight_scale``, and as the
format has them ``input_scale``, ``weight_scale_2``, ``pre_quant_scale``. FP8 KV cache: per layer
``model.layers.N.self_attn.k_proj.k_scale`` and ``v_proj.v_scale`` (float32 scalars ``amax / 448``, the
dequantization multiplier), the names vLLM's ``maybe_remap_kv_scale_name`` maps onto its attention layer.

Fused siblings share one GEMM in serving stacks (vLLM's ``QKVParallelLinear`` / ``MergedColumnParallelLinear``
keep one ``input_scale`` / ``weight_scale_2``: the max over the shards), so q/k/v and gate/up must carry equal
values: :func:`to_serving_checkpoint` raises when they differ, or takes the group max with
``unify_siblings=True`` (then the checkpoint no longer equals ``qm`` exactly).

``config.json``'s ``quantization_config`` is ``{"quant_method": "modelopt", **hf_quant_config["quantization"]}``
(what ModelOpt's exporter adds to ``config.json``); vLLM's reader of that dict takes the excluded modules
from ``"ignore"`` and an FP8 KV cache from ``"kv_cache_scheme"``, so both are written too.

Block FP8 (``FP8_BLOCK_SCALES``: E4M3 weights with one scale per ``[bn, bk]`` tile, inputs quantized per token
in groups of ``bk`` at run time; :data:`jq.FP8_BLOCKWISE_CFG`) has no ModelOpt layout that takes inputs: it is
written as DeepSeek-V3 ships it, which vLLM, SGLang, TensorRT-LLM and transformers read (``quant_method: "fp8"``):
``quantization_config = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
"weight_block_size": [bn, bk], "ignored_layers": [...], "modules_to_not_convert": [...]}``, per module ``weight``
(float8_e4m3fn) and ``weight_scale_inv`` (float32 ``[ceil(out / bn), ceil(in / bk)]``, the dequantization
multiplier ``amax / 448`` as jq computes it), no ``hf_quant_config.json`` and no KV scales. Sources and which
stacks take which block sizes: ``docs/serving.md``.

The safetensors header metadata keeps jq's calibrated amax of every per-tensor input / KV quantizer
(``"jq_amax"``, JSON): serving stacks ignore it; :mod:`jq.export.serving_reader` uses it to restore jq's
exact scale where ``amax -> scale`` does not invert uniquely.

Example:
  >>> qm = jq.calibrate(qm, batches, share_sibling_weight_amax=True)
  >>> to_serving_checkpoint(qm, "out", hf_config=config.to_hf())
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jq.export import hf_checkpoint as hfc
from jq.export.formats import spec_stages
from jq.export.scales import export_scale
from jq.hf_shards import INDEX_FILE, write_shards
from jq.trace.sites import keypath_parts

__all__ = ["to_serving_checkpoint", "DEFAULT_MAX_SHARD_BYTES", "kv_scales", "block_fp8_config", "is_block_fp8"]

DEFAULT_MAX_SHARD_BYTES = 5 * 2 ** 30  # transformers' default shard size (5 GB)
CONFIG_FILE, QUANT_FILE = "config.json", "hf_quant_config.json"
BLOCK_FP8 = "FP8_BLOCK_SCALES"  # TensorRT-LLM's QuantAlgo name, jq's quant_algo for it
BLOCK_FP8_METHOD = "fp8"  # config.json quant_method of DeepSeek's layout (vLLM Fp8Config, transformers)
# fused siblings (module names under one block) and the RMSNorm feeding them, in the Llama family's naming
FOLD_INTO_NORM = ((("q_proj", "k_proj", "v_proj"), "input_layernorm"), (("gate_proj", "up_proj"), "post_attention_layernorm"))
KV_SLOTS = {"k_bmm_quantizer": ("k_proj", "k_scale"), "v_bmm_quantizer": ("v_proj", "v_scale")}


def is_block_fp8(quantization_config: dict | None) -> bool:
    """Whether a config.json ``quantization_config`` is DeepSeek's block FP8 layout (``quant_method`` "fp8")."""
    return (quantization_config or {}).get("quant_method") == BLOCK_FP8_METHOD


def block_fp8_config(weight_block_size, excluded) -> dict:
    """config.json's ``quantization_config`` of a block FP8 checkpoint, as DeepSeek-V3 writes it (``fmt`` is read
    by none of the stacks; ``ignored_layers`` by vLLM and SGLang, ``modules_to_not_convert`` by transformers)."""
    return {"quant_method": BLOCK_FP8_METHOD, "fmt": "e4m3", "activation_scheme": "dynamic",
            "weight_block_size": list(weight_block_size), "ignored_layers": list(excluded),
            "modules_to_not_convert": list(excluded)}


def _default_name_map(hf_config: dict) -> Callable[[str], str]:
    from jq.models.hf import site_to_hf_module

    tied = bool(hf_config.get("tie_word_embeddings", False))
    return lambda site: ("lm_head" if tied and site in ("model.embed_tokens", "transformer.wte")
                         else site_to_hf_module(site))


def kv_scales(qm) -> tuple[str | None, dict[str, np.ndarray], dict[str, float]]:
    """``(kv_cache_quant_algo, {HF tensor name: scale}, {HF tensor name: amax})`` of ``qm``'s k/v bmm quantizers.

    Each attention site ``S`` (jq.models: ``model.layers.N.self_attn``) with calibrated per-tensor
    ``S.k_bmm_quantizer`` / ``S.v_bmm_quantizer`` gives ``S.k_proj.k_scale`` / ``S.v_proj.v_scale``
    (``export_scale``: ``amax / 448`` for FP8). The algorithm is the one the format names for a per-tensor
    W/A pair of that spec (``FP8``); q/softmax bmm quantizers have no checkpoint form and raise.
    """
    algos, scales, amaxes = set(), {}, {}
    for site in qm.traced.sites:
        if site.kind != "bmm":
            continue
        for slot in ("q_bmm_quantizer", "softmax_quantizer"):
            if spec_stages(qm.spec(f"{site.name}.{slot}")):
                raise ValueError(f"{site.name}.{slot} is enabled: serving checkpoints carry k/v cache scales only")
        for slot, (proj, tensor) in KV_SLOTS.items():
            q = f"{site.name}.{slot}"
            stages = spec_stages(qm.spec(q))
            if not stages:
                continue
            spec = stages[0]
            found = spec.format.hf_algorithm(spec, spec)
            if len(stages) > 1 or found is None or found[0] != "FP8" or spec.axis is not None:
                raise ValueError(f"{q}: {spec.describe()} has no serving-checkpoint KV form; supported: FP8 E4M3 "
                                 f"with one scale per tensor (FP8_KV_CFG)")
            amax = qm.qstate.get(q, {}).get("amax")
            if amax is None:
                raise ValueError(f"{q} is not calibrated (no amax): calibrate with data")
            name = f"{site.name}.{proj}.{tensor}"
            scales[name] = np.asarray(export_scale(spec, np.asarray(amax, np.float32)), np.float32).reshape(())
            amaxes[name] = float(np.asarray(amax, np.float32).reshape(()))
            algos.add(found[0])
    return (algos.pop() if algos else None), scales, amaxes


def _fold_pre_quant_scales(tensors: dict[str, np.ndarray]) -> None:
    """Move the shared ``pre_quant_scale`` of fused siblings into the RMSNorm before them (in place).

    TensorRT-LLM's fused q/k/v and gate/up W4A16 AWQ layers do not read ``pre_quant_scale`` (it is expected
    "merged with the LayerNorm": ``_torch/modules/linear.py``, ``W4A16_AWQ_LinearMethod``), and vLLM's NVFP4
    layers never read it; ``rms(x) * w * s == rms(x) * (w * s)``, so the norm weight becomes ``w * s`` (equal
    to float32 rounding) and the siblings lose the tensor. Groups whose norm is not found keep theirs.
    """
    for group, norm in FOLD_INTO_NORM:
        for name in [n for n in tensors if n.endswith(f".{group[0]}.pre_quant_scale")]:
            block = name[: -len(f".{group[0]}.pre_quant_scale")]           # model.layers.N.self_attn
            layer = block.rsplit(".", 1)[0]                                 # model.layers.N
            names = [f"{block}.{m}.pre_quant_scale" for m in group]
            norm_name = f"{layer}.{norm}.weight"
            if norm_name not in tensors or not all(n in tensors for n in names):
                continue
            s = tensors[names[0]]
            if any(not np.array_equal(tensors[n], s) for n in names):
                continue  # unequal: the sibling check raised already unless unified
            w = tensors[norm_name]
            tensors[norm_name] = (w.astype(np.float32) * s).astype(w.dtype)
            for n in names:
                del tensors[n]


def _write_safetensors(out: Path, tensors: dict[str, np.ndarray], max_bytes: int, metadata: dict) -> None:
    import safetensors.flax

    meta = {"format": "pt", "producer": "jq", **metadata}
    write_shards(out, tensors, max_bytes, lambda shard, f: safetensors.flax.save_file(
        {k: jnp.asarray(v) for k, v in shard.items()}, f, metadata=meta))


def to_serving_checkpoint(qm, export_dir: str | os.PathLike, *, hf_config: dict,
                          name_map: Callable[[str], str] | None = None, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
                          dtype=None, unify_siblings: bool = False, overwrite: bool = False) -> Path:
    """Write ``qm`` as a ModelOpt-layout HF checkpoint with HF tensor names, ``config.json`` and KV scales.

    Args:
      qm: a calibrated :class:`~jq.QuantizedModel` whose params tree is named as the HF tensors (jq.models), with
        FP8 / FP8 per-channel-per-token / NVFP4 / W4A16-NVFP4 / INT4 (W4A16_AWQ) / INT8 linear sites and
        optionally an FP8 KV cache (``FP8_KV_CFG``).
      export_dir: the output directory; it must not exist unless ``overwrite`` (then its files are replaced).
      hf_config: the model's ``config.json`` dict (``LlamaConfig.to_hf()``), carried over with a
        ``quantization_config``.
      name_map: site name -> HF module name (default: :func:`jq.models.site_to_hf_module`; a tied head's site
        ``model.embed_tokens`` is ``lm_head``).
      max_shard_bytes: shard the safetensors past this many bytes (with ``model.safetensors.index.json``).
      dtype: cast unquantized float tensors (norms, embeddings, excluded layers, biases) to this dtype, e.g.
        ``jnp.bfloat16``; scales keep float32. None keeps the params' dtype.
      unify_siblings: give fused siblings their group's max shared scales instead of raising.
      overwrite: allow an existing ``export_dir``.

    Returns:
      The directory.
    """
    out = Path(export_dir)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; choose a new directory or pass overwrite=True")
    if name_map is None:  # HF names: a fused q/k/v or gate/up (llama.fuse_projections) has none, raise naming it
        from jq.models.hf import check_unfused, flatten_params
        check_unfused(flatten_params(qm.params), "to_serving_checkpoint")
    name_map = name_map or _default_name_map(hf_config)
    layers, excluded = hfc._layers(qm)
    hfc._check_siblings(qm, layers, unify_siblings)
    tensors: dict[str, np.ndarray] = {}
    amaxes: dict[str, float] = {}
    consumed: set[int] = set()
    for lay in layers:
        module = name_map(lay.site.name)
        if module == "lm_head" and hf_config.get("tie_word_embeddings", False):
            raise ValueError("the tied output head (model.embed_tokens used as lm_head) is quantized; serving "
                             "stacks read one embedding table. Keep lm_head excluded (the presets do)")
        for key, v in hfc._layer_tensors(qm, lay).items():
            tensors[f"{module}.{key[len(lay.site.name) + 1:]}"] = np.asarray(v)
        if lay.iamax is not None and lay.iamax.size == 1:
            amaxes[f"{module}.input_scale"] = float(lay.iamax.reshape(()))
        consumed.add(lay.site.weight.leaf)
    kv_algo, kv, kv_amax = kv_scales(qm)
    tensors.update(kv)
    amaxes.update(kv_amax)
    for i, (path, leaf) in enumerate(jax.tree_util.tree_leaves_with_path(qm.params)):
        if i in consumed:
            continue
        name = ".".join(keypath_parts(path))
        if name in tensors:
            raise ValueError(f"param {name!r} collides with a quantized tensor of the same name; pass a name_map")
        v = np.asarray(leaf if dtype is None or not jnp.issubdtype(leaf.dtype, jnp.floating)
                       else jnp.asarray(leaf, dtype))
        tensors[name] = v
    _fold_pre_quant_scales(tensors)
    quant = hfc._quant_config(layers, excluded)
    q = quant["quantization"]
    q["kv_cache_quant_algo"] = kv_algo
    block_fp8 = q["quant_algo"] == BLOCK_FP8 or any(
        v.get("quant_algo") == BLOCK_FP8 for v in q.get("quantized_layers", {}).values())
    if block_fp8 and (q["quant_algo"] != BLOCK_FP8 or kv_algo is not None):
        raise ValueError(f"{BLOCK_FP8} is written as DeepSeek's quant_method 'fp8' checkpoint, which holds one "
                         f"weight_block_size for every quantized layer and no KV-cache scales; got quant_algo "
                         f"{q['quant_algo']!r}, kv_cache_quant_algo {kv_algo!r}. Quantize every layer with the same "
                         f"block FP8 spec and keep the KV cache unquantized")
    if q["quant_algo"] == "MIXED_PRECISION":
        q["quantized_layers"] = {name_map(k): v for k, v in q["quantized_layers"].items()}
    q["exclude_modules"] = sorted({name_map(n) for n in excluded})
    out.mkdir(parents=True, exist_ok=True)
    for stale in list(out.glob("*.safetensors")) + [out / INDEX_FILE]:  # overwrite: no shard of an older export
        stale.unlink(missing_ok=True)
    (out / QUANT_FILE).unlink(missing_ok=True)
    _write_safetensors(out, tensors, max_shard_bytes, {"jq_amax": json.dumps(amaxes, sort_keys=True)})
    if block_fp8:
        qc = block_fp8_config(q["weight_block_size"], q["exclude_modules"])
    else:
        (out / QUANT_FILE).write_text(json.dumps(quant, indent=4) + "\n")
        qc = {"quant_method": "modelopt", **q, "producer": quant["producer"], "ignore": q["exclude_modules"]}
    if kv_algo == "FP8":
        qc["kv_cache_scheme"] = {"type": "float", "num_bits": 8, "dynamic": False, "strategy": "tensor"}
    (out / CONFIG_FILE).write_text(json.dumps({**hf_config, "quantization_config": qc}, indent=2) + "\n")
    return out
