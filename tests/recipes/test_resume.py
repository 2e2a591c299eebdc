"""A DelayedScaling training run checkpointed with orbax resumes bit-exactly (issue 14 item 2: orbax).

Train n steps, save ``(params, opt_state, recipe state)`` with orbax, restore into a fresh process-like
state, train k more steps: params, optimizer state, amax histories, scales and losses equal those of one
uninterrupted n + k step run, bit for bit.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jq.recipes import DelayedScaling, init_recipe_state, recipe_apply

ocp = pytest.importorskip("orbax.checkpoint")
optax = pytest.importorskip("optax")


def _mlp(p, x):
    return jnp.tanh(x @ p["up"]) @ p["down"]


def _setup():
    rng = np.random.default_rng(0)
    params = {"up": jnp.asarray(rng.standard_normal((16, 32)) * 0.3, jnp.float32),
              "down": jnp.asarray(rng.standard_normal((32, 16)) * 0.3, jnp.float32)}
    # batches with a growing scale, so the amax history and the scales change at every step
    batches = [jnp.asarray(rng.standard_normal((8, 16)) * (1.0 + i), jnp.float32) for i in range(5)]
    recipe = DelayedScaling(amax_history_len=3)
    fn = recipe_apply(recipe, _mlp)
    opt = optax.adam(1e-2)

    @jax.jit
    def step(params, opt_state, rstate, x):
        def loss_fn(p, s):
            return jnp.mean((fn(p, x, state=s) - jnp.roll(x, 1, axis=1)) ** 2)

        loss, (grads, obs) = jax.value_and_grad(loss_fn, argnums=(0, 1))(params, rstate)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, recipe.update_state(rstate, obs), loss

    rstate = init_recipe_state(recipe, _mlp, params, batches[0])
    return params, opt.init(params), rstate, batches, step


def _bits(tree):
    return [np.asarray(a).view(np.uint32) for a in jax.tree.leaves(tree)]


def test_delayed_scaling_run_resumes_bit_exactly_from_orbax(tmp_path):
    params, opt_state, rstate, batches, step = _setup()
    carry_full, losses_full = (params, opt_state, rstate), []
    for x in batches:
        *carry_full, loss = step(*carry_full, x)
        losses_full.append(float(loss))

    carry, losses = (params, opt_state, rstate), []
    for x in batches[:3]:
        *carry, loss = step(*carry, x)
        losses.append(float(loss))
    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save(tmp_path / "ckpt", {"params": carry[0], "opt_state": carry[1], "recipe": carry[2]})
    template = jax.tree.map(ocp.utils.to_shape_dtype_struct,
                            {"params": carry[0], "opt_state": carry[1], "recipe": carry[2]})
    del carry
    with ocp.StandardCheckpointer() as ckpt:
        restored = ckpt.restore(tmp_path / "ckpt", template)
    carry = (restored["params"], restored["opt_state"], restored["recipe"])
    hist = carry[2]["up"].x.amax_history
    assert float(hist[0]) > 0 and float(hist[2]) > 0  # three steps of history were saved
    for x in batches[3:]:
        *carry, loss = step(*carry, x)
        losses.append(float(loss))

    assert losses == losses_full
    assert jax.tree.structure(tuple(carry)) == jax.tree.structure(tuple(carry_full))
    for a, b in zip(_bits(tuple(carry_full)), _bits(tuple(carry))):
        np.testing.assert_array_equal(a, b)
