"""A deterministic cost-model benchmark: latency is a function of the graph only.

Costs (ms): a float Conv/MatMul/Gemm 4.0; the same op 1.0 when it is "fused" the way
ONNX Runtime fuses it (every data input from a DQ, and its output feeding only Q
nodes, possibly through one Relu that ONNX Runtime folds into the Q); every Q or DQ on activations 0.15; every other op 0.2. So the best placement
quantizes inputs and outputs of compute ops and nothing else, and the search has
something to find. Every call is appended to ``log_path`` (the model's structural
hash) so tests can count measurements across processes.
"""

from __future__ import annotations

import hashlib
import os
import signal
import time
from pathlib import Path

import onnx

from jq_autotune.benchmark.base import Benchmark, BenchmarkResult
from jq_autotune.state import AutotuneState

COMPUTE = {"Conv", "MatMul", "Gemm", "ConvTranspose"}


def model_cost(model: onnx.ModelProto) -> float:
    nodes = list(model.graph.node)
    producer = {o: n for n in nodes for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in nodes:
        for x in n.input:
            consumers.setdefault(x, []).append(n)
    inits = {t.name for t in model.graph.initializer}
    cost = 0.0
    for n in nodes:
        if n.op_type in COMPUTE:
            data = [x for x in n.input[:1] if x]
            fused_in = all(producer.get(x) is not None and producer[x].op_type == "DequantizeLinear" for x in data)
            outs = consumers.get(n.output[0], [])
            if len(outs) == 1 and outs[0].op_type == "Relu":  # ONNX Runtime folds Relu into the Q
                outs = consumers.get(outs[0].output[0], [])
            fused_out = bool(outs) and all(c.op_type == "QuantizeLinear" for c in outs)
            cost += 1.0 if fused_in and fused_out else 4.0
        elif n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            cost += 0.0 if n.input[0] in inits else 0.15
        elif n.op_type != "Constant":
            cost += 0.2
    return round(cost, 6)


def structure_hash(model: onnx.ModelProto) -> str:
    h = hashlib.sha256()
    for n in model.graph.node:
        h.update(repr((n.op_type, tuple(n.input), tuple(n.output))).encode())
    return h.hexdigest()[:16]


class CostModelBenchmark(Benchmark):
    """Deterministic fake benchmark (see module docstring)."""

    name = "costmodel"

    def __init__(self, log_path: str | os.PathLike | None = None, delay_s: float = 0.0):
        self.log_path = Path(log_path) if log_path else None
        self.delay_s = delay_s
        self.calls = 0

    def run(self, model_path) -> BenchmarkResult:
        model = onnx.load(str(model_path), load_external_data=False)
        self.calls += 1
        if self.log_path:
            with open(self.log_path, "a") as f:
                f.write(structure_hash(model) + "\n")
        if self.delay_s:
            time.sleep(self.delay_s)
        c = model_cost(model)
        return BenchmarkResult(c, (c,), self.name)


class ParkAfterFirstPattern:
    """Delegates to ``bench``; parks in ``run`` once ``state_file`` holds a complete measured pattern.

    Parking prints ``PARKED`` on stdout and waits for a signal (SIGINT raises KeyboardInterrupt there;
    SIGKILL ends the process), so interrupt tests signal a run that provably saved work and has more left.
    """

    def __init__(self, bench, state_file: Path):
        self._bench, self._state_file = bench, state_file

    def __getattr__(self, name):
        return getattr(self._bench, name)

    def run(self, path):
        if self._state_file.exists() and any(p.complete and p.results for p in AutotuneState.load(self._state_file).patterns.values()):
            print("PARKED", flush=True)
            while True:  # SIGINT raises KeyboardInterrupt out of pause()
                signal.pause()
        return self._bench.run(path)
