"""Run by tests/calib/test_mesh.py in a subprocess with 8 CPU devices: calibration statistics reduce across
data- and tensor-parallel mesh axes, so a sharded model calibrates to the quantizer state of one device.

Prints ``OK <case>`` per case; any mismatch raises (non-zero exit)."""

import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import jq  # noqa: E402

assert jax.device_count() == 8
MESH = Mesh(np.array(jax.devices()).reshape(2, 4), ("dp", "tp"))
rng = np.random.default_rng(0)
PARAMS = {"w1": jnp.asarray(rng.standard_normal((32, 64)) / 6, jnp.float32),
          "w2": jnp.asarray(rng.standard_normal((64, 32)) / 8, jnp.float32)}
# an outlier input channel (SmoothQuant / AWQ have something to do); two batches of 16 rows
BATCHES = [jnp.asarray(rng.standard_normal((16, 32)) * np.linspace(0.5, 8, 32), jnp.float32) for _ in range(2)]


def plain(p, x):
    return jax.nn.relu(x @ p["w1"]) @ p["w2"]


def tensor_parallel(p, x):
    """Megatron MLP: batch over dp, w1 by columns and w2 by rows over tp, partial sums reduced over tp."""
    def body(x, w1, w2):
        return jax.lax.psum(jax.nn.relu(x @ w1) @ w2, "tp")

    return jax.shard_map(body, mesh=MESH, in_specs=(P("dp", None), P(None, "tp"), P("tp", None)),
                         out_specs=P("dp", None))(x, p["w1"], p["w2"])


def data_parallel(p, x):
    """Batch over all 8 devices, weights replicated."""
    return jax.shard_map(plain, mesh=MESH, in_specs=(P(), P(("dp", "tp"), None)), out_specs=P(("dp", "tp"), None))(p, x)


def sharded_inputs():
    ps = {"w1": jax.device_put(PARAMS["w1"], NamedSharding(MESH, P(None, "tp"))),
          "w2": jax.device_put(PARAMS["w2"], NamedSharding(MESH, P("tp", None)))}
    return ps, [jax.device_put(x, NamedSharding(MESH, P("dp", None))) for x in BATCHES]


def assert_same_state(case, ref, got, rtol):
    assert sorted(ref) == sorted(got), (case, sorted(ref), sorted(got))
    for name in ref:
        assert sorted(ref[name]) == sorted(got[name]), (case, name, sorted(ref[name]), sorted(got[name]))
        for key in ref[name]:
            a, b = np.asarray(ref[name][key]), np.asarray(got[name][key])
            assert a.shape == b.shape, (case, name, key, a.shape, b.shape)
            np.testing.assert_allclose(b, a, rtol=rtol, atol=0, err_msg=f"{case}: {name}.{key}")
    print("OK", case, flush=True)


def quantize(params, fn, cfg, batches):
    return jq.quantize(params, fn, cfg, calib_data=batches, progress=False).qstate


FP8_PERCENTILE = {"quant_cfg": {**jq.FP8_DEFAULT_CFG["quant_cfg"],
                                "*input_quantizer": {"num_bits": (4, 3), "calibrator": "percentile"}},
                  "algorithm": "max"}
CASES = {  # name: (config, shard_map model, rtol of the sharded-jit comparison)
    "max+percentile": (FP8_PERCENTILE, tensor_parallel, 0.0),
    "smoothquant": (jq.INT8_SMOOTHQUANT_CFG, data_parallel, 0.0),
    "awq_lite": (jq.INT4_AWQ_CFG, data_parallel, 1e-6),  # GSPMD sums mean|x| in another order
}

if __name__ == "__main__":
    ps, xs = sharded_inputs()
    for case in sys.argv[1:] or CASES:
        cfg, shard_mapped, rtol = CASES[case]
        ref = quantize(PARAMS, plain, cfg, BATCHES)
        assert_same_state(f"{case} sharded jit", ref, quantize(ps, plain, cfg, xs), rtol)
        assert_same_state(f"{case} shard_map {shard_mapped.__name__}", ref,
                          quantize(PARAMS, shard_mapped, cfg, BATCHES), 1e-6)
