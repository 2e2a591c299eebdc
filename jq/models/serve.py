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
from jq.models.generate import cached_layer, extend, extend_inputs, generation_length
from jq.models.kv_cache import KVCache, init_cache, init_stacked_cache
from jq.models.layer_scan import as_layer0, check_uniform_specs, layer_of
from jq.models.llama import layer_scope, lm_head
from jq.models.stacking import stack_trees, unstack_trees

__all__ = ["RealHandler", "ScannedLM", "ServedLM", "StackedCache", "fake_quant_lm", "float_lm", "kv_amax",
           "kv_cache_spec", "kv_quantizers_off", "real_quant_lm", "with_layer"]

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


def kv_amax(qm, config: LlamaConfig, slot: str):
    """The per-layer cache amax ``[num_layers]`` (f32) of ``qm``'s ``slot`` quantizers (``"k_bmm_quantizer"`` or
    ``"v_bmm_quantizer"``): layer ``i``'s calibrated amax reduced to a scalar, ``max |amax|`` over its entries.

    Raises ``ValueError`` naming the first layer whose quantizer has no calibrated amax.

    Example:
      >>> k_amax = kv_amax(qm, cfg, "k_bmm_quantizer")      # [cfg.num_hidden_layers]
    """
    name = lambda i: f"{layer_scope(i)}.{slot}"
    missing = [name(i) for i in range(config.num_hidden_layers) if "amax" not in qm.qstate.get(name(i), {})]
    if missing:
        raise ValueError(f"{missing[0]} has no calibrated amax: calibrate qm with data before serving its KV cache")
    return jnp.stack([jnp.max(jnp.asarray(qm.qstate[name(i)]["amax"], jnp.float32))
                      for i in range(config.num_hidden_layers)])


class _Generation:
    """Prefill, greedy decode and generation on top of ``extend(weights, params, tokens, cache)``."""

    def prefill(self, weights, params, prompt, cache):
        """Prompt ``[batch, t]`` into the cache: ``(logits [batch, t, vocab], cache)``."""
        return self.extend(weights, params, prompt, cache)

    def decode(self, weights, params, token, cache, n_steps: int):
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


@dataclasses.dataclass(frozen=True, eq=False)  # compared by identity: a static jit argument (fields hold arrays)
class ServedLM(_Generation):
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


def kv_quantizers_off(cfg):
    """``cfg`` with the k/v ``bmm`` quantizers off: a cache that stores k/v in their format already applies them
    (``dequantize(quantize(k))`` is their fake quant)."""
    return cfg.with_entries(*((f"*.{slot}", False) for slot in _KV_SLOTS))


def _step_model(qm, config=None, *, kv_off: bool = False) -> QuantizedModel:
    cfg = kv_quantizers_off(qm.config) if kv_off else qm.config
    return QuantizedModel.create(qm.params, extend, cfg, qm.qstate)


def fake_quant_lm(qm, config: LlamaConfig, *, scan_layers: bool = False):
    """The fake-quant model ``qm`` (of :func:`jq.models.forward`) as a :class:`ServedLM` with a float cache
    (``scan_layers``: a :class:`ScannedLM`, the same model with its layers run by one ``lax.scan``)."""
    if scan_layers:
        return _scanned(qm, config, {}, _fake_handler)
    return ServedLM(_step_model(qm), config, {}, _fake_handler)


def _fake_handler(weights):
    return FakeQuant()


@dataclasses.dataclass(frozen=True, eq=False)
class RealHandler:
    """``weights -> RealQuant``: the ``make_handler`` of a served model on stored weights (the kernels and platform
    are static, compared by identity under jit; the weights are traced arrays).

    Example:
      >>> make_handler = RealHandler(rm.kernels, "cpu")
      >>> lm = ServedLM(step_model, cfg, rm.weights, make_handler)  # step_model: a QuantizedModel of extend
    """

    kernels: dict
    platform: str

    def __call__(self, weights):
        return RealQuant(self.kernels, weights, self.platform)


def real_quant_lm(rm, config: LlamaConfig, *, kv_cache: bool = True, scan_layers: bool = False):
    """The realized model ``rm`` (:func:`jq.deploy.realize` of a ``qm`` of :func:`jq.models.forward`) as a
    :class:`ServedLM` on its stored weights.

    ``kv_cache=True`` stores keys/values in the format of ``qm``'s k/v ``bmm`` quantizers when they are on
    (their calibrated per-layer amax); ``False`` keeps a float cache and those quantizers at attention.
    ``scan_layers``: a :class:`ScannedLM` (layers run by one ``lax.scan`` on the layers' stored weights stacked).
    """
    qm = rm.qm
    spec = kv_cache_spec(qm, config) if kv_cache else None
    platform = "gpu" if rm.backend == "gpu" else "cpu"
    if scan_layers:
        _check_uniform_plan(rm.plan, config.num_hidden_layers)
        kernels = {k: v for k, v in rm.kernels.items() if layer_of(k) in (None, 0)}
        return _scanned(qm, config, rm.weights, RealHandler(kernels, platform), spec)
    if spec is None:
        return ServedLM(_step_model(qm), config, rm.weights, RealHandler(rm.kernels, platform))
    return ServedLM(_step_model(qm, kv_off=True), config, rm.weights, RealHandler(rm.kernels, platform), spec,
                    kv_amax(qm, config, "k_bmm_quantizer"), kv_amax(qm, config, "v_bmm_quantizer"))


# ---- layer-scanned serving -------------------------------------------------------------------------------
# The unrolled step traces and compiles one copy of every layer (twice: prefill and the decode body), which is
# where a 30-layer model's build time goes; here one layer is traced and compiled and ``lax.scan`` runs it over
# the layers' params, quantizer state and stored weights stacked on a leading axis.

def _stack_layers(per_layer: dict, n: int, what: str) -> dict:
    """``{layer-0 name: leaves stacked on axis 0}`` of ``{full name: value}``; every layer must have the same
    names and shapes."""
    groups = [{} for _ in range(n)]
    for name, v in per_layer.items():
        i = layer_of(name)
        if i is not None:
            groups[i][as_layer0(name)] = v
    for i, g in enumerate(groups[1:], 1):
        if set(g) != set(groups[0]):
            raise ValueError(f"scan_layers: layer {i}'s {what} differs from layer 0's in "
                             f"{sorted(set(g) ^ set(groups[0]))[:3]}; serve this model unrolled")
    try:
        return stack_trees(groups)
    except (ValueError, TypeError) as e:
        raise ValueError(f"scan_layers: the layers' {what} cannot be stacked ({e}); serve this model unrolled") from e


def _check_uniform_plan(plan: dict, n: int) -> None:
    """Every layer's sites are served by layer 0's kernels."""
    for name, kernel in plan.items():
        if layer_of(name) and plan.get(as_layer0(name)) != kernel:
            raise ValueError(f"scan_layers: site {name} is served by {kernel!r}, layer 0's by "
                             f"{plan.get(as_layer0(name))!r}; serve this model unrolled")


def _head(params, h, *, config):
    return lm_head(params, h, config)


def with_layer(top: dict, layer: dict) -> dict:
    """The params of the 1-layer model: ``top`` (a model's params, its layers ignored) with ``layer`` as its only
    layer (``top["model"]["layers"] == [layer]``); ``top`` is not modified.

    Example:
      >>> p = with_layer(params["top"], jax.tree_util.tree_map(lambda a: a[3], params["layers"]))  # layer 3
    """
    return dict(top, model=dict(top["model"], layers=[layer]))


class StackedCache(tuple):
    """``(keys, values, length)``: every layer's cache storage stacked on axis 0 (arrays or QTensors)."""

    __slots__ = ()

    def __new__(cls, keys, values, length):
        return super().__new__(cls, (keys, values, length))

    @property
    def nbytes(self) -> int:
        return int(sum(a.size * a.dtype.itemsize for a in jax.tree_util.tree_leaves(self[:2])))


jax.tree_util.register_pytree_node(StackedCache, lambda c: (tuple(c), None), lambda _, ch: StackedCache(*ch))


@dataclasses.dataclass(frozen=True, eq=False)  # compared by identity: a static jit argument
class ScannedLM(_Generation):
    """A :class:`ServedLM` whose layers run in one ``lax.scan``: one layer is traced and compiled, whatever the
    depth. Same tokens and logits as the unrolled model (same per-layer math, params and quantizer state).

    ``params`` is ``{"top": the params without layers (any it has are replaced), "layers": the layers' params
    stacked on axis 0}``;
    ``weights`` is ``{"top": stored weights of sites outside the layers, "layers": the layers' stacked}``.
    Attributes ``layer_model`` / ``head_model`` (None: no quantization, :func:`float_lm`) evaluate layer 0's
    step and the head; ``layer_qstate`` is the layers' quantizer state stacked (sliced per layer by the scan;
    None: ``layer_model``'s own state serves every layer).

    ``unrolled``: the layers' params, stored weights, quantizer state and cache are *lists* of per-layer trees,
    each layer's in buffers of its own, run by a Python loop (one traced copy per layer, same math). On the GPU a
    ``lax.scan`` materialises each layer's slice of a stacked weight before a GEMM or kernel reads it (one extra
    read and write of every weight byte per step: 0.37x the weight bandwidth of separate buffers for a bf16
    decode GEMM, run 28, ``benchmarks/kernel_bench/layer_stream.py``), so the scanned form is for compile time
    and the unrolled one (:meth:`unstacked`) for speed.

    Example:
      >>> lm = fake_quant_lm(qm, cfg, scan_layers=True)
      >>> tokens, logits = lm.generate(prompt, 128)
      >>> fast = lm.unstacked()                       # same tokens, each layer's weights their own buffers
    """

    config: LlamaConfig
    params: dict
    weights: dict
    layer_model: QuantizedModel | None = None
    head_model: QuantizedModel | None = None
    layer_qstate: dict | None = None
    make_handler: object = None
    kv_spec: object = None
    k_amax: jax.Array | None = None
    v_amax: jax.Array | None = None
    unrolled: bool = False

    @property
    def n_layers(self) -> int:
        return self.config.num_hidden_layers

    @property
    def config1(self) -> LlamaConfig:
        return dataclasses.replace(self.config, num_hidden_layers=1)

    @property
    def dtype(self):
        return self.params["top"]["model"]["embed_tokens"]["weight"].dtype

    def init_cache(self, batch: int, max_len: int) -> StackedCache:
        """An empty cache in this model's storage format: every layer's stacked on axis 0, or (``unrolled``) a list
        of per-layer caches."""
        if self.unrolled:
            c = init_cache(self.config, batch, max_len, kv_format=self.kv_spec, k_amax=self.k_amax,
                           v_amax=self.v_amax, dtype=self.dtype)
            return StackedCache(list(c.keys), list(c.values), jnp.zeros((), jnp.int32))
        keys, values = init_stacked_cache(self.config, batch, max_len, kv_format=self.kv_spec, k_amax=self.k_amax,
                                          v_amax=self.v_amax, dtype=self.dtype)
        return StackedCache(keys, values, jnp.zeros((), jnp.int32))

    def unstacked(self) -> "ScannedLM":
        """This model with every stacked tree (layers' params, stored weights, quantizer state) split into
        per-layer buffers and its layers unrolled (``unrolled=True``): the fast form on the GPU. Its cache
        (:meth:`init_cache`) holds per-layer lists."""
        if self.unrolled:
            return self
        split = lambda t: None if t is None else unstack_trees(t)
        weights = dict(self.weights)
        if weights.get("layers"):
            weights["layers"] = split(weights["layers"])
        params = dict(self.params, layers=split(self.params["layers"]))
        return dataclasses.replace(self, params=params, weights=weights, layer_qstate=split(self.layer_qstate),
                                   unrolled=True)

    def extend(self, weights, params, tokens, cache: StackedCache):
        """``(logits [batch, t, vocab], cache)``: :func:`jq.models.extend` with the layers scanned (or unrolled)."""
        keys, values, length = cache
        t = tokens.shape[1]
        max_len = jax.tree_util.tree_leaves(keys)[0].shape[1 if self.unrolled else 2]  # [(layer,) b, len, ...]
        cos, sin, mask = extend_inputs(self.config, tokens, length, max_len)
        top = params["top"]
        h = top["model"]["embed_tokens"]["weight"][tokens]
        zeros = jnp.zeros((self.n_layers,), jnp.float32)
        k_amax = zeros if self.k_amax is None else self.k_amax
        v_amax = zeros if self.v_amax is None else self.v_amax
        config1, dtype = self.config1, jnp.dtype(self.dtype).name

        def body(h, xs):
            layer, w, qstate, k_i, v_i, ka, va = xs
            c1 = KVCache((k_i,), (v_i,), None if self.k_amax is None else ka[None],
                         None if self.v_amax is None else va[None], length, config1, self.kv_spec, "quantized", dtype)
            p = with_layer(top, layer)
            if self.layer_model is None:
                h, c1 = cached_layer(p, h, c1, cos, sin, mask)
            else:
                model = self.layer_model if qstate is None else self.layer_model.replace(qstate=qstate)
                h, c1 = model.evaluate(self.make_handler(w), p, h, c1, cos, sin, mask)
            return h, (c1.keys[0], c1.values[0])

        if self.unrolled:  # per-layer lists: layer i reads its own buffers
            keys, values = list(keys), list(values)
            stored = weights.get("layers") or [{}] * self.n_layers
            for i in range(self.n_layers):
                qstate = None if self.layer_qstate is None else self.layer_qstate[i]
                h, (keys[i], values[i]) = body(h, (params["layers"][i], stored[i], qstate, keys[i], values[i],
                                                   k_amax[i], v_amax[i]))
        else:
            xs = (params["layers"], weights.get("layers", {}), self.layer_qstate, keys, values, k_amax, v_amax)
            h, (keys, values) = jax.lax.scan(body, h, xs)
        if self.head_model is None:
            logits = lm_head(top, h, self.config)
        else:
            logits = self.head_model.evaluate(self.make_handler(weights.get("top", {})), top, h)
        return logits, StackedCache(keys, values, length + t)


def _split_params(params: dict, n: int) -> dict:
    """``{"top": params without layers, "layers": the layers' params stacked on axis 0}``."""
    layers = params["model"]["layers"]
    if len(layers) != n:
        raise ValueError(f"scan_layers: params have {len(layers)} layers, the config {n}")
    top = dict(params, model=dict(params["model"], layers=[]))
    return {"top": top, "layers": stack_trees(list(layers))}


def float_lm(params: dict, config: LlamaConfig) -> ScannedLM:
    """The float model (no jq evaluator) as a :class:`ScannedLM`: the baseline of a scanned quantized model."""
    return ScannedLM(config, _split_params(params, config.num_hidden_layers), {})


def _scanned(qm, config: LlamaConfig, weights: dict, make_handler, spec=None) -> ScannedLM:
    """``qm`` (of :func:`jq.models.forward`) as a :class:`ScannedLM` with ``weights`` ``{site: stored}``."""
    n = config.num_hidden_layers
    check_uniform_specs(qm, n)
    cfg = qm.config if spec is None else kv_quantizers_off(qm.config)  # the cache applies the k/v quantizers
    params = _split_params(qm.params, n)
    layer0 = jax.tree_util.tree_map(lambda a: a[0], params["layers"])
    layer_qstate = _stack_layers(qm.qstate, n, "quantizer state")
    top_qstate = {k: v for k, v in qm.qstate.items() if layer_of(k) is None}
    layer_model = QuantizedModel.create(with_layer(params["top"], layer0), cached_layer, cfg,
                                        jax.tree_util.tree_map(lambda a: a[0], layer_qstate))
    head_model = QuantizedModel.create(params["top"], functools.partial(_head, config=config), cfg, top_qstate)
    stacked = {"top": {k: v for k, v in weights.items() if layer_of(k) is None},
               "layers": _stack_layers(weights, n, "stored weights")}
    kv = {} if spec is None else {"kv_spec": spec, "k_amax": kv_amax(qm, config, "k_bmm_quantizer"),
                                  "v_amax": kv_amax(qm, config, "v_bmm_quantizer")}
    return ScannedLM(config, params, stacked, layer_model, head_model, layer_qstate, make_handler, **kv)
