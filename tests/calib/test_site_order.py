"""Dependency levels of sites (GPTQ's sequential order): blocks, layer scans, recurrences, branches."""

import jax
import jax.numpy as jnp
import numpy as np

from jq.calib.site_order import dependency_levels, unit_dependencies
from jq.trace import trace
from tests import _models as M


def _levels(traced):
    return [[u for u in level] for level in dependency_levels(traced, {s.name for s in traced.sites
                                                                        if s.kind != "bmm"})]


def test_transformer_blocks_in_order():
    tok = jnp.zeros((2, 6), jnp.int32)
    params, apply = M.linen(M.TinyTransformer(dim=16, n_layers=2), tok)
    levels = _levels(trace(apply, params, tok))
    names = [[n for n, _ in level] for level in levels]
    assert names == [
        ["block0_attn.query", "block0_attn.key", "block0_attn.value"],  # siblings read one input
        ["block0_attn.out"], ["block0_mlp_up"], ["block0_mlp_down"],
        ["block1_attn.query", "block1_attn.key", "block1_attn.value"],
        ["block1_attn.out"], ["block1_mlp_up"], ["block1_mlp_down"],
        ["lm_head"],
    ]
    assert all(idx == () for level in levels for _, idx in level)


def test_each_layer_of_a_layer_scan_is_its_own_level():
    x = jnp.zeros((4, 5))
    params, apply = M.linen(M.ScanStack(n_layers=3), x)
    assert _levels(trace(apply, params, x)) == [[("embed_proj", ())], [("layers.fc", (0,))], [("layers.fc", (1,))],
                                                [("layers.fc", (2,))], [("out_proj", ())]]


def test_a_recurrent_site_depends_on_itself_without_looping():
    def rnn(p, x):
        h = jax.lax.fori_loop(0, 3, lambda i, h: jnp.tanh(h @ p["w"]), x @ p["w_in"])
        return h @ p["w_out"]

    p = {"w_in": jnp.ones((4, 8)), "w": jnp.ones((8, 8)), "w_out": jnp.ones((8, 2))}
    traced = trace(rnn, p, jnp.ones((2, 4)))
    deps = unit_dependencies(traced, {s.name for s in traced.sites})
    assert ("w", ()) in deps[("w", ())]  # its input depends on its own output
    assert _levels(traced) == [[("w_in", ())], [("w", ())], [("w_out", ())]]


def test_cond_branches_and_parallel_paths():
    def f(p, x, flag):
        a = x @ p["a"]
        b = jax.lax.cond(flag, lambda: a @ p["b"], lambda: a)
        return (b + x @ p["c"]) @ p["d"]

    p = {k: jnp.ones((4, 4)) for k in "abcd"}
    traced = trace(f, p, jnp.ones((2, 4)), jnp.bool_(True))
    assert _levels(traced) == [[("a", ()), ("c", ())], [("b", ())], [("d", ())]]
    np.testing.assert_equal(sorted(unit_dependencies(traced, {"d"})), [("d", ())])  # other sites are no targets
