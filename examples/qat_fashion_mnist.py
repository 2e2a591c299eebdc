"""Quantization-aware training with jq in a plain optax loop, on real Fashion-MNIST data.

1. Train (or load from cache) the float CNN of ``jq_zoo.cnn``.
2. Post-training quantize it (default MXFP4 W4A4, which loses accuracy on this model) and evaluate.
3. Fine-tune the fake-quantized model with optax (straight-through estimator) and evaluate again.

Prints float / PTQ / QAT test accuracy and the fraction of the PTQ loss that QAT recovered, next to the
float model fine-tuned for the same steps (so the extra training is not mistaken for QAT's effect).

    python examples/qat_fashion_mnist.py [--preset MXFP4_DEFAULT_CFG] [--steps 600] [--lr 1e-4]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jq
from jq_zoo.cnn import FashionCNN, accuracy, load_or_train_fashion_cnn
from jq_zoo.fashion_mnist import load_fashion_mnist


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="MXFP4_DEFAULT_CFG")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--data-dir", default=None)
    args = ap.parse_args(argv)

    params, _ = load_or_train_fashion_cnn(data_dir=args.data_dir)
    x_train, y_train = load_fashion_mnist("train", args.data_dir)
    x_test, y_test = load_fashion_mnist("test", args.data_dir)
    apply_fn = FashionCNN().apply
    calib = [(x_train[i:i + 128],) for i in range(0, 1024, 128)]

    acc_float = accuracy(apply_fn, params, x_test, y_test)
    qm = jq.quantize(params, apply_fn, jq.get_preset(args.preset), calib_data=calib, progress=False)
    acc_ptq = accuracy(qm.apply, qm.params, x_test, y_test)

    def loss_fn(apply, p, batch):
        bx, by = batch
        return optax.softmax_cross_entropy_with_integer_labels(apply(p, bx), by).mean()

    def finetune(step, p, label):
        optimizer_state = optimizer.init(p)
        rng = np.random.default_rng(1)  # same batches for QAT and the float baseline
        for i in range(args.steps):
            idx = rng.integers(0, len(x_train), args.batch_size)
            p, optimizer_state, loss = step(p, optimizer_state, (jnp.asarray(x_train[idx]), jnp.asarray(y_train[idx])))
            if (i + 1) % 100 == 0:
                print(f"  {label} step {i + 1}/{args.steps}: loss {float(loss):.4f}")
        return p

    optimizer = optax.adam(args.lr)
    t0 = time.perf_counter()
    p = finetune(jq.qat.make_train_step(qm, loss_fn, optimizer), qm.params, "QAT")
    train_s = time.perf_counter() - t0
    qat = qm.replace(params=p)
    acc_qat = accuracy(qat.apply, qat.params, x_test, y_test)
    float_qm = jq.disable_quantizer(qm, "*")  # same loop, no quantizers: the float fine-tuning baseline
    p_float = finetune(jq.qat.make_train_step(float_qm, loss_fn, optimizer), params, "float")
    acc_float_ft = accuracy(apply_fn, p_float, x_test, y_test)
    lost = acc_float - acc_ptq
    recovered = (acc_qat - acc_ptq) / lost if lost > 0 else float("nan")
    print(f"\n{args.preset} on Fashion-MNIST ({len(x_test)} test images), {args.steps} QAT steps in {train_s:.0f}s")
    print(f"  float32 top-1 {100 * acc_float:.2f}%")
    print(f"  PTQ     top-1 {100 * acc_ptq:.2f}%  ({100 * lost:+.2f} pt lost)")
    print(f"  QAT     top-1 {100 * acc_qat:.2f}%  ({100 * recovered:.0f}% of the PTQ loss recovered)")
    print(f"  float fine-tuned with the same steps: top-1 {100 * acc_float_ft:.2f}%")
    return acc_float, acc_ptq, acc_qat, acc_float_ft


if __name__ == "__main__":
    main()
