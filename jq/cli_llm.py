"""``jq-quant quantize --model HF_DIR_OR_GGUF`` and ``jq-quant eval``: language models end to end.

quantize: load a Llama-family HF directory (or convert a ``.gguf`` file once), calibrate a preset on text
(``--calib-text``), print the per-quantizer summary and a perplexity / KL / top-1 table (float vs quantized,
on ``--eval-text``), and with ``--export-hf OUT`` write a serving checkpoint (:mod:`jq.export.serving`).
eval: perplexity of an exported checkpoint (and KL / top-1 against ``--reference``, the float model).

Example:
  jq-quant quantize --model SmolLM2-135M/ --preset FP8_DEFAULT_CFG --kv-cache fp8 --export-hf out/
  jq-quant eval --model out/ --reference SmolLM2-135M/
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

__all__ = ["CliError", "cmd_quantize", "cmd_eval", "add_llm_args", "TOKENIZER_FILES"]

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json")
KV_PRESETS = {"fp8": "FP8_KV_CFG"}


class CliError(Exception):
    """A bad input, reported as one line (``jq-quant: ...``) with exit status 2."""


def add_llm_args(p) -> None:
    """The language-model options of ``quantize`` (and the text options of ``eval``)."""
    p.add_argument("--calib-text", default=None, help="calibration text file (default: Shakespeare, calib plays)")
    p.add_argument("--eval-text", default=None, help="held-out text file (default: Shakespeare, eval plays)")
    p.add_argument("--seq-len", type=int, default=256, help="tokens per window")
    p.add_argument("--calib-samples", type=int, default=16, help="calibration windows")
    p.add_argument("--eval-tokens", type=int, default=4096, help="scored held-out tokens")
    p.add_argument("--batch-size", type=int, default=4, help="windows per batch")


def _hf_dir(model: str, cache_dir) -> Path:
    path = Path(model)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise CliError(f"{path}: no such GGUF file")
        from jq.models.gguf import gguf_to_hf

        root = Path(cache_dir) if cache_dir else Path.home() / ".cache" / "jq" / "models"
        print(f"converting {path} to an HF directory under {root} (once)")
        return gguf_to_hf(path, root / path.stem)
    if not path.is_dir():
        raise CliError(f"{path}: not a directory or .gguf file")
    if not (path / "config.json").exists():
        raise CliError(f"{path}: no config.json (expected a Hugging Face model directory)")
    return path


def _read_config(path: Path) -> dict:
    from jq.models.config import LlamaConfig

    d = json.loads((path / "config.json").read_text())
    try:
        LlamaConfig.from_hf(d)
    except (ValueError, NotImplementedError) as e:
        raise CliError(f"{path}: {e}") from None
    return d


def _tokenizer(path: Path):
    file = path / "tokenizer.json"
    if not file.exists():
        raise CliError(f"{path}: no tokenizer.json (needed to encode --calib-text / --eval-text)")
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(file))


def _ids(file, tokenizer, default: str):
    from jq.models.text import encode

    if file is None:
        from jq_zoo import shakespeare

        text = shakespeare.calib_text() if default == "calib" else shakespeare.eval_text()
    else:
        if not Path(file).is_file():
            raise CliError(f"{file}: no such text file")
        text = Path(file).read_text()
    return encode(text, tokenizer)


def _windows(ids, n_tokens: int, seq_len: int, what: str):
    from jq.models.text import token_windows

    if len(ids) < n_tokens + 1:
        raise CliError(f"the {what} text has {len(ids)} tokens; {n_tokens + 1} are needed (lower --seq-len, "
                       f"--calib-samples or --eval-tokens, or give a longer text)")
    return token_windows(ids, seq_len, n_tokens)


def _preset(name: str, kv: str | None, block_size: int | None = None) -> dict:
    import jq

    try:
        cfg = jq.get_preset(name)
    except (KeyError, ValueError) as e:
        raise CliError(str(e).strip("'\"")) from None
    if block_size is not None:
        try:
            cfg = jq.presets.with_block_size(cfg, block_size)
        except ValueError as e:
            raise CliError(f"--block-size {block_size} with {name}: {e}") from None
    return jq.merge_presets(cfg, jq.get_preset(KV_PRESETS[kv])) if kv else cfg


def _algorithm(text: str):
    from jq.calib.algorithms import algorithm_from_text

    try:
        return algorithm_from_text(text)
    except ValueError as e:
        raise CliError(f"--algorithm: {e}") from None


def _checkpoint_algo(out: Path) -> str:
    """The quant_algo a checkpoint's config.json names (block FP8: DeepSeek's ``quant_method: "fp8"``)."""
    from jq.export.serving import BLOCK_FP8, is_block_fp8

    qc = json.loads((out / "config.json").read_text()).get("quantization_config") or {}
    return BLOCK_FP8 if is_block_fp8(qc) else qc.get("quant_algo", "?")


def cmd_quantize(args) -> int:
    """Quantize a language model; see the module docstring."""
    import jax
    import jax.numpy as jnp

    import jq
    import jq.models as jm
    from jq.model import QuantizedModel

    presets = args.preset or ["FP8_DEFAULT_CFG"]
    if args.export_hf and len(presets) != 1:
        raise CliError(f"--export-hf writes one checkpoint: give one --preset (got {len(presets)})")
    if args.export_hf and Path(args.export_hf).exists():
        raise CliError(f"{args.export_hf} exists; choose a new --export-hf directory (nothing is overwritten)")
    cfgs = {name: _preset(name, args.kv_cache, args.block_size) for name in presets}
    path = _hf_dir(args.model, args.cache_dir)
    hf_config = _read_config(path)
    tokenizer = _tokenizer(path)
    config, params = jm.load_hf(path)
    forward = jm.make_forward(config)
    x_cal, _ = _windows(_ids(args.calib_text, tokenizer, "calib"), args.calib_samples * args.seq_len, args.seq_len,
                        "calibration")
    calib = [(jnp.asarray(x_cal[i:i + args.batch_size]),) for i in range(0, len(x_cal), args.batch_size)]
    x_ev, y_ev = _windows(_ids(args.eval_text, tokenizer, "eval"), args.eval_tokens, args.seq_len, "evaluation")
    print(f"model {path} ({config.architecture}, {config.num_hidden_layers} layers); calibration: {len(x_cal)} x "
          f"{args.seq_len} tokens; evaluation: {x_ev.size} held-out tokens")
    results = {"float": jm.evaluate(forward, params, x_ev, y_ev, batch_size=args.batch_size, desc="eval float",
                                    progress=not args.quiet)}
    for name, cfg in cfgs.items():
        label = name + (f" + {args.kv_cache.upper()} KV" if args.kv_cache else "")
        qm = QuantizedModel.create(params, forward, cfg)
        t0 = time.perf_counter()
        extra = {"algorithm": _algorithm(args.algorithm)} if args.algorithm else {}
        qm = jq.calibrate(qm, calib, progress=not args.quiet, share_sibling_weight_amax=True, **extra)
        if not any(s is not None for s in qm.specs().values()):
            raise CliError(f"preset {name} enables no quantizer on this {config.architecture} (its patterns match "
                           f"none of the {len(qm.traced.sites)} sites)")
        print(f"\n== {label}: calibrated in {time.perf_counter() - t0:.1f}s ==")
        if not args.quiet:
            jq.print_quant_summary(qm)
        results[label] = jm.evaluate(qm.apply, qm.params, x_ev, y_ev, batch_size=args.batch_size,
                                     reference=(forward, params), desc=f"eval {label}", progress=not args.quiet)
        if args.export_hf:
            from jq.export.serving import to_serving_checkpoint

            out = to_serving_checkpoint(qm, args.export_hf, hf_config=hf_config)
            for f in TOKENIZER_FILES:
                if (path / f).exists():
                    shutil.copy(path / f, out / f)
            print(f"wrote {out} (quant_algo {_checkpoint_algo(out)})")
    print("\n" + jm.format_table(results))
    return 0


def cmd_eval(args) -> int:
    """Perplexity of an exported checkpoint (KL / top-1 against ``--reference``)."""
    import jax

    import jq.models as jm
    from jq.export.serving_reader import read_serving_checkpoint

    path = Path(args.model)
    try:  # the reader knows which files each layout needs (block FP8 has no hf_quant_config.json)
        ck = read_serving_checkpoint(path)
    except FileNotFoundError as e:
        raise CliError(f"{e} (expected a checkpoint written by jq-quant quantize --export-hf)") from None
    _read_config(path)
    config, forward, params = ck.to_jq()
    tokenizer = _tokenizer(path)
    x_ev, y_ev = _windows(_ids(args.eval_text, tokenizer, "eval"), args.eval_tokens, args.seq_len, "evaluation")
    reference = None
    results = {}
    if args.reference:
        ref_config, ref_params = jm.load_hf(_hf_dir(args.reference, None))
        reference = (jm.make_forward(ref_config), ref_params)
        results["float (reference)"] = jm.evaluate(*reference, x_ev, y_ev, batch_size=args.batch_size,
                                                   desc="eval reference", progress=not args.quiet)
    label = f"{path.name} ({ck.quant['quant_algo']}, KV {ck.quant.get('kv_cache_quant_algo') or 'float'})"
    results[label] = jm.evaluate(jax.jit(forward), params, x_ev, y_ev, batch_size=args.batch_size,
                                 reference=reference, desc="eval checkpoint", progress=not args.quiet)
    print(jm.format_table(results))
    return 0
