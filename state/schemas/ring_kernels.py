"""Numba kernels of the overlap check on the recent-records ring (the decision stage).

:meth:`reloop.state.schemas.recent.RecentRecords.explained_many` asks, at an evaluation tick,
how much of a pattern's recent excess error is left once the records of chosen schemata are
removed. Its sums come from here; their numpy specification is
:func:`reloop.state.schemas.reference.overlap_sums_ref` (tested bit for bit in
``tests/state/test_schema_eval_kernels.py``).

* :func:`mark_members` -- one membership bit per chosen pattern on every ring record;
* :func:`key_rows` -- the (sorted) rows inside a pattern;
* :func:`overlap_sums` -- the sums of many checks (one per pattern, each against its own set of
  others) in one pass over the patterns' rows and the ring's bits; :func:`member_sums` -- the overlap with each other
  pattern, for the rare check that explains its pattern away.

Exactness: the sums are of **fixed-point integers** (:func:`fixed_point`: a weight in ``[0, 1]``
counts ``round(w * 2**40)``), so every order of summation gives the same bits: the kernel can
visit only the rows that contribute, share one pass between checks and subtract (``away`` is the
union minus its part inside the pattern) where a float sum would depend on the order. A ring of
at most ``2**22`` records (``SchemaCacheConfig.recent_window``, validated there) keeps every
sum below ``2**63``.
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["FIXED_ONE", "fixed_point", "key_rows", "mark_members", "member_sums", "overlap_sums"]

#: one unit of weight in the overlap sums' fixed point (2**40: ~1e-12 resolution)
FIXED_ONE = float(1 << 40)


def fixed_point(v: np.ndarray) -> np.ndarray:
    """``(n,) int64``: ``v`` (``|v| <= 1``) in units of ``1 / FIXED_ONE``, rounded to nearest."""
    return np.rint(np.asarray(v, np.float64) * FIXED_ONE).astype(np.int64)


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


@njit(cache=True, nogil=True)
def _overlap_kernel(wq, wrq, bits, in_rows, in_start, om, prev, base, scan, scan_all):  # pragma: no cover
    n_q = om.shape[0]
    out = np.zeros((n_q, 8), np.int64)
    for j in range(n_q):
        m = om[j]
        for t in range(in_start[j], in_start[j + 1]):
            i = in_rows[t]
            out[j, 0] += wq[i]
            out[j, 1] += wrq[i]
            if bits[i] & m:  # inside and in another: taken back from the union below
                out[j, 4] -= wq[i]
                out[j, 5] -= wrq[i]
            else:
                out[j, 2] += wq[i]
                out[j, 3] += wrq[i]
        out[j, 6], out[j, 7] = base[j, 0], base[j, 1]
    delta = om & ~prev  # the bits each union gains over its base
    n_scan = bits.shape[0] if scan_all else scan.shape[0]
    for t in range(n_scan):
        i = t if scan_all else scan[t]
        b = bits[i]
        if not b:
            continue
        for j in range(n_q):
            if b & delta[j] and not b & prev[j]:  # in the union, not yet in its base
                out[j, 6] += wq[i]
                out[j, 7] += wrq[i]
    for j in range(n_q):
        out[j, 4] += out[j, 6]
        out[j, 5] += out[j, 7]
    return out


def overlap_sums(wq: np.ndarray, wrq: np.ndarray, bits: np.ndarray, rows: list[np.ndarray],
                 others: np.ndarray, prev: np.ndarray | None = None, base: np.ndarray | None = None,
                 scan: np.ndarray | None = None) -> np.ndarray:
    """The sums of ``Q`` overlap checks in one pass, exact (fixed point, see the module).

    Check ``j`` is of the pattern whose records are ``rows[j]`` (:func:`key_rows`) against the
    union ``u`` of the patterns whose bits are set in ``others[j]``. Returns ``(Q, 8) int64``:
    ``sum wq*in, sum wrq*in, sum wq*(in & ~u), sum wrq*(in & ~u), sum wq*(u & ~in),
    sum wrq*(u & ~in)`` (as :func:`reloop.state.schemas.reference.overlap_sums_ref`), then the
    union's own ``sum wq*u, sum wrq*u``. GIL released.

    The union may grow from one computed before: ``base[j]`` holds the union sums of
    ``prev[j]`` (a subset of ``others[j]``; 0 and zeros: none), and only the records in
    ``others[j] & ~prev[j]`` but not in ``prev[j]`` are added. Those records must all be among
    ``scan`` (e.g. the rows of the added patterns, each once); ``scan`` None visits every row.
    Integers make the two ways equal bit for bit.

    Args:
        wq, wrq: ``(n,) int64`` fixed-point decay weights and weights x residuals.
        bits: ``(n,) uint64`` membership bits (:func:`mark_members`).
        rows: ``Q`` arrays of rows; others: ``(Q,) uint64`` masks of bits.
        prev: ``(Q,) uint64``; base: ``(Q, 2) int64``; scan: ``(m,) int64`` distinct rows.
    """
    n_q = len(rows)
    counts = np.fromiter((r.shape[0] for r in rows), np.int64, n_q)
    start = np.zeros(n_q + 1, np.int64)
    np.cumsum(counts, out=start[1:])
    flat = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    prev = np.zeros(n_q, np.uint64) if prev is None else np.ascontiguousarray(prev, np.uint64)
    base = np.zeros((n_q, 2), np.int64) if base is None else np.ascontiguousarray(base, np.int64).reshape(n_q, 2)
    return _overlap_kernel(wq, wrq, bits, flat.astype(np.int64, copy=False), start,
                           np.ascontiguousarray(others, np.uint64), prev, base,
                           np.zeros(0, np.int64) if scan is None else np.ascontiguousarray(scan, np.int64),
                           scan is None)


@njit(cache=True, nogil=True)
def member_sums(wq: np.ndarray, bits: np.ndarray, rows: np.ndarray, masks: np.ndarray) -> np.ndarray:  # pragma: no cover
    """``(K,) int64``: ``sum wq`` over the records of ``rows`` that are in other pattern ``k``
    (``bits[i] & masks[k]``), for each ``k`` (how much of a pattern each other one covers)."""
    out = np.zeros(masks.shape[0], np.int64)
    for t in range(rows.shape[0]):
        i = rows[t]
        for k in range(masks.shape[0]):
            if bits[i] & masks[k]:
                out[k] += wq[i]
    return out
