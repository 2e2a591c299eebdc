"""Calibrate a Llama-family model through its layer-scanned twin: every calibration pass compiles one layer.

``jq.quantize(params, jm.make_forward(cfg), ...)`` compiles each calibration pass (max; AWQ's three) as one
program with every layer unrolled, so a 30-layer model's passes take minutes to compile. The twin
(:func:`scanned_forward`) runs the same layers with one ``lax.scan`` over their params stacked on a leading axis
(:func:`stack_layers`; the stacked leaves keep layer 0's paths, so the twin's sites and quantizers carry layer 0's
names and jq gives their state a leading layer axis). :func:`quantize_scanned` calibrates the twin and returns the
usual unrolled :class:`jq.QuantizedModel` of :func:`jq.models.forward` whose state is the twin's, one slice per
layer (:func:`unstack_qstate`): the same statistics up to float rounding of the forward (a max of activations is
the same maximum; sums differ in the last bit), so ``jq.deploy.realize`` and :mod:`jq.models.serve` take it as is.

Example:
  >>> qm = quantize_scanned(params, cfg, jq.INT4_AWQ_CFG, calib_data=[(tokens,)])
  >>> qm.qstate["model.layers.7.mlp.up_proj.input_quantizer"]["pre_quant_scale"].shape   # (intermediate,)
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jq.model import QuantizedModel
from jq.models.config import LlamaConfig
from jq.models.llama import attention_mask, decoder_layer, lm_head, make_forward
from jq.models.rope import rope_tables
from jq.models.stacking import stack_trees

__all__ = ["as_layer0", "check_uniform_specs", "layer_of", "quantize_scanned", "scanned_forward", "stack_layers",
           "unstack_qstate"]

_LAYER0 = "model.layers.0."


def stack_layers(params: dict) -> dict:
    """``params`` with ``model.layers`` replaced by ``[the layers' params stacked on axis 0]`` (layer 0's paths)."""
    stacked = stack_trees(list(params["model"]["layers"]))
    return dict(params, model=dict(params["model"], layers=[stacked]))


def scanned_forward(params: dict, tokens: jax.Array, *, config: LlamaConfig, positions: jax.Array | None = None
                    ) -> jax.Array:
    """:func:`jq.models.forward` on :func:`stack_layers` params, the layers run by one ``lax.scan``."""
    b, t = tokens.shape
    if positions is None:
        positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    cos, sin = rope_tables(config, positions)
    mask = attention_mask(positions, positions, config)

    def layer_step(h, layer):  # forward's layer; the attention scope is layer 0's (the bmm sites' name)
        return decoder_layer(layer, h, 0, cos, sin, mask, config)

    h, _ = jax.lax.scan(layer_step, params["model"]["embed_tokens"]["weight"][tokens], params["model"]["layers"][0])
    return lm_head(params, h, config)


def unstack_qstate(qstate: dict, n_layers: int) -> dict:
    """The twin's state ``{model.layers.0.X: leaves [n_layers, ...]}`` as ``{model.layers.i.X: slice i}``; other
    names unchanged. Raises ``ValueError`` for a layer-0 leaf without the leading layer axis."""
    out = {}
    for name, entry in qstate.items():
        if not name.startswith(_LAYER0):
            out[name] = entry
            continue
        for key, v in entry.items():
            if jnp.ndim(v) == 0 or jnp.shape(v)[0] != n_layers:
                raise ValueError(f"{name}[{key!r}] has shape {jnp.shape(v)}, not a leading layer axis of {n_layers}")
        for i in range(n_layers):
            out[f"model.layers.{i}.{name[len(_LAYER0):]}"] = {k: v[i] for k, v in entry.items()}
    return out


_LAYERS = "model.layers."


def layer_of(name: str) -> int | None:
    """``i`` of ``model.layers.{i}.*`` (None for a name outside the layers)."""
    if not name.startswith(_LAYERS):
        return None
    head = name[len(_LAYERS):].split(".", 1)[0]
    return int(head) if head.isdigit() else None


def as_layer0(name: str) -> str:
    """``model.layers.{i}.rest`` -> ``model.layers.0.rest`` (the 1-layer step model's name)."""
    i = layer_of(name)
    return name if i is None else f"{_LAYERS}0{name[len(_LAYERS) + len(str(i)):]}"


def check_uniform_specs(qm, n: int) -> None:
    """Every layer's quantizers resolve to layer 0's specs (the scan body has one config)."""
    for name in qm.traced.quantizers:
        i = layer_of(name)
        if i and qm.spec(name) != qm.spec(as_layer0(name)):
            raise ValueError(f"scan_layers: {name} is {qm.spec(name)} but layer 0's is {qm.spec(as_layer0(name))}; "
                             f"one scanned layer has one config: serve this model unrolled")


def quantize_scanned(params: dict, config: LlamaConfig, cfg, *, calib_data, **kwargs) -> QuantizedModel:
    """``jq.quantize(params, make_forward(config), cfg, calib_data=...)`` calibrated through the layer-scanned
    twin (``kwargs`` go to :func:`jq.quantize`); returns the unrolled model, traced on the first batch.

    Raises ``ValueError`` when ``cfg`` gives the layers different quantizer specs (the twin has one layer).
    """
    import jq
    from jq.calib.collect import as_args

    batches = list(calib_data)
    if not batches:
        raise ValueError("quantize_scanned needs calibration data (at least one batch)")
    qm = QuantizedModel.create(params, make_forward(config), cfg)
    args, kw = as_args(batches[0])
    qm.trace(*args, **kw)  # the unrolled model's sites (no compile)
    check_uniform_specs(qm, config.num_hidden_layers)
    twin = jq.quantize(stack_layers(params), functools.partial(scanned_forward, config=config), cfg,
                       calib_data=batches, **kwargs)
    return qm.replace(qstate=unstack_qstate(twin.qstate, config.num_hidden_layers), config=twin.config)
