"""The KV cache of a Llama-family decoder: static shapes, float or quantized storage.

Each layer stores keys (after RoPE) and values of shape ``[batch, max_len, kv_heads, head_dim]``. The
storage format is a :class:`jq.QuantizerSpec` (or None for float):

* ``None``: the compute dtype (float32 / bfloat16);
* ``"fp8"``: FP8 E4M3 values with one per-tensor scale per layer, ``s = 448 / amax`` (``FP8_KV_CFG``);
* ``"nvfp4"``: packed E2M1 codes, E4M3 scales per 16 elements along ``head_dim`` and a per-layer global
  scale ``amax / 2688`` (``NVFP4_KV_CFG``).

New keys/values are quantized *as stored* with :func:`jq.qtensor.quantize` and the per-layer ``amax``
(e.g. jq's calibrated ``k_bmm_quantizer``/``v_bmm_quantizer`` amax: :func:`kv_amax_from`); attention reads
:func:`jq.qtensor.dequantize` of the whole cache. ``dequantize(quantize(x, amax))`` is bit-identical to
``jq.fake_quant(x, amax, spec=spec)``, which ``storage="fake_quant"`` stores instead (a float cache holding
fake-quantized values: the emulation of the same numbers on hardware without the format).

Example:
  >>> cache = init_cache(cfg, batch=1, max_len=64, kv_format="fp8", k_amax=k_amax, v_amax=v_amax)
  >>> logits, cache = prefill(params, prompt, cache)          # see jq.models.generate
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from jq.config import QuantizerSpec
from jq.fake_quant import fake_quant
from jq.models.config import LlamaConfig
from jq.models.stacking import stack_trees
from jq.presets import FP8_KV_CFG, NVFP4_KV_CFG
from jq.qtensor import QTensor, dequantize, quantize

__all__ = ["KVCache", "KV_FORMATS", "kv_spec", "init_cache", "init_stacked_cache", "write_layer", "read_layer",
           "kv_amax_from"]

# Storage formats by name: the k/v bmm quantizer spec of jq's KV-cache presets.
KV_FORMATS = {"fp8": FP8_KV_CFG, "nvfp4": NVFP4_KV_CFG}
STORAGES = ("quantized", "fake_quant")


def kv_spec(kv_format: str | QuantizerSpec | None) -> QuantizerSpec | None:
    """The storage spec: None (float), a preset name (``"fp8"``, ``"nvfp4"``) or a :class:`QuantizerSpec`."""
    if kv_format is None or isinstance(kv_format, QuantizerSpec):
        return kv_format
    if kv_format not in KV_FORMATS:
        raise ValueError(f"unknown kv_format {kv_format!r}; expected None, a QuantizerSpec or one of "
                         f"{sorted(KV_FORMATS)}")
    return QuantizerSpec.from_dict(KV_FORMATS[kv_format]["quant_cfg"]["*[kv]_bmm_quantizer"])


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass(frozen=True)
class KVCache:
    """Per-layer keys and values, the number of stored positions and the storage format.

    Attributes:
      keys, values: one entry per layer: an array ``[batch, max_len, kv_heads, head_dim]`` (float storage)
        or a :class:`jq.qtensor.QTensor` of that shape.
      k_amax, v_amax: per-layer amax ``[num_layers]`` (float32) the quantized storage uses; None for float.
      length: int32 scalar, positions ``0..length-1`` are filled (the same for every batch row).
      config: the model config (static); spec: the storage spec or None (static); storage: ``"quantized"``
        or ``"fake_quant"`` (static); dtype: the compute dtype name (static).
    """

    keys: tuple
    values: tuple
    k_amax: jax.Array | None
    v_amax: jax.Array | None
    length: jax.Array
    config: LlamaConfig
    spec: QuantizerSpec | None = None
    storage: str = "quantized"
    dtype: str = "float32"

    def tree_flatten(self):
        return ((self.keys, self.values, self.k_amax, self.v_amax, self.length),
                (self.config, self.spec, self.storage, self.dtype))

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(*children, *aux)

    @property
    def max_len(self) -> int:
        k = self.keys[0]
        return int((k.shape if isinstance(k, QTensor) else k.shape)[1])

    @property
    def nbytes(self) -> int:
        """Bytes of k/v storage (values and scales) over all layers."""
        def size(x):
            return x.nbytes if isinstance(x, QTensor) else int(x.size) * x.dtype.itemsize
        return sum(size(x) for x in self.keys + self.values)


def _per_layer_amax(amax, n_layers: int, what: str):
    if amax is None:
        raise ValueError(f"a quantized KV cache needs {what} (per-layer amax, e.g. from kv_amax_from(qm))")
    amax = jnp.asarray(amax, jnp.float32)
    if amax.ndim == 0:
        amax = jnp.broadcast_to(amax, (n_layers,))
    if amax.shape != (n_layers,):
        raise ValueError(f"{what} must be a scalar or have shape ({n_layers},) (one per layer), got {amax.shape}")
    return amax


def init_cache(config: LlamaConfig, batch: int, max_len: int, *, kv_format: str | QuantizerSpec | None = None,
               k_amax=None, v_amax=None, dtype=jnp.float32, storage: str = "quantized") -> KVCache:
    """An empty cache of ``max_len`` positions.

    Args:
      config: the model config.
      batch, max_len: static cache shape.
      kv_format: None (float), ``"fp8"``, ``"nvfp4"`` or a :class:`QuantizerSpec`.
      k_amax, v_amax: per-layer amax ``[num_layers]`` (or a scalar for all layers) for a quantized format.
      dtype: compute dtype of keys/values read from the cache.
      storage: ``"quantized"`` stores the format's packed values and scales; ``"fake_quant"`` stores
        ``jq.fake_quant(k, amax)`` in ``dtype`` (same numbers, float storage).
    """
    if storage not in STORAGES:
        raise ValueError(f"storage must be one of {STORAGES}, got {storage!r}")
    spec = kv_spec(kv_format)
    n, dtype = config.num_hidden_layers, jnp.dtype(dtype)
    shape = (batch, max_len, config.num_key_value_heads, config.head_dim)
    zeros = jnp.zeros(shape, dtype)
    if spec is None:
        keys, values, k_amax, v_amax = (zeros,) * n, (zeros,) * n, None, None
    else:
        k_amax, v_amax = _per_layer_amax(k_amax, n, "k_amax"), _per_layer_amax(v_amax, n, "v_amax")
        if storage == "quantized":
            keys = tuple(_empty(k_amax[i], spec=spec, shape=shape, dtype=dtype.name) for i in range(n))
            values = tuple(_empty(v_amax[i], spec=spec, shape=shape, dtype=dtype.name) for i in range(n))
        else:
            keys, values = (zeros,) * n, (zeros,) * n
    return KVCache(tuple(keys), tuple(values), k_amax, v_amax, jnp.zeros((), jnp.int32), config, spec, storage,
                   dtype.name)


def init_stacked_cache(config: LlamaConfig, batch: int, max_len: int, *, kv_format: str | QuantizerSpec | None = None,
                       k_amax=None, v_amax=None, dtype=jnp.float32) -> tuple:
    """``(keys, values)`` of an empty cache for layers run by one ``lax.scan``: each layer's storage of
    :func:`init_cache` (arrays, or QTensors for a quantized format) stacked on a leading layer axis.

    Example:
      >>> keys, values = init_stacked_cache(config, 2, 128, kv_format="fp8", k_amax=ka, v_amax=va)
    """
    cache = init_cache(config, batch, max_len, kv_format=kv_format, k_amax=k_amax, v_amax=v_amax, dtype=dtype)
    return stack_trees(list(cache.keys)), stack_trees(list(cache.values))


@functools.partial(jax.jit, static_argnames=("spec", "shape", "dtype"))
def _empty(amax, *, spec, shape, dtype):
    """Quantized storage of zeros (the scales a layer's amax gives; per-block scales of empty slots)."""
    return quantize(jnp.zeros(shape, dtype), spec, amax)


def _update(stored, new, start):
    """Write ``new`` into ``stored`` along the sequence axis (1) at ``start``."""
    return jax.lax.dynamic_update_slice(stored, new.astype(stored.dtype), (0, start) + (0,) * (stored.ndim - 2))


def _store(stored, x, amax, spec, storage, start):
    if spec is None:
        return _update(stored, x, start)
    if storage == "fake_quant":
        return _update(stored, fake_quant(x, amax, spec=spec), start)
    new = quantize(x, spec, amax)
    # per-position scales (block formats) are written with the values; a per-tensor scale is the layer's own
    scale = _update(stored.scale, new.scale, start) if stored.scale.ndim == stored.data.ndim else stored.scale
    return dataclasses.replace(stored, data=_update(stored.data, new.data, start), scale=scale)


def write_layer(cache: KVCache, i: int, k: jax.Array, v: jax.Array) -> KVCache:
    """Store ``k, v[batch, t, kv_heads, head_dim]`` of layer ``i`` at positions ``length..length+t-1``.

    ``length`` is not advanced here (the caller does it once after all layers).
    """
    ka = None if cache.k_amax is None else cache.k_amax[i]
    va = None if cache.v_amax is None else cache.v_amax[i]
    keys, values = list(cache.keys), list(cache.values)
    keys[i] = _store(keys[i], k, ka, cache.spec, cache.storage, cache.length)
    values[i] = _store(values[i], v, va, cache.spec, cache.storage, cache.length)
    return dataclasses.replace(cache, keys=tuple(keys), values=tuple(values))


def read_layer(cache: KVCache, i: int) -> tuple[jax.Array, jax.Array]:
    """Keys and values of layer ``i`` over all ``max_len`` positions, dequantized to the compute dtype."""
    def load(x):
        return dequantize(x, cache.dtype) if isinstance(x, QTensor) else x
    return load(cache.keys[i]), load(cache.values[i])


def kv_amax_from(qm, config: LlamaConfig) -> tuple[jax.Array, jax.Array]:
    """Per-layer ``(k_amax, v_amax)`` from a calibrated :class:`jq.QuantizedModel` of :func:`forward`.

    Reads ``qm.qstate["model.layers.{i}.self_attn.{k,v}_bmm_quantizer"]["amax"]`` (e.g. after
    ``jq.quantize(params, make_forward(cfg), merge_presets(FP8_DEFAULT_CFG, FP8_KV_CFG), ...)``).
    """
    from jq.models.llama import layer_scope

    out = []
    for slot in ("k_bmm_quantizer", "v_bmm_quantizer"):
        vals = []
        for i in range(config.num_hidden_layers):
            name = f"{layer_scope(i)}.{slot}"
            state = qm.qstate.get(name)
            if state is None or "amax" not in state:
                raise ValueError(f"{name} has no calibrated amax: quantize with a KV preset (FP8_KV_CFG / "
                                 f"NVFP4_KV_CFG) merged in, and calibration data")
            vals.append(jnp.max(jnp.asarray(state["amax"], jnp.float32)))
        out.append(jnp.stack(vals))
    return out[0], out[1]
