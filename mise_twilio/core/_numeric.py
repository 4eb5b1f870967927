"""The mean and median of the few dozen to few thousand values a turn's features reduce.

``np.mean`` and ``np.median`` spend 2-20 µs per call in Python before any arithmetic, which at
a dozen calls per turn is a visible share of a short turn's cost (``bench/features_speed.py``).
These give the same values: ``mean`` is numpy's own pairwise sum divided by the count (what
``np.mean`` computes), ``median`` the middle of a sort. ``strided_frames`` and ``windows`` view a
buffer as overlapping rows, for framing and for gathers.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
from numpy.typing import NDArray

__all__ = ["mean", "median", "sorted_median", "strided_frames", "windows"]

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


def strided_frames(a: NDArray[_S], size: int, hop: int, count: int) -> NDArray[_S]:
    """Read-only ``(count, size)`` view of 1-D C-contiguous ``a`` (offset 0); row ``j`` starts
    at ``j*hop`` (rows overlap where ``hop < size``)."""
    step = a.strides[0]
    # The ndarray constructor over ``a``'s buffer: as_strided costs ~2 µs more per call.
    view: NDArray[_S] = np.ndarray((count, size), a.dtype, a, 0, (step * hop, step))
    view.flags.writeable = False
    return view


def windows(a: NDArray[_S], width: int) -> NDArray[_S]:
    """``strided_frames`` of C-contiguous ``a``'s elements, flattened, at a hop of one: every run of
    ``width`` consecutive elements, shape ``(a.size - width + 1, width)``, row ``i`` = flat
    elements ``i .. i + width - 1``. ``windows(a, w)[rows]`` gathers ``w`` neighbours per index
    (a copy), at a third of the cost of indexing with a 2-D index array."""
    return strided_frames(a.reshape(-1), width, 1, a.size - width + 1)
