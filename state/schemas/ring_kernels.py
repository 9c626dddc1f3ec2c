"""Numba kernels of the overlap check on the recent-records ring (the decision stage).

:meth:`reloop.state.schemas.recent.RecentRecords.explained` asks, at an evaluation tick, how
much of a pattern's recent excess error is left once the records of chosen schemata are
removed. Its sums come from here; their numpy specification is
:func:`reloop.state.schemas.reference.ring_sums_ref` (tested bit for bit in
``tests/state/test_schema_eval_kernels.py``).

* :func:`mark_members` -- one membership bit per chosen pattern on every ring record;
* :func:`key_rows` / :func:`marked_rows` -- the (sorted) rows inside a pattern / with any bit set;
* :func:`ring_sums` -- the sums, from the whole ring; :func:`ring_sums_rows` -- the same
  sums from those row lists (a tick memoises them, so a call touches only the ~20% of the
  ring that is inside the pattern or in a chosen one instead of scanning all of it).

Exactness: numpy's ``(v * mask).sum()`` is a pairwise sum (8 accumulators on leaves of at
most 128 terms, halves rounded down to a multiple of 8). The tree depends only on the ring's
length, so the sparse walk adds the same non-zero terms into the same accumulators in the same
order, and a leaf without any is ``+0.0`` in both: bit-identical.
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["key_rows", "mark_members", "marked_rows", "ring_sums", "ring_sums_rows"]

_PW_BLOCK = 128  # numpy's PW_BLOCKSIZE: leaves of its pairwise summation


@njit(cache=True, nogil=True)
def mark_members(pids: np.ndarray, bits: np.ndarray, bit: int, ids: np.ndarray, cols: np.ndarray) -> None:  # pragma: no cover
    """Set bit ``bit`` of ``bits[i]`` (``(n,) uint64``) where record ``i`` of ``pids`` ``(n, F)
    int32`` is in the pattern of ``ids`` (1 or 2) at columns ``cols``; clear it elsewhere."""
    k0, c0 = ids[0], cols[0]
    k1, c1 = (ids[1], cols[1]) if ids.shape[0] > 1 else (k0, c0)
    one = np.uint64(1) << np.uint64(bit)
    for i in range(pids.shape[0]):
        if pids[i, c0] == k0 and pids[i, c1] == k1:
            bits[i] |= one
        else:
            bits[i] &= ~one


@njit(cache=True, nogil=True)
def _key_rows_kernel(pids, kp, kc):  # pragma: no cover - numba
    k0, c0 = kp[0], kc[0]
    k1, c1 = (kp[1], kc[1]) if kp.shape[0] > 1 else (k0, c0)
    col0 = pids[:, c0]  # column-major: contiguous
    col1 = pids[:, c1]
    n = 0
    for i in range(col0.shape[0]):
        n += (col0[i] == k0) & (col1[i] == k1)
    out = np.empty(n, np.int64)
    j = 0
    for i in range(col0.shape[0]):
        if (col0[i] == k0) & (col1[i] == k1):
            out[j] = i
            j += 1
    return out


def key_rows(pids: np.ndarray, key: np.ndarray, key_cols: np.ndarray) -> np.ndarray:
    """``(m,) int64`` rows of ``pids`` ``(n, F) int32`` inside the pattern of ids ``key`` (1 or
    2) at columns ``key_cols``, ascending."""
    return _key_rows_kernel(pids, np.ascontiguousarray(key, np.int64), np.ascontiguousarray(key_cols, np.int64))


def marked_rows(bits: np.ndarray) -> np.ndarray:
    """``(m,) int64`` rows with any membership bit set, ascending."""
    return np.flatnonzero(bits).astype(np.int64, copy=False)


@njit(cache=True, nogil=True)
def _sparse_kernel(n, w, wr, in_rows, cand_rows, bits, masks):  # pragma: no cover - numba
    """numpy's pairwise summation tree over ``n`` terms, walked without recursion (recursive
    numba functions do not survive ``cache=True``): halves rounded down to a multiple of 8,
    leaves of <= 128 terms; ``out[d]``: the sum of the node at depth ``d``. A leaf as numpy
    sums it: 8 accumulators (``j`` takes terms ``j, j + 8, ...``) over its first ``m - m % 8``
    terms, combined ``((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7))``, then the rest
    (``acc[:, 8:]``) one by one. Only the rows of ``in_rows`` (inside the key) and of
    ``cand_rows`` whose bits meet ``masks`` give non-zero terms; the others are skipped (a
    zero term changes no sum, but the sign of an all-zero one, which no decision reads)."""
    n_others = masks.shape[0]
    q = 6 + n_others
    anyone = np.uint64(0)
    for k in range(n_others):
        anyone |= masks[k]
    levels = 2
    while (n >> levels) > 0:
        levels += 1
    out = np.zeros((levels + 1, q))
    lo_at = np.zeros(levels + 1, np.int64)
    n_at = np.zeros(levels + 1, np.int64)
    phase = np.zeros(levels + 1, np.int64)
    acc = np.zeros((q, 16))  # kept 0.0 between leaves: only the touched rows are summed and reset
    touched = np.zeros(q, np.bool_)
    n_in, n_cand = in_rows.shape[0], cand_rows.shape[0]
    a = 0  # next of in_rows
    b = 0  # next of cand_rows
    big = n + 1
    d = 0
    n_at[0] = n
    while d >= 0:
        lo, m = lo_at[d], n_at[d]
        if m <= _PW_BLOCK:  # a leaf
            hi = lo + m
            ra = in_rows[a] if a < n_in else big
            rb = cand_rows[b] if b < n_cand else big
            if min(ra, rb) >= hi:  # no term here: +0.0, as numpy's sum of zeros
                for c in range(q):
                    out[d, c] = 0.0
                d -= 1
                continue
            full = 0 if m < 8 else m - m % 8  # numpy: no accumulators below 8 terms
            # (acc is all 0.0 here: numpy starts each accumulator at a term; 0.0 + t == t)
            while True:
                ra = in_rows[a] if a < n_in else big
                rb = cand_rows[b] if b < n_cand else big
                i = min(ra, rb)
                if i >= hi:
                    break
                inside = ra == i
                if inside:
                    a += 1
                if rb == i:
                    bb = bits[i] & anyone
                    b += 1
                else:
                    bb = np.uint64(0)
                if not inside and not bb:
                    continue
                slot = (i - lo) & 7 if i - lo < full else 8 + i - lo - full
                if not inside:  # in another only: the "away" terms
                    acc[4, slot] += w[i]
                    acc[5, slot] += wr[i]
                    touched[4] = True
                    continue
                acc[0, slot] += w[i]
                acc[1, slot] += wr[i]
                touched[0] = True
                if not bb:
                    acc[2, slot] += w[i]
                    acc[3, slot] += wr[i]
                    touched[2] = True
                    continue
                for k in range(n_others):
                    if bb & masks[k]:
                        acc[6 + k, slot] += w[i]
                        touched[6 + k] = True
            touched[1], touched[3], touched[5] = touched[0], touched[2], touched[4]
            for c in range(q):
                if not touched[c]:  # no term: numpy's sum of zeros, +0.0
                    out[d, c] = 0.0
                    continue
                total = ((acc[c, 0] + acc[c, 1]) + (acc[c, 2] + acc[c, 3])) + (
                    (acc[c, 4] + acc[c, 5]) + (acc[c, 6] + acc[c, 7]))
                for t in range(m - full):
                    total += acc[c, 8 + t]
                out[d, c] = total
                for t in range(16):  # a loop: a slice assignment costs ~50 ns in numba
                    acc[c, t] = 0.0
                touched[c] = False
            d -= 1
            continue
        half = m // 2
        half -= half % 8
        if phase[d] == 0:  # left half first
            phase[d] = 1
            lo_at[d + 1], n_at[d + 1], phase[d + 1] = lo, half, 0
            d += 1
        elif phase[d] == 1:  # then the right half
            for c in range(q):
                out[d, c] = out[d + 1, c]
            phase[d] = 2
            lo_at[d + 1], n_at[d + 1], phase[d + 1] = lo + half, m - half, 0
            d += 1
        else:
            for c in range(q):
                out[d, c] += out[d + 1, c]
            d -= 1
    return out[0].copy()


def ring_sums_rows(n: int, w: np.ndarray, wr: np.ndarray, in_rows: np.ndarray, cand_rows: np.ndarray,
                   bits: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """:func:`ring_sums` from row lists: ``in_rows`` (:func:`key_rows` of the pattern) and
    ``cand_rows`` (a superset of the rows in any other pattern, e.g. :func:`marked_rows`),
    both ``int64`` ascending, on a ring of ``n`` records. Same result, bit for bit."""
    return _sparse_kernel(int(n), w, wr, in_rows, cand_rows, bits, np.ascontiguousarray(masks, np.uint64))


def ring_sums(pids: np.ndarray, w: np.ndarray, wr: np.ndarray, key: np.ndarray, key_cols: np.ndarray,
              bits: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """The sums of the overlap check over a ring of ``n`` records, no ring-sized temporaries.

    A record is in a pattern when ``pids[i, col] == pid`` for each of its (one or two) ids; it
    is in other pattern ``k`` when ``bits[i] & masks[k]`` (bits set by :func:`mark_members`).
    With ``in`` = in ``key``, ``m_k`` = in other ``k``, ``u`` = any ``m_k``, returns
    ``(6 + K,)`` float64: ``sum w*in, sum wr*in, sum w*(in & ~u), sum wr*(in & ~u),
    sum w*(u & ~in), sum wr*(u & ~in)``, then ``sum w*(in & m_k)`` for each ``k``. Each sum is
    bit-identical to numpy's ``(v * mask).sum()`` (pairwise: 8 accumulators on blocks of 128;
    checked against :func:`reloop.state.schemas.reference.ring_sums_ref`). GIL released.

    Args:
        pids: ``(n, F) int32`` predicate ids of the ring; w, wr: ``(n,) float64`` decay
            weights (records) and weights times residuals.
        key, key_cols: ``(1 or 2,) int64`` ids of the pattern and their columns.
        bits: ``(n,) uint64`` membership bits; masks: ``(K,) uint64`` one bit per other pattern.
    """
    return ring_sums_rows(pids.shape[0], w, wr, key_rows(pids, key, key_cols), marked_rows(bits), bits, masks)
