"""Read a ModelOpt-layout (or block FP8) HF checkpoint as serving stacks do, check it, and run it in jq.

:func:`read_serving_checkpoint` opens a directory (``config.json``, ``hf_quant_config.json``, one
``model.safetensors`` or the shards of ``model.safetensors.index.json``) and checks every quantized module
against the loading rules of vLLM's ModelOpt integration (``vllm/model_executor/layers/quantization/
modelopt.py``: ``QUANT_ALGOS``, ``create_weights`` of ``ModelOptFp8LinearMethod``,
``ModelOptFp8PcPtLinearMethod``, ``ModelOptNvFp4LinearMethod``, ``ModelOptNvFp4W4A16LinearMethod``) and
TensorRT-LLM's W4A16 AWQ (INT4 weights with per-group scales and a ``pre_quant_scale``), per module with
``weight[out, in]`` in the original model:

=========================  ======================  ==================================  =============================
quant_algo                 ``weight``              ``weight_scale``                    others (float32)
=========================  ======================  ==================================  =============================
FP8                        float8_e4m3fn [o, i]    float32 scalar                      ``input_scale`` scalar
FP8_PER_CHANNEL_PER_TOKEN  float8_e4m3fn [o, i]    float32 [o]                         none (per-token dynamic)
NVFP4                      uint8 [o, i/2]          float8_e4m3fn [o, i/16]             ``weight_scale_2``,
                                                                                       ``input_scale`` scalars
W4A16_NVFP4                uint8 [o, i/2]          float8_e4m3fn [o, i/16]             ``weight_scale_2`` scalar
W4A16_AWQ                  uint8 [o/2, i]          float32 [o, i/group]                ``pre_quant_scale`` [i] (not
                                                                                       on fused q/k/v, gate/up)
FP8_BLOCK_SCALES           float8_e4m3fn [o, i]    ``weight_scale_inv`` float32        none (inputs per token in
                                                   [ceil(o/bn), ceil(i/bk)]            groups of bk, dynamic)
=========================  ======================  ==================================  =============================

Block FP8 is read as vLLM's ``Fp8Config`` reads DeepSeek-V3's layout (``vllm/model_executor/layers/quantization/
fp8.py`` ``Fp8Config.from_config``, ``Fp8LinearMethod.create_weights``; ``utils/fp8_utils.py``
``validate_fp8_block_shape``, ``per_token_group_quant_fp8``): no ``hf_quant_config.json``; config.json's
``quantization_config`` has ``quant_method: "fp8"``, ``activation_scheme: "dynamic"`` and a two-entry
``weight_block_size`` (square here: vLLM versions differ on which entry sizes the input groups), and every
quantized module's input width is a multiple of ``bk`` (the input-group kernels assert it) and every fused
sibling's output width a multiple of ``bn`` (the merged GEMM's tiles). Value ``weight * weight_scale_inv`` per tile.

NVFP4 packing: element ``2j`` of a row in the low nibble of byte ``j``, E2M1 codes (sign bit 3, magnitude
``[0, .5, 1, 1.5, 2, 3, 4, 6]``: vLLM's ``FP4_E2M1_LUT``); value ``e2m1 * weight_scale * weight_scale_2``.
W4A16_AWQ packing: rows ``2r`` (low nibble) and ``2r + 1`` (high nibble) of signed INT4 codes in byte row
``r``; value ``code * weight_scale[o, i // group]`` (ModelOpt's layout as :mod:`jq.export.hf_checkpoint`
writes it; TensorRT-LLM's ``W4A16_AWQ_LinearMethod`` takes ``weight`` transposed to ``[i, o/2]`` int8 and
``weight_scale`` transposed to ``[i/group, o]``, and reads ``pre_quant_scale`` only on unfused layers, so the
siblings' scale lives in the RMSNorm before them). KV cache (``kv_cache_quant_algo: FP8``): float32 scalars ``model.layers.N.self_attn.k_proj.k_scale``
and ``v_proj.v_scale`` (vLLM ``maybe_remap_kv_scale_name``). Fused siblings (q/k/v, gate/up) must carry equal
``input_scale`` and ``weight_scale_2`` (vLLM warns and takes the max otherwise).

:meth:`ServingCheckpoint.to_jq` gives a Llama-family forward that runs the checkpoint as jq's quantized model
does: dequantized weights, inputs times ``pre_quant_scale`` and fake-quantized with the checkpoint's input
scale, k/v fake-quantized with ``k_scale`` / ``v_scale``.

Example:
  >>> ck = read_serving_checkpoint("out")          # raises on a rule a serving stack would trip over
  >>> config, forward, params = ck.to_jq()
  >>> logits = forward(params, tokens)             # equals the exported qm.apply(qm.params, tokens)
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from jq.export.hf_checkpoint import SCALE_TENSORS, read_safetensors
from jq.export.serving import BLOCK_FP8, is_block_fp8

__all__ = ["ServingCheckpoint", "read_serving_checkpoint", "RULES", "E2M1_VALUES", "dequantize_weight"]

E2M1_VALUES = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0],
                       np.float32)
F32, FP8, U8 = np.dtype(np.float32), np.dtype(ml_dtypes.float8_e4m3fn), np.dtype(np.uint8)
# quant_algo -> {tensor: (dtype, shape(out, in, group))}; None as the shape: a scalar
RULES = {
    "FP8": {"weight": (FP8, lambda o, i, g: (o, i)), "weight_scale": (F32, None), "input_scale": (F32, None)},
    "FP8_PER_CHANNEL_PER_TOKEN": {"weight": (FP8, lambda o, i, g: (o, i)), "weight_scale": (F32, lambda o, i, g: (o,))},
    "NVFP4": {"weight": (U8, lambda o, i, g: (o, i // 2)), "weight_scale": (FP8, lambda o, i, g: (o, i // g)),
              "weight_scale_2": (F32, None), "input_scale": (F32, None)},
    "W4A16_NVFP4": {"weight": (U8, lambda o, i, g: (o, i // 2)), "weight_scale": (FP8, lambda o, i, g: (o, i // g)),
                    "weight_scale_2": (F32, None)},
    "W4A16_AWQ": {"weight": (U8, lambda o, i, g: (o // 2, i)), "weight_scale": (F32, lambda o, i, g: (o, i // g)),
                  "pre_quant_scale": (F32, lambda o, i, g: (i,))},
    # g = weight_block_size (bn, bk)
    "FP8_BLOCK_SCALES": {"weight": (FP8, lambda o, i, g: (o, i)),
                         "weight_scale_inv": (F32, lambda o, i, g: (-(-o // g[0]), -(-i // g[1])))},
}
SCALE_NAMES = tuple(f".{s}" for s in SCALE_TENSORS)  # the tensor that marks a quantized module
SIBLINGS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))
SHARED = ("input_scale", "weight_scale_2")
FUSED = {m for group in SIBLINGS for m in group}
# jq presets whose input quantizer is what a serving stack does to a module's input under each quant_algo
_INPUT_PRESET = {"FP8": "FP8_DEFAULT_CFG", "FP8_PER_CHANNEL_PER_TOKEN": "FP8_PER_CHANNEL_PER_TOKEN_CFG",
                 "NVFP4": "NVFP4_DEFAULT_CFG", "W4A16_NVFP4": "W4A16_NVFP4_CFG", "W4A16_AWQ": "INT4_AWQ_CFG"}


def _nibbles(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return packed & 0x0F, packed >> 4


def dequantize_weight(algo: str, t: dict[str, np.ndarray], group_size: int | None) -> np.ndarray:
    """The float32 ``[out, in]`` weight of one module's tensors ``t`` (``weight``, ``weight_scale``, ...);
    ``group_size`` is the block size (``(bn, bk)`` for ``FP8_BLOCK_SCALES``)."""
    if algo == BLOCK_FP8:
        from jq.formats.fp8 import expand_tiles

        w = t["weight"].astype(np.float32)
        return w * expand_tiles(t["weight_scale_inv"], group_size, w.shape)
    w, ws = t["weight"], t["weight_scale"]
    if algo == "FP8":
        return w.astype(np.float32) * ws.astype(np.float32)
    if algo == "FP8_PER_CHANNEL_PER_TOKEN":
        return w.astype(np.float32) * ws.astype(np.float32)[:, None]
    if algo in ("NVFP4", "W4A16_NVFP4"):
        lo, hi = _nibbles(w)
        codes = np.stack([lo, hi], axis=-1).reshape(w.shape[0], -1)  # byte j holds elements 2j (low), 2j+1
        scale = ws.astype(np.float32) * t["weight_scale_2"].astype(np.float32)
        return E2M1_VALUES[codes] * np.repeat(scale, group_size, axis=1)
    if algo == "W4A16_AWQ":
        lo, hi = _nibbles(w)
        codes = np.stack([lo, hi], axis=1).reshape(-1, w.shape[1]).astype(np.int16)  # rows 2r (low), 2r+1 (high)
        codes = np.where(codes >= 8, codes - 16, codes).astype(np.float32)
        return codes * np.repeat(ws.astype(np.float32), group_size, axis=1)[:, : w.shape[1]]
    raise ValueError(f"quant_algo {algo!r} is not read here; supported: {sorted(RULES)}")


@dataclasses.dataclass
class ServingCheckpoint:
    """A checkpoint directory read back: ``config`` (config.json), ``quant`` (hf_quant_config's
    ``quantization``), ``tensors`` ({name: numpy array}) and ``metadata`` (the safetensors header's)."""

    config: dict
    quant: dict
    tensors: dict
    metadata: dict

    def modules(self) -> dict[str, str]:
        """``{module: quant_algo}`` of every quantized module (those with a ``weight_scale``)."""
        out = {}
        for name in self.tensors:
            if name.endswith(SCALE_NAMES):
                module = name.rsplit(".", 1)[0]
                if self.quant.get("quant_algo") == "MIXED_PRECISION":
                    out[module] = self.quant["quantized_layers"][module]["quant_algo"]
                else:
                    out[module] = self.quant["quant_algo"]
        return out

    def group_size(self, module: str) -> int | tuple[int, int] | None:
        """The module's block size: ``group_size``, or ``(bn, bk)`` of block FP8's ``weight_block_size``."""
        if self.quant.get("quant_algo") == "MIXED_PRECISION":
            return self.quant["quantized_layers"][module].get("group_size")
        if self.quant.get("quant_algo") == BLOCK_FP8:
            return tuple(self.quant["weight_block_size"])
        return self.quant.get("group_size")

    def module_tensors(self, module: str) -> dict[str, np.ndarray]:
        p = module + "."
        return {k[len(p):]: v for k, v in self.tensors.items() if k.startswith(p) and "." not in k[len(p):]}

    def dequantize(self, module: str) -> np.ndarray:
        """The float32 ``[out, in]`` weight of ``module`` as the serving stack sees it."""
        algo = self.modules().get(module)
        t = self.module_tensors(module)
        return t["weight"].astype(np.float32) if algo is None else dequantize_weight(algo, t, self.group_size(module))

    def check(self) -> list[str]:
        """Check the rules of the module docstring; returns the quantized modules, raises ``ValueError``."""
        qc = self.config.get("quantization_config")
        if is_block_fp8(qc):
            _check_block_fp8_config(qc)
        elif not qc or qc.get("quant_method") != "modelopt" or qc.get("quant_algo") != self.quant.get("quant_algo"):
            raise ValueError(f"config.json quantization_config {qc} does not match hf_quant_config.json "
                             f"(quant_method 'modelopt', quant_algo {self.quant.get('quant_algo')!r})")
        excluded = set(self.quant.get("exclude_modules", []))
        modules = self.modules()
        for module, algo in modules.items():
            if algo not in RULES:
                raise ValueError(f"{module}: quant_algo {algo!r} is not one vLLM / TensorRT-LLM read here "
                                 f"({sorted(RULES)})")
            if module in excluded:
                raise ValueError(f"{module} is quantized but listed in exclude_modules")
            t = self.module_tensors(module)
            g = self.group_size(module)
            rules = RULES[algo]
            out, inp = self._logical_shape(module, algo, t, g)
            fused = module.rsplit(".", 1)[-1] in FUSED
            for tensor, (dtype, shape) in rules.items():
                if tensor == "pre_quant_scale" and fused:
                    if tensor in t:  # TensorRT-LLM's fused W4A16 AWQ layers do not read it: it must be in the norm
                        raise ValueError(f"{module}.pre_quant_scale: fused q/k/v and gate/up layers ignore it "
                                         f"(TensorRT-LLM); fold it into the RMSNorm before them")
                    continue
                if tensor not in t:
                    raise ValueError(f"{module}: {algo} needs {module}.{tensor}")
                want = () if shape is None else shape(out, inp, g)
                if t[tensor].dtype != dtype or t[tensor].shape != want:
                    raise ValueError(f"{module}.{tensor}: {t[tensor].dtype} {t[tensor].shape}, {algo} needs "
                                     f"{dtype} {want}")
            if algo == BLOCK_FP8:
                if inp % g[1]:
                    raise ValueError(f"{module}: {inp} input channels are not a multiple of the block's {g[1]}; the "
                                     f"serving stacks' per-token-group input quantization asserts it (vLLM "
                                     f"per_token_group_quant_fp8). Choose a block size that divides {inp}")
                if fused and out % g[0]:
                    raise ValueError(f"{module}: {out} output channels of a fused sibling are not a multiple of the "
                                     f"block's {g[0]} (vLLM validate_fp8_block_shape for merged layers)")
            extra = set(t) - set(rules) - {"bias", "k_scale", "v_scale"}
            if extra:
                raise ValueError(f"{module}: tensors {sorted(extra)} are not part of {algo}")
        for module in excluded:
            if f"{module}.weight" in self.tensors and any(f"{module}{s}" in self.tensors for s in SCALE_NAMES):
                raise ValueError(f"{module} is excluded but has quantized tensors")
        self._check_kv()
        self._check_siblings(modules)
        return sorted(modules)

    def _logical_shape(self, module, algo, t, g) -> tuple[int, int]:
        w = t["weight"]
        if algo in ("NVFP4", "W4A16_NVFP4"):
            return w.shape[0], 2 * w.shape[1]
        if algo == "W4A16_AWQ":
            return 2 * w.shape[0], w.shape[1]
        return w.shape

    def _check_kv(self) -> None:
        kv = self.quant.get("kv_cache_quant_algo")
        names = [n for n in self.tensors if n.endswith((".k_scale", ".v_scale"))]
        if kv is None:
            if names:
                raise ValueError(f"k/v scales {names[:2]} without kv_cache_quant_algo")
            return
        if kv != "FP8":
            raise ValueError(f"kv_cache_quant_algo {kv!r}: read here is FP8")
        for i in range(int(self.config["num_hidden_layers"])):
            for proj, s in (("k_proj", "k_scale"), ("v_proj", "v_scale")):
                n = f"model.layers.{i}.self_attn.{proj}.{s}"
                if n not in self.tensors or self.tensors[n].dtype != F32 or self.tensors[n].shape != ():
                    raise ValueError(f"FP8 KV cache needs the float32 scalar {n}")

    def _check_siblings(self, modules) -> None:
        for parent in {m.rsplit(".", 1)[0] for m in modules}:
            for group in SIBLINGS:
                members = [f"{parent}.{g}" for g in group if f"{parent}.{g}" in modules]
                for tensor in SHARED:
                    vals = [self.tensors.get(f"{m}.{tensor}") for m in members]
                    vals = [v for v in vals if v is not None]
                    if len(vals) > 1 and any(not np.array_equal(v, vals[0]) for v in vals):
                        raise ValueError(f"fused siblings {members} have different {tensor}: {vals}")

    # -- jq ----------------------------------------------------------------------------------------------
    def input_amax(self, name: str, spec) -> jax.Array:
        """The amax that gives ``spec`` the checkpoint's scale ``name`` (``input_scale`` / ``k_scale``): jq's
        calibrated amax from the header metadata when it reproduces the scale, else the float32 value
        nearest ``scale * (amax / scale of amax=1)`` that does."""
        from jq.export.scales import export_scale

        stored = self.tensors[name]
        kept = json.loads(self.metadata.get("jq_amax", "{}")).get(name)
        if kept is not None and np.array_equal(export_scale(spec, np.float32(kept)).reshape(()), stored):
            return jnp.float32(kept)
        ratio = np.float32(1.0) / np.asarray(export_scale(spec, np.float32(1.0)), np.float32).reshape(())
        guess = np.float32(stored * ratio)
        for k in sorted(range(-16, 17), key=abs):
            cand = np.array([guess]).view(np.int32) + k
            cand = cand.view(np.float32)[0]
            if np.array_equal(export_scale(spec, cand).reshape(()), stored):
                return jnp.float32(cand)
        raise ValueError(f"{name}: no amax reproduces the scale {stored}")

    def to_jq(self):
        """``(config, forward, params)``: ``forward(params, tokens) -> logits`` runs this checkpoint."""
        from jq.models.config import LlamaConfig
        from jq.models.hf import unflatten_params

        config = LlamaConfig.from_hf(self.config)
        modules = self.modules()
        flat, specs = {}, {}
        for name, v in self.tensors.items():
            module, _, leaf = name.rpartition(".")
            if module in modules or leaf in ("k_scale", "v_scale"):
                continue
            flat[name] = jnp.asarray(np.asarray(v, np.float32))
        for module, algo in modules.items():
            t = self.module_tensors(module)
            flat[f"{module}.weight"] = jnp.asarray(dequantize_weight(algo, t, self.group_size(module)))
            if "bias" in t:
                flat[f"{module}.bias"] = jnp.asarray(t["bias"].astype(np.float32))
            if "pre_quant_scale" in t:
                flat[f"{module}.pre_quant_scale"] = jnp.asarray(t["pre_quant_scale"])
            spec = _input_spec(algo, self.group_size(module))
            specs[module] = spec
            if spec is not None and "input_scale" in t:
                flat[f"{module}.input_amax"] = self.input_amax(f"{module}.input_scale", spec)
        kv_spec = None
        if self.quant.get("kv_cache_quant_algo") == "FP8":
            kv_spec = _kv_spec()
            for i in range(config.num_hidden_layers):
                for proj, s in (("k_proj", "k_scale"), ("v_proj", "v_scale")):
                    n = f"model.layers.{i}.self_attn.{proj}.{s}"
                    flat[f"model.layers.{i}.self_attn.{s[0]}_amax"] = self.input_amax(n, kv_spec)
        params = unflatten_params(flat)
        if config.tie_word_embeddings:
            params.pop("lm_head", None)
        return config, _make_forward(config, specs, kv_spec), params


def _input_spec(algo: str, block=None):
    import jq
    from jq.config import QuantizerSpec, as_config

    if algo == BLOCK_FP8:  # E4M3 per token in groups of bk, scale from each group's amax
        return QuantizerSpec(num_bits=(4, 3), block_sizes={-1: block[1], "type": "dynamic"})
    spec = as_config(jq.get_preset(_INPUT_PRESET[algo])).resolve("x.input_quantizer")
    return spec if spec is not None and spec.enable else None


def _check_block_fp8_config(qc: dict) -> None:
    """vLLM's ``Fp8Config`` rules for a block FP8 ``quantization_config`` (see the module docstring)."""
    block = qc.get("weight_block_size")
    if qc.get("activation_scheme") != "dynamic":
        raise ValueError(f"quantization_config {qc}: block FP8 needs activation_scheme 'dynamic'")
    if not isinstance(block, list) or len(block) != 2 or not all(isinstance(n, int) and n > 0 for n in block):
        raise ValueError(f"quantization_config weight_block_size {block!r}: two positive ints [bn, bk]")
    if block[0] != block[1]:
        raise ValueError(f"weight_block_size {block}: not square; vLLM sizes the input groups by bn in some versions "
                         f"and by bk in others")


def _block_fp8_quant(qc: dict) -> dict:
    """hf_quant_config's ``quantization`` dict equivalent to a block FP8 ``quantization_config``."""
    excluded = qc.get("ignored_layers") or qc.get("modules_to_not_convert") or []
    return {"quant_algo": BLOCK_FP8, "kv_cache_quant_algo": None, "weight_block_size": qc.get("weight_block_size"),
            "exclude_modules": list(excluded)}


def _kv_spec():
    from jq.models.kv_cache import kv_spec

    return kv_spec("fp8")


def _make_forward(config, specs: dict, kv_spec):
    from jq.fake_quant import fake_quant
    from jq.models import llama
    from jq.models.rope import apply_rope, rope_tables

    def qlinear(x, p, module):
        if "pre_quant_scale" in p:
            x = (x * p["pre_quant_scale"]).astype(x.dtype)
        spec = specs.get(module)
        if spec is not None:
            x = fake_quant(x, p.get("input_amax"), spec=spec)
        return llama.linear(x, {k: v for k, v in p.items() if k in ("weight", "bias")})

    def forward(params, tokens):
        c = config
        b, t = tokens.shape
        positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
        cos, sin = rope_tables(c, positions)
        mask = llama.attention_mask(positions, positions, c)
        h = params["model"]["embed_tokens"]["weight"][tokens]
        for i, layer in enumerate(params["model"]["layers"]):
            pre = f"model.layers.{i}."
            att = layer["self_attn"]
            x = llama.rms_norm(h, layer["input_layernorm"], c.rms_norm_eps)
            q = qlinear(x, att["q_proj"], pre + "self_attn.q_proj").reshape(b, t, c.num_attention_heads, c.head_dim)
            k = qlinear(x, att["k_proj"], pre + "self_attn.k_proj").reshape(b, t, c.num_key_value_heads, c.head_dim)
            v = qlinear(x, att["v_proj"], pre + "self_attn.v_proj").reshape(b, t, c.num_key_value_heads, c.head_dim)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
            if kv_spec is not None:
                k = fake_quant(k, att["k_amax"], spec=kv_spec)
                v = fake_quant(v, att["v_amax"], spec=kv_spec)
            o = llama.attention(q, k, v, mask, c)
            h = h + qlinear(o, att["o_proj"], pre + "self_attn.o_proj")
            m = layer["mlp"]
            x = llama.rms_norm(h, layer["post_attention_layernorm"], c.rms_norm_eps)
            g = jax.nn.silu(qlinear(x, m["gate_proj"], pre + "mlp.gate_proj")) * qlinear(x, m["up_proj"],
                                                                                     pre + "mlp.up_proj")
            h = h + qlinear(g, m["down_proj"], pre + "mlp.down_proj")
        h = llama.rms_norm(h, params["model"]["norm"], c.rms_norm_eps)
        head = params["model"]["embed_tokens"] if c.tie_word_embeddings else params["lm_head"]
        return qlinear(h, head, "lm_head")

    return forward


def read_serving_checkpoint(path: str | os.PathLike, *, check: bool = True) -> ServingCheckpoint:
    """Read (and by default :meth:`~ServingCheckpoint.check`) a checkpoint directory."""
    path = Path(path)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path}: no config.json")
    config = json.loads((path / "config.json").read_text())
    block_fp8 = is_block_fp8(config.get("quantization_config"))
    if not block_fp8 and not (path / "hf_quant_config.json").exists():
        raise FileNotFoundError(f"{path}: no hf_quant_config.json")
    index = path / "model.safetensors.index.json"
    files = (sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists()
             else ["model.safetensors"])
    tensors, metadata = {}, {}
    for f in files:
        t, meta = read_safetensors(path / f)
        tensors.update(t)
        metadata.update(meta)
    if index.exists():
        wm = json.loads(index.read_text())["weight_map"]
        if set(wm) != set(tensors):
            raise ValueError(f"{index}: the weight_map and the shards' tensors differ")
    quant = (_block_fp8_quant(config["quantization_config"]) if block_fp8
             else json.loads((path / "hf_quant_config.json").read_text())["quantization"])
    ck = ServingCheckpoint(config, quant, tensors, metadata)
    if check:
        ck.check()
    return ck
