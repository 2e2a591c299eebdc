"""Block-scaled FP8 activations on SmolLM2-135M: one dynamic E4M3 scale per group of G consecutive input
channels of each token, instead of one per token.

Each variant is a preset entry as ``examples/smollm2_perplexity.py`` takes it (``NAME[:ALGORITHM,...][~PATTERN]``,
:func:`jq_zoo.preset_entry.preset_cfg`) followed by ``@G``: every input quantizer of the preset gets
``block_sizes={-1: G, "type": "dynamic"}`` (``@token`` keeps the preset's ``{-1: None}``: one scale per token;
``@mx`` gives MXFP8's activation scaling, groups of 32 with power-of-two E8M0 scales, the form Blackwell's
tensor cores read); a preset with 2-D weight tiles (``FP8_BLOCKWISE``) gets ``G x G`` tiles too::

    python -m benchmarks.calibration.smollm2_fp8_blocks --n-tokens 1024 --budget-s 3000 \
        --variants FP8_PER_CHANNEL_PER_TOKEN@token FP8_PER_CHANNEL_PER_TOKEN@64 \
        'FP8_PER_CHANNEL_PER_TOKEN:gptq,sequential=false,act_order=true@64' --json blocks.json

Per group ``g`` of a token: ``s_g = 448 / amax_g``, ``x̂ = e4m3(clamp(x s_g, ±448)) / s_g`` (jq/formats/fp8.py on
the static-block geometry, amax taken per call). Same data as ``examples/smollm2_perplexity.py`` (held-out Hamlet
windows; 4 x 2 x 512 calibration tokens from the calibration plays). Results: docs/fp8_smollm2.md.
"""

from __future__ import annotations

import json
import time

import jax

import jq
import jq.models as jm
from benchmarks.calibration.smollm2_attribution import (
    row_line,
    score_row,
    variant_parser,
)
from jq_zoo import smollm2
from jq_zoo.preset_entry import preset_cfg


def blocked_cfg(entry: str) -> dict:
    """The preset of ``ENTRY@G`` with every enabled input quantizer's block size replaced by ``G`` (dynamic
    scales; ``G`` = ``token`` leaves the preset as it is, ``mx`` = MXFP8 groups of 32 with E8M0 scales)."""
    entry, sep, group = entry.rpartition("@")
    if not sep or not (group in ("token", "mx") or group.isdigit() and int(group) > 0):
        raise ValueError(f"variant {entry + sep + group!r}: expected ENTRY@G (G a positive integer, 'token' or 'mx')")
    cfg = preset_cfg(entry)
    if group == "token":
        return cfg
    blocks = {-1: 32, "type": "dynamic", "scale_bits": (8, 0)} if group == "mx" else {-1: int(group), "type": "dynamic"}
    quant_cfg = dict(cfg["quant_cfg"])
    touched = [k for k, v in quant_cfg.items() if k.endswith("input_quantizer") and v.get("enable", True)]
    if not touched:
        raise ValueError(f"variant {entry!r}: the preset has no enabled input quantizer to block-scale")
    for k in touched:
        spec = {key: val for key, val in quant_cfg[k].items() if key != "type"}
        quant_cfg[k] = {**spec, "block_sizes": blocks}
    for k, v in quant_cfg.items():  # 2-D weight tiles (FP8_BLOCKWISE): G x G, as serving stacks pair them
        sizes = v.get("block_sizes") or {}
        if k.endswith("weight_quantizer") and group.isdigit() and {-1, -2} <= set(sizes):
            quant_cfg[k] = {**v, "block_sizes": {**sizes, -1: int(group), -2: int(group)}}
    return {**cfg, "quant_cfg": quant_cfg}


def main() -> None:
    ap = variant_parser(__doc__)
    ap.add_argument("--budget-s", type=float, default=None, help="start no new variant after this many seconds")
    ap.add_argument("--json", default=None, help="rewritten after every variant")
    args = ap.parse_args()

    t0 = time.time()
    cfgs = {v: blocked_cfg(v) for v in args.variants}  # bad entries fail before the model loads
    _, params, forward, (x, y), calib = smollm2.shakespeare_setup(
        seq_len=args.seq_len, n_tokens=args.n_tokens, calib_batches=args.calib_batches, batch_size=args.batch_size)
    t1 = time.time()
    base = jm.evaluate(forward, params, x, y, batch_size=args.batch_size, progress=False)
    rows = {"float": {"perplexity": base.perplexity, "seconds": time.time() - t1}}
    errors = {}
    print(f"float ({args.n_tokens} tokens): {base.perplexity:.3f}", flush=True)

    def save():
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"jax": jax.__version__, "n_tokens": args.n_tokens, "rows": rows, "errors": errors}, f,
                          indent=1)

    save()
    for variant, cfg in cfgs.items():
        if args.budget_s is not None and time.time() - t0 > args.budget_s:
            print(f"{variant}: skipped (--budget-s {args.budget_s:.0f} spent)", flush=True)
            continue
        t1 = time.time()
        try:
            qm = jq.quantize(params, forward, cfg, calib_data=calib)
            r = jm.evaluate(qm.apply, qm.params, x, y, batch_size=args.batch_size, reference=(forward, params),
                            progress=False)
        except Exception as e:  # noqa: BLE001  (one failing variant must not lose the others' rows)
            errors[variant] = f"{type(e).__name__}: {e}"
            print(f"{variant}: FAILED {errors[variant]}", flush=True)
        else:
            rows[variant] = score_row(r, base.perplexity, time.time() - t1)
            print(row_line(variant, rows[variant]), flush=True)
        save()


if __name__ == "__main__":
    main()
