"""The mean and median of the few dozen to few thousand values a turn's features reduce.

``np.mean`` and ``np.median`` spend 2-20 µs per call in Python before any arithmetic, which at
a dozen calls per turn is a visible share of a short turn's cost (``bench/features_speed.py``).
These give the same values: ``mean`` is numpy's own pairwise sum divided by the count (what
``np.mean`` computes), ``median`` the middle of a sort.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

__all__ = ["mean", "median"]


def mean(a: NDArray[np.float64]) -> float:
    """Mean of a non-empty 1-D array, bit-identical to ``float(np.mean(a))``."""
    return float(np.add.reduce(a)) / int(a.shape[0])


def median(a: NDArray[np.float64]) -> float:
    """Median of a non-empty 1-D array."""
    v = np.sort(a)
    n = v.shape[0]
    return float(0.5 * (v[(n - 1) // 2] + v[n // 2]))
