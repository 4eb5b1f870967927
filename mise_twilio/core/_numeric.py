"""The mean and median of the few dozen to few thousand values a turn's features reduce.

``np.mean`` and ``np.median`` spend 2-20 µs per call in Python before any arithmetic, which at
a dozen calls per turn is a visible share of a short turn's cost (``bench/features_speed.py``).
These give the same values: ``mean`` is numpy's own pairwise sum divided by the count (what
``np.mean`` computes), ``median`` the middle of a sort. ``windows`` frames a buffer for
gathers.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
from numpy.typing import NDArray

__all__ = ["mean", "median", "sorted_median", "windows"]

_S = TypeVar("_S", bound=np.generic)


def mean(a: NDArray[np.float64]) -> float:
    """Mean of a non-empty 1-D array, bit-identical to ``float(np.mean(a))``."""
    return float(np.add.reduce(a)) / int(a.shape[0])


def median(a: NDArray[np.float64]) -> float:
    """Median of a non-empty 1-D array."""
    return sorted_median(np.sort(a))


def sorted_median(v: NDArray[np.float64]) -> float:
    """Median of a non-empty 1-D array sorted ascending."""
    n = v.shape[0]
    return float(0.5 * (v[(n - 1) // 2] + v[n // 2]))


def windows(a: NDArray[_S], width: int) -> NDArray[_S]:
    """View of C-contiguous ``a``'s buffer, flattened, as every run of ``width`` consecutive
    elements: shape ``(a.size - width + 1, width)``, row ``i`` = flat elements ``i .. i + width
    - 1``. ``windows(a, w)[rows]`` gathers ``w`` neighbours per index (a copy), at a third of
    the cost of indexing with a 2-D index array. The rows overlap: never write through the
    view (it is not made read-only: that costs as much as building it)."""
    step = a.itemsize
    view: NDArray[_S] = np.ndarray((a.size - width + 1, width), a.dtype, a, 0, (step, step))
    return view
