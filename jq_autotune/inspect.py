"""``python -m jq_autotune.inspect --model m.onnx``: print the region tree and patterns.

Example output::

    ROOT#0 nodes=12 in=1 out=1 pattern=-
      COMPOSITE#2 nodes=11 in=1 out=1 [..] pattern=5bbc7e08
        LEAF#3 nodes=3 in=1 out=1 [Conv, Relu, Conv] pattern=c74b3b71
    12 regions, 7 unique patterns
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Print the region tree of a model; returns the exit code."""
    from .autotuner import QDQAutotuner
    from .config import Config
    from .model_io import ModelError, load_model, parse_input_shapes, resolve_input_shapes
    from .rules import BACKENDS, placement_rules

    p = argparse.ArgumentParser(prog="python -m jq_autotune.inspect", description="Print the region tree of an ONNX model.")
    p.add_argument("--model", required=True)
    p.add_argument("--input-shapes", default=None, help="shapes of dynamic inputs, e.g. x:1x3x224x224")
    p.add_argument("--benchmark", default="ort", choices=list(BACKENDS), help="placement rules to list candidate points with")
    p.add_argument("--quant-type", default="int8", choices=["int8", "fp8"])
    p.add_argument("--points", action="store_true", help="also list the candidate insertion points per pattern")
    args = p.parse_args(argv)
    try:
        model, base = load_model(args.model)
        given = parse_input_shapes(args.input_shapes)
        try:
            shapes = resolve_input_shapes(model, given)
        except ValueError:
            shapes = given  # inspection works without concrete shapes (skip rules get weaker)
        config = Config(default_quant_type=args.quant_type)
        tuner = QDQAutotuner(model, base, config, placement_rules(args.benchmark, args.quant_type), shapes)
    except (ModelError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for note in tuner.notes:
        print(f"# preprocessing: {note}")
    for line in tuner.region_tree_lines():
        print(line)
    print(f"{len(tuner.regions)} regions, {len(tuner.patterns)} unique patterns (profiling order: LEAF first)")
    if args.points:
        for sig, views in tuner.patterns.items():
            print(f"pattern {sig[:8]} x{len(views)}: {len(tuner.candidates[sig])} candidate point(s)")
            for pt in tuner.candidates[sig]:
                print(f"    {pt}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
