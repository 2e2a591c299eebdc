"""A training recipe on any ``apply_fn``: every linear ``dot_general`` site runs :func:`recipe_dot`.

``recipe_apply(recipe, apply_fn)`` returns ``fn(params, *args, key=..., state=...)`` with ``apply_fn``'s
outputs. The model is traced once per input signature (:func:`jq.trace.trace` finds the sites whose one
operand is a weight from ``params``) and evaluated by :class:`jq.transform.Evaluator` with
:class:`RecipeHandler` at the sites: each linear site becomes ``recipe_dot(recipe, lhs, rhs,
dimension_numbers=eqn's, weight_argnum=the site's weight operand, key=key, site_id=its index)``, so forward
and backward GEMMs both run on the recipe's quantized operands. Attention products of two activations
(``bmm``), convolutions and excluded sites run unchanged (TE keeps those in high precision)::

    fn = recipe_apply(NVFP4BlockScaling(), model.apply, exclude=("lm_head",))
    state = init_recipe_state(NVFP4BlockScaling(), model.apply, params, x)     # None unless DelayedScaling
    loss, (grads, obs) = jax.value_and_grad(lambda p, s: loss_of(fn(p, x, key=k, state=s)), (0, 1))(params, state)
    state = recipe.update_state(state, obs)

``state`` is ``{site name: DelayedScalingState}``; its cotangent is this step's amax observation (see
:mod:`jq.recipes.state`). Sites inside a layer ``scan`` are refused for keyed or stateful recipes (one key and
one state slice per layer would need the loop index; see docs/training_recipes.md).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Sequence

import jax

from jq.handlers.base import Handler, SiteCall, bind
from jq.recipes.dot import recipe_dot
from jq.recipes.gemm import fake_gemm
from jq.trace.tracer import TracedModel, signature_of, split_dynamic, trace
from jq.transform import Evaluator

__all__ = ["RecipeHandler", "init_recipe_state", "recipe_apply", "recipe_sites"]


def _selected(site, exclude: Sequence[str]) -> bool:
    """A linear dot_general site whose name matches none of the ``exclude`` glob patterns."""
    if site.kind != "linear" or site.primitive != "dot_general" or site.weight_operand is None:
        return False
    return not any(fnmatch.fnmatchcase(site.name, pat) for pat in exclude)


def recipe_sites(traced: TracedModel, exclude: Sequence[str] = ()) -> list:
    """The sites a recipe runs on, in trace order (their index is the ``site_id`` folded into the key)."""
    return [s for s in traced.sites if _selected(s, exclude)]


def _batch_shape(site) -> tuple[int, ...]:
    """The dot_general batch shape of a site (leading axes of its DelayedScaling state)."""
    (_, _), (lb, _) = site.params["dimension_numbers"]
    return tuple(site.shapes[0][d] for d in lb)


class RecipeHandler(Handler):
    """Run each selected linear site as :func:`recipe_dot`; every other site unchanged.

    Args:
      recipe: the training recipe.
      site_ids: ``{site name: int}`` for the selected sites (others run unchanged).
      key: the step's PRNG key (None when the recipe draws no random bits).
      state: ``{site name: DelayedScalingState}`` (DelayedScaling), else None.
      gemm: the GEMM of :mod:`jq.recipes.gemm`.
    """

    def __init__(self, recipe, site_ids: dict, *, key=None, state=None, gemm: Callable = fake_gemm):
        self.recipe, self.site_ids, self.key, self.state, self.gemm = recipe, site_ids, key, state, gemm

    def site(self, call: SiteCall) -> list:
        site = call.site
        if site.name not in self.site_ids:
            return bind(call.eqn, call.invals)
        if site.layer_axes and (self.recipe.needs_key or self.recipe.stateful):
            raise NotImplementedError(
                f"recipe_apply: site {site.name!r} is inside a layer scan; {type(self.recipe).__name__} needs a "
                "key or state per layer, which the transform does not slice yet (unroll the layers)")
        lhs, rhs = call.invals
        state = None if self.state is None else self.state[site.name]
        y = recipe_dot(self.recipe, lhs, rhs, dimension_numbers=call.eqn.params["dimension_numbers"],
                       weight_argnum=site.weight_operand, state=state, key=self.key,
                       site_id=self.site_ids[site.name], gemm=self.gemm,
                       preferred_element_type=call.eqn.params.get("preferred_element_type"))
        return [y]


class _Traces:
    """Traced jaxprs of ``apply_fn`` per input signature (params structure, shapes, dtypes, static args)."""

    def __init__(self, apply_fn):
        self.apply_fn, self.entries = apply_fn, {}

    def get(self, params, args, kwargs) -> tuple[TracedModel, list]:
        p_leaves, p_def = jax.tree_util.tree_flatten(params)
        dyn, _, static_key = split_dynamic((args, kwargs))
        sig = (p_def, signature_of(p_leaves), static_key, signature_of(dyn))
        if sig not in self.entries:
            self.entries[sig] = trace(self.apply_fn, params, *args, **kwargs)
        return self.entries[sig], list(p_leaves) + list(dyn)


def recipe_apply(recipe, apply_fn: Callable, *, exclude: Sequence[str] = (), gemm: Callable = fake_gemm) -> Callable:
    """``fn(params, *args, key=None, state=None, **kwargs)``: ``apply_fn`` with its linear sites under ``recipe``.

    Args:
      recipe: a recipe of :mod:`jq.recipes.recipes`.
      apply_fn: ``apply_fn(params, *args, **kwargs)``; any JAX function whose weights come from ``params``.
      exclude: glob patterns of site names left in high precision (e.g. ``("lm_head",)``).
      gemm: the GEMM (``fake_gemm``, ``fp8_gemm`` for per-tensor FP8 recipes, ``bf16_gemm``).

    Example:
      >>> fn = recipe_apply(Float8CurrentScaling(), model.apply, exclude=("lm_head",))
      >>> logits = fn(params, tokens)
    """
    traces = _Traces(apply_fn)

    def fn(params, *args, key=None, state=None, **kwargs):
        traced, flat = traces.get(params, args, kwargs)
        ids = {s.name: i for i, s in enumerate(recipe_sites(traced, exclude))}
        handler = RecipeHandler(recipe, ids, key=key, state=state, gemm=gemm)
        outs = Evaluator(traced, {}, {}, handler).run(flat)
        return jax.tree_util.tree_unflatten(traced.out_tree, outs)

    fn.traces = traces
    return fn


def init_recipe_state(recipe, apply_fn: Callable, params, *args, exclude: Sequence[str] = (), **kwargs):
    """``{site name: recipe.init_state(batch shape)}`` for a stateful recipe (DelayedScaling), else None."""
    if not recipe.stateful:
        return None
    traced = trace(apply_fn, params, *args, **kwargs)
    return {s.name: recipe.init_state(_batch_shape(s)) for s in recipe_sites(traced, exclude)}
