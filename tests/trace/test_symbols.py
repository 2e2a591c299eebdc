"""Dependency analysis: coupled param dimensions, sibling layers, concatenations, and the report."""

import io

import jax
import jax.numpy as jnp
import flax.linen as nn

import jq
from jq.trace import DimRef, dependency_analysis, sibling_groups, trace
from tests import _models as M


class Block(nn.Module):
    @nn.compact
    def __call__(self, x):
        q = nn.Dense(8, name="q")(x)
        k = nn.Dense(8, name="k")(x)
        v = nn.Dense(8, name="v")(x)
        a = nn.Dense(16, name="o")(jax.nn.softmax(q @ k.T) @ v)
        x = x + a
        g, u = nn.Dense(32, name="gate")(x), nn.Dense(32, name="up")(x)
        x = x + nn.Dense(16, name="down")(jax.nn.silu(g) * u)
        return nn.Dense(4, name="head")(jnp.concatenate([x, q], axis=-1))


def _analysis():
    x = jnp.ones((4, 16))
    params, apply = M.linen(Block(), x)
    return trace(apply, params, x)


def test_out_features_feed_in_features_and_residuals_tie_widths():
    coupled = dependency_analysis(_analysis())
    residual = coupled.group_of("down/kernel", 1)
    # the residual stream: input of q/k/v/gate/up, outputs of o and down
    for ref in ("q/kernel[0]", "k/kernel[0]", "gate/kernel[0]", "o/kernel[1]", "o/bias[0]", "down/bias[0]"):
        path, axis = ref[:-3], int(ref[-2])
        assert DimRef(path, axis) in residual, ref
    mlp = coupled.group_of("gate/kernel", 1)
    assert {DimRef("up/kernel", 1), DimRef("down/kernel", 0)} <= mlp  # gate * up feeds down
    assert DimRef("q/kernel", 1) in coupled.group_of("k/kernel", 1)  # q @ k.T contracts their widths
    assert DimRef("v/kernel", 1) in coupled.group_of("o/kernel", 0)


def test_concat_composes_widths():
    coupled = dependency_analysis(_analysis())
    assert any(DimRef("head/kernel", 0) in out for out, _ in coupled.concats)


def test_siblings_read_the_same_input():
    groups = sorted(sorted(g) for g in sibling_groups(_analysis()))
    assert groups == [["gate", "up"], ["k", "q", "v"]]


def test_siblings_share_input_amax_and_optionally_weight_amax():
    x = jax.random.normal(jax.random.key(0), (4, 16))
    params, apply = M.linen(Block(), x)
    qm = jq.quantize(params, apply, jq.FP8_DEFAULT_CFG, calib_data=[(x,)], progress=False)
    st = qm.qstate
    assert st["q.input_quantizer"]["amax"] is st["v.input_quantizer"]["amax"]
    assert float(st["q.weight_quantizer"]["amax"]) != float(st["k.weight_quantizer"]["amax"])
    shared = jq.calibrate(qm, [(x,)], progress=False, share_sibling_weight_amax=True).qstate
    want = max(float(st[f"{n}.weight_quantizer"]["amax"]) for n in "qkv")
    assert all(float(shared[f"{n}.weight_quantizer"]["amax"]) == want for n in "qkv")


def test_analyze_prints_a_report():
    x = jnp.ones((4, 16))
    params, apply = M.linen(Block(), x)
    buf = io.StringIO()
    result = jq.trace.analyze(apply, params, x, file=buf)
    text = buf.getvalue()
    assert "10 quantizable sites" in text and "siblings" in text and "q, k, v" in text
    assert "coupled param dimensions" in text and "down/kernel[1]" in text
    assert result.siblings and result.coupled.groups
