"""The Markstein division the GPU kernels use is the correctly rounded quotient.

On the GPU the NVFP4 kernels compute ``x / s`` as ``q = x*y; r = fma(-q, s, x); q + r*y`` with ``y = RN(1/s)``
(two FMAs per element instead of IEEE ``div.rn.f32``). This test emulates the sequence exactly (float64 for the
exact intermediate products, exact rationals for the final FMA) and compares with the correctly rounded
quotient on random quotients and on quotients next to every E2M1 decision threshold (where a one-ulp error would
change a code).
"""

from fractions import Fraction

import numpy as np


def _rn32(fr: Fraction) -> np.float32:
    f = np.float32(float(fr))
    cands = [np.nextafter(f, np.float32(-np.inf)), f, np.nextafter(f, np.float32(np.inf))]

    def key(c):
        return abs(Fraction(float(c)) - fr), int(np.float32(c).view(np.uint32)) & 1

    return np.float32(min(cands, key=key))


def test_markstein_is_correctly_rounded():
    rng = np.random.default_rng(0)
    thresholds = np.array([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0])
    n = 4000
    for trial in range(n):
        s = np.float32(rng.uniform(1, 2) * 2.0 ** int(rng.integers(-20, 10)))
        if trial % 2 == 0:
            x = np.float32(np.float64(s) * thresholds[trial % 7])
            x = np.float32(x + int(rng.integers(-3, 4)) * np.spacing(x))
        else:
            x = np.float32(rng.uniform(0, 6) * np.float64(s))
        y = np.float32(1.0 / np.float64(s))  # RN(1/s): float64 quotient of two floats rounds correctly to f32
        q0 = np.float32(np.float64(x) * np.float64(y))  # exact product, one rounding
        r = np.float32(np.float64(x) - np.float64(q0) * np.float64(s))  # exact (Sterbenz), one rounding = fma
        q1 = _rn32(Fraction(float(q0)) + Fraction(float(r)) * Fraction(float(y)))  # fma(r, y, q0)
        exact = np.float32(np.float64(x) / np.float64(s))
        assert q1 == exact, (x, s, q1, exact)
