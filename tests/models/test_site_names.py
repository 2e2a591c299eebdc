"""Site and quantizer names of every way jq.models runs a decoder layer: the names of ``jq.models.forward``.

jq names a ``linear`` site from the params path of its weight and a ``bmm`` site from the ``layer_scope(i)`` name
scope around attention, so the served step (:func:`jq.models.extend`), the layer-scanned serving model
(:class:`jq.models.serve.ScannedLM`, whose one traced layer is layer 0) and the layer-scanned calibration twin
(:func:`jq.models.layer_scan.scanned_forward`) must produce exactly the names below: a config, calibrated state and
realized weights keyed by those names then apply to all of them. Reference: ModelOpt's module names for HF Llama
(``model.layers.N.self_attn.q_proj.weight_quantizer``, ``model.layers.N.self_attn.k_bmm_quantizer``).
"""

import functools

import jax
import jax.numpy as jnp

import jq
import jq.models as jm
from jq.model import QuantizedModel
from jq.models import layer_scan, serve
from tests.models.conftest import tiny_model

TOKENS = jnp.asarray([[3, 17, 5, 40, 22, 9, 31, 0], [1, 2, 3, 4, 5, 6, 7, 8]], jnp.int32)
PROJ = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
        "mlp.up_proj", "mlp.down_proj")
LINEAR_SLOTS = ("input_quantizer", "output_quantizer", "weight_quantizer")
BMM_SLOTS = ("q_bmm_quantizer", "k_bmm_quantizer", "v_bmm_quantizer", "softmax_quantizer")


def layer_names(i):
    """``(sites, quantizers)`` of layer ``i``: 7 linear sites, the two attention matmuls (one bmm name)."""
    sites = [(f"model.layers.{i}.{p}", "linear") for p in PROJ] + [(f"model.layers.{i}.self_attn", "bmm")] * 2
    quantizers = [f"model.layers.{i}.{p}.{s}" for p in PROJ for s in LINEAR_SLOTS]
    quantizers += [f"model.layers.{i}.self_attn.{s}" for s in BMM_SLOTS]
    return sites, quantizers


HEAD = ([("lm_head", "linear")], [f"lm_head.{s}" for s in LINEAR_SLOTS])


def expected(*parts):
    return (sorted(s for p in parts for s in p[0]), sorted(q for p in parts for q in p[1]))


def names(qm):
    return sorted((s.name, s.kind) for s in qm.traced.sites), sorted(qm.traced.quantizers)


def _qm():
    _, config, params = tiny_model()  # two layers
    cfg = jq.merge_presets(jq.FP8_DEFAULT_CFG, jq.FP8_KV_CFG)
    return config, params, jq.quantize(params, jm.make_forward(config), cfg, calib_data=[(TOKENS,)], progress=False)


def test_forward_extend_and_scanned_models_name_their_sites_as_forward_does():
    config, params, qm = _qm()
    both_layers = expected(layer_names(0), layer_names(1), HEAD)
    assert names(qm) == both_layers
    # the unrolled served step: jq.models.extend through the cache
    lm = serve.fake_quant_lm(qm, config)
    jax.eval_shape(lm.extend, lm.weights, lm.params, TOKENS, lm.init_cache(2, 8))  # traces, no compile
    assert names(lm.step_model) == both_layers
    # the layer-scanned served model: one layer (layer 0's names) and the head
    slm = serve.fake_quant_lm(qm, config, scan_layers=True)
    jax.eval_shape(slm.extend, slm.weights, slm.params, TOKENS, slm.init_cache(2, 8))
    assert names(slm.layer_model) == expected(layer_names(0))
    assert names(slm.head_model) == expected(HEAD)
    # the layer-scanned calibration twin: layer 0's names (state stacked per layer) and the head
    twin = QuantizedModel.create(layer_scan.stack_layers(params),
                                 functools.partial(layer_scan.scanned_forward, config=config), qm.config)
    twin.trace(TOKENS)
    assert names(twin) == expected(layer_names(0), HEAD)
