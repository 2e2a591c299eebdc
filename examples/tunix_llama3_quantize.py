"""jq on a JAX LLM nobody on this project wrote: google-tunix's Flax NNX Llama3, through ``jq.quantize`` unchanged.

tunix's top-level ``__init__`` imports its trainers (metrax, grain, qwix, ...); its model files need only
flax, jax, jaxtyping and two small tunix modules. So install the wheel without dependencies and load the
model package without running ``tunix/__init__.py`` (a bare package object stands in for ``tunix``)::

    pip install --no-deps google-tunix==0.1.7
    python examples/tunix_llama3_quantize.py [--json]

The model is a tiny random config (tunix initialises its MLP kernels to zero, so every leaf is redrawn).
``apply_fn(state, tokens)`` merges the ``nnx.split`` graph definition with the state and calls the model with
causal positions and mask; jq quantizes it with FP8 (weights and activations) plus the FP8 KV preset.
Importing tunix's model module sets ``flax_always_shard_variable=False`` in flax's global config (tunix's
``env_utils.setup_sharding_environment``): run this in its own process.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np

import jq


def import_tunix_llama3():
    """``tunix.models.llama3.model`` without executing ``tunix/__init__.py``."""
    spec = importlib.util.find_spec("tunix")
    if spec is None:
        raise ImportError("google-tunix is not installed: pip install --no-deps google-tunix==0.1.7")
    if "tunix" not in sys.modules:
        pkg = types.ModuleType("tunix")
        pkg.__path__ = list(spec.submodule_search_locations)
        sys.modules["tunix"] = pkg
    from tunix.models.llama3 import model as llama3

    return llama3


def build(seed: int = 0):
    from flax import nnx

    llama3 = import_tunix_llama3()
    config = llama3.ModelConfig(num_layers=2, vocab_size=64, embed_dim=32, hidden_dim=64, num_heads=4, head_dim=8,
                                num_kv_heads=2, rope_theta=10000, norm_eps=1e-5, weight_tying=False)
    graphdef, state = nnx.split(llama3.Llama3(config, rngs=nnx.Rngs(seed)))
    leaves, treedef = jax.tree_util.tree_flatten(state)
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    leaves = [(1.0 if x.ndim == 1 else 0.0) + 0.2 * jax.random.normal(k, x.shape, x.dtype)
              for k, x in zip(keys, leaves)]  # norms around 1, projections std 0.2
    state = jax.tree_util.tree_unflatten(treedef, leaves)

    def apply_fn(state, tokens):
        model = nnx.merge(graphdef, state)
        b, t = tokens.shape
        positions = jnp.broadcast_to(jnp.arange(t), (b, t))
        mask = jnp.broadcast_to(jnp.tril(jnp.ones((t, t), bool)), (b, t, t))
        logits, _ = model(tokens, positions, None, mask)
        return logits

    return config, state, apply_fn


def run() -> dict:
    _, state, apply_fn = build()
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 64, (2, 12)), jnp.int32)
    cfg = jq.merge_presets(jq.FP8_DEFAULT_CFG, jq.FP8_KV_CFG)
    qm = jq.quantize(state, apply_fn, cfg, calib_data=[(tokens,)], progress=False)
    jq.print_quant_summary(qm)
    ref = jax.jit(apply_fn)(state, tokens)
    out = jax.jit(qm.apply)(qm.params, tokens)
    bmm = []
    for s in qm.traced.sites:
        if s.kind == "bmm":
            bmm.append({"site": s.name, "roles": {s.roles[i]: list(s.shapes[i]) for i in s.roles}})
    return {
        "sites": sorted({s.name for s in qm.traced.sites if s.kind != "bmm"}),
        "enabled": sorted(n for n, spec in qm.specs().items() if spec is not None),
        "bmm": bmm,
        "max_abs_logit_diff_vs_float": float(jnp.max(jnp.abs(out - ref))),
        "max_abs_logit": float(jnp.max(jnp.abs(ref))),
        "finite": bool(jnp.all(jnp.isfinite(out))),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true", help="print the result as one JSON line (for the test)")
    args = ap.parse_args()
    result = run()
    if args.json:
        print("RESULT " + json.dumps(result))
    else:
        print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
