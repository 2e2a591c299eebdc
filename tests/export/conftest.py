"""Shared fixtures for the export tests: small models, calibrated quantized models and their ONNX exports.

Exports are cached for the whole session (a jax2onnx conversion takes seconds on 2 cores).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jq
from jq.presets import with_output_head
import jq.export
from tests.export.models import ExportCNN, ExportTransformer

MODELS = {
    "cnn": (ExportCNN, lambda rng: jnp.asarray(rng.standard_normal((4, 8, 8, 3)), jnp.float32)),
    # one block: a second repeats the same ops and sites (and doubles the jax2onnx conversion and the reference
    # evaluator's time); the residual stream still runs embedding -> block -> final LayerNorm -> head
    "transformer": (lambda: ExportTransformer(n_layers=1),
                    lambda rng: jnp.asarray(rng.integers(0, 48, (4, 8)), jnp.int32)),
}


def run_jax(qm, *args):
    """``qm.apply(qm.params, *args)`` under ``jax.jit`` (op-by-op NVFP4 fake quantization is slow), as numpy."""
    return np.asarray(jax.jit(qm.apply)(qm.params, *args))


def _random_biases(params, seed=0):
    """Flax initialises biases to zero; random ones make bias folding observable."""
    key = jax.random.key(seed)

    def f(path, v):
        if "bias" in jax.tree_util.keystr(path):
            return v + 0.1 * jax.random.normal(jax.random.fold_in(key, v.size), v.shape, v.dtype)
        return v

    return jax.tree_util.tree_map_with_path(f, params)


class Zoo:
    """Lazily built and cached (model, quantized model, export) triples."""

    def __init__(self):
        self.models, self.qms, self.exports = {}, {}, {}

    def model(self, name):
        if name not in self.models:
            cls, make_x = MODELS[name]
            rng = np.random.default_rng(0)
            calib = [make_x(rng) for _ in range(2)]
            x_test = make_x(np.random.default_rng(1))
            m = cls()
            params = _random_biases(m.init(jax.random.key(0), calib[0]))
            self.models[name] = (m, params, calib, x_test)
        return self.models[name]

    def qm(self, name, preset, share=False):
        key = (name, preset, share)
        if key not in self.qms:
            m, params, calib, _ = self.model(name)
            qm = jq.quantize(params, m.apply, with_output_head(getattr(jq, preset)), calib_data=[(c,) for c in calib], progress=False)
            if share:
                qm = jq.calibrate(qm, [(c,) for c in calib], share_sibling_weight_amax=True, progress=False)
            self.qms[key] = qm
        return self.qms[key]

    def export(self, name, preset, **options):
        key = (name, preset, tuple(sorted(options.items())))
        if key not in self.exports:
            qm = self.qm(name, preset)
            _, _, calib, _ = self.model(name)
            self.exports[key] = jq.export.export(qm, (calib[0],), **options)
        return self.exports[key]


@pytest.fixture(scope="session")
def zoo():
    return Zoo()
