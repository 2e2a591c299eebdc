"""Latency-per-scheme plot (PNG) of an autotuning run.

matplotlib is an optional dependency (the ``dev``/``examples`` extras); without it the
plot is skipped with a message.

Example::

    >>> plot_latencies(state, "out/latency_per_scheme.png")   # doctest: +SKIP
    PosixPath('out/latency_per_scheme.png')
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from .state import AutotuneState


def plot_latencies(state: AutotuneState, path: str | os.PathLike, title: str = "") -> Path | None:
    """Scatter every measured scheme (in measurement order, one colour per pattern),
    with the baseline and final latencies as horizontal lines. Returns the path, or
    ``None`` when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(10, 4.5))
    colors = plt.get_cmap("tab20")  # 20 distinct colours: patterns rarely share one
    x = 0
    for k, (sig, ps) in enumerate(state.patterns.items()):
        xs, ys, fails = [], [], []
        for r in ps.results:
            x += 1
            if r.success and math.isfinite(r.latency_ms):
                xs.append(x)
                ys.append(r.latency_ms)
            else:
                fails.append(x)
        if xs:
            ax.scatter(xs, ys, s=12, color=colors(k % 20), label=f"pattern {sig[:8]}" if k < 16 else None)
        if fails:
            ax.scatter(fails, [0] * len(fails), marker="x", color="red", s=12)
    if state.baseline_latency_ms:
        ax.axhline(state.baseline_latency_ms, color="black", linestyle="--", linewidth=1, label="baseline (no Q/DQ)")
    if state.final_latency_ms:
        ax.axhline(state.final_latency_ms, color="green", linestyle="-", linewidth=1, label="optimized")
    ax.set_xlabel("benchmark # (schemes in measurement order)")
    ax.set_ylabel("latency (ms, median)")
    ax.set_title(title or "Q/DQ autotuning: latency per scheme")
    if x:
        ax.legend(fontsize=7, ncol=2, loc="upper right")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
