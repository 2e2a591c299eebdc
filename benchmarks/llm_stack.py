"""A Llama-family decoder at full depth with its layers stacked and run by one ``lax.scan``: fast to build and compile.

The unrolled :func:`jq.models.extend` (one traced copy per layer) makes every (variant, batch) program of an
8B-shaped model a 32-layer compilation; here one layer is traced and compiled once and ``lax.scan`` runs it over
weights stacked along a leading layer axis, so a 32-layer program compiles as fast as a 1-layer one and measures
the real full-depth cost (no extrapolation from a reduced depth).

The model is :class:`jq.models.serve.ScannedLM` (its scan of :func:`jq.models.generate.cached_layer`, the layer of
:func:`jq.models.extend`); what is the benchmark's own:

* weights: generated on the device (:func:`init_stacked`, one ``lax.map`` of the per-layer init over keys);
* quantized variants: the layer evaluated by jq's evaluator with a :class:`jq.deploy.RealQuant` handler on the
  stored weights of each layer (:func:`stack_realized`: ``jq.deploy.realize`` of a 1-layer ``qm`` whose params
  are that layer's, weight amax recomputed per layer; activation / KV amax are the 1-layer calibration's, the
  same for every layer: random weights, a speed model);
* :func:`plain` / :func:`real_quant_stacked`: the unquantized / real-quantized ``ScannedLM`` on those weights,
  params ``{"top": the 1-layer model's params, "layers": the layers' params stacked on axis 0}``.

A stacked model with the same weights and calibration generates the same tokens as the unrolled served model
(``tests/benchmarks/test_llm_stack.py``).

**Layouts.** ``layers`` stacked on axis 0 (one ``lax.scan``), or a *list* of per-layer trees
(:func:`jq.models.stacking.unstack_trees`): then every function here keeps lists (realized weights per layer,
each in buffers of its own) and the model is the unrolled :class:`ScannedLM` (``unrolled=True``). On the GPU the
scan materialises each layer's weight slice before its GEMM (one extra read and write of every weight byte per
decode step: 0.37x the bandwidth of separate buffers for the bf16 GEMM, run 28), so speed is measured unrolled
and the stacked form is what compiles fast.

Example::

    top, layers = init_stacked(cfg, 32, jax.random.key(0))
    lm = plain(cfg, top, layers)
    logits, cache = jax.jit(lm.extend)(lm.weights, lm.params, prompt, lm.init_cache(1, 64))
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from jq import deploy
from jq.model import QuantizedModel
from jq.models import llama, serve
from jq.models.generate import cached_layer
from jq.models.layer_scan import layer_of
from jq.models.serve import ScannedLM, with_layer
from jq.models.stacking import layer_count, stack_trees

__all__ = ["init_stacked", "plain", "real_quant_stacked", "stack_realized"]


def init_stacked(config1, n_layers: int, key, *, dtype=jnp.bfloat16, scale: float = 0.02):
    """``(top, layers)``: the params of the 1-layer ``config1`` model (embedding, norm, head, layer 0) and the
    ``n_layers`` layers' params stacked on a leading axis, all drawn on the device (normal, std ``scale``; one
    jitted ``lax.map`` over the layers' keys)."""
    k_top, k_layers = jax.random.split(key)

    @jax.jit
    def top_init(k):
        return llama.init_params(config1, k, dtype=dtype, scale=scale)

    @jax.jit
    def layers_init(keys):
        # lax.map: one layer's draws live at a time (no f32 transient of the whole stack)
        return jax.lax.map(lambda k: llama.init_params(config1, k, dtype=dtype, scale=scale)["model"]["layers"][0],
                           keys)

    return top_init(k_top), layers_init(jax.random.split(k_layers, n_layers))


def plain(config1, top, layers, *, kv_spec=None, k_amax=None, v_amax=None) -> ScannedLM:
    """The unquantized model (no jq evaluator) at the depth of ``layers``, with a float cache or, with ``kv_spec``
    and per-layer ``k_amax, v_amax [n_layers]``, a quantized one.

    Params ``{"top": top, "layers": layers}``, no stored weights (``weights == {}``).
    """
    return ScannedLM(_depth(config1, layers), {"top": top, "layers": layers}, {}, kv_spec=kv_spec, k_amax=k_amax,
                     v_amax=v_amax, unrolled=isinstance(layers, list))


def _depth(config1, layers):
    """``config1`` at the depth of the stacked ``layers``."""
    return dataclasses.replace(config1, num_hidden_layers=layer_count(layers))


def _weight_amax_of_layer(qm1, params):
    """``qm1.qstate`` with every weight quantizer's amax recalibrated on ``params``' weights (jq's weight
    calibration, :func:`jq.calib.weights.calibrate_weights`, each quantizer's own calibrator)."""
    from jq.calib.weights import calibrate_weights

    qstate = {k: dict(v) for k, v in qm1.qstate.items()}
    traced = qm1.traced
    for name, entry in calibrate_weights(traced, qm1.specs(traced), jax.tree_util.tree_leaves(params),
                                         qstate).items():
        qstate.setdefault(name, {}).update(entry)
    return qstate


def stack_realized(qm1, top, layers, *, backend=None):
    """``(weights, kernels, plan, backend)``: ``weights["layers"]``, the stored weights of every layer stacked on
    axis 0 (a list for listed ``layers``) -- ``jq.deploy.realize`` of ``qm1`` on each layer's params with its weight
    amax recalibrated on that layer, one jitted program called per layer (no host round trip) --,
    ``weights["top"]`` the stored weights of quantized sites outside the layers (the ``lm_head`` when its quantizers
    are on; realized by layer 0's program only: the other layers' program has those sites' quantizers off), and
    the 1-layer model's kernels, plan and backend."""
    from jq import backends

    backend = backend or ("gpu" if backends.platform() == "gpu" else "xla")
    n = layer_count(layers)
    as_list = isinstance(layers, list)

    def realizer(qm):
        def realize_layer(top, layer):
            p = with_layer(top, layer)
            return deploy.realize(qm.replace(params=p, qstate=_weight_amax_of_layer(qm, p)), backend=backend).weights
        return realize_layer

    eager_only = []  # set once a jitted realize failed: every later call runs eagerly

    def call(qm, fn, top, layer):
        if not eager_only:
            try:
                return fn(top, layer)
            except Exception as e:  # noqa: BLE001 - insurance: a realize step that cannot be traced runs eagerly
                print(f"stack_realized: jitted realize failed ({type(e).__name__}: {str(e)[:200]}); eager",
                      flush=True)
                eager_only.append(True)
        return realizer(qm)(top, layer)

    def layer_params(i):
        return layers[i] if as_list else jax.tree_util.tree_map(lambda a: a[i], layers)

    stored = call(qm1, jax.jit(realizer(qm1)), top, layer_params(0))
    top_stored = {k: v for k, v in stored.items() if layer_of(k) is None}
    per = [{k: v for k, v in stored.items() if layer_of(k) is not None}]
    qm_rest = qm1.replace(config=qm1.config.with_entries(*((f"{k}.*", False) for k in top_stored))) if top_stored \
        else qm1
    fn = jax.jit(realizer(qm_rest))  # one program for every other layer
    for i in range(1, n):
        stored = call(qm_rest, fn, top, layer_params(i))
        assert not any(layer_of(k) is None for k in stored), f"stack_realized: layer {i} realized {sorted(stored)}"
        per.append(stored)
    weights = {"layers": per if as_list else stack_trees(per), "top": top_stored}
    del per
    return weights, deploy.site_kernels(qm1), deploy.site_plan(qm1), backend


def real_quant_stacked(qm1, config1, top, layers, *, kv_cache: bool, realized=None, kernels=None) -> ScannedLM:
    """A :class:`jq.models.serve.ScannedLM` on real-quantized weights: params ``{"top": top, "layers": layers}``,
    weights ``{"layers": {1-layer site name: stored weight stacked on axis 0}}``, ``layer_model`` a
    :class:`jq.QuantizedModel` of :func:`jq.models.generate.cached_layer` whose state serves every layer, no head
    model (the head runs plain).

    ``qm1``: a calibrated 1-layer model of :func:`jq.models.forward` (its config, activation and KV amax serve
    every layer); ``realized``: :func:`stack_realized`'s result, reused across variants (computed if None);
    ``kernels``: optional replacement of the realized kernels (e.g. another FP8 GEMM policy); ``kv_cache``: store
    k/v in the format of ``qm1``'s k/v ``bmm`` quantizers (else they stay as configured, at attention). When
    ``qm1`` quantizes the ``lm_head`` (its ``*lm_head*`` quantizers enabled), the head runs on its stored weight
    (``weights["top"]``, a ``head_model`` of the top-level quantizer state); else it runs plain.
    """
    config = _depth(config1, layers)
    stored, rkernels, _, backend = realized or stack_realized(qm1, top, layers)
    spec = serve.kv_cache_spec(qm1, config1) if kv_cache else None
    cfg = qm1.config if spec is None else serve.kv_quantizers_off(qm1.config)  # the cache applies them
    step = QuantizedModel.create(qm1.params, cached_layer, cfg, qm1.qstate)
    handler = serve.RealHandler(kernels or rkernels, "gpu" if backend == "gpu" else "cpu")
    kv = {}
    if spec is not None:
        n = config.num_hidden_layers
        kv = {"kv_spec": spec, "k_amax": jnp.broadcast_to(serve.kv_amax(qm1, config1, "k_bmm_quantizer"), (n,)),
              "v_amax": jnp.broadcast_to(serve.kv_amax(qm1, config1, "v_bmm_quantizer"), (n,))}
    weights, head = {"layers": stored["layers"]}, None
    if stored["top"]:
        weights["top"] = stored["top"]
        top_qstate = {k: v for k, v in qm1.qstate.items() if layer_of(k) is None}
        head = QuantizedModel.create(top, functools.partial(llama.lm_head, config=config), cfg, top_qstate)
    return ScannedLM(config, {"top": top, "layers": layers}, weights, layer_model=step, head_model=head,
                     make_handler=handler, unrolled=isinstance(layers, list), **kv)
