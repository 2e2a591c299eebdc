"""Golden outputs of the pre-split decode-GEMM layout code (run at commit e520b16)."""
import hashlib, json, sys
import jax, jax.numpy as jnp, numpy as np
from jq import qtensor
from jq.config import QuantizerSpec
from jq_kernels import gemm as G

NV1 = QuantizerSpec(num_bits=(2, 1), block_sizes={-1: 16, "type": "dynamic", "scale_bits": (4, 3)})
I4 = QuantizerSpec(num_bits=4, block_sizes={-1: 128})

def weight(shape, seed):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(shape).astype(np.float32)
    w[1, 16:32] = 0.0                       # a zero block (zero scale)
    w[2, :] *= 1e-3                         # small block scales (E4M3 subnormal range with the global scale)
    w[3, :16] = rng.standard_normal(16) * 1e3  # a large block
    return jnp.asarray(w)

out, meta = {}, {"cases": [], "ptx": {}, "emulate_sha256": {}}
for fmt, spec in (("nvfp4", NV1), ("int4", I4)):
    for si, shape in enumerate(((70, 200), (64, 128))):
        qt = qtensor.quantize(weight(shape, 10 + si), spec)
        name = f"{fmt}_{shape[0]}x{shape[1]}"
        out[name + "/in_data"] = np.asarray(qt.data)
        out[name + "/in_scale"] = np.asarray(qt.scale).view(np.uint8) if qt.scale.dtype == jnp.float8_e4m3fn else np.asarray(qt.scale)
        if qt.global_scale is not None:
            out[name + "/in_global_scale"] = np.asarray(qt.global_scale, np.float32)
        for dtype in ("f16", "bf16"):
            pw = G.pack_w4(qt, dtype)
            key = f"{name}/{dtype}"
            out[key + "/codes"] = np.asarray(pw.codes)
            out[key + "/scales"] = np.asarray(pw.scales)
            out[key + "/factor"] = np.asarray(pw.factor, np.float32)
            meta["cases"].append(dict(key=key, fmt=pw.fmt, n=pw.n, k=pw.k, dtype=pw.dtype, shape=list(shape)))
            emu = np.ascontiguousarray(G.emulate_decode(pw), np.float32)
            meta["emulate_sha256"][key] = hashlib.sha256(emu.tobytes()).hexdigest()
qt = qtensor.quantize(weight((64, 128), 11), NV1)
sc = np.asarray(qt.scale).view(np.uint8).copy()
sc[5, 3] = 0x00; sc[6, 2] = 0x7F; sc[7, 1] = 0x01  # zero, NaN and the smallest subnormal E4M3 scale
qt = qtensor.QTensor(qt.data, jnp.asarray(sc.view(jnp.float8_e4m3fn)), qt.global_scale, NV1, qt.shape, qt.dtype)
name = "nvfp4_special_scales_64x128"
out[name + "/in_data"] = np.asarray(qt.data); out[name + "/in_scale"] = sc
out[name + "/in_global_scale"] = np.asarray(qt.global_scale, np.float32)
for dtype in ("f16", "bf16"):
    pw = G.pack_w4(qt, dtype)
    key = f"{name}/{dtype}"
    out[key + "/codes"] = np.asarray(pw.codes); out[key + "/scales"] = np.asarray(pw.scales)
    out[key + "/factor"] = np.asarray(pw.factor, np.float32)
    meta["cases"].append(dict(key=key, fmt=pw.fmt, n=pw.n, k=pw.k, dtype=pw.dtype, shape=[64, 128]))
    emu = np.ascontiguousarray(G.emulate_decode(pw), np.float32)
    meta["emulate_sha256"][key] = hashlib.sha256(emu.tobytes()).hexdigest()
v = jax.lax.bitcast_convert_type(jnp.arange(256, dtype=jnp.uint8), jnp.float8_e4m3fn).astype(jnp.float32)
out["bf16_scale_bytes_all_e4m3"] = np.asarray(G._bf16_scale_bytes(v))
for k in range(4):
    meta["ptx"][f"nvfp4_bf16/{k}"] = G._nvfp4_bf16_asm(k)
    meta["ptx"][f"nvfp4_f16/{k}"] = G._nvfp4_asm(k)
    meta["ptx"][f"int4_f16/{k}"] = G._int4_asm(k, bf16=False)
    meta["ptx"][f"int4_bf16/{k}"] = G._int4_asm(k, bf16=True)
meta["ptx"]["bf16_scale_pair"] = G._bf16_scale_pair_asm()
np.savez_compressed(sys.argv[1] + ".npz", **out)
json.dump(meta, open(sys.argv[1] + ".json", "w"), indent=1, sort_keys=True)
print({k: v.shape for k, v in out.items()})
