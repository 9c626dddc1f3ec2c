"""Numba kernels of the error-schema cache (:mod:`reloop.state.schemas.cache`).

* :func:`space_saving_update` -- feeds error records into a weighted Space-Saving summary
  (Metwally, Agrawal, El Abbadi, ICDT 2005) of predicate patterns; its plain-Python
  specification is :func:`reloop.state.schemas.reference.space_saving_update_ref` (dict + ``argmin``);
* :func:`lookup_slots` / :func:`rebuild_index` -- the open-addressing index and the min-heap
  that make the kernel O(log C) per pattern update;
* :func:`overlap_sums` / :func:`mark_members` -- the overlap check's exact (fixed-point) sums
  on the recent-records ring, in :mod:`reloop.state.schemas.ring_kernels` (re-exported here);
  their numpy specification is :func:`reloop.state.schemas.reference.overlap_sums_ref`;
* :func:`welch_z`, :func:`single_tests`, :func:`vs_rest` -- the Welch z tests of a tick, in
  :mod:`reloop.state.schemas.stat_kernels` (re-exported here), next to their numpy forms.

:data:`USE_KERNELS` False makes the evaluation run the numpy paths these replaced (tests).

The rest of the cache lives next to it: :mod:`reloop.state.schemas.select` (z tests, choice of
schemata), :mod:`reloop.state.schemas.vocab` (predicate ids), :mod:`reloop.state.schemas.recent` (recent
records ring).

Patterns and keys
-----------------
A record is a row of ``F`` predicate ids (``int32``, ``0`` = absent), one per *column*
(``model_version``, ``code[k]``, then one per categorical feature name). Its patterns are,
in this order: every non-zero id as a *single* (key = id), then every pair ``j < k`` of
non-zero ids whose columns are both pairable (key = ``min << 32 | max``). Keys of singles are
``< 2**32``, keys of pairs ``>= 2**32``.

Slot statistics
---------------
``stats[s]`` holds, in forward-decay (landmark) weights ``w = exp((ts - t0) / T)``:
``PRIORITY`` (Space-Saving count: own weight plus the weight inherited from the evicted
pattern), ``OWN`` (weight of the records seen since the slot was taken), ``SUM_R`` (sum of
``w * r``, ``r = y - p``), ``SUM_R2`` (``w * r * r``), ``SUM_Y`` and ``SUM_P``; then the same sums in the weights
``wf = exp((ts - t0f) / Tf)`` of a short *shift* window (its own landmark ``t0f``):
``F_OWN``, ``F_SUM_R``, ``F_SUM_R2``, ``F_SUM_P`` and ``F_SUM_P2`` (``wf * p * p``). ``times[s]`` holds
the event time the slot was taken (``FIRST``) and the latest record time (``LAST``).
``glob`` holds the same sums (``G_OWN .. G_SUM_P``) over every record.

Eviction: when all ``C`` slots are taken, a new pattern replaces the slot with the smallest
``(PRIORITY, slot index)`` -- lexicographic, so the choice is unique and the kernel (a heap)
and the reference (``np.argmin``, first minimum) agree exactly.

Exactness contract: the kernel is **bit-identical** to the reference (same float operations
in the same record and pattern order; the heap only decides which slot is the minimum, and
that minimum is unique).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from reloop.state.schemas.ring_kernels import mark_members, overlap_sums
from reloop.state.schemas.stat_kernels import single_tests, vs_rest, welch_z

__all__ = [
    "F_OWN", "F_SUM_P", "F_SUM_P2", "F_SUM_R", "F_SUM_R2", "FAST", "G_OWN", "G_SUM_P", "G_SUM_R", "G_SUM_R2",
    "G_SUM_Y", "N_GLOBAL", "N_STATS", "OWN", "PRIORITY", "record_values",
    "SUM_P", "SUM_R", "SUM_R2", "SUM_Y", "FIRST", "LAST", "index_size", "lookup_slots", "pair_key",
    "mark_members", "overlap_sums", "rebuild_index", "single_tests", "space_saving_update", "split_key",
    "vs_rest", "welch_z",
]

PRIORITY, OWN, SUM_R, SUM_R2, SUM_Y, SUM_P = range(6)
F_OWN, F_SUM_R, F_SUM_R2, F_SUM_P, F_SUM_P2 = range(6, 11)  # the fast (shift) window
FAST = slice(F_OWN, F_SUM_P2 + 1)
N_STATS = 11
G_OWN, G_SUM_R, G_SUM_R2, G_SUM_Y, G_SUM_P = range(5)
N_GLOBAL = 5
FIRST, LAST = 0, 1
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)

#: False: a tick's evaluation runs the numpy code the numba kernels replaced (the overlap check
#: with memoised masks, the Welch z in numpy); only for tests that compare the two paths.
USE_KERNELS = True


def index_size(capacity: int) -> int:
    """Length of the open-addressing index for ``capacity`` slots: a power of two >= 2C."""
    return 1 << max(1, int(math.ceil(math.log2(max(2, 2 * capacity)))))


def pair_key(a: int, b: int) -> int:
    """Key of the pair pattern of predicate ids ``a != b`` (order-free)."""
    lo, hi = (a, b) if a < b else (b, a)
    return (lo << 32) | hi


def split_key(key: int) -> tuple[int, ...]:
    """Predicate ids of a pattern key: ``(a,)`` for a single, ``(a, b)`` with a < b for a pair."""
    return (key,) if key < (1 << 32) else (key >> 32, key & 0xFFFFFFFF)


# --------------------------------------------------------------------------- index and heap


@njit(cache=True, nogil=True)
def _home(key: np.int64, shift: int) -> int:
    return np.int64((np.uint64(key) * _GOLDEN) >> np.uint64(shift))


@njit(cache=True, nogil=True)
def _find(key: np.int64, keys: np.ndarray, index: np.ndarray, shift: int) -> int:
    """Position of ``key`` in ``index``, or of the empty position where it would go."""
    mask = index.shape[0] - 1
    i = _home(key, shift)
    while True:
        s = index[i]
        if s < 0 or keys[s] == key:
            return i
        i = (i + 1) & mask


@njit(cache=True, nogil=True)
def _delete(pos: int, keys: np.ndarray, index: np.ndarray, shift: int) -> None:
    """Remove ``index[pos]`` by backward-shift deletion (linear probing, no tombstones)."""
    mask = index.shape[0] - 1
    i = pos
    j = pos
    while True:
        j = (j + 1) & mask
        s = index[j]
        if s < 0:
            break
        h = _home(keys[s], shift)
        if (i <= j and i < h <= j) or (i > j and (h > i or h <= j)):
            continue  # its home lies cyclically in (i, j]: it may stay
        index[i] = s
        i = j
    index[i] = -1


@njit(cache=True, nogil=True)
def _less(stats: np.ndarray, a: int, b: int) -> bool:
    pa = stats[a, 0]
    pb = stats[b, 0]
    return pa < pb or (pa == pb and a < b)


@njit(cache=True, nogil=True)
def _sift_down(heap: np.ndarray, heap_pos: np.ndarray, stats: np.ndarray, i: int, n: int) -> None:
    while True:
        left = 2 * i + 1
        if left >= n:
            return
        c = left
        if left + 1 < n and _less(stats, heap[left + 1], heap[left]):
            c = left + 1
        if not _less(stats, heap[c], heap[i]):
            return
        a, b = heap[i], heap[c]
        heap[i], heap[c] = b, a
        heap_pos[b] = i
        heap_pos[a] = c
        i = c


@njit(cache=True, nogil=True)
def _sift_up(heap: np.ndarray, heap_pos: np.ndarray, stats: np.ndarray, i: int) -> None:
    while i > 0:
        parent = (i - 1) // 2
        if not _less(stats, heap[i], heap[parent]):
            return
        a, b = heap[i], heap[parent]
        heap[i], heap[parent] = b, a
        heap_pos[b] = i
        heap_pos[a] = parent
        i = parent


@njit(cache=True, nogil=True)
def _rebuild_kernel(keys, stats, n_used, index, heap, heap_pos, shift):  # pragma: no cover - numba
    index[:] = -1
    for s in range(n_used):
        index[_find(keys[s], keys, index, shift)] = s
        heap[s] = s
        heap_pos[s] = s
    for i in range(n_used // 2 - 1, -1, -1):
        _sift_down(heap, heap_pos, stats, i, n_used)


def rebuild_index(keys: np.ndarray, stats: np.ndarray, n_used: int, index: np.ndarray,
                  heap: np.ndarray, heap_pos: np.ndarray, shift: int) -> None:
    """Rebuild the key index and the (PRIORITY, slot) min-heap of the first ``n_used`` slots.

    Needed after a restore and after priorities are rescaled (rounding may create ties).
    ``keys`` ``(C,) int64``; ``stats`` ``(C, N_STATS) float64``; ``index`` ``(M,) int32``;
    ``heap``, ``heap_pos`` ``(C,) int32``; ``shift = 64 - log2(M)``. All updated in place.
    """
    _rebuild_kernel(keys, stats, int(n_used), index, heap, heap_pos, int(shift))


@njit(cache=True, nogil=True)
def _lookup_kernel(queries, keys, index, shift):  # pragma: no cover - numba
    out = np.empty(queries.shape[0], dtype=np.int32)
    for q in range(queries.shape[0]):
        out[q] = index[_find(queries[q], keys, index, shift)]
    return out


def lookup_slots(queries: np.ndarray, keys: np.ndarray, index: np.ndarray, shift: int) -> np.ndarray:
    """Slot of each pattern key in ``queries`` ``(q,) int64``; ``-1`` where not tracked."""
    return _lookup_kernel(np.ascontiguousarray(queries, dtype=np.int64), keys, index, int(shift))


# --------------------------------------------------------------------------- Space-Saving


@njit(cache=True, nogil=True)
def _touch(key, vals, t, keys, stats, times, heap, heap_pos, index, meta, shift):
    pos = _find(key, keys, index, shift)
    s = index[pos]
    capacity = keys.shape[0]
    n_stats = vals.shape[0]
    if s >= 0:  # tracked: add, the priority grew so it may sink in the min-heap
        for c in range(n_stats):
            stats[s, c] += vals[c]
        if t > times[s, 1]:
            times[s, 1] = t
        _sift_down(heap, heap_pos, stats, heap_pos[s], meta[0])
        return
    base = 0.0
    n_used = meta[0]
    fresh = n_used < capacity
    if fresh:
        s = n_used
        meta[0] = n_used + 1
        heap[n_used] = s
        heap_pos[s] = n_used
    else:  # evict the minimum (PRIORITY, slot); the newcomer inherits its count
        s = heap[0]
        base = stats[s, 0]
        _delete(_find(keys[s], keys, index, shift), keys, index, shift)
        pos = _find(key, keys, index, shift)
        meta[1] += 1
    keys[s] = key
    index[pos] = s
    stats[s, 0] = base + vals[0]
    for c in range(1, n_stats):
        stats[s, c] = vals[c]
    times[s, 0] = t
    times[s, 1] = t
    if fresh:
        _sift_up(heap, heap_pos, stats, heap_pos[s])
    else:
        _sift_down(heap, heap_pos, stats, 0, meta[0])


@njit(cache=True, nogil=True)
def _space_saving_kernel(pids, pairable, w, wf, r, y, p, ts, keys, stats, times, heap, heap_pos,
                         index, meta, glob, shift):  # pragma: no cover - numba
    n, n_cols = pids.shape
    row = np.empty(n_cols, dtype=np.int64)
    row_pair = np.empty(n_cols, dtype=np.bool_)
    vals = np.empty(N_STATS, dtype=np.float64)
    for i in range(n):
        record_values(w[i], wf[i], r[i], y[i], p[i], vals)
        t = ts[i]
        for c in range(N_GLOBAL):
            glob[c] += vals[c + 1]
        m = 0
        for j in range(n_cols):
            a = pids[i, j]
            if a > 0:
                row[m] = a
                row_pair[m] = pairable[j]
                m += 1
        for j in range(m):
            _touch(row[j], vals, t, keys, stats, times, heap, heap_pos, index, meta, shift)
        for j in range(m):
            if not row_pair[j]:
                continue
            for k in range(j + 1, m):
                if row_pair[k]:
                    a = row[j]
                    b = row[k]
                    key = (a << 32) | b if a < b else (b << 32) | a
                    _touch(key, vals, t, keys, stats, times, heap, heap_pos, index, meta, shift)


@njit(cache=True, nogil=True)
def record_values(wi, wfi, ri, yi, pi, vals):  # pragma: no cover - numba
    """The ``N_STATS`` values one record adds to each of its patterns (into ``vals``)."""
    wr = wi * ri
    wfr = wfi * ri
    wfp = wfi * pi
    vals[PRIORITY] = wi
    vals[OWN] = wi
    vals[SUM_R] = wr
    vals[SUM_R2] = wr * ri
    vals[SUM_Y] = wi * yi
    vals[SUM_P] = wi * pi
    vals[F_OWN] = wfi
    vals[F_SUM_R] = wfr
    vals[F_SUM_R2] = wfr * ri
    vals[F_SUM_P] = wfp
    vals[F_SUM_P2] = wfp * pi


def space_saving_update(pids: np.ndarray, pairable: np.ndarray, w: np.ndarray, wf: np.ndarray, r: np.ndarray,
                        y: np.ndarray, p: np.ndarray, ts: np.ndarray, keys: np.ndarray,
                        stats: np.ndarray, times: np.ndarray, heap: np.ndarray, heap_pos: np.ndarray,
                        index: np.ndarray, meta: np.ndarray, glob: np.ndarray, shift: int) -> None:
    """Feed ``n`` records into the summary, in record order, updating every array in place.

    Args:
        pids: ``(n, F) int32`` predicate ids, 0 = absent (C-contiguous).
        pairable: ``(F,) bool``, columns that form pair patterns.
        w, wf: ``(n,) float64`` forward-decay weights of the main and the fast (shift) window;
            r, y, p, ts: ``(n,) float64`` residual ``y - p``, label, prediction, event time (s).
        keys: ``(C,) int64`` slot keys; stats: ``(C, N_STATS) float64``; times: ``(C, 2)``.
        heap, heap_pos: ``(C,) int32`` min-heap of slots by ``(PRIORITY, slot)``.
        index: ``(M,) int32`` open-addressing index (key -> slot, -1 empty), M a power of 2.
        meta: ``(2,) int64`` = (slots used, evictions); glob: ``(N_GLOBAL,) float64``.
        shift: ``64 - log2(M)``.
    """
    _space_saving_kernel(pids, pairable, w, wf, r, y, p, ts, keys, stats, times, heap, heap_pos, index,
                         meta, glob, int(shift))
