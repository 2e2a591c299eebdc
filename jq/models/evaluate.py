"""Perplexity, KL divergence to a reference model and top-1 agreement, batched under ``jit``.

For scored positions ``i`` with target ``y_i``, model distribution ``q_i = softmax(logits_i)`` and the
reference's ``p_i``::

    perplexity = exp(mean_i -log q_i(y_i))
    KL         = mean_i sum_v p_i(v) (log p_i(v) - log q_i(v))          (nats; reference || model)
    top-1      = mean_i [argmax p_i == argmax q_i]

Any ``apply_fn(params, tokens) -> logits`` works: :func:`jq.models.make_forward`, ``qm.apply`` of a
:class:`jq.QuantizedModel`, a GPT-2 forward.

Example:
  >>> x, y = token_windows(ids, 512, 4096)
  >>> float_result = evaluate(forward, params, x, y)
  >>> q_result = evaluate(qm.apply, qm.params, x, y, reference=(forward, params))
  >>> print(format_table({"float": float_result, "fp8": q_result}))
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

__all__ = ["EvalResult", "evaluate", "format_table"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class EvalResult:
    """Scores over ``n_tokens`` positions; ``kl``/``top1`` are None without a reference model."""

    n_tokens: int
    nll: float
    kl: float | None = None
    top1: float | None = None

    @property
    def perplexity(self) -> float:
        return float(np.exp(self.nll))


@jax.jit
def _sums(logits, targets, ref_logits):
    logq = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.sum(jnp.take_along_axis(logq, targets[..., None], axis=-1))
    if ref_logits is None:
        return nll, jnp.float32(0), jnp.float32(0)
    logp = jax.nn.log_softmax(ref_logits.astype(jnp.float32), axis=-1)
    kl = jnp.sum(jnp.exp(logp) * (logp - logq))
    agree = jnp.sum(jnp.argmax(logp, -1) == jnp.argmax(logq, -1)).astype(jnp.float32)
    return nll, kl, agree


def evaluate(apply_fn, params, inputs, targets, *, batch_size: int = 4, reference=None, progress: bool = True,
             desc: str = "eval") -> EvalResult:
    """Score ``apply_fn(params, inputs)`` on ``targets`` (both ``[n, seq_len]``), ``batch_size`` rows per call.

    ``reference`` is ``(ref_apply_fn, ref_params)`` for KL and top-1 agreement. Both models run under
    ``jax.jit``; a final partial batch is run at its own size.
    """
    inputs, targets = np.asarray(inputs), np.asarray(targets)
    if inputs.shape != targets.shape or inputs.ndim != 2:
        raise ValueError(f"inputs and targets must both be [n, seq_len], got {inputs.shape} and {targets.shape}")
    run = jax.jit(apply_fn)
    run_ref = None if reference is None else jax.jit(reference[0])
    nll = kl = agree = 0.0
    starts = range(0, len(inputs), batch_size)
    for s in tqdm(starts, desc=desc, disable=not progress, leave=False):
        x, y = jnp.asarray(inputs[s:s + batch_size]), jnp.asarray(targets[s:s + batch_size])
        ref = None if run_ref is None else run_ref(reference[1], x)
        b_nll, b_kl, b_agree = _sums(run(params, x), y, ref)
        nll, kl, agree = nll + float(b_nll), kl + float(b_kl), agree + float(b_agree)
    n = int(targets.size)
    return EvalResult(n_tokens=n, nll=nll / n, kl=None if reference is None else kl / n,
                      top1=None if reference is None else agree / n)


def format_table(results: dict, baseline: str | None = None) -> str:
    """A markdown table: perplexity, its change vs ``baseline`` (default: the first entry), KL, top-1."""
    baseline = baseline or next(iter(results))
    base = results[baseline].perplexity
    lines = ["| model | perplexity | vs " + baseline + " | KL (nats) | top-1 agreement |", "|---|---|---|---|---|"]
    for name, r in results.items():
        kl = "-" if r.kl is None else f"{r.kl:.4f}"
        top1 = "-" if r.top1 is None else f"{100 * r.top1:.2f} %"
        lines.append(f"| {name} | {r.perplexity:.3f} | {100 * (r.perplexity / base - 1):+.2f} % | {kl} | {top1} |")
    return "\n".join(lines)
