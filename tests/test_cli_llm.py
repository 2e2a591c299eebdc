"""``jq-quant quantize --model HF_DIR`` / ``jq-quant eval`` on a tiny random Llama saved in HF layout, and the
errors bad input gets (each names what is wrong)."""

import json

import pytest

import jq.models as jm
from jq.cli import main
from tests.models.conftest import tiny_model

TEXT = "the quick brown fox jumps over the lazy dog. " * 40
COMMON = ["--seq-len", "16", "--calib-samples", "2", "--eval-tokens", "32", "--batch-size", "2", "--quiet"]


def _char_tokenizer(path, vocab_size):
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers

    chars = sorted(set(TEXT))
    assert len(chars) < vocab_size
    tok = Tokenizer(models.WordLevel({c: i for i, c in enumerate(chars)} | {"[UNK]": len(chars)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.save(str(path / "tokenizer.json"))


@pytest.fixture
def hf_dir(tmp_path):
    hf, _, params = tiny_model(num_hidden_layers=1)
    path = jm.save_hf(tmp_path / "tiny", hf, params)
    _char_tokenizer(path, hf["vocab_size"])
    (tmp_path / "text.txt").write_text(TEXT)
    return path


def _text(hf_dir):
    t = str(hf_dir.parent / "text.txt")
    return ["--calib-text", t, "--eval-text", t]


def test_quantize_exports_a_checkpoint_that_eval_reads(hf_dir, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["quantize", "--model", str(hf_dir), "--preset", "FP8_DEFAULT_CFG", "--kv-cache", "fp8",
               "--export-hf", str(out), *_text(hf_dir), *COMMON])
    printed = capsys.readouterr().out
    assert rc == 0
    assert "| float |" in printed and "| FP8_DEFAULT_CFG + FP8 KV |" in printed  # the perplexity / KL / top-1 table
    q = json.loads((out / "hf_quant_config.json").read_text())["quantization"]
    assert (q["quant_algo"], q["kv_cache_quant_algo"]) == ("FP8", "FP8")
    assert (out / "tokenizer.json").exists()
    rc = main(["eval", "--model", str(out), "--reference", str(hf_dir), "--eval-text", _text(hf_dir)[1], *COMMON])
    table = capsys.readouterr().out
    assert rc == 0 and "out (FP8, KV FP8)" in table and "float (reference)" in table


def test_block_fp8_with_a_block_size_exports_deepseeks_layout_that_eval_reads(hf_dir, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["quantize", "--model", str(hf_dir), "--preset", "FP8_BLOCKWISE_CFG", "--block-size", "16",
               "--algorithm", "gptq,sequential=false,act_order=true", "--export-hf", str(out), *_text(hf_dir), *COMMON])
    assert rc == 0 and "(quant_algo FP8_BLOCK_SCALES)" in capsys.readouterr().out
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert (qc["quant_method"], qc["weight_block_size"]) == ("fp8", [16, 16])
    rc = main(["eval", "--model", str(out), "--reference", str(hf_dir), "--eval-text", _text(hf_dir)[1], *COMMON])
    assert rc == 0 and "out (FP8_BLOCK_SCALES, KV float)" in capsys.readouterr().out


def test_block_size_on_a_preset_without_integer_blocks(hf_dir, capsys):
    assert main(["quantize", "--model", str(hf_dir), "--preset", "NVFP4_DEFAULT_CFG", "--block-size", "32",
                 *_text(hf_dir), *COMMON]) == 2
    assert "--block-size 32 with NVFP4_DEFAULT_CFG: the preset has no integer block size" in capsys.readouterr().err


def test_algorithm_options_must_be_key_value(hf_dir, capsys):
    assert main(["quantize", "--model", str(hf_dir), "--algorithm", "gptq,act_order", *_text(hf_dir), *COMMON]) == 2
    assert "--algorithm: algorithm 'gptq,act_order': option 'act_order' is not key=value" in capsys.readouterr().err


def test_directory_without_config_json(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["quantize", "--model", str(tmp_path / "empty"), "--quiet"]) == 2
    assert "no config.json" in capsys.readouterr().err


def test_unsupported_architecture_is_named(hf_dir, capsys):
    cfg = json.loads((hf_dir / "config.json").read_text())
    cfg["architectures"] = ["PhiForCausalLM"]
    (hf_dir / "config.json").write_text(json.dumps(cfg))
    assert main(["quantize", "--model", str(hf_dir), *_text(hf_dir), *COMMON]) == 2
    assert "unsupported architecture 'PhiForCausalLM'" in capsys.readouterr().err


def test_preset_that_enables_nothing(hf_dir, capsys):
    # NVFP4_EXPERTS_ONLY_CFG quantizes MoE experts only; a dense Llama has none
    assert main(["quantize", "--model", str(hf_dir), "--preset", "NVFP4_EXPERTS_ONLY_CFG", *_text(hf_dir),
                 *COMMON]) == 2
    assert "preset NVFP4_EXPERTS_ONLY_CFG enables no quantizer" in capsys.readouterr().err


def test_existing_output_directory_is_not_overwritten(hf_dir, tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    assert main(["quantize", "--model", str(hf_dir), "--export-hf", str(tmp_path / "out"), *_text(hf_dir),
                 *COMMON]) == 2
    assert "exists" in capsys.readouterr().err
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


def test_llm_options_are_refused_for_the_cnn(capsys):
    with pytest.raises(SystemExit, match="--kv-cache applies to language models"):
        main(["quantize", "--model", "fashion-cnn", "--kv-cache", "fp8"])
