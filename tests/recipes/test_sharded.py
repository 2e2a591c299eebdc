"""Amax reduction over mesh axes under shard_map, on 8 CPU devices in a subprocess.

The other tests run with the 2 devices tests/conftest.py sets up; a different device count needs a fresh
process. x is sharded over ``data`` (tokens) and W over ``model`` (output features, column parallel), with
row blocks of very different magnitude per shard so that a shard-local amax would change the scales.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

WORKER = textwrap.dedent(
    """
    import json, jax, jax.numpy as jnp, numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    from jq.recipes import DelayedScaling, Float8CurrentScaling, NVFP4BlockScaling, linear

    mesh = jax.make_mesh((4, 2), ("data", "model"))
    rng = np.random.default_rng(0)
    T, K, N = 64, 32, 32
    x = rng.normal(size=(T, K)) * np.repeat([1.0, 30.0, 0.1, 3.0], T // 4)[:, None]
    w = rng.normal(size=(N, K)) * np.repeat([1.0, 20.0], N // 2)[:, None]
    dy = rng.normal(size=(T, N)) * np.repeat([1e-3, 1.0, 1e-2, 1e-4], T // 4)[:, None]
    x, w, dy = (jnp.asarray(a, jnp.float32) for a in (x, w, dy))
    specs = (P("data", None), P("model", None), P("data", "model"))
    xs, ws, dys = (jax.device_put(a, NamedSharding(mesh, s)) for a, s in zip((x, w, dy), specs))

    def full(recipe, x, w, dy, state):
        y, pb = jax.vjp(lambda x, w, s: linear(recipe, x, w, state=s), x, w, state)
        return (y, *pb(dy))

    def sharded(recipe, axes, x, w, dy, state):
        def f(x, w, dy, s):
            y, pb = jax.vjp(lambda x, w, s: linear(recipe, x, w, state=s, axis_names=axes), x, w, s)
            return (y, *pb(dy))
        out_specs = (P("data", "model"), P("data", None), P("model", None), P())
        return jax.shard_map(f, mesh=mesh, in_specs=(*specs, P()), out_specs=out_specs)(x, w, dy, state)

    def rel(a, b):
        return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))

    out = {}
    for name, recipe in (("fp8", Float8CurrentScaling()), ("nvfp4", NVFP4BlockScaling(stochastic_rounding=False))):
        def run(x, w, dy, xs, ws, dys):  # one compile per recipe: reference, reduced and (fp8) shard-local steps
            ref = full(recipe, x, w, dy, None)
            red = sharded(recipe, ("data", "model"), xs, ws, dys, None)
            loc = sharded(recipe, (), xs, ws, dys, None) if name == "fp8" else None
            return ref, red, loc
        ref, red, loc = jax.jit(run)(x, w, dy, xs, ws, dys)
        out[name] = [rel(a, b) for a, b in zip(red[:3], ref[:3])]
        if loc is not None:  # the same step with shard-local amaxes (no axis_names), to show the reduction matters
            out["fp8_local"] = [rel(a, b) for a, b in zip(loc[:3], ref[:3])]
    r = DelayedScaling(amax_history_len=2)
    obs = jax.jit(lambda *a: sharded(r, ("data", "model"), *a))(xs, ws, dys, r.init_state())[3]
    out["delayed_obs"] = [float(obs.x.amax_history[0]), float(obs.w.amax_history[0]), float(obs.dy.amax_history[0])]
    out["true_amax"] = [float(jnp.abs(a).max()) for a in (x, w, dy)]
    print("RESULT" + json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def result():
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=8")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", WORKER], env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(l for l in proc.stdout.splitlines() if l.startswith("RESULT"))
    return json.loads(line[len("RESULT") :])


@pytest.mark.parametrize("recipe", ["fp8", "nvfp4"])
def test_pmax_over_the_mesh_reproduces_the_unsharded_step(recipe, result):
    # y, dx, dW of the sharded step (dx psum-ed over "model", dW over "data" by the VJP) equal the
    # single-device step up to float32 summation order
    assert max(result[recipe]) < 1e-5, result[recipe]


def test_shard_local_amax_would_change_the_step(result):
    # without axis_names every shard quantizes with its own scale: errors 100x the summation noise
    assert min(result["fp8_local"]) > 100 * max(max(result["fp8"]), 1e-7), result


def test_delayed_scaling_observations_are_global_amaxes_not_sums_over_devices(result):
    assert result["delayed_obs"] == result["true_amax"]
