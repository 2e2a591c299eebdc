"""The output head: the site whose result is the model's output, on top of other layers (jq.trace.output_head)."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from jq.trace.output_head import output_heads
from jq.trace.tracer import trace

X = jnp.ones((2, 8))
P = {"w1": jnp.ones((8, 16)), "w2": jnp.ones((16, 4)), "b": jnp.zeros(4)}


def _heads(fn, params=P):
    return output_heads(trace(fn, params, X))


def test_last_dense_of_a_linen_sequential_is_the_head():
    model = nn.Sequential([nn.Dense(16), nn.relu, nn.Dense(4)])
    params = model.init(jax.random.key(0), X)
    assert _heads(model.apply, params) == ("layers_2",)


def test_bias_and_softmax_after_the_head_keep_it_the_head():
    # only params/constants join the head's result on its way out: bias add, log_softmax
    assert _heads(lambda p, x: jax.nn.log_softmax(jax.nn.gelu(x @ p["w1"]) @ p["w2"] + p["b"])) == ("w2",)


def test_head_inside_jit_is_found():
    assert _heads(jax.jit(lambda p, x: jax.nn.relu(x @ p["w1"]) @ p["w2"])) == ("w2",)


def test_only_layer_of_a_function_is_not_a_head():
    assert _heads(lambda p, x: x @ p["w1"]) == ()


def test_residual_output_is_not_a_head():
    # the output mixes the last layer with the input: that layer is part of the body
    assert _heads(lambda p, x: x + jax.nn.relu(x @ p["w1"]) @ p["w1"].T) == ()


def test_each_output_of_a_tuple_is_checked():
    def fn(p, x):
        h = jax.nn.relu(x @ p["w1"])
        return h @ p["w2"], h  # logits come straight from w2; h comes from w1 (the body)
    assert _heads(fn) == ("w2",)


def test_value_leaving_a_loop_is_never_a_head():
    def fn(p, x):
        h = jax.nn.relu(x @ p["w1"])
        return jax.lax.fori_loop(0, 2, lambda i, y: y * 2.0, h @ p["w2"])
    assert _heads(fn) == ()
