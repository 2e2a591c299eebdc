"""FP32 vs ``quantize_static`` (QDQ, per-channel) vs autotuned Q/DQ, on ONNX Runtime CPU.

For each ONNX model given, in one run:

1. autotune it (``jq_autotune.workflow.autotune``, ONNX Runtime CPU benchmark, INT8, the
   given calibration data) -> ``optimized_final.onnx``;
2. quantize the *same* FP32 graph (the autotuner's ``baseline.onnx``) with
   ``onnxruntime.quantization.quantize_static`` (QDQ format, uint8 activations, int8
   per-channel weights, MinMax calibration on the same calibration data);
3. time the three models in interleaved rounds (a fresh session per model per round,
   ``--warmup`` untimed runs, median of ``--repeats`` runs); report the median over
   rounds and the run-to-run noise (max - min) / median;
4. compare outputs with FP32 on the evaluation data: mean cosine similarity of the
   embeddings (``--task embedding``) or top-1 agreement with FP32 and accuracy against the
   labels (``--task classification``).

Data files are ``.npz``: ragged samples as ``<input>__<k>`` keys or stacked samples
(see ``jq_autotune.calibration``); a classification eval file holds ``x`` and ``labels``.

Example (see RESULTS.md for the exact commands used)::

    python benchmarks/autotune/bench_autotune.py --name fashion-cnn --task classification \\
        --model benchmarks/autotune/models/fashion_cnn.onnx --calib .../fashion_calib.npz \\
        --eval .../fashion_eval.npz --latency-shapes x:32x1x28x28
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from jq_autotune.benchmark import OrtBenchmark, random_inputs  # noqa: E402
from jq_autotune.calibration import load_calibration_inputs  # noqa: E402
from jq_autotune.config import Config  # noqa: E402
from jq_autotune.model_io import load_model, parse_input_shapes  # noqa: E402
from jq_autotune.workflow import autotune  # noqa: E402


def quantize_static_qdq(fp32: Path, out: Path, samples: list[dict]) -> Path:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(samples)

        def get_next(self):
            return next(self.it, None)

    quantize_static(
        str(fp32),
        str(out),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    return out


def session(path: Path, threads: int) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def accuracy(task: str, models: dict[str, Path], eval_path: Path, output: str | None, threads: int, batch: int) -> dict[str, dict]:
    sess = {k: session(p, threads) for k, p in models.items()}
    res: dict[str, dict] = {k: {} for k in models}
    if task == "embedding":
        samples = load_calibration_inputs(eval_path)
        outs = {k: [] for k in models}
        for feed in samples:
            for k, s in sess.items():
                y = s.run([output] if output else None, feed)[0].reshape(-1)
                outs[k].append(y)
        ref = outs["fp32"]
        for k in models:
            cos = [float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12)) for a, b in zip(ref, outs[k])]
            res[k] = {"mean_cosine_vs_fp32": float(np.mean(cos)), "min_cosine_vs_fp32": float(np.min(cos)), "n": len(cos)}
        return res
    with np.load(eval_path) as data:
        x, labels = data["x"], data["labels"]
    preds = {k: [] for k in models}
    for i in range(0, len(x), batch):
        xb = x[i : i + batch].astype(np.float32)
        for k, s in sess.items():
            preds[k].append(np.argmax(s.run(None, {s.get_inputs()[0].name: xb})[0], axis=1))
    ref = np.concatenate(preds["fp32"])
    for k in models:
        p = np.concatenate(preds[k])
        res[k] = {"top1_agreement_vs_fp32": float((p == ref).mean()), "top1_accuracy": float((p == labels).mean()), "n": int(len(p))}
    return res


def latency(models: dict[str, Path], feeds: dict, rounds: int, warmup: int, repeats: int, threads: int) -> dict[str, dict]:
    bench = OrtBenchmark(feeds, warmup=warmup, repeats=repeats, intra_op_threads=threads)
    per_round: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(rounds):
        for k, p in models.items():
            per_round[k].append(bench.run(p).median_ms)
    out = {}
    for k, v in per_round.items():
        med = statistics.median(v)
        out[k] = {"median_ms": med, "noise": (max(v) - min(v)) / med, "rounds_ms": v}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--task", choices=["embedding", "classification"], required=True)
    ap.add_argument("--calib", required=True, help=".npz calibration samples")
    ap.add_argument("--eval", required=True, help=".npz evaluation data")
    ap.add_argument("--output", default=None, help="output tensor compared for embeddings (e.g. 461)")
    ap.add_argument("--latency-data", default=None, help=".npz feed dict used for timing")
    ap.add_argument("--latency-shapes", default=None, help="NAME:DxD,... for random timing inputs (dynamic dims)")
    ap.add_argument("--mode", default="quick", choices=["quick", "default", "extensive"])
    ap.add_argument("--schemes-per-region", type=int, default=None)
    ap.add_argument("--tune-warmup", type=int, default=5)
    ap.add_argument("--tune-repeats", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--eval-batch", type=int, default=32)
    ap.add_argument("--workdir", default=str(Path(__file__).parent / "runs"))
    args = ap.parse_args()

    work = Path(args.workdir) / args.name
    if work.exists():
        import shutil

        shutil.rmtree(work)
    work.mkdir(parents=True)
    model, _ = load_model(args.model)
    if args.latency_data:
        with np.load(args.latency_data) as d:
            feeds = {k: d[k] for k in d.files}
    else:
        feeds = random_inputs(model, parse_input_shapes(args.latency_shapes))
    shapes = {k: tuple(v.shape) for k, v in feeds.items()}

    overrides = {"warmup_runs": args.tune_warmup, "timing_runs": args.tune_repeats}
    if args.schemes_per_region:
        overrides["schemes_per_region"] = args.schemes_per_region
    config = Config.for_mode(args.mode, **overrides)
    t0 = time.time()
    report = autotune(args.model, work / "autotune", config, backend="ort", input_shapes=shapes, calibration_data=args.calib, threads=args.threads, progress=False)
    tune_s = time.time() - t0

    baseline = work / "autotune" / "baseline.onnx"
    samples = load_calibration_inputs(args.calib)
    t0 = time.time()
    qdq = quantize_static_qdq(baseline, work / "quantize_static_qdq.onnx", samples)
    qs_s = time.time() - t0
    models = {"fp32": baseline, "quantize_static": qdq, "autotuned": work / "autotune" / "optimized_final.onnx"}

    lat = latency(models, feeds, args.rounds, args.warmup, args.repeats, args.threads)
    acc = accuracy(args.task, models, Path(args.eval), args.output, args.threads, args.eval_batch)
    result = {
        "name": args.name,
        "model": str(args.model),
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.processor() or platform.machine()}, {__import__('os').cpu_count()} cores",
        "onnxruntime": ort.__version__,
        "threads": args.threads,
        "latency_input_shapes": {k: list(v) for k, v in shapes.items()},
        "autotune": {
            "mode": args.mode,
            "schemes_per_region": config.schemes_per_region,
            "regions": report.regions_total,
            "unique_patterns": report.unique_patterns,
            "patterns_with_qdq": report.patterns_with_qdq,
            "benchmarks_run": report.benchmarks_run,
            "qdq_tensors": report.qdq_tensors,
            "tuning_seconds": round(tune_s, 1),
            "speedup_reported_by_autotuner": report.speedup,
        },
        "quantize_static_seconds": round(qs_s, 1),
        "latency": lat,
        "accuracy": acc,
        "command": " ".join(sys.argv),
    }
    (work / "result.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    print()
    metric = "mean_cosine_vs_fp32" if args.task == "embedding" else "top1_agreement_vs_fp32"
    print(f"| model | variant | latency median (ms) | run-to-run noise | speedup vs FP32 | {metric} |" + (" top-1 accuracy |" if args.task == "classification" else ""))
    for k in models:
        row = f"| {args.name} | {k} | {lat[k]['median_ms']:.3f} | {100 * lat[k]['noise']:.1f} % | {lat['fp32']['median_ms'] / lat[k]['median_ms']:.2f}x | {acc[k][metric]:.4f} |"
        if args.task == "classification":
            row += f" {acc[k]['top1_accuracy']:.4f} |"
        print(row)


if __name__ == "__main__":
    main()
