"""Exact-kNN error memory: the quality ceiling the LSH sketch is benchmarked against.

Stores up to ``capacity`` records ``(h, y, p, ts)`` in a ring buffer (the oldest slot is
overwritten first) and answers a query by brute-force cosine similarity over all of them,
then applies the same compensation as :class:`reloop.state.error_memory.memory.ErrorMemory`:

    y_err = gamma * (y_bar - p) + (1 - gamma) * (y_bar - p_bar)
    compensated = clip(p + lam * y_err, 0, 1)

with ``y_bar``/``p_bar`` the means over the ``k`` nearest neighbours, weighted by a softmax
over ``cosine / tau`` times the time decay ``2 ** (-(now - ts) / half_life_s)`` (no decay
when ``half_life_s`` is None). Cost is ``O(n * capacity * d)`` per query batch -- a
baseline, not a serving path.

The search kernel (numba) and its numpy reference give identical neighbours: both compute
each dot product in float32 sequentially over the ``d`` features (one rounded multiply and
add per feature, no fused multiply-add, no reordering), then the same float64 cosine, and
break ties by the lower slot index.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from reloop.state.error_memory.memory import apply_compensation

__all__ = ["ExactKnnMemory", "knn_search", "knn_search_ref"]

ROW_BLOCK = 2048  # rows scored per block, so a block of keys stays in cache across queries


@njit(cache=True, nogil=True)
def _knn_search_kernel(
    queries: np.ndarray,
    query_norms: np.ndarray,
    keys_t: np.ndarray,
    key_norms: np.ndarray,
    size: int,
    k: int,
) -> tuple[np.ndarray, np.ndarray]:
    n, d = queries.shape
    best_idx = np.full((n, k), -1, dtype=np.int64)
    best_cos = np.full((n, k), -np.inf, dtype=np.float64)
    dots = np.empty(ROW_BLOCK, dtype=np.float32)
    for r0 in range(0, size, ROW_BLOCK):
        r1 = min(r0 + ROW_BLOCK, size)
        m = r1 - r0
        for i in range(n):
            dots[:m] = 0.0
            for t in range(d):  # axpy over rows: vectorised, per-row order kept
                x = queries[i, t]
                for r in range(m):
                    dots[r] += x * keys_t[t, r0 + r]
            for r in range(m):
                denom = key_norms[r0 + r] * query_norms[i]
                cos = np.float64(dots[r]) / denom if denom > 0.0 else 0.0
                if cos > best_cos[i, k - 1]:
                    pos = k - 1
                    while pos > 0 and best_cos[i, pos - 1] < cos:
                        best_cos[i, pos] = best_cos[i, pos - 1]
                        best_idx[i, pos] = best_idx[i, pos - 1]
                        pos -= 1
                    best_cos[i, pos] = cos
                    best_idx[i, pos] = r0 + r
    return best_idx, best_cos


def knn_search(
    queries: np.ndarray,
    query_norms: np.ndarray,
    keys_t: np.ndarray,
    key_norms: np.ndarray,
    size: int,
    k: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` rows by cosine similarity, best first (ties: lower slot index first).

    Args:
        queries: ``(n, d) float32``; query_norms: ``(n,) float64`` their L2 norms.
        keys_t: ``(d, capacity) float32`` stored keys, transposed; only the first ``size``
            columns are searched. key_norms: ``(capacity,) float64`` their L2 norms.
        size: number of valid rows; k: neighbours per query (>= 1).

    Returns:
        ``(idx (n, k) int64, cos (n, k) float64)``; slots beyond ``size`` are -1 / -inf.
        A zero-norm key or query has cosine 0.
    """
    return _knn_search_kernel(queries, query_norms, keys_t, key_norms, int(size), int(k))


def knn_search_ref(
    queries: np.ndarray,
    query_norms: np.ndarray,
    keys_t: np.ndarray,
    key_norms: np.ndarray,
    size: int,
    k: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Numpy reference of :func:`knn_search` (same float32 dot products, same ties)."""
    n = queries.shape[0]
    dots = np.zeros((n, size), dtype=np.float32)
    for t in range(queries.shape[1]):
        dots += queries[:, t, None] * keys_t[None, t, :size]
    denom = key_norms[None, :size] * query_norms[:, None]
    safe = np.where(denom > 0.0, denom, 1.0)
    cos = np.where(denom > 0.0, dots.astype(np.float64) / safe, 0.0)
    idx = np.full((n, k), -1, dtype=np.int64)
    best = np.full((n, k), -np.inf, dtype=np.float64)
    take = min(k, size)
    rows = np.arange(size)
    for i in range(n):
        order = np.lexsort((rows, -cos[i]))[:take]
        idx[i, :take] = order
        best[i, :take] = cos[i, order]
    return idx, best


def _l2_norms(h: np.ndarray) -> np.ndarray:
    """``(n, d) float32`` -> ``(n,) float64`` L2 norms."""
    h64 = h.astype(np.float64)
    return np.sqrt(np.einsum("ij,ij->i", h64, h64))


class ExactKnnMemory:
    """Ring buffer of ``(h, y, p, ts)`` with brute-force cosine kNN compensation.

    Args:
        dim: width ``d`` of the hidden representation.
        capacity: rows kept; older rows are overwritten (memory ``~capacity * (4d + 32)``
            bytes).
        lam: compensation strength (>= 0); 0 is exactly the identity.
        gamma: mix of ``y_bar - p`` (1) and ``y_bar - p_bar`` (0), in [0, 1].
        tau: softmax temperature over cosine similarity (> 0).
        half_life_s: event-time half-life of a neighbour's weight, seconds; None = no decay.

    >>> import numpy as np
    >>> memory = ExactKnnMemory(dim=2, capacity=8, lam=1.0)
    >>> memory.write(np.array([[1.0, 0.0]] * 4, np.float32), np.ones(4), np.full(4, 0.2),
    ...              np.zeros(4))
    4
    >>> memory.compensate(np.array([0.2]), np.array([[2.0, 0.1]], np.float32), now=0.0, k=3)
    array([1.])
    """

    def __init__(
        self,
        dim: int,
        capacity: int,
        *,
        lam: float = 0.5,
        gamma: float = 1.0,
        tau: float = 0.1,
        half_life_s: float | None = None,
    ) -> None:
        if dim < 1 or capacity < 1:
            raise ValueError("dim and capacity must be >= 1")
        if lam < 0.0 or not 0.0 <= gamma <= 1.0 or tau <= 0.0:
            raise ValueError("need lam >= 0, gamma in [0, 1], tau > 0")
        if half_life_s is not None and half_life_s <= 0.0:
            raise ValueError("half_life_s must be > 0 or None")
        self.dim, self.capacity = int(dim), int(capacity)
        self.lam, self.gamma, self.tau, self.half_life_s = lam, gamma, tau, half_life_s
        self.keys_t = np.zeros((dim, capacity), dtype=np.float32)  # (d, capacity)
        self.key_norms = np.zeros(capacity, dtype=np.float64)
        self.y = np.zeros(capacity, dtype=np.float64)
        self.p = np.zeros(capacity, dtype=np.float64)
        self.ts = np.zeros(capacity, dtype=np.float64)
        self.size = 0  # valid rows
        self.head = 0  # next slot to write

    def _checked_hidden(self, hidden: np.ndarray) -> np.ndarray:
        h = np.ascontiguousarray(hidden, dtype=np.float32)
        if h.ndim != 2 or h.shape[1] != self.dim:
            raise ValueError(f"hidden must have shape (n, {self.dim}), got {h.shape}")
        return h

    def write(self, hidden: np.ndarray, y: np.ndarray, p: np.ndarray, ts: np.ndarray) -> int:
        """Append ``(n, d)`` keys with ``(n,)`` labels, predictions, event times (s)."""
        h = self._checked_hidden(hidden)
        n = h.shape[0]
        y64, p64, ts64 = (np.asarray(a, dtype=np.float64) for a in (y, p, ts))
        if y64.shape != (n,) or p64.shape != (n,) or ts64.shape != (n,):
            raise ValueError("y, p and ts must have shape (n,)")
        if n > self.capacity:  # only the last `capacity` rows would survive anyway
            h, y64, p64, ts64 = (a[-self.capacity :] for a in (h, y64, p64, ts64))
        m = h.shape[0]
        slots = (self.head + np.arange(m)) % self.capacity
        self.keys_t[:, slots] = h.T
        self.key_norms[slots] = _l2_norms(h)
        self.y[slots], self.p[slots], self.ts[slots] = y64, p64, ts64
        self.head = int((self.head + m) % self.capacity)
        self.size = min(self.capacity, self.size + m)
        return n

    def neighbours(self, hidden: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(idx (n, k) int64, cos (n, k) float64)`` of the ``k`` nearest stored rows."""
        if k < 1:
            raise ValueError("k must be >= 1")
        h = self._checked_hidden(hidden)
        return knn_search(h, _l2_norms(h), self.keys_t, self.key_norms, self.size, k)

    def compensate(
        self, p: np.ndarray, hidden: np.ndarray, now: float, k: int = 32
    ) -> np.ndarray:
        """``(n,)`` base predictions + ``(n, d)`` keys -> ``(n,) float64`` compensated.

        Unchanged where no neighbour exists (empty memory) or ``lam == 0``.
        """
        p64 = np.ascontiguousarray(p, dtype=np.float64)
        if self.lam == 0.0 or self.size == 0:
            return p64.copy()
        idx, cos = self.neighbours(hidden, k)
        found = idx >= 0
        safe_idx = np.where(found, idx, 0)
        top = np.where(found, cos, -np.inf)
        logits = (top - top[:, :1]) / self.tau
        if self.half_life_s is not None:
            age = float(now) - self.ts[safe_idx]
            logits = logits - age / self.half_life_s * math.log(2.0)
            logits = logits - np.max(np.where(found, logits, -np.inf), axis=1, keepdims=True)
        weights = np.where(found, np.exp(logits), 0.0)
        w_sum = weights.sum(axis=1)
        y_bar = (weights * self.y[safe_idx]).sum(axis=1) / w_sum
        p_bar = (weights * self.p[safe_idx]).sum(axis=1) / w_sum
        confidence = np.ones_like(p64)
        return apply_compensation(p64, y_bar, p_bar, confidence, self.lam, self.gamma)

    @property
    def nbytes(self) -> int:
        """Bytes held by the ring buffer."""
        arrays = (self.keys_t, self.key_norms, self.y, self.p, self.ts)
        return int(sum(a.nbytes for a in arrays))
