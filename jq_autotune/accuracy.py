"""Accuracy guard: reject schemes whose outputs drift too far from the FP32 model.

Latency alone would happily keep a placement that quantizes a tensor with outliers
(e.g. a transformer's residual stream) and ruins the model. When calibration samples
are available, every candidate model is first run on a few of them with ONNX Runtime
(CPU) and compared with the FP32 outputs: the score is, averaged over the samples, the
smallest cosine similarity over the float outputs. A candidate scoring below the
threshold counts as a failed scheme and is never timed or kept.

Example::

    >>> guard = AccuracyGuard("out/baseline.onnx", samples[:4], min_cosine=0.99)   # doctest: +SKIP
    >>> guard.score("out/candidate.onnx")                                           # doctest: +SKIP
    0.9987
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np


def output_cosine(reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray]) -> float:
    """Smallest cosine similarity over paired outputs (1.0 for identical outputs)."""
    worst = 1.0
    for a, b in zip(reference, candidate):
        a = np.asarray(a, np.float64).ravel()
        b = np.asarray(b, np.float64).ravel()
        na, nb = np.linalg.norm(a), np.linalg.norm(b)
        if na == 0 and nb == 0:
            cos = 1.0
        elif na == 0 or nb == 0 or not np.isfinite(na * nb):
            cos = 0.0
        else:
            cos = float(np.dot(a, b) / (na * nb))
        worst = min(worst, cos)
    return worst


class AccuracyGuard:
    """Scores candidate models against FP32 outputs on a few samples.

    Args:
        reference_model: path of the FP32 model.
        samples: feed dicts (calibration samples).
        min_cosine: the threshold :meth:`accepts` applies.
        provider: ONNX Runtime execution provider used for the check.
    """

    def __init__(self, reference_model: str | os.PathLike, samples: Sequence[dict], min_cosine: float = 0.99, provider: str = "CPUExecutionProvider"):
        import onnxruntime as ort

        self.ort = ort
        self.samples = list(samples)
        self.min_cosine = min_cosine
        self.provider = provider
        sess = self._session(reference_model)
        self.outputs = [o.name for o in sess.get_outputs() if "float" in o.type]
        self.reference = [sess.run(self.outputs, s) for s in self.samples]

    def _session(self, path: str | os.PathLike):
        """ORT's default session (``ORT_ENABLE_ALL``, default ``session.qdq_matmulnbits_accuracy_level``): the
        accuracy the deployed model will have, fused kernels included."""
        so = self.ort.SessionOptions()
        so.log_severity_level = 3
        return self.ort.InferenceSession(str(path), so, providers=[self.provider])

    def score(self, model_path: str | os.PathLike) -> float:
        """Mean over samples of the worst output cosine; 0.0 when the model cannot run."""
        try:
            sess = self._session(model_path)
            scores = [output_cosine(ref, sess.run(self.outputs, s)) for ref, s in zip(self.reference, self.samples)]
        except Exception:  # noqa: BLE001 - a model ORT cannot run is not accurate
            return 0.0
        return float(np.mean(scores)) if scores else 1.0

    def accepts(self, model_path: str | os.PathLike) -> tuple[bool, float]:
        """``(score >= min_cosine, score)``."""
        s = self.score(model_path)
        return s >= self.min_cosine, s
