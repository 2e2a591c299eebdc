"""The ``jq-quant`` command (also ``python -m jq``; not ``jq``, which is the JSON processor's name).

Subcommands:
  quantize   quantize a real model on real offline data with one or more presets; print the per-quantizer
             summary and the accuracy of each quantized model against the float model. ``--model`` is
             ``fashion-cnn`` or a Llama-family HF directory / ``.gguf`` file (:mod:`jq.cli_llm`: perplexity,
             KL and top-1 on text; ``--export-hf OUT`` writes a serving checkpoint)
  eval       perplexity (KL / top-1 against --reference) of a checkpoint written by ``quantize --export-hf``
  presets    list the presets with their formats and algorithms
  analyze    print jq's trace report (sites, siblings, coupled dimensions) for a model

Example:
  jq-quant quantize --model fashion-cnn --preset INT8_DEFAULT_CFG --preset NVFP4_DEFAULT_CFG
  jq-quant quantize --model SmolLM2-135M/ --preset NVFP4_DEFAULT_CFG --kv-cache fp8 --export-hf out/
"""

from __future__ import annotations

import argparse
import sys
import time

from jq.cli_llm import CliError, add_llm_args

__all__ = ["main"]

MODELS = ("fashion-cnn",)
_COMMANDS = (
    ("quantize", "quantize a real model on real offline data and report accuracy per preset"),
    ("eval", "perplexity / KL / top-1 of a checkpoint written by quantize --export-hf"),
    ("presets", "list the presets with their formats and algorithms"),
    ("analyze", "print jq's trace report (sites, siblings, coupled dimensions) for a model"),
)


def _load_model(name, args):
    if name != "fashion-cnn":
        raise SystemExit(f"jq-quant: unknown model {name!r}; available: {MODELS}, or a Llama-family HF directory "
                         f"or .gguf file (quantize)")
    from jq_zoo.cnn import FashionCNN, load_or_train_fashion_cnn
    from jq_zoo.fashion_mnist import load_fashion_mnist

    params, path = load_or_train_fashion_cnn(cache_dir=args.cache_dir, epochs=args.epochs, data_dir=args.data_dir)
    x_train, _ = load_fashion_mnist("train", args.data_dir)
    x_test, y_test = load_fashion_mnist("test", args.data_dir)
    calib = [(x_train[i:i + args.calib_batch_size],)
             for i in range(0, args.calib_batches * args.calib_batch_size, args.calib_batch_size)]
    return FashionCNN().apply, params, calib, (x_test, y_test), path


def _cmd_quantize(args) -> int:
    import jq

    if args.model not in MODELS:
        from jq.cli_llm import cmd_quantize

        return cmd_quantize(args)
    for opt in ("export_hf", "kv_cache", "calib_text", "algorithm", "block_size"):
        if getattr(args, opt, None):
            raise SystemExit(f"jq-quant: --{opt.replace('_', '-')} applies to language models (--model HF_DIR or "
                             f".gguf), not {args.model}")

    apply_fn, params, calib, (x_test, y_test), path = _load_model(args.model, args)
    if args.limit:
        x_test, y_test = x_test[: args.limit], y_test[: args.limit]
    presets = args.preset or ["INT8_DEFAULT_CFG", "FP8_DEFAULT_CFG", "NVFP4_DEFAULT_CFG", "MXFP8_DEFAULT_CFG"]
    print(f"model {args.model} (params cached at {path}); calibration: {len(calib)} batches of "
          f"{args.calib_batch_size} training images; evaluation: {len(x_test)} test images")
    base, _ = _evaluate(apply_fn, params, None, x_test, y_test, not args.quiet, "float32")
    rows = [("float32", "-", base, 0.0, 1.0)]
    for name in presets:
        cfg = jq.get_preset(name)
        t0 = time.perf_counter()
        qm = jq.quantize(params, apply_fn, cfg, calib_data=calib, progress=not args.quiet)
        t_cal = time.perf_counter() - t0
        if not args.quiet:
            print(f"\n== {name} ==")
            jq.print_quant_summary(qm)
        acc, agree = _evaluate(apply_fn, params, qm, x_test, y_test, not args.quiet, name)
        rows.append((name, f"{t_cal:.1f}s", acc, 100 * (base - acc), agree))
    w = max(len(r[0]) for r in rows) + 2
    print("\nresults (top-1 accuracy on the Fashion-MNIST test split)")
    print(f"{'config':<{w}} {'calibrate':>9} {'top-1':>8} {'drop (pt)':>10} {'agreement':>10}")
    for name, t, acc, drop, agree in rows:
        print(f"{name:<{w}} {t:>9} {100 * acc:>7.2f}% {drop:>10.2f} {100 * agree:>9.2f}%")
    return 0


def _evaluate(apply_fn, params, qm, images, labels, progress, desc, batch=1000) -> tuple[float, float]:
    """Top-1 accuracy of ``qm`` (or of the float model when None) and its prediction agreement with the float
    model, in jitted batches with a progress bar."""
    import jax
    import jax.numpy as jnp

    from jq.progress import progress as bar

    f = jax.jit(apply_fn)
    g = f if qm is None else jax.jit(qm.apply)
    correct = same = 0
    for i in bar(range(0, len(images), batch), desc=f"evaluate {desc}", enabled=progress, unit="batch"):
        xb = jnp.asarray(images[i:i + batch])
        ref = jnp.argmax(f(params, xb), -1)
        pred = ref if qm is None else jnp.argmax(g(qm.params, xb), -1)
        correct += int(jnp.sum(pred == jnp.asarray(labels[i:i + batch])))
        same += int(jnp.sum(pred == ref))
    return correct / len(images), same / len(images)


def _cmd_eval(args) -> int:
    from jq.cli_llm import cmd_eval

    return cmd_eval(args)


def _cmd_presets(args) -> int:
    from jq.config import as_config
    from jq.presets import PRESETS

    print(f"{'preset':<34} {'weights':<28} {'inputs':<22} algorithm")
    for name, cfg in PRESETS.items():
        c = as_config(cfg)

        def fmt(spec):
            specs = spec if isinstance(spec, tuple) else (spec,)
            on = [s.describe() for s in specs if s.enable]
            return " -> ".join(on) if on else "off"

        extra = "" if not name.endswith("KV_CFG") else f"  (k/v bmm: {fmt(c.resolve('attn.k_bmm_quantizer'))})"
        print(f"{name:<34} {fmt(c.resolve('x.weight_quantizer')):<28} {fmt(c.resolve('x.input_quantizer')):<22} "
              f"{c.algorithm.method}{extra}")
    return 0


def _cmd_analyze(args) -> int:
    import jax.numpy as jnp

    import jq

    apply_fn, params, calib, _, _ = _load_model(args.model, args)
    jq.trace.analyze(apply_fn, params, jnp.asarray(calib[0][0]))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="jq-quant", description="jq: quantization toolkit for JAX",
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="subcommands:\n" + "\n".join(f"  {n:<10} {h}" for n, h in _COMMANDS))
    sub = p.add_subparsers(dest="command", required=True, metavar="{" + ",".join(n for n, _ in _COMMANDS) + "}")

    def model_args(sp):
        sp.add_argument("--model", default="fashion-cnn",
                        help=f"the model: {', '.join(MODELS)}, or a Llama-family HF directory or .gguf file")
        sp.add_argument("--data-dir", default=None, help="Fashion-MNIST IDX directory (default: Debian's)")
        sp.add_argument("--cache-dir", default=None, help="where the trained float model is cached")
        sp.add_argument("--epochs", type=int, default=3, help="training epochs for the float model")
        sp.add_argument("--calib-batches", type=int, default=8, help="number of calibration batches")
        sp.add_argument("--calib-batch-size", type=int, default=128, help="images per calibration batch")

    q = sub.add_parser("quantize", help=dict(_COMMANDS)["quantize"])
    model_args(q)
    q.add_argument("--preset", action="append", help="preset name (repeatable); default INT8, FP8, NVFP4, MXFP8")
    q.add_argument("--limit", type=int, default=0, help="evaluate on the first N test images only")
    q.add_argument("--quiet", action="store_true", help="no per-quantizer summary or progress bars")
    q.add_argument("--algorithm", default=None, help="calibration algorithm instead of the preset's (max, "
                   "smoothquant, awq_lite, awq_clip, awq_full, gptq, mse, ...), options after commas: "
                   "gptq,sequential=false,act_order=true")
    q.add_argument("--kv-cache", choices=("fp8",), default=None, help="also quantize the KV cache (FP8_KV_CFG)")
    q.add_argument("--block-size", type=int, default=None, metavar="N", help="set the presets' integer block sizes "
                   "(INT groups, FP8_BLOCKWISE tiles and input groups) to N, e.g. 64 where 128 does not divide a width")
    q.add_argument("--export-hf", default=None, metavar="OUT", help="write a serving checkpoint (ModelOpt layout; "
                   "block FP8 in DeepSeek's quant_method 'fp8' layout) to this new directory")
    add_llm_args(q)
    q.set_defaults(func=_cmd_quantize)
    e = sub.add_parser("eval", help=dict(_COMMANDS)["eval"])
    e.add_argument("--model", required=True, help="a checkpoint directory written by quantize --export-hf")
    e.add_argument("--reference", default=None, help="the float model (HF directory or .gguf) for KL and top-1")
    e.add_argument("--quiet", action="store_true", help="no progress bars")
    add_llm_args(e)
    e.set_defaults(func=_cmd_eval)
    pr = sub.add_parser("presets", help=dict(_COMMANDS)["presets"])
    pr.set_defaults(func=_cmd_presets)
    a = sub.add_parser("analyze", help=dict(_COMMANDS)["analyze"])
    model_args(a)
    a.set_defaults(func=_cmd_analyze)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except CliError as e:
        print(f"jq-quant: {e}", file=sys.stderr)
        return 2
    except FileNotFoundError as e:
        print(f"jq-quant: {e}", file=sys.stderr)
        return 1
