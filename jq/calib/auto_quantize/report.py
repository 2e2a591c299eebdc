"""What auto_quantize chose and why: the per-group report (table, PNG plot) and the resumable score file.

Example:
  >>> qm, report = jq.auto_quantize(params, apply_fn, formats=[jq.NVFP4_DEFAULT_CFG, jq.FP8_DEFAULT_CFG],
  ...                               effective_bits=6.0, data=batches, loss_fn=loss_fn)
  >>> print(report)                         # one line per layer group: size, scores per format, choice
  >>> report.plot("choices.png")            # bits per group and scores (needs matplotlib)
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np

__all__ = ["GroupChoice", "AutoQuantizeReport", "save_scores", "load_scores"]

STATE_VERSION = 1


@dataclasses.dataclass(frozen=True)
class GroupChoice:
    """One layer group (fused siblings choose together): its size, options and choice.

    Attributes:
      sites: the site names of the group.
      numel: weight elements of the group (all layers of a layer scan).
      bits: effective bits per candidate format (16 where a format leaves the group unquantized).
      scores: sensitivity per candidate, made monotone (never worse than a cheaper format).
      raw_scores: the measured sensitivities.
      choice: index of the chosen format.
    """

    sites: tuple
    numel: int
    bits: tuple
    scores: tuple
    raw_scores: tuple
    choice: int


@dataclasses.dataclass(frozen=True)
class AutoQuantizeReport:
    """The result of a search: the candidates, one :class:`GroupChoice` per group and the totals.

    Attributes:
      formats: candidate names.
      groups: per-group choices, in model order.
      effective_bits: ``sum(numel * bits) / sum(numel)`` of the choice.
      budget_bits: the requested effective bits.
      score_method: ``"gradient"`` or ``"kl"``.
      num_batches: scoring batches used.
    """

    formats: tuple
    groups: tuple
    effective_bits: float
    budget_bits: float
    score_method: str
    num_batches: int

    @property
    def total_score(self) -> float:
        """Sum of the chosen (monotone) scores: what the solver minimised."""
        return float(sum(g.scores[g.choice] for g in self.groups))

    @property
    def choices(self) -> dict:
        """``{site name: chosen format name}``."""
        return {s: self.formats[g.choice] for g in self.groups for s in g.sites}

    def counts(self) -> dict:
        """``{format name: number of groups}`` that chose it."""
        return {f: sum(g.choice == i for g in self.groups) for i, f in enumerate(self.formats)}

    def table(self) -> str:
        """The report as a text table (one line per group)."""
        w = max([len(", ".join(g.sites)) for g in self.groups] + [5])
        fw = [max(len(f), 10) for f in self.formats]
        head = f"{'group':<{w}}  {'numel':>9}  " + "  ".join(f"{f:>{n}}" for f, n in zip(self.formats, fw)) + "  choice"
        lines = [f"auto_quantize ({self.score_method} score, {self.num_batches} batches): effective bits "
                 f"{self.effective_bits:.3f} of a {self.budget_bits:g}-bit budget, total score {self.total_score:.4g}",
                 head, "-" * len(head)]
        for g in self.groups:
            cells = "  ".join(f"{s:>{n}.3g}" for s, n in zip(g.scores, fw))
            lines.append(f"{', '.join(g.sites):<{w}}  {g.numel:>9}  {cells}  {self.formats[g.choice]} "
                         f"({g.bits[g.choice]:g} bits)")
        lines.append("groups per format: " + ", ".join(f"{f}: {n}" for f, n in self.counts().items()))
        return "\n".join(lines)

    def __str__(self):
        return self.table()

    def to_dict(self) -> dict:
        """A JSON-able dict of the report."""
        d = dataclasses.asdict(self)
        d["total_score"] = self.total_score
        return d

    def plot(self, path: str | os.PathLike) -> Path:
        """A PNG of the chosen bits per group (top) and the scores per format (bottom, log scale).

        Raises ImportError naming the extra when matplotlib is missing.
        """
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError("AutoQuantizeReport.plot needs matplotlib (pip install matplotlib)") from e
        n = len(self.groups)
        x = np.arange(n)
        fig, (ax0, ax1) = plt.subplots(2, 1, figsize=(max(6.0, 0.35 * n + 2), 6.5), sharex=True)
        colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        for i, f in enumerate(self.formats):
            idx = [j for j, g in enumerate(self.groups) if g.choice == i]
            ax0.bar(idx, [self.groups[j].bits[i] for j in idx], color=colors[i % len(colors)], label=f)
            ax1.plot(x, [max(g.scores[i], 1e-30) for g in self.groups], "o-", ms=3, color=colors[i % len(colors)],
                     label=f)
        ax0.axhline(self.budget_bits, color="k", ls="--", lw=1, label=f"budget {self.budget_bits:g} bits")
        ax0.set_ylabel("bits per weight")
        ax0.set_title(f"auto_quantize: {self.effective_bits:.2f} effective bits ({self.score_method} score)")
        ax0.legend(fontsize=7, loc="upper right")
        ax1.set_yscale("log")
        ax1.set_ylabel("sensitivity (monotone)")
        ax1.set_xticks(x, [g.sites[0] + (f" +{len(g.sites) - 1}" if len(g.sites) > 1 else "") for g in self.groups],
                       rotation=90, fontsize=7)
        ax1.legend(fontsize=7)
        fig.tight_layout()
        path = Path(path)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path


def save_scores(path: str | os.PathLike, signature: dict, scores: dict) -> None:
    """Write the raw scores with the signature of the search that produced them (JSON)."""
    payload = {"version": STATE_VERSION, "signature": signature,
               "scores": {k: [float(v) for v in np.asarray(s).ravel()] for k, s in scores.items()}}
    Path(path).write_text(json.dumps(payload, indent=1))


def load_scores(path: str | os.PathLike, signature: dict) -> dict | None:
    """The scores saved at ``path`` when its signature equals ``signature`` (None when missing or different)."""
    path = Path(path)
    if not path.exists():
        return None
    payload = json.loads(path.read_text())
    if payload.get("version") != STATE_VERSION or payload.get("signature") != signature:
        return None
    return {k: np.asarray(v, np.float64) for k, v in payload["scores"].items()}
