"""Progress bars for long work: tqdm when it is installed, a plain stderr counter otherwise.

jq's core needs only jax, numpy and ml_dtypes; ``tqdm`` (in every extra) gives the nicer bar. Either way the
bar is cleared when the work ends, so the next line printed starts on a fresh line.

Example:
  >>> for batch in progress(batches, desc="jq calibrate"):
  ...     run(batch)
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator

__all__ = ["progress"]


def progress(iterable: Iterable, *, desc: str, total: int | None = None, enabled: bool = True,
             unit: str = "batch") -> Iterator:
    """Iterate ``iterable`` with a progress bar on stderr (nothing when ``enabled`` is False)."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)
    if not enabled:
        yield from iterable
        return
    try:
        from tqdm.auto import tqdm
    except ImportError:  # optional dependency: a minimal counter
        yield from _plain(iterable, desc, total, unit)
        return
    bar = tqdm(iterable, total=total, desc=desc, unit=unit, file=sys.stderr, leave=False, dynamic_ncols=True)
    try:
        yield from bar
    finally:
        bar.close()


def _plain(iterable, desc, total, unit):
    n = 0
    try:
        for item in iterable:
            yield item
            n += 1
            print(f"\r{desc}: {n}{f'/{total}' if total else ''} {unit}", end="", file=sys.stderr, flush=True)
    finally:
        if n:
            print("\r\033[K", end="", file=sys.stderr, flush=True)  # clear the line
