"""Shared pieces of the training-recipe benchmarks: recipes by name, the Shakespeare data, bf16 compute.

Every model keeps float32 master params and computes in bf16 (``bf16_params``); a recipe replaces the GEMMs of
the linear layers (all but ``lm_head``, which TE-style training keeps in high precision) through
:func:`jq.recipes.recipe_apply`. ``None`` as recipe is the bf16 baseline: the same bf16 model, XLA's bf16 GEMMs.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from jq import recipes as R

EXCLUDE = ("lm_head",)  # sites left in bf16 in every run


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunSpec:
    """One training run: its recipe and the two recipe-level levers of the NVFP4 paper (arXiv:2509.25149).

    Attributes:
      recipe: the training recipe (None: the bf16 baseline).
      bf16_last_blocks: the last k transformer blocks (``h_{i}.*`` sites) left in bf16 ("selective
        high-precision layers": the paper keeps ~16 % of the linear layers, mostly the final blocks, in BF16).
      tail_fraction: the final fraction of the steps trained with ``tail_recipe`` instead (the paper's
        precision switch: BF16 for the last ~18 % of the tokens); rounded to whole validation chunks.
      tail_recipe: the recipe of the tail (None: bf16).
    """

    recipe: object | None
    bf16_last_blocks: int = 0
    tail_fraction: float = 0.0
    tail_recipe: object | None = None

    def exclude(self, n_layer: int) -> tuple[str, ...]:
        """Glob patterns of the sites this run keeps in bf16 (``lm_head`` plus its bf16 blocks)."""
        first = max(0, n_layer - self.bf16_last_blocks)
        return EXCLUDE + tuple(f"h_{i}.*" for i in range(first, n_layer))

    def tail_steps(self, steps: int, chunk: int) -> int:
        """Steps of the tail: ``tail_fraction * steps`` rounded to a multiple of ``chunk``, at least one chunk
        (0 without a tail), at most all but one chunk."""
        if self.tail_fraction <= 0:
            return 0
        chunks = min(max(1, round(self.tail_fraction * steps / chunk)), steps // chunk - 1)
        return max(0, chunks) * chunk


_NVFP4 = R.NVFP4BlockScaling()
# name -> run. Order = run order.
RUNS = {
    "bf16": RunSpec(recipe=None),
    "fp8_current": RunSpec(recipe=R.Float8CurrentScaling()),
    "fp8_delayed": RunSpec(recipe=R.DelayedScaling()),
    "mxfp8": RunSpec(recipe=R.MXFP8BlockScaling()),
    "fp8_block": RunSpec(recipe=R.Float8BlockScaling()),
    "nvfp4": RunSpec(recipe=_NVFP4),
    "nvfp4_no_rht": RunSpec(recipe=R.NVFP4BlockScaling(rht=False)),
    "nvfp4_no_sr": RunSpec(recipe=R.NVFP4BlockScaling(stochastic_rounding=False)),
    "nvfp4_no_2d": RunSpec(recipe=R.NVFP4BlockScaling(weight_2d=False)),
    # jq's addition to TE's recipe: 4/6 adaptive block scales on the round-to-nearest operands
    "nvfp4_4o6": RunSpec(recipe=R.NVFP4BlockScaling(four_over_six=True)),
    # the paper's levers (TE's recipe unchanged; which linear layers / steps it covers changes)
    "nvfp4_bf16_tail": RunSpec(recipe=_NVFP4, tail_fraction=0.2),
    "nvfp4_fprop_tail": RunSpec(recipe=_NVFP4, tail_fraction=0.2,
                                tail_recipe=R.HighPrecisionGemms(recipe=_NVFP4, gemms=("fprop",))),
    "nvfp4_bf16_last_block": RunSpec(recipe=_NVFP4, bf16_last_blocks=1),
    "nvfp4_bf16_last_block_tail": RunSpec(recipe=_NVFP4, bf16_last_blocks=1, tail_fraction=0.2),
    # diagnostics: where the gap comes from (NVFP4 in the forward GEMM only / in the backward GEMMs only)
    "nvfp4_fprop_only": RunSpec(recipe=R.HighPrecisionGemms(recipe=_NVFP4, gemms=("dgrad", "wgrad"))),
    "nvfp4_backward_only": RunSpec(recipe=R.HighPrecisionGemms(recipe=_NVFP4, gemms=("fprop",))),
}
RECIPES = {name: run.recipe for name, run in RUNS.items()}  # name -> recipe (None = the bf16 baseline)

# Bars of issue 14: % above the bf16 validation loss.
BARS = {"fp8": 1.0, "nvfp4": 3.0}

SMOKE_TEXT = (
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
    "First Citizen:\nYou are all resolved rather to die than to famish?\n\nAll:\nResolved. resolved.\n\n"
) * 60


def bar_of(name: str) -> float | None:
    """The issue's bar for a run (FP8 recipes 1 %, NVFP4 and its ablations 3 %); None for the baseline."""
    if name.startswith("nvfp4"):
        return BARS["nvfp4"]
    if name.startswith(("fp8", "mxfp8")):
        return BARS["fp8"]
    return None


def fast_gemm(recipe):
    """The GPU speed path: a real FP8 GEMM for per-tensor FP8 recipes, else bf16 on the dequantized operands."""
    if isinstance(recipe, (R.Float8CurrentScaling, R.DelayedScaling)):
        return R.fp8_gemm
    return R.bf16_gemm


def bf16_params(params):
    """The compute copy of float32 master params (gradients flow back through the cast)."""
    return jax.tree.map(lambda a: a.astype(jnp.bfloat16) if jnp.issubdtype(a.dtype, jnp.floating) else a, params)


def load_ids(smoke: bool, data_dir: str | None):
    """``(tokenizer, train_ids, val_ids)``: the Shakespeare archive (last 5 % held out); in smoke mode a short
    passage when the archive is not cached (never downloads in smoke mode)."""
    from jq_zoo import shakespeare

    try:
        text = shakespeare.load_text(cache_dir=data_dir, download=not smoke)
    except FileNotFoundError:
        if not smoke:
            raise
        print("   (smoke: Shakespeare archive not cached; using a short built-in passage)")
        text = SMOKE_TEXT
    if smoke:
        text = text[:200_000]
    tok = shakespeare.CharTokenizer.fit(text)
    train_ids, val_ids = shakespeare.train_val_split(tok.encode(text), 0.05)
    return tok, train_ids, val_ids


def val_windows(ids: np.ndarray, block: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` evenly spaced, non-overlapping windows of held-out text: inputs and next-token targets."""
    last = len(ids) - block - 1
    starts = np.linspace(0, last, min(n, max(1, last // block))).astype(int)
    return (np.stack([ids[s:s + block] for s in starts]), np.stack([ids[s + 1:s + block + 1] for s in starts]))


def device_info() -> dict:
    d = jax.devices()[0]
    return {"device": getattr(d, "device_kind", str(d)), "platform": d.platform, "jax": jax.__version__,
            "python": platform.python_version(), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "xla_flags": os.environ.get("XLA_FLAGS", "")}


def write_json(path: str, record: dict) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(record, f, indent=1, default=float)
    os.replace(tmp, path)


def compile_all(lowered: dict, errors: dict | None = None) -> dict:
    """Compile ``{name: jax.stages.Lowered}`` concurrently (XLA compiles release the GIL; tracing, already
    done, does not parallelize); returns ``{name: Compiled}``. Cuts the wall time of many recipe graphs.
    With ``errors`` (a dict), a failed compile is stored there as ``{name: message}`` instead of raised."""
    from concurrent.futures import ThreadPoolExecutor

    workers = max(1, min(len(lowered), os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool:
        futures = {k: pool.submit(v.compile) for k, v in lowered.items()}
        out = {}
        for k, f in futures.items():
            try:
                out[k] = f.result()
            except Exception as e:  # reported per function when the caller asks
                if errors is None:
                    raise
                errors[k] = f"{type(e).__name__}: {e}"
        return out


# -- shared setup of the convergence and step-time scripts ----------------------------------------------------------
def fill_defaults(args, smoke: dict, full: dict) -> None:
    """Set every ``None`` argument to its smoke or full default (``args.smoke`` picks the table)."""
    for k, v in (smoke if args.smoke else full).items():
        if getattr(args, k) is None:
            setattr(args, k, v)


def parse_runs(spec: str | None, default) -> list[str]:
    """The comma-separated ``--runs`` (or ``default``) as a list; exits naming unknown runs."""
    runs = [r.strip() for r in (spec or ",".join(default)).split(",") if r.strip()]
    unknown = [r for r in runs if r not in RECIPES]
    if unknown:
        raise SystemExit(f"unknown runs {unknown}; choose from {list(RECIPES)}")
    return runs


def make_apply(model, recipe, gemm: str, exclude: tuple[str, ...] = EXCLUDE):
    """``apply(params, x, key, state) -> logits`` of the bf16 model under ``recipe`` (None: plain bf16).
    ``gemm``: ``"emulated"`` (float32 GEMM of the fake-quantized operands) or ``"fast"`` (:func:`fast_gemm`);
    ``exclude``: glob patterns of the sites left in bf16."""
    if recipe is None:
        return lambda p, x, key, state: model.apply(bf16_params(p), x)
    g = {"emulated": R.fake_gemm, "fast": fast_gemm(recipe)}[gemm]
    fn = R.recipe_apply(recipe, model.apply, exclude=exclude, gemm=g)
    return lambda p, x, key, state: fn(bf16_params(p), x, key=key, state=state)


def init_state(recipe, model, params, x, exclude: tuple[str, ...] = EXCLUDE):
    """The recipe state of the model (DelayedScaling's amax histories), None for stateless recipes."""
    if recipe is None or not recipe.stateful:
        return None
    return R.init_recipe_state(recipe, model.apply, bf16_params(params), x, exclude=exclude)


def make_train_step(apply, recipe, opt, loss_of):
    """``step(params, opt_state, rstate, x, y, key) -> (params, opt_state, rstate, loss)`` (not jitted).

    ``loss_of(logits, y)``; a stateful recipe's state gets this step's amax observation (its cotangent)."""
    import optax

    stateful = recipe is not None and recipe.stateful

    def loss_fn(p, s, x, y, k):
        return loss_of(apply(p, x, k, s), y)

    def step(params, opt_state, rstate, x, y, key):
        if stateful:
            loss, (grads, obs) = jax.value_and_grad(loss_fn, argnums=(0, 1))(params, rstate, x, y, key)
            rstate = recipe.update_state(rstate, obs)
        else:
            loss, grads = jax.value_and_grad(loss_fn)(params, rstate, x, y, key)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, rstate, loss

    return step


class Budget:
    """A wall-clock budget: ``allows(estimate)`` says whether work of ``estimate`` seconds still fits.

    Example:
      >>> b = Budget(None); b.allows(1e9)
      True
    """

    def __init__(self, seconds: float | None):
        self.seconds, self.t0 = seconds, time.time()

    def left(self) -> float:
        return float("inf") if self.seconds is None else self.seconds - (time.time() - self.t0)

    def allows(self, estimate: float) -> bool:
        return self.left() >= estimate


def skip_group(record: dict, group, reason: str, json_path: str) -> None:
    """Record every run of ``group`` as skipped for ``reason``, say so, and rewrite the JSON record."""
    for name in group:
        record["skipped"][name] = reason
    print(f"   skipped {group}: {reason}", flush=True)
    write_json(json_path, record)


def groups(names, size: int):
    """``names`` in consecutive groups of ``size`` (the unit of concurrent compilation and of the budget check)."""
    names = list(names)
    return [names[i:i + max(1, size)] for i in range(0, len(names), max(1, size))]
