"""Numba primitives shared by the media kernels: float64-accumulated dot, normalisation."""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["dot", "normalise_into"]


@njit(cache=True, nogil=True, inline="always")
def dot(a: np.ndarray, b: np.ndarray) -> float:
    acc = 0.0
    for t in range(a.shape[0]):
        acc += np.float64(a[t]) * np.float64(b[t])
    return acc


@njit(cache=True, nogil=True, inline="always")
def normalise_into(acc: np.ndarray, out: np.ndarray) -> None:
    norm = np.sqrt(dot(acc, acc))
    for t in range(acc.shape[0]):
        out[t] = acc[t] / norm if norm > 0.0 else 0.0
