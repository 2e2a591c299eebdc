"""Export the Fashion-MNIST CNN of ``jq_zoo.cnn`` with jq's own exporter (FP32) for the autotuner benchmark.

The model the ``jq`` command trains (and caches) is written by :func:`jq.export.to_onnx_float` — the same
tracing and onnx-ir passes as jq's Q/DQ export, without quantizers — so the autotuner runs on a graph
"exported by jq" (NHWC input ``[batch, 28, 28, 1]``, dynamic batch).

Writes into ``--out`` (default ``benchmarks/autotune/models``; regenerated, not committed):

* ``jq_fashion_cnn.onnx``     the FP32 graph
* ``jq_fashion_calib.npz``    8 calibration batches of 32 training images (keyed by the input name)
* ``jq_fashion_eval.npz``     the 10 000 test images and labels (keys ``x``, ``labels``)

Usage::

    apt-get install -y dataset-fashion-mnist
    python benchmarks/autotune/export_jq_cnn.py
"""

from __future__ import annotations

import argparse
from pathlib import Path

import jax.numpy as jnp
import numpy as np

import jq
from jq_zoo.cnn import FashionCNN, load_or_train_fashion_cnn
from jq_zoo.fashion_mnist import load_fashion_mnist


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(Path(__file__).parent / "models"))
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    params, _ = load_or_train_fashion_cnn()
    x_train, _ = load_fashion_mnist("train")
    x_test, y_test = load_fashion_mnist("test")
    proto = jq.export.to_onnx_float(params, FashionCNN().apply, (jnp.asarray(x_train[:32]),),
                                    out / "jq_fashion_cnn.onnx")
    name = proto.graph.input[0].name  # data files are keyed by the graph's input name
    np.savez(out / "jq_fashion_calib.npz", **{name: x_train[:256].reshape(8, 32, 28, 28, 1).astype(np.float32)})
    np.savez(out / "jq_fashion_eval.npz", x=x_test.astype(np.float32), labels=y_test)  # bench_autotune's keys
    print(f"wrote {out / 'jq_fashion_cnn.onnx'} (input {name!r}) and its calibration / evaluation data")


if __name__ == "__main__":
    main()
