"""jq.trace.control_flow: operand bookkeeping of higher-order equations across jax versions."""

import jax
import jax.numpy as jnp
from jax import lax

from jq.trace.control_flow import bodies, scan_counts


def _scan_eqn():
    def f(c, xs, w):
        def step(carry, x):
            return carry * w + x, carry
        return lax.scan(step, c, xs)

    closed = jax.make_jaxpr(f)(jnp.float32(1.0), jnp.ones((4,)), jnp.float32(2.0))
    (eqn,) = [e for e in closed.jaxpr.eqns if e.primitive.name == "scan"]
    return eqn


def test_scan_counts_of_a_real_scan_equation():
    # one const (w), one carry (c), one scanned operand (xs), whatever the installed jax calls them
    eqn = _scan_eqn()
    assert scan_counts(eqn.params) == (1, 1)
    (body,) = bodies(eqn)
    assert body.sliced == frozenset({2})


class _PackedOperands:
    """The jax 0.11 form: ``ft_in.unpack() -> (consts, carry, xs)`` (jax._src.flattree)."""

    def __init__(self, *groups):
        self.groups = groups

    def unpack(self):
        return self.groups


def test_scan_counts_reads_the_jax_0_11_flat_tree():
    # jax 0.11 binds scan with ft_in=ft.pack((consts, carry, xs)) and no num_consts / num_carry
    params = {"ft_in": _PackedOperands(["w1", "w2"], ["c"], ["x1", "x2", "x3"]), "length": 4}
    assert scan_counts(params) == (2, 1)


def test_scan_counts_reads_the_named_counts_of_older_jax():
    assert scan_counts({"num_consts": 3, "num_carry": 2, "length": 4}) == (3, 2)
