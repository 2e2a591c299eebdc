"""Command line: ``python -m jq_autotune --model m.onnx --output DIR [options]``.

Exit codes: 0 success, 1 failure (bad input, unavailable backend, ...), 130 interrupted
(Ctrl-C / SIGINT; the state is saved and rerunning the same command resumes).

Example::

    python -m jq_autotune --model resnet.onnx --output out/ --mode quick \\
        --calibration-data calib.npz --input-shapes input:1x3x224x224
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Sequence

from .config import MODES, QUANT_TYPES, Config
from .rules import BACKENDS


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (also documents every flag in ``--help``)."""
    p = argparse.ArgumentParser(
        prog="python -m jq_autotune",
        description="Search Q/DQ placement in an ONNX model for the lowest measured latency.",
    )
    p.add_argument("--model", required=True, help="FP32 ONNX model (external data next to it is fine)")
    p.add_argument("--output", required=True, help="output directory (a state file there is resumed)")
    p.add_argument("--quant-type", default="int8", help=f"quantization type: {', '.join(QUANT_TYPES)} (default int8)")
    p.add_argument("--mode", default="default", choices=list(MODES), help="quick=30 schemes/10 warm-up/50 runs, default=50/50/100, extensive=200/50/200")
    p.add_argument("--schemes-per-region", type=int, default=None, help="schemes measured per unique pattern (overrides --mode)")
    p.add_argument("--warmup-runs", type=int, default=None, help="warm-up runs per benchmark (overrides --mode)")
    p.add_argument("--timing-runs", type=int, default=None, help="timed runs per benchmark (overrides --mode)")
    p.add_argument("--benchmark", default="ort", choices=list(BACKENDS), help="latency backend (default ort = ONNX Runtime)")
    p.add_argument("--provider", default="CPUExecutionProvider", help="ONNX Runtime execution provider (default CPUExecutionProvider)")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads (default 1; 0 = ORT's default)")
    p.add_argument("--input-shapes", default=None, help="shapes of dynamic inputs, e.g. input:1x3x224x224,mask:1x128")
    p.add_argument("--calibration-data", default=None, help=".npz of input samples (ORT MinMax calibration) or a jq scales .yaml/.json")
    p.add_argument("--pattern-cache", default=None, help="pattern cache YAML from an earlier run (seeds the search)")
    p.add_argument("--qdq-baseline", default=None, help="existing Q/DQ model whose placement seeds the search")
    p.add_argument("--node-filter", default=None, help="comma-separated wildcards over node names/op types, or @file with one per line; only matching regions are profiled")
    p.add_argument("--performance-threshold", type=float, default=1.02, help="minimum speedup over no Q/DQ for a pattern to keep its scheme (default 1.02)")
    p.add_argument("--min-cosine", type=float, default=0.99, help="with --calibration-data: reject schemes whose outputs' cosine similarity to FP32 falls below this (0 disables; default 0.99)")
    p.add_argument("--default-q-scale", type=float, default=0.1, help="scale used without calibration (latency-only model; default 0.1)")
    p.add_argument("--reduce-range", default="auto", choices=["auto", "on", "off"], help="INT8 weights in 7 bits (|q| <= 64); auto = on for --benchmark ort on x86 CPUs without VNNI, whose u8s8 kernels saturate with 8-bit weights (default auto)")
    p.add_argument("--timing-cache", default=None, help="TensorRT timing cache file")
    p.add_argument("--plugin-library", action="append", default=[], help="TensorRT plugin library (repeatable)")
    p.add_argument("--seed", type=int, default=0, help="random seed of scheme generation")
    p.add_argument("--no-progress", action="store_true", help="disable progress bars")
    p.add_argument("--verbose", action="store_true", help="debug logging")
    return p


def _node_filter(text: str | None) -> list[str] | None:
    if not text:
        return None
    if text.startswith("@"):
        path = Path(text[1:])
        if not path.is_file():
            raise ValueError(f"node filter file not found: {path}")
        items = [line.strip() for line in path.read_text().splitlines()]
    else:
        items = [x.strip() for x in text.split(",")]
    items = [x for x in items if x and not x.startswith("#")]
    if not items:
        raise ValueError("the node filter is empty")
    return items


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0, 1 or 130)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from .benchmark import BenchmarkUnavailable
    from .model_io import ModelError, parse_input_shapes
    from .workflow import autotune

    try:
        if args.quant_type not in QUANT_TYPES:
            raise ValueError(f"unknown --quant-type {args.quant_type!r}: expected one of {', '.join(QUANT_TYPES)}")
        overrides = {
            "default_quant_type": args.quant_type,
            "performance_threshold": args.performance_threshold,
            "default_q_scale": args.default_q_scale,
            "min_output_cosine": args.min_cosine,
            "seed": args.seed,
            "verbose": args.verbose,
            "reduce_range": {"auto": None, "on": True, "off": False}[args.reduce_range],
        }
        for flag, field in (("schemes_per_region", "schemes_per_region"), ("warmup_runs", "warmup_runs"), ("timing_runs", "timing_runs")):
            if getattr(args, flag) is not None:
                overrides[field] = getattr(args, flag)
        config = Config.for_mode(args.mode, **overrides)
        shapes = parse_input_shapes(args.input_shapes)
        autotune(
            args.model,
            args.output,
            config,
            backend=args.benchmark,
            input_shapes=shapes,
            calibration_data=args.calibration_data,
            pattern_cache=args.pattern_cache,
            qdq_baseline=args.qdq_baseline,
            node_filter=_node_filter(args.node_filter),
            provider=args.provider,
            threads=args.threads,
            timing_cache=args.timing_cache,
            plugin_libraries=args.plugin_library,
            progress=not args.no_progress,
        )
    except KeyboardInterrupt:
        print("interrupted (exit 130); state saved - rerun the same command to resume", file=sys.stderr)
        return 130
    except (ModelError, ValueError, BenchmarkUnavailable, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # noqa: BLE001 - the CLI reports, the API raises
        logging.getLogger("autotune").debug("failure", exc_info=True)
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0
