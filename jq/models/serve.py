"""Generation from a quantized Llama-family model: fake-quant or on stored real-quantized weights, with a KV cache.

A :class:`ServedLM` runs :func:`jq.models.extend` (prefill and decode steps) through jq's evaluator with one
handler at every site, under ``jax.jit``:

* :func:`fake_quant_lm` ``(qm)``: :class:`jq.handlers.FakeQuant`, the fake-quant model ``qm.apply`` computes,
  with a float KV cache (its k/v ``bmm`` quantizers fake-quantize keys and values at attention, as in
  ``qm.apply``);
* :func:`real_quant_lm` ``(rm)``: :class:`jq.deploy.RealQuant` on the stored weights of a
  :class:`jq.deploy.RealizedModel` (FP8 through cuBLASLt, NVFP4 / INT4 through the W4A16 GEMM; see
  :func:`jq.deploy.realize`), and a KV cache stored in the format of the model's k/v ``bmm`` quantizers
  (e.g. FP8 E4M3 with the calibrated per-layer amax from ``FP8_KV_CFG``); those quantizers are then off at
  attention, because ``dequantize(quantize(k))`` read from the cache already is their fake quant.

Both share the sites' names with ``qm`` (the step function reads the same params leaves), so ``qm``'s config,
calibrated state and the realized weights apply unchanged. Real and fake generations agree to GEMM accumulation
order (``tests/models/test_serve.py``).

Example:
  >>> qm = jq.quantize(params, jm.make_forward(cfg), jq.merge_presets(jq.FP8_DEFAULT_CFG, jq.FP8_KV_CFG),
  ...                  calib_data=[(tokens,)])
  >>> lm = real_quant_lm(jq.deploy.realize(qm), cfg)
  >>> new_tokens, logits = lm.generate(prompt, 16)           # greedy, [batch, 16] and [batch, 16, vocab]
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from jq.deploy import RealQuant
from jq.handlers.apply import FakeQuant
from jq.model import QuantizedModel
from jq.models.config import LlamaConfig
from jq.models.generate import extend, generation_length
from jq.models.kv_cache import KVCache, init_cache
from jq.models.llama import layer_scope

__all__ = ["ServedLM", "fake_quant_lm", "real_quant_lm", "kv_cache_spec"]

_KV_SLOTS = ("k_bmm_quantizer", "v_bmm_quantizer")


def kv_cache_spec(qm, config: LlamaConfig):
    """The spec of ``qm``'s k/v ``bmm`` quantizers (one for all layers), or None when they are off.

    Raises ``ValueError`` when layers or k and v disagree (one cache format serves every layer).
    """
    specs = {(i, slot): qm.spec(f"{layer_scope(i)}.{slot}") for i in range(config.num_hidden_layers)
             for slot in _KV_SLOTS}
    distinct = set(specs.values())
    if len(distinct) != 1:
        raise ValueError(f"the k/v bmm quantizers differ across layers or between k and v ({len(distinct)} specs); "
                         f"a KV cache has one storage format")
    spec = distinct.pop()
    if isinstance(spec, tuple):
        raise ValueError(f"sequential k/v bmm quantizers cannot be a cache storage format: {spec}")
    return spec


def _kv_amax(qm, config: LlamaConfig, slot: str):
    name = lambda i: f"{layer_scope(i)}.{slot}"  # noqa: E731
    missing = [name(i) for i in range(config.num_hidden_layers) if "amax" not in qm.qstate.get(name(i), {})]
    if missing:
        raise ValueError(f"{missing[0]} has no calibrated amax: calibrate qm with data before serving its KV cache")
    return jnp.stack([jnp.max(jnp.asarray(qm.qstate[name(i)]["amax"], jnp.float32))
                      for i in range(config.num_hidden_layers)])


@dataclasses.dataclass(frozen=True, eq=False)  # compared by identity: a static jit argument (fields hold arrays)
class ServedLM:
    """A Llama-family model evaluated by jq with one handler per call; pure, jit-able steps.

    Attributes:
      step_model: a :class:`jq.QuantizedModel` of :func:`jq.models.extend` (``qm``'s config and state).
      config: the model config.
      weights: the stored quantized weights the handler reads (``{}`` for fake quant).
      make_handler: ``weights -> handler`` (a jq handler; weights are a traced argument under jit).
      kv_spec: the KV cache storage spec (None: float cache); kv_storage: ``"quantized"`` or ``"fake_quant"``.
      k_amax, v_amax: per-layer cache amax ``[num_layers]`` (None for a float cache).
    """

    step_model: QuantizedModel
    config: LlamaConfig
    weights: dict
    make_handler: object
    kv_spec: object = None
    k_amax: jax.Array | None = None
    v_amax: jax.Array | None = None

    @property
    def params(self):
        return self.step_model.params

    def init_cache(self, batch: int, max_len: int, dtype=None) -> KVCache:
        """An empty cache in this model's storage format (``dtype``: the embedding table's by default)."""
        dtype = dtype or self.params["model"]["embed_tokens"]["weight"].dtype
        return init_cache(self.config, batch, max_len, kv_format=self.kv_spec, k_amax=self.k_amax,
                          v_amax=self.v_amax, dtype=dtype)

    def extend(self, weights, params, tokens, cache: KVCache):
        """``(logits [batch, t, vocab], cache)`` of :func:`jq.models.extend` under this model's handler."""
        return self.step_model.evaluate(self.make_handler(weights), params, tokens, cache)

    def prefill(self, weights, params, prompt, cache: KVCache):
        """Prompt ``[batch, t]`` into the cache: ``(logits [batch, t, vocab], cache)``."""
        return self.extend(weights, params, prompt, cache)

    def decode(self, weights, params, token, cache: KVCache, n_steps: int):
        """``n_steps`` greedy tokens after ``token[batch]``: ``(tokens [batch, n], logits [batch, n, V], cache)``,
        one ``lax.scan`` of single-token steps."""
        def step(carry, _):
            tok, c = carry
            logits, c = self.extend(weights, params, tok[:, None], c)
            logits = logits[:, 0]
            nxt = jnp.argmax(logits, axis=-1).astype(jnp.int32)
            return (nxt, c), (nxt, logits)

        (_, cache), (toks, logits) = jax.lax.scan(step, (token, cache), None, length=n_steps)
        return toks.T, jnp.swapaxes(logits, 0, 1), cache

    def generate(self, prompt, n_new: int, *, max_len: int | None = None):
        """Greedy ``n_new`` tokens after ``prompt[batch, t]`` in one jitted program:
        ``(tokens [batch, n_new], logits [batch, n_new, vocab])`` (logits of the step that chose each token)."""
        prompt = jnp.asarray(prompt, jnp.int32)
        b, t = prompt.shape
        max_len = generation_length(t, n_new, max_len)
        return _generate(self, self.weights, self.params, prompt, self.init_cache(b, max_len), n_new)


@functools.partial(jax.jit, static_argnames=("lm", "n_new"))
def _generate(lm, weights, params, prompt, cache, n_new):
    logits, cache = lm.prefill(weights, params, prompt, cache)
    first_logits = logits[:, -1]
    first = jnp.argmax(first_logits, axis=-1).astype(jnp.int32)
    if n_new == 1:
        return first[:, None], first_logits[:, None]
    rest, rest_logits, _ = lm.decode(weights, params, first, cache, n_new - 1)
    return (jnp.concatenate([first[:, None], rest], axis=1),
            jnp.concatenate([first_logits[:, None], rest_logits], axis=1))


def _step_model(qm, config=None, *, kv_off: bool = False) -> QuantizedModel:
    cfg = qm.config
    if kv_off:
        cfg = cfg.with_entries(*((f"*.{slot}", False) for slot in _KV_SLOTS))
    return QuantizedModel.create(qm.params, extend, cfg, qm.qstate)


def fake_quant_lm(qm, config: LlamaConfig) -> ServedLM:
    """The fake-quant model ``qm`` (of :func:`jq.models.forward`) as a :class:`ServedLM` with a float cache."""
    return ServedLM(_step_model(qm), config, {}, _fake_handler)


def _fake_handler(weights):
    return FakeQuant()


@dataclasses.dataclass(frozen=True, eq=False)
class _RealHandler:
    """``weights -> RealQuant`` (the kernels and platform are static; the weights are traced arrays)."""

    kernels: dict
    platform: str

    def __call__(self, weights):
        return RealQuant(self.kernels, weights, self.platform)


def real_quant_lm(rm, config: LlamaConfig, *, kv_cache: bool = True) -> ServedLM:
    """The realized model ``rm`` (:func:`jq.deploy.realize` of a ``qm`` of :func:`jq.models.forward`) as a
    :class:`ServedLM` on its stored weights.

    ``kv_cache=True`` stores keys/values in the format of ``qm``'s k/v ``bmm`` quantizers when they are on
    (their calibrated per-layer amax); ``False`` keeps a float cache and those quantizers at attention.
    """
    qm = rm.qm
    spec = kv_cache_spec(qm, config) if kv_cache else None
    platform = "gpu" if rm.backend == "gpu" else "cpu"
    if spec is None:
        return ServedLM(_step_model(qm), config, rm.weights, _RealHandler(rm.kernels, platform))
    return ServedLM(_step_model(qm, kv_off=True), config, rm.weights, _RealHandler(rm.kernels, platform), spec,
                    _kv_amax(qm, config, "k_bmm_quantizer"), _kv_amax(qm, config, "v_bmm_quantizer"))
