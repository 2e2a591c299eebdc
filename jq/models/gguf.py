"""GGUF (llama.cpp) files to Hugging Face directories: dequantized weights, config.json, tokenizer.json.

A GGUF file holds the tensors under llama.cpp's names (``blk.N.attn_q.weight`` ...), possibly quantized
(Q4_1, Q8_0, ...), the model hyper-parameters as metadata (``llama.block_count`` ...) and the tokenizer's
vocabulary and merges. :func:`gguf_to_hf` turns it into an HF directory :func:`jq.models.load_hf` reads:

* every tensor dequantized to float32 with the ``gguf`` package (``gguf.quants.dequantize``): the values
  are exactly those llama.cpp computes with, so a Q4_1 file gives a float model whose weights lie on the
  Q4_1 grid (every 4-bit result on it must say so);
* llama.cpp's Q/K row permutation undone: its converter reorders the rows of ``q_proj``/``k_proj`` per head
  from HF's rotate-half RoPE layout to interleaved pairs, ``W.reshape(h, 2, d/2, in).swapaxes(1, 2)``;
  the inverse is ``W.reshape(h, d/2, 2, in).swapaxes(1, 2)`` (``h`` = query heads for q, KV heads for k);
* ``tokenizer.json``: a byte-level BPE (``tokenizers``) from ``tokenizer.ggml.tokens``/``merges``, with
  llama.cpp's pre-tokenizer for the file's ``tokenizer.ggml.pre`` and control tokens as special tokens.

Example:
  >>> out = gguf_to_hf("SmolLM2-135M-Instruct.Q4_1.gguf", "~/.cache/jq/models/smollm2")
  >>> config, params = jq.models.load_hf(out)
"""

from __future__ import annotations

import collections
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np

__all__ = ["read_gguf", "unpermute_qk", "permute_qk", "hf_config_from_gguf", "build_tokenizer", "gguf_to_hf",
           "SOURCE_FILE"]

SOURCE_FILE = "jq_gguf_source.json"  # provenance written next to the converted weights
_ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}
_PERMUTED_ARCHS = ("llama",)  # llama.cpp permutes q/k rows only for its LlamaModel converter
_LAYER_NAMES = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm", "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}
_GLOBAL_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
# llama.cpp pre-tokenizers (tokenizer.ggml.pre) that are "split every digit, then GPT-2's regex"
_DIGITS_THEN_GPT2 = ("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva")
_GPT2_ONLY = ("gpt-2", "gpt2", "default", "mpt", "olmo", "jais")


def _hf_name(gguf_name: str) -> str:
    m = re.fullmatch(r"blk\.(\d+)\.(\w+)\.(weight|bias)", gguf_name)
    if m and m.group(2) in _LAYER_NAMES:
        return f"model.layers.{m.group(1)}.{_LAYER_NAMES[m.group(2)]}.{m.group(3)}"
    m = re.fullmatch(r"(\w+)\.(weight|bias)", gguf_name)
    if m and m.group(1) in _GLOBAL_NAMES:
        return f"{_GLOBAL_NAMES[m.group(1)]}.{m.group(2)}"
    raise ValueError(f"GGUF tensor {gguf_name!r} has no Llama-family HF name (a tensor of an architecture "
                     f"jq.models does not implement)")


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's converter permutation (HF rotate-half rows -> interleaved pairs), per head."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of :func:`permute_qk`: GGUF q/k rows back to HF's layout."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _field(reader, key, default=None):
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def hf_config_from_gguf(reader) -> dict:
    """A ``config.json`` dict from the GGUF metadata (``{arch}.block_count`` etc.)."""
    arch = _field(reader, "general.architecture")
    if arch not in _ARCHITECTURES:
        raise ValueError(f"GGUF general.architecture {arch!r} is not supported; supported: {sorted(_ARCHITECTURES)}")
    g = lambda key, default=None: _field(reader, f"{arch}.{key}", default)  # noqa: E731
    names = {t.name for t in reader.tensors}
    if "rope_freqs.weight" in names:
        raise NotImplementedError("GGUF rope_freqs.weight (llama3 RoPE scaling baked into a tensor) is not "
                                  "converted; use the HF checkpoint of this model")
    heads = int(g("attention.head_count"))
    hidden = int(g("embedding_length"))
    vocab = g("vocab_size") or len(_field(reader, "tokenizer.ggml.tokens", []))
    scaling = None
    if g("rope.scaling.type") not in (None, "none"):
        scaling = {"rope_type": g("rope.scaling.type"), "factor": float(g("rope.scaling.factor"))}
        if g("rope.scaling.original_context_length"):
            scaling["original_max_position_embeddings"] = int(g("rope.scaling.original_context_length"))
    config = {
        "architectures": [_ARCHITECTURES[arch]], "model_type": arch, "vocab_size": int(vocab),
        "hidden_size": hidden, "intermediate_size": int(g("feed_forward_length")),
        "num_hidden_layers": int(g("block_count")), "num_attention_heads": heads,
        "num_key_value_heads": int(g("attention.head_count_kv", heads)),
        "head_dim": int(g("rope.dimension_count", hidden // heads)), "hidden_act": "silu",
        "rms_norm_eps": float(g("attention.layer_norm_rms_epsilon", 1e-6)),
        "rope_theta": float(g("rope.freq_base", 10000.0)), "rope_scaling": scaling,
        "max_position_embeddings": int(g("context_length", 2048)),
        "tie_word_embeddings": "output.weight" not in names,
        "bos_token_id": _field(reader, "tokenizer.ggml.bos_token_id"),
        "eos_token_id": _field(reader, "tokenizer.ggml.eos_token_id"), "torch_dtype": "float32",
    }
    if arch == "llama":
        config.update(attention_bias="blk.0.attn_output.bias" in names, mlp_bias="blk.0.ffn_up.bias" in names)
    return config


def read_gguf(path: str | os.PathLike) -> tuple[dict, dict, object]:
    """``(config.json dict, {HF name: float32 array}, reader)`` of a GGUF file (tensors dequantized, q/k
    rows back in HF order)."""
    import gguf

    reader = gguf.GGUFReader(os.fspath(path))
    config = hf_config_from_gguf(reader)
    permuted = _field(reader, "general.architecture") in _PERMUTED_ARCHS
    weights = {}
    for t in reader.tensors:
        name = _hf_name(t.name)
        w = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), np.float32)
        w = w.reshape(tuple(int(n) for n in reversed(t.shape)))  # GGUF lists ne0 (the fastest axis) first
        if permuted and name.endswith(("q_proj.weight", "q_proj.bias")):
            w = unpermute_qk(w, config["num_attention_heads"])
        elif permuted and name.endswith(("k_proj.weight", "k_proj.bias")):
            w = unpermute_qk(w, config["num_key_value_heads"])
        weights[name] = w
    return config, weights, reader


def build_tokenizer(reader):
    """A ``tokenizers.Tokenizer`` (byte-level BPE) from the GGUF vocabulary, merges and pre-tokenizer."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    kind = _field(reader, "tokenizer.ggml.model")
    if kind != "gpt2":
        raise NotImplementedError(f"GGUF tokenizer.ggml.model={kind!r}: only byte-level BPE ('gpt2') is converted")
    pre = _field(reader, "tokenizer.ggml.pre", "default")
    tokens = list(_field(reader, "tokenizer.ggml.tokens"))
    types = list(_field(reader, "tokenizer.ggml.token_type", [1] * len(tokens)))
    merges = [tuple(m.split(" ", 1)) for m in _field(reader, "tokenizer.ggml.merges", [])]
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, fuse_unk=False))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre in _DIGITS_THEN_GPT2:
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(r"\p{N}"), "isolated"), byte_level])
    elif pre in _GPT2_ONLY:
        tok.pre_tokenizer = byte_level
    else:
        raise NotImplementedError(f"GGUF tokenizer.ggml.pre={pre!r} is not mapped to a pre-tokenizer; known: "
                                  f"{sorted(_DIGITS_THEN_GPT2 + _GPT2_ONLY)}")
    tok.decoder = decoders.ByteLevel()
    control = [t for t, ty in zip(tokens, types) if ty == 3]  # llama.cpp token type 3 = CONTROL
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in control])
    return tok


def _tokenizer_config(reader, config: dict) -> dict:
    tokens = list(_field(reader, "tokenizer.ggml.tokens"))
    name = lambda key: None if _field(reader, key) is None else tokens[int(_field(reader, key))]  # noqa: E731
    return {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": name("tokenizer.ggml.bos_token_id"),
            "eos_token": name("tokenizer.ggml.eos_token_id"), "unk_token": name("tokenizer.ggml.unknown_token_id"),
            "pad_token": name("tokenizer.ggml.padding_token_id"),
            "add_bos_token": bool(_field(reader, "tokenizer.ggml.add_bos_token", False)),
            "chat_template": _field(reader, "tokenizer.chat_template"),
            "model_max_length": config["max_position_embeddings"]}


def gguf_to_hf(gguf_path: str | os.PathLike, out_dir: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Convert a GGUF file into an HF directory (``config.json``, ``model.safetensors`` in float32,
    ``tokenizer.json``, ``tokenizer_config.json`` and :data:`SOURCE_FILE` with the tensor types).

    The directory is written next to ``out_dir`` and renamed into place, so an interrupted conversion
    leaves nothing half-written; an existing ``out_dir`` is returned as is unless ``overwrite``.
    """
    from safetensors.numpy import save_file

    gguf_path, out_dir = Path(gguf_path), Path(out_dir).expanduser()
    if out_dir.exists() and not overwrite:
        return out_dir
    config, weights, reader = read_gguf(gguf_path)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out_dir.name + ".", dir=out_dir.parent))
    try:
        save_file(weights, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        build_tokenizer(reader).save(str(tmp / "tokenizer.json"))
        (tmp / "tokenizer_config.json").write_text(json.dumps(_tokenizer_config(reader, config), indent=2) + "\n")
        types = collections.Counter(t.tensor_type.name for t in reader.tensors)
        (tmp / SOURCE_FILE).write_text(json.dumps({
            "gguf_file": gguf_path.name, "tensor_types": dict(types),
            "note": "weights dequantized from this GGUF file to float32; quantized tensor types "
                    "mean the float weights lie on that format's grid"}, indent=2) + "\n")
        if out_dir.exists() and overwrite:
            shutil.rmtree(out_dir)
        try:
            tmp.rename(out_dir)
        except OSError:  # another process converted it meanwhile: keep its (identical) directory
            if not out_dir.exists() or overwrite:
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
