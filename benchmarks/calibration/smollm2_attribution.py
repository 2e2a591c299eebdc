"""Where SmolLM2-135M's FP8 / INT8 perplexity loss comes from: one calibration per preset, then the same
quantized model with groups of quantizers switched off (``jq.inspect.disable_quantizer``).

Each variant is ``PRESET[:ALGORITHM]`` followed by ``-PATTERN`` (switch those quantizers off) or ``+PATTERN``
(after ``-*``: switch only those on), e.g.::

    python -m benchmarks.calibration.smollm2_attribution --n-tokens 1024 --variants \
        "FP8_DEFAULT" "FP8_DEFAULT -*input_quantizer" "FP8_DEFAULT -*weight_quantizer" \
        "FP8_DEFAULT -* +*down_proj.input_quantizer" --json attribution.json

Same data as ``examples/smollm2_perplexity.py`` (held-out Hamlet windows; 4 x 2 x 512 calibration tokens
from the calibration plays); ``--n-tokens`` scores the first N held-out tokens. Results: docs/models.md.
"""

from __future__ import annotations

import argparse
import json
import time

import jax

import jq
import jq.models as jm
from jq.inspect import disable_quantizer, enable_quantizer
from jq_zoo import smollm2
from jq_zoo.preset_entry import preset_cfg


def toggled(qm, edits: list[str]):
    """``qm`` with each ``-PATTERN`` disabled and ``+PATTERN`` enabled, in order."""
    for e in edits:
        qm = (disable_quantizer if e[0] == "-" else enable_quantizer)(qm, e[1:])
    return qm


def variant_parser(doc: str) -> argparse.ArgumentParser:
    """The flags the SmolLM2 variant scripts share: variants, held-out tokens, windows, calibration batches."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", nargs="+", required=True)
    ap.add_argument("--n-tokens", type=int, default=1024)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--calib-batches", type=int, default=4)
    return ap


def score_row(r, base_perplexity: float, seconds: float) -> dict:
    """One variant's JSON row from its :func:`jq.models.evaluate` result ``r`` against the float perplexity."""
    return {"perplexity": r.perplexity, "vs_float": r.perplexity / base_perplexity - 1, "kl": r.kl, "top1": r.top1,
            "seconds": seconds}


def row_line(variant: str, row: dict) -> str:
    """``variant: perplexity (vs float %), KL, top-1 (seconds)``, as printed after each variant."""
    return (f"{variant}: {row['perplexity']:.3f} ({100 * row['vs_float']:+.2f} %) KL {row['kl']:.4f} "
            f"top-1 {100 * row['top1']:.2f} % ({row['seconds']:.0f} s)")


def main() -> None:
    ap = variant_parser(__doc__)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    _, params, forward, (x, y), calib = smollm2.shakespeare_setup(
        seq_len=args.seq_len, n_tokens=args.n_tokens, calib_batches=args.calib_batches, batch_size=args.batch_size)
    t0 = time.time()
    base = jm.evaluate(forward, params, x, y, batch_size=args.batch_size, progress=False)
    rows = {"float": {"perplexity": base.perplexity, "seconds": time.time() - t0}}
    print(f"float ({args.n_tokens} tokens): {base.perplexity:.3f}", flush=True)
    calibrated = {}
    for variant in args.variants:
        t0 = time.time()
        entry, *edits = variant.split()
        if entry not in calibrated:
            calibrated = {entry: jq.quantize(params, forward, preset_cfg(entry), calib_data=calib)}
        qm = toggled(calibrated[entry], edits)
        r = jm.evaluate(qm.apply, qm.params, x, y, batch_size=args.batch_size, reference=(forward, params),
                        progress=False)
        rows[variant] = score_row(r, base.perplexity, time.time() - t0)
        print(row_line(variant, rows[variant]), flush=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"jax": jax.__version__, "n_tokens": args.n_tokens, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
