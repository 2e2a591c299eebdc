"""Hugging Face checkpoints in and out: safetensors directories, the HF name map, mesh placement.

A directory holds ``config.json`` and either ``model.safetensors`` or shards listed in
``model.safetensors.index.json`` (``{"weight_map": {tensor name: shard file}}``). Tensor names are the
documented ``transformers`` ones::

    model.embed_tokens.weight                      [vocab, hidden]
    model.layers.N.self_attn.{q,k,v,o}_proj.weight [out, in]   (+ .bias for Qwen2 q/k/v)
    model.layers.N.mlp.{gate,up,down}_proj.weight  [out, in]
    model.layers.N.{input,post_attention}_layernorm.weight
    model.norm.weight, lm_head.weight              (lm_head absent / ignored when tied)

jq's params tree spells the same names as nested keys (layers as a list), so the name map is the identity
on dotted paths: :func:`hf_name_of` (param path -> HF tensor name) and :func:`param_path_of` (inverse);
:func:`site_to_hf_module` maps a jq site or quantizer name to the HF module that owns it.

Example:
  >>> config, params = load_hf("SmolLM2-135M-Instruct/")
  >>> hf_name_of(("model", "layers", 3, "self_attn", "q_proj", "weight"))
  'model.layers.3.self_attn.q_proj.weight'
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jq.hf_shards import INDEX_FILE, SINGLE_FILE, write_shards
from jq.models.config import LlamaConfig, load_config
from jq.models.sharding import place
from jq.trace.sites import keypath_parts

__all__ = ["check_unfused", "hf_name_of", "param_path_of", "site_to_hf_module", "flatten_params", "unflatten_params",
           "tensor_files", "expected_names", "read_safetensors", "load_hf", "save_hf"]

_QUANTIZER_SUFFIXES = ("input_quantizer", "weight_quantizer", "output_quantizer", "q_bmm_quantizer",
                       "k_bmm_quantizer", "v_bmm_quantizer", "softmax_quantizer")


_FUSED_MODULES = ("qkv_proj", "gate_up_proj")  # jq.models.llama.fuse_projections' names: no Llama/Qwen2/Mistral
_FUSED_HINT = ("has fused projections (jq.models.llama.fuse_projections), which Llama/Qwen2/Mistral HF "
               "checkpoints do not name; export the unfused model (jq.models.llama.unfuse_projections(params, "
               "config), quantized from the unfused params) and fuse only for serving in jq")


def check_unfused(names, what: str) -> None:
    """Raise ``ValueError`` naming the first of ``names`` (dotted HF-style names) that holds a fused projection."""
    for name in names:
        if any(part in _FUSED_MODULES for part in name.split(".")):
            raise ValueError(f"{what}: {name!r} {_FUSED_HINT}")


def hf_name_of(path) -> str:
    """HF tensor name of a params path: a ``jax.tree_util`` key path, a tuple of keys or a dotted string."""
    return path if isinstance(path, str) else ".".join(keypath_parts(path))


def param_path_of(name: str) -> tuple:
    """The params path of an HF tensor name (layer indices become ints: list positions)."""
    return tuple(int(p) if p.isdigit() else p for p in name.split("."))


def site_to_hf_module(name: str, config: LlamaConfig | None = None) -> str:
    """The HF module of a jq site or quantizer name: ``model.layers.3.self_attn.q_proj.weight_quantizer``
    -> ``model.layers.3.self_attn.q_proj``. A tied head's site (``model.embed_tokens``, the matmul with
    the embedding table) is the ``lm_head`` module."""
    check_unfused([name], "site_to_hf_module")
    parts = name.split(".")
    if parts[-1] in _QUANTIZER_SUFFIXES:
        parts = parts[:-1]
    module = ".".join(parts)
    if module in ("model.embed_tokens", "transformer.wte") and (config is None or config.tie_word_embeddings):
        return "lm_head"
    return module


def flatten_params(params) -> dict:
    """``{HF tensor name: array}`` of a params tree."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(params)
    return {hf_name_of(p): v for p, v in leaves}


def unflatten_params(flat: dict) -> dict:
    """The params tree of ``{HF name: array}`` (numbered children become lists, in index order)."""
    tree: dict = {}
    for name, value in flat.items():
        node = tree
        *parents, leaf = name.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value

    def listify(node):
        if not isinstance(node, dict):
            return node
        out = {k: listify(v) for k, v in node.items()}
        if out and all(k.isdigit() for k in out):
            idx = sorted(int(k) for k in out)
            if idx != list(range(len(idx))):
                raise ValueError(f"layer indices are not contiguous from 0: {idx}")
            return [out[str(i)] for i in idx]
        return out

    return listify(tree)


def expected_names(config: LlamaConfig) -> list[str]:
    """Every tensor name a checkpoint of ``config`` must hold."""
    names = ["model.embed_tokens.weight", "model.norm.weight"]
    for i in range(config.num_hidden_layers):
        p = f"model.layers.{i}."
        names += [p + "input_layernorm.weight", p + "post_attention_layernorm.weight"]
        for proj, has_bias in (("q_proj", config.qkv_bias), ("k_proj", config.qkv_bias),
                               ("v_proj", config.qkv_bias), ("o_proj", config.o_bias)):
            names += [f"{p}self_attn.{proj}.weight"] + ([f"{p}self_attn.{proj}.bias"] if has_bias else [])
        for proj in ("gate_proj", "up_proj", "down_proj"):
            names += [f"{p}mlp.{proj}.weight"] + ([f"{p}mlp.{proj}.bias"] if config.mlp_bias else [])
    if not config.tie_word_embeddings:
        names.append("lm_head.weight")
    return names


def tensor_files(path: str | os.PathLike) -> dict:
    """``{tensor name: file}`` of a directory (``model.safetensors``, or the shards its index lists)."""
    path = Path(path)
    index = path / INDEX_FILE
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        return {name: path / f for name, f in weight_map.items()}
    single = path / SINGLE_FILE
    if not single.exists():
        raise FileNotFoundError(f"{path}: neither {SINGLE_FILE} nor {INDEX_FILE}")
    from safetensors import safe_open

    with safe_open(str(single), framework="numpy") as f:
        return {name: single for name in f.keys()}


def read_safetensors(path: str | os.PathLike, names=None) -> dict:
    """``{name: numpy array}`` from a directory's safetensors (all tensors, or those in ``names``)."""
    from safetensors import safe_open

    path = Path(path)
    files = tensor_files(path)
    wanted = list(files) if names is None else list(names)
    missing = [n for n in wanted if n not in files]
    if missing:
        raise KeyError(f"{path}: missing tensors {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    by_file: dict = {}
    for n in wanted:
        by_file.setdefault(files[n], []).append(n)
    out = {}
    for file, file_names in by_file.items():
        with safe_open(str(file), framework="numpy") as f:
            for n in file_names:
                out[n] = f.get_tensor(n)
    return out


def load_hf(path: str | os.PathLike, *, dtype=jnp.float32, mesh=None, axis: str = "tp"
            ) -> tuple[LlamaConfig, dict]:
    """``(config, params)`` of a Llama-family HF directory.

    Args:
      path: a directory with ``config.json`` and safetensors.
      dtype: parameter dtype (float32 or bfloat16).
      mesh: optional ``jax.sharding.Mesh``: params are placed with ``NamedSharding`` (column-parallel
        q/k/v/gate/up, row-parallel o/down, replicated norms; see :func:`jq.models.sharding.partition_specs`).
      axis: the mesh axis that splits the tensors.

    Unexpected tensors (other than a tied checkpoint's ``lm_head.weight`` and rotary buffers) raise.
    """
    path = Path(path)
    config = load_config(path)
    files = tensor_files(path)
    expected = expected_names(config)
    ignorable = {"lm_head.weight"} if config.tie_word_embeddings else set()
    extra = sorted(n for n in files if n not in expected and n not in ignorable and "rotary_emb" not in n)
    if extra:
        raise ValueError(f"{path}: tensors not in a {config.architecture} of this config: {extra[:5]}"
                         f"{' ...' if len(extra) > 5 else ''}")
    flat = read_safetensors(path, expected)
    params = unflatten_params({n: jnp.asarray(np.asarray(v), dtype) for n, v in flat.items()})
    if mesh is not None:
        params = place(params, mesh, axis)
    return config, params


def save_hf(path: str | os.PathLike, config_dict: dict, params, *, max_shard_bytes: int | None = None,
            dtype=None) -> Path:
    """Write ``config.json`` and the params as HF-named safetensors (sharded with an index when the
    total exceeds ``max_shard_bytes``). ``config_dict`` is a ``config.json`` dict (``LlamaConfig.to_hf()``).

    Returns the directory.
    """
    from safetensors.numpy import save_file

    check_unfused(flatten_params(params), "save_hf")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    flat = {n: np.asarray(v if dtype is None else jnp.asarray(v, dtype)) for n, v in flatten_params(params).items()}
    (path / "config.json").write_text(json.dumps(config_dict, indent=2) + "\n")
    write_shards(path, flat, max_shard_bytes, lambda shard, f: save_file(shard, f, metadata={"format": "pt"}))
    return path
