"""Kernels and helpers of the error-schema cache (:mod:`state.schema_cache`).

* :func:`space_saving_update` -- a numba kernel that feeds error records into a weighted
  Space-Saving summary (Metwally, Agrawal, El Abbadi, ICDT 2005) of predicate patterns;
  :func:`space_saving_update_ref` is its plain-Python specification (dict + ``argmin``);
* :func:`lookup_slots` / :func:`rebuild_index` -- the open-addressing index and the min-heap
  that make the kernel O(log C) per pattern update;
* :func:`two_sample_z` -- the z statistic every schema decision uses, and
  :func:`select_schemata` -- the greedy choice of schemata among the tracked patterns;
* :class:`PredicateVocab` -- ``name=value`` strings <-> int32 predicate ids, bounded;
* :class:`RecentRecords` -- a ring of the last records (examples, cross-column overlaps).

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
``w * r``, ``r = y - p``), ``SUM_R2`` (``w * r * r``), ``SUM_Y`` and ``SUM_P``. ``times[s]`` holds
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
import sys
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
from numba import njit

__all__ = [
    "G_OWN", "G_SUM_P", "G_SUM_R", "G_SUM_R2", "G_SUM_Y", "N_GLOBAL", "N_STATS", "OWN", "PRIORITY",
    "SUM_P", "SUM_R", "SUM_R2", "SUM_Y", "FIRST", "LAST", "PredicateVocab", "index_size",
    "lookup_slots", "pair_key", "rebuild_index", "space_saving_update", "space_saving_update_ref",
    "Explainer", "RecentRecords", "select_schemata", "split_key", "Thresholds", "two_sample_z",
]

PRIORITY, OWN, SUM_R, SUM_R2, SUM_Y, SUM_P = range(6)
N_STATS = 6
G_OWN, G_SUM_R, G_SUM_R2, G_SUM_Y, G_SUM_P = range(5)
N_GLOBAL = 5
FIRST, LAST = 0, 1
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


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
def _touch(key, wi, wr, wr2, wy, wp, t, keys, stats, times, heap, heap_pos, index, meta, shift):
    pos = _find(key, keys, index, shift)
    s = index[pos]
    capacity = keys.shape[0]
    if s >= 0:  # tracked: add, the priority grew so it may sink in the min-heap
        stats[s, 0] += wi
        stats[s, 1] += wi
        stats[s, 2] += wr
        stats[s, 3] += wr2
        stats[s, 4] += wy
        stats[s, 5] += wp
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
    stats[s, 0] = base + wi
    stats[s, 1] = wi
    stats[s, 2] = wr
    stats[s, 3] = wr2
    stats[s, 4] = wy
    stats[s, 5] = wp
    times[s, 0] = t
    times[s, 1] = t
    if fresh:
        _sift_up(heap, heap_pos, stats, heap_pos[s])
    else:
        _sift_down(heap, heap_pos, stats, 0, meta[0])


@njit(cache=True, nogil=True)
def _space_saving_kernel(pids, pairable, w, r, y, p, ts, keys, stats, times, heap, heap_pos,
                         index, meta, glob, shift):  # pragma: no cover - numba
    n, n_cols = pids.shape
    row = np.empty(n_cols, dtype=np.int64)
    row_pair = np.empty(n_cols, dtype=np.bool_)
    for i in range(n):
        wi = w[i]
        wr = wi * r[i]
        wr2 = wr * r[i]
        wy = wi * y[i]
        wp = wi * p[i]
        t = ts[i]
        glob[0] += wi
        glob[1] += wr
        glob[2] += wr2
        glob[3] += wy
        glob[4] += wp
        m = 0
        for j in range(n_cols):
            a = pids[i, j]
            if a > 0:
                row[m] = a
                row_pair[m] = pairable[j]
                m += 1
        for j in range(m):
            _touch(row[j], wi, wr, wr2, wy, wp, t, keys, stats, times, heap, heap_pos, index, meta, shift)
        for j in range(m):
            if not row_pair[j]:
                continue
            for k in range(j + 1, m):
                if row_pair[k]:
                    a = row[j]
                    b = row[k]
                    key = (a << 32) | b if a < b else (b << 32) | a
                    _touch(key, wi, wr, wr2, wy, wp, t, keys, stats, times, heap, heap_pos, index, meta,
                           shift)


def space_saving_update(pids: np.ndarray, pairable: np.ndarray, w: np.ndarray, r: np.ndarray,
                        y: np.ndarray, p: np.ndarray, ts: np.ndarray, keys: np.ndarray,
                        stats: np.ndarray, times: np.ndarray, heap: np.ndarray, heap_pos: np.ndarray,
                        index: np.ndarray, meta: np.ndarray, glob: np.ndarray, shift: int) -> None:
    """Feed ``n`` records into the summary, in record order, updating every array in place.

    Args:
        pids: ``(n, F) int32`` predicate ids, 0 = absent (C-contiguous).
        pairable: ``(F,) bool``, columns that form pair patterns.
        w: ``(n,) float64`` forward-decay weights; r, y, p, ts: ``(n,) float64`` residual
            ``y - p``, label, prediction, event time (s).
        keys: ``(C,) int64`` slot keys; stats: ``(C, N_STATS) float64``; times: ``(C, 2)``.
        heap, heap_pos: ``(C,) int32`` min-heap of slots by ``(PRIORITY, slot)``.
        index: ``(M,) int32`` open-addressing index (key -> slot, -1 empty), M a power of 2.
        meta: ``(2,) int64`` = (slots used, evictions); glob: ``(N_GLOBAL,) float64``.
        shift: ``64 - log2(M)``.
    """
    _space_saving_kernel(pids, pairable, w, r, y, p, ts, keys, stats, times, heap, heap_pos, index,
                         meta, glob, int(shift))


def space_saving_update_ref(pids: np.ndarray, pairable: np.ndarray, w: np.ndarray, r: np.ndarray,
                            y: np.ndarray, p: np.ndarray, ts: np.ndarray, keys: np.ndarray,
                            stats: np.ndarray, times: np.ndarray, meta: np.ndarray,
                            glob: np.ndarray) -> None:
    """Specification of :func:`space_saving_update`: a dict of slots and ``np.argmin`` eviction.

    Same arguments minus the heap and index (it keeps its own dict); same results bit for bit.
    """
    capacity = keys.shape[0]
    slot_of = {int(k): s for s, k in enumerate(keys[: int(meta[0])])}

    def touch(key: int, wi: float, wr: float, wr2: float, wy: float, wp: float, t: float) -> None:
        s = slot_of.get(key)
        if s is not None:
            for col, v in ((0, wi), (1, wi), (2, wr), (3, wr2), (4, wy), (5, wp)):
                stats[s, col] += v
            times[s, 1] = max(times[s, 1], t)
            return
        base = 0.0
        if meta[0] < capacity:
            s = int(meta[0])
            meta[0] += 1
        else:
            s = int(np.argmin(stats[:, 0]))  # first minimum = smallest slot among ties
            base = float(stats[s, 0])
            del slot_of[int(keys[s])]
            meta[1] += 1
        slot_of[key] = s
        keys[s] = key
        stats[s] = (base + wi, wi, wr, wr2, wy, wp)
        times[s] = (t, t)

    for i in range(pids.shape[0]):
        wi = float(w[i])
        wr = wi * float(r[i])
        vals = (wi, wr, wr * float(r[i]), wi * float(y[i]), wi * float(p[i]))
        for col, v in enumerate(vals):
            glob[col] += v
        row = [(int(a), bool(pairable[j])) for j, a in enumerate(pids[i]) if a > 0]
        for a, _ in row:
            touch(a, *vals, float(ts[i]))
        for j, (a, pa) in enumerate(row):
            for b, pb in row[j + 1:]:
                if pa and pb:
                    touch(pair_key(a, b), *vals, float(ts[i]))


# --------------------------------------------------------------------------- statistics


def two_sample_z(a: np.ndarray, b: np.ndarray, scale: float, var_floor: float,
                 min_count: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """Welch z of the mean residual of group ``a`` minus that of the disjoint group ``b``.

    ``a``, ``b``: ``(..., 3)`` landmark-weighted ``(OWN, SUM_R, SUM_R2)``; ``scale`` turns
    weights into decayed record counts ``n``. ``z = (m_a - m_b) / sqrt(v_a/n_a + v_b/n_b)``,
    ``v = max(weighted variance, var_floor)``; 0 where a group has fewer than ``min_count``
    decayed records (e.g. the rest of a pattern that covers all the traffic is only float
    rounding). The decayed count is a conservative sample size (the effective size of
    decayed records is larger). Returns ``(z, m_a - m_b)``.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    n_a, n_b = a[..., 0] * scale, b[..., 0] * scale
    ok = (n_a >= min_count) & (n_b >= min_count)
    own_a = np.where(ok, a[..., 0], 1.0)
    own_b = np.where(ok, b[..., 0], 1.0)
    m_a, m_b = a[..., 1] / own_a, b[..., 1] / own_b
    v_a = np.maximum(a[..., 2] / own_a - m_a * m_a, var_floor)
    v_b = np.maximum(b[..., 2] / own_b - m_b * m_b, var_floor)
    se = np.sqrt(v_a / np.where(ok, n_a, 1.0) + v_b / np.where(ok, n_b, 1.0))
    diff = np.where(ok, m_a - m_b, 0.0)
    return np.where(ok, diff / se, 0.0), diff


class Thresholds(NamedTuple):
    """Decision thresholds of one evaluation (see ``SchemaCacheConfig``)."""

    z_new: float
    z_retire: float
    min_support: float
    retire_support: float
    min_effect: float
    max_schemata: int
    var_floor: float
    explained_fraction: float


#: ``explained(slot, others, gap, active) -> slot of the chosen schema that explains it, or -1``.
Explainer = Callable[[int, list[int], float, bool], int]


def select_schemata(tri: np.ndarray, keys: np.ndarray, cols: np.ndarray,
                    lookup: Callable[[np.ndarray], np.ndarray], scale: float, active: np.ndarray,
                    th: Thresholds, explained: Explainer, blocked: np.ndarray | None = None,
                    ) -> tuple[list[tuple[int, float, float, bool]], dict[int, str | int]]:
    """Greedy choice of the schemata among ``n`` tracked patterns (see the cache docstring).

    Tests (Welch z, :func:`two_sample_z`): a single ``S`` (``genre=drama``) against the
    other values of its column minus the chosen ones and the chosen pairs inside them (a
    fault on one value does not make its siblings look wrong); a pair against the rest of
    each parent (``P`` vs ``a - P``, ``b - P``), keeping the weaker test (0 when the two
    disagree in sign). A single is explained by its chosen child pairs when, without them,
    less than half ``explained_fraction`` of its gap is left or the rest is not significant
    (``|z| < z_retire``; active: a quarter and ``z_retire / 2``). A candidate's own mean
    error must also be at least the effect threshold in the gap's direction (the slice errs,
    not only its comparison traffic). Each round adds the pattern with the largest ``|z|``
    that passes its thresholds (active ones: the retire thresholds, half the fraction) and
    that ``explained`` does not attribute to the chosen ones; then drops earlier choices
    that the new one explains.

    Args:
        tri: ``(n, 3)`` landmark-weighted ``(OWN, SUM_R, SUM_R2)`` per slot.
        keys: ``(n,) int64`` pattern keys.
        cols: column of each predicate id (an int array indexable by ids).
        lookup: pattern keys ``(q,) int64`` -> slots ``(q,)`` (-1 = untracked).
        scale: decay factor from the landmark to now; active: ``(n,) bool``.
        explained: the overlap check (the cache runs it on its recent records).
        blocked: ``(n,) bool``, patterns that may not be promoted now (cooling down).

    Returns:
        ``[(slot, z, gap, strong)]`` (the chosen, by decreasing impact ``|gap| * support``;
        ``strong``: it passes the promotion thresholds, not only the retire ones), and for
        each active slot not chosen a reason: a string, or the slot of the chosen schema
        that explains it.
    """
    n = tri.shape[0]
    pair = keys >= (1 << 32)
    p1 = np.where(pair, keys >> 32, keys)
    p2 = np.where(pair, keys & 0xFFFFFFFF, 0)
    col = np.asarray(cols)[p1]
    theta = np.where(active, th.z_retire, th.z_new)
    effect = np.where(active, th.min_effect / 2, th.min_effect)
    frac = np.where(active, th.explained_fraction / 2, th.explained_fraction)
    ok_support = tri[:, 0] * scale >= np.where(active, th.retire_support, th.min_support)
    mean_error = tri[:, 1] / np.maximum(tri[:, 0], 1e-300)
    parents = np.full((n, 2), -1, dtype=np.int64)
    z_pair, gap_pair = np.zeros(n), np.zeros(n)
    pairs = np.flatnonzero(pair)
    if pairs.size:  # static: each pair against the rest of each parent
        parents[pairs] = lookup(np.concatenate((p1[pairs], p2[pairs]))).reshape(2, -1).T
        par = parents[pairs]
        za, ga = two_sample_z(tri[pairs], tri[par[:, 0]] - tri[pairs], scale, th.var_floor)
        zb, gb = two_sample_z(tri[pairs], tri[par[:, 1]] - tri[pairs], scale, th.var_floor)
        weaker_a = np.abs(za) <= np.abs(zb)
        agree = (par >= 0).all(axis=1) & (np.sign(za) == np.sign(zb))
        z_pair[pairs] = np.where(agree, np.where(weaker_a, za, zb), 0.0)
        gap_pair[pairs] = np.where(agree, np.where(weaker_a, ga, gb), 0.0)
    singles = np.flatnonzero(~pair)
    col_tot = np.zeros((int(col.max()) + 1 if n else 1, 3))
    np.add.at(col_tot, col[singles], tri[singles])
    chosen: list[int] = []
    at_choice: dict[int, tuple[float, float]] = {}
    done = np.zeros(n, dtype=bool) if blocked is None else blocked & ~active
    reasons: dict[int, str | int] = {}
    z = gap = np.zeros(n)
    while len(chosen) < th.max_schemata:
        z_full, gap_full, z, gap = _single_tests(tri, col, pair, parents, col_tot, chosen, scale, th.var_floor)
        z_full, gap_full = np.where(pair, z_pair, z_full), np.where(pair, gap_pair, gap_full)
        # a single whose chosen child pairs leave no significant error in the rest of it is
        # explained by them
        own_ok = pair | ((gap * np.sign(gap_full) >= frac / 2 * np.abs(gap_full))
                         & (z * np.sign(z_full) >= np.where(active, th.z_retire / 2, th.z_retire)))
        z, gap = z_full, gap_full
        for s in [s for s in chosen if not own_ok[s]]:
            chosen.remove(s)
            reasons[s] = next((c for c in chosen if pair[c] and s in parents[c]), "significance")
        erring = mean_error * np.sign(gap) >= effect  # the slice itself errs, not just its rest
        cand = np.flatnonzero(~done & ok_support & own_ok & erring & (np.abs(z) >= theta) & (np.abs(gap) >= effect))
        pick = -1
        for s in cand[np.lexsort((keys[cand], -np.abs(z[cand])))].tolist():
            by = explained(s, chosen, float(gap[s]), bool(active[s])) if chosen else -1
            done[s] = True
            if by < 0:
                pick = s
                break
            reasons[s] = by
        if pick < 0:
            break
        chosen.append(pick)
        at_choice[pick] = (float(z_full[pick]), float(gap_full[pick]))
        for s in chosen[:-1]:  # the new one may explain earlier, broader choices
            by = explained(s, [c for c in chosen if c != s], at_choice[s][1], bool(active[s]))
            if by >= 0:
                chosen.remove(s)
                reasons[s] = by
    for s in np.flatnonzero(active & ~np.isin(np.arange(n), chosen)).tolist():
        if s in reasons:
            continue
        if pair[s] and (parents[s] < 0).any():
            reasons[s] = "untracked parent"
        elif not ok_support[s]:
            reasons[s] = "support"
        elif len(chosen) >= th.max_schemata and abs(z[s]) >= theta[s] and abs(gap[s]) >= effect[s]:
            reasons[s] = "evicted"
        elif pair[s] and abs(z_pair[s]) < theta[s] and abs(gap_pair[s]) > 0:
            za = [abs(float(two_sample_z(tri[s], tri[q] - tri[s], scale, th.var_floor)[0])) for q in parents[s]]
            reasons[s] = int(parents[s][int(np.argmin(za))])
        else:
            reasons[s] = "significance"
    z_full, gap_full, _, _ = _single_tests(tri, col, pair, parents, col_tot, chosen, scale, th.var_floor)
    z_full, gap_full = np.where(pair, z_pair, z_full), np.where(pair, gap_pair, gap_full)
    strong = ((np.abs(z_full) >= th.z_new) & (np.abs(gap_full) >= th.min_effect) & (tri[:, 0] * scale >= th.min_support)
              & (mean_error * np.sign(gap_full) >= th.min_effect))
    final = {s: (float(z_full[s]), float(gap_full[s]), bool(strong[s])) for s in chosen}
    order = sorted(chosen, key=lambda s: (-abs(final[s][1]) * tri[s, 0], int(keys[s])))
    return [(s, *final[s]) for s in order], reasons


def _single_tests(tri: np.ndarray, col: np.ndarray, pair: np.ndarray, parents: np.ndarray, col_tot: np.ndarray,
                  chosen: list[int], scale: float, var_floor: float) -> tuple[np.ndarray, ...]:
    """z and gap of every single against the rest of its column, given the chosen set.

    The rest is the column's other values minus the chosen ones and minus the chosen pairs
    inside them. Returns ``(z_full, gap_full, z_own, gap_own)``: *own* also removes the
    chosen child pairs from the single itself (what is left of it once they are explained).
    """
    n_cols = col_tot.shape[0]
    is_chosen = np.zeros(tri.shape[0], dtype=bool)
    is_chosen[chosen] = True
    col_out = np.zeros((n_cols, 3))  # chosen singles, and chosen pairs inside unchosen values
    kids = np.zeros_like(tri)  # chosen child pairs of each single
    mine = np.zeros_like(tri)  # the part of col_out inside the single itself
    for s in chosen:
        if not pair[s]:
            col_out[col[s]] += tri[s]
            mine[s] += tri[s]
        elif (parents[s] >= 0).all():
            for a in parents[s]:
                kids[a] += tri[s]
                if not is_chosen[a]:
                    col_out[col[a]] += tri[s]
                    mine[a] += tri[s]
    rest = col_tot[col] - tri - (col_out[col] - mine)
    z_full, gap_full = two_sample_z(tri, rest, scale, var_floor)
    z_own, gap_own = two_sample_z(tri - kids, rest, scale, var_floor)
    return z_full, gap_full, z_own, gap_own


# --------------------------------------------------------------------------- vocabulary


class PredicateVocab:
    """Interned predicates: ``(column, value)`` <-> id in ``[1, 2**31)``, ``"name=value"`` text.

    Columns: ``model_version``, ``code[0] .. code[code_tables-1]``, then feature names, either
    the configured ones or (``features is None``) up to ``max_features`` names as first seen.
    At most ``max_predicates`` ids are live: when full, :meth:`encode` calls
    ``referenced()`` (ids still used by the cache) and frees the others for reuse (listed in
    ``freed`` until the next call, so the owner can forget them); when that frees nothing, the
    new values of the rest of the call are dropped (id 0) and counted in ``dropped``.
    """

    def __init__(self, *, code_tables: int, features: Sequence[str] | None, max_features: int,
                 max_predicates: int) -> None:
        self.code_tables = code_tables
        self.fixed_features = features is not None
        self.columns: list[str] = ["model_version", *(f"code[{k}]" for k in range(code_tables))]
        self.feature_base = len(self.columns)
        self.width = self.feature_base + (len(features) if features is not None else max_features)
        self.col_of: dict[str, int] = {}
        for name in features or ():
            self._add_column(name)
        self.max_predicates = max_predicates
        self.strings: list[str] = [""]  # id -> "name=value" ("" = free)
        self.cols: list[int] = [-1]  # id -> column
        self.by_col: list[dict[Any, int]] = [{} for _ in range(self.width)]
        self.free: list[int] = []
        self.freed: list[int] = []
        self.dropped = 0
        self._blocked = False
        self.col_arr = np.full(64, -1, dtype=np.int32)  # id -> column, as an array

    def _add_column(self, name: str) -> int | None:
        if len(self.columns) >= self.width:
            return None
        self.col_of[name] = len(self.columns)
        self.columns.append(name)
        return self.col_of[name]

    @property
    def live(self) -> int:
        """Number of ids in use."""
        return len(self.strings) - 1 - len(self.free)

    def _new(self, col: int, value: Any, referenced: Callable[[], np.ndarray]) -> int:
        if self.live >= self.max_predicates:
            if not self._blocked:
                self.freed += self.collect(referenced())
            if self.live >= self.max_predicates:
                self._blocked = True
                self.dropped += 1
                return 0
        text = f"{self.columns[col]}={value}"
        if self.free:
            pid = self.free.pop()
            self.strings[pid], self.cols[pid] = text, col
        else:
            pid = len(self.strings)
            self.strings.append(text)
            self.cols.append(col)
        self.by_col[col][value] = pid
        if pid >= self.col_arr.shape[0]:
            self.col_arr = np.concatenate((self.col_arr, np.full(self.col_arr.shape[0], -1, np.int32)))
        self.col_arr[pid] = col
        return pid

    def value_of(self, pid: int) -> Any:
        """The raw value of id ``pid`` (an ``int`` for code columns, else ``str``)."""
        col = self.cols[pid]
        text = self.strings[pid][len(self.columns[col]) + 1:]
        return int(text) if 1 <= col <= self.code_tables else text

    def collect(self, referenced: np.ndarray) -> list[int]:
        """Free every live id not in ``referenced`` (int array); returns the freed ids."""
        keep = set(np.unique(referenced).tolist())
        freed = []
        for pid in range(1, len(self.strings)):
            if self.strings[pid] and pid not in keep:
                del self.by_col[self.cols[pid]][self.value_of(pid)]
                self.strings[pid], self.cols[pid] = "", -1
                self.col_arr[pid] = -1
                self.free.append(pid)
                freed.append(pid)
        return freed

    def encode(self, records: Sequence[Any], referenced: Callable[[], np.ndarray]) -> np.ndarray:
        """``(n, width) int32`` predicate ids of error records (0 where absent or dropped).

        Only ``str`` feature values become predicates; dense (float) features are ignored.
        """
        width, fb, n_codes = self.width, self.feature_base, self.code_tables
        by_col, col_of, fixed = self.by_col, self.col_of, self.fixed_features
        flat = [0] * (len(records) * width)
        done = 0
        self.freed, self._blocked = [], False

        def ref() -> np.ndarray:  # ids referenced by the cache and by the rows encoded so far
            return np.concatenate((referenced(), np.asarray(flat[:done], dtype=np.int64)))

        versions = by_col[0]
        for i, rec in enumerate(records):
            base = i * width
            v = rec.model_version
            flat[base] = versions.get(v) or self._new(0, v, ref)
            if n_codes:
                codes = rec.codes
                for k in range(min(n_codes, len(codes))):
                    c = codes[k]
                    flat[base + 1 + k] = by_col[1 + k].get(c) or self._new(1 + k, c, ref)
            for name, v in rec.features.items():
                if v.__class__ is not str:
                    continue
                col = col_of.get(name)
                if col is None:
                    if fixed:
                        continue
                    col = self._add_column(name)
                    if col is None:
                        continue
                flat[base + col] = by_col[col].get(v) or self._new(col, v, ref)
            done = base + width
        return np.array(flat, dtype=np.int32).reshape(len(records), width)

    def state(self) -> dict[str, Any]:
        """Plain builtins for a snapshot."""
        return {"columns": self.columns, "strings": self.strings, "cols": self.cols,
                "free": self.free, "dropped": self.dropped}

    def load_state(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`state` (on a vocab built with the same configuration)."""
        self.columns = list(state["columns"])
        self.col_of = {name: j for j, name in enumerate(self.columns) if j >= self.feature_base}
        self.strings, self.cols = list(state["strings"]), [int(c) for c in state["cols"]]
        self.free, self.dropped = [int(x) for x in state["free"]], int(state["dropped"])
        self.by_col = [{} for _ in range(self.width)]
        self.col_arr = np.full(max(64, len(self.cols)), -1, dtype=np.int32)
        self.col_arr[: len(self.cols)] = self.cols
        for pid in range(1, len(self.strings)):
            if self.strings[pid]:
                self.by_col[self.cols[pid]][self.value_of(pid)] = pid


# --------------------------------------------------------------------------- recent records


class RecentRecords:
    """The last ``size`` records (a ring): predicate ids, residual, event time, error id.

    Used for what the pattern sums cannot answer: example error ids, the model versions
    of a slice, and overlaps between a candidate and the chosen schemata across columns.
    """

    def __init__(self, size: int, width: int) -> None:
        self.pids = np.zeros((size, width), np.int32)
        self.r = np.zeros(size)
        self.ts = np.full(size, -np.inf)
        self.ids = [""] * size
        self.count = 0  # records appended, ever

    def append(self, pids: np.ndarray, r: np.ndarray, ts: np.ndarray, ids: list[str]) -> None:
        """Add ``n`` records (arrays ``(n, width)`` and ``(n,)``), keeping the newest ``size``."""
        size, n = self.r.shape[0], len(ids)
        k = min(n, size)
        slots = (self.count + n - k + np.arange(k)) % size
        self.pids[slots], self.r[slots], self.ts[slots] = pids[n - k:], r[n - k:], ts[n - k:]
        for j, e in zip(slots.tolist(), ids[n - k:]):
            self.ids[j] = e
        self.count += n

    def forget(self, freed: list[int]) -> None:
        """Clear recycled predicate ids so that old records do not match their new meaning."""
        if freed:
            self.pids[np.isin(self.pids, freed)] = 0

    def member(self, key: int, cols: np.ndarray, memo: dict) -> np.ndarray:
        """``(size,) bool``: records in pattern ``key`` (``cols``: id -> column), memoised."""
        if key not in memo:
            hit = np.ones(self.r.shape[0], dtype=bool)
            for pid in split_key(key):
                hit &= self.pids[:, cols[pid]] == pid
            memo[key] = hit
        return memo[key]

    def explained(self, key: int, others: list[int], gap: float, frac: float, cols: np.ndarray,
                  now: float, decay_time_s: float, memo: dict) -> int:
        """Key of the chosen pattern in ``others`` that explains ``key``, or -1.

        Only overlaps across columns count: chosen parents and children of ``key`` are left out
        (the pair test and the child-pair rule handle them). On the recent records, weighted
        ``exp(-(now - ts) / decay_time_s)`` like the sums, ``key``'s excess error over the rest
        must show (at least ``frac * |gap|`` in the direction of ``gap``; otherwise it is kept
        and the sums decide); it is explained when, with the others' records removed from it
        and from the rest, less than ``frac`` of that excess is left. ``memo`` caches masks
        and weights for one evaluation.
        """
        mine = set(split_key(key))
        others = [o for o in others if not (set(split_key(o)) <= mine or mine <= set(split_key(o)))]
        if not others:
            return -1
        if "w" not in memo:  # decay weights (0 for empty slots), weights * residuals, totals
            memo["w"] = np.exp(np.minimum((self.ts - now) / decay_time_s, 0.0))
            memo["wr"] = memo["w"] * self.r
            memo["tot"] = (float(memo["w"].sum()), float(memo["wr"].sum()))
        w, wr = memo["w"], memo["wr"]

        def total(v: np.ndarray, m: np.ndarray) -> float:
            return float((v * m).sum())  # not BLAS: ddot threads spin on a busy machine

        inside = self.member(key, cols, memo)
        union = np.zeros_like(inside)
        for o in others:
            union |= self.member(o, cols, memo)
        n_in, s_in = total(w, inside), total(wr, inside)
        n_out, s_out = memo["tot"][0] - n_in, memo["tot"][1] - s_in
        if n_in < 2.0 or n_out < 2.0:
            return -1  # no recent evidence either way
        left, away = inside & ~union, union & ~inside
        n_left, s_left = total(w, left), total(wr, left)
        n_rest, s_rest = n_out - total(w, away), s_out - total(wr, away)
        sign = math.copysign(1.0, gap)
        full = (s_in / n_in - s_out / n_out) * sign  # what the sums see, on recent records
        if n_rest < 2.0 or full < frac * abs(gap):
            return -1
        if n_left >= 1.0 and (s_left / n_left - s_rest / n_rest) * sign >= frac * full:
            return -1
        overlap = [total(w, inside & self.member(o, cols, memo)) for o in others]
        return others[int(np.argmax(overlap))]

    def examples(self, key: int, direction: str, limit: int) -> tuple[list[str], list[int]]:
        """Newest error ids in pattern ``key`` erring in ``direction`` (``over``: ``y < p``), at
        most ``limit``, and the model-version ids (column 0) of its recent records."""
        size = self.r.shape[0]
        order = (self.count - 1 - np.arange(min(self.count, size))) % size
        rows = self.pids[order]
        hit = np.ones(order.shape[0], dtype=bool)
        for pid in split_key(key):
            hit &= (rows == pid).any(axis=1)
        sign = -1.0 if direction == "over" else 1.0
        chosen = order[hit & (self.r[order] * sign > 0)][:limit]
        return [self.ids[j] for j in chosen.tolist()], [v for v in np.unique(rows[hit, 0]).tolist() if v]

    def arrays(self) -> dict[str, np.ndarray]:
        """Plain arrays for a snapshot (ids go separately as JSON)."""
        return {"ring": self.pids, "ring_r": self.r, "ring_ts": self.ts}

    @property
    def nbytes(self) -> int:
        """Bytes held (arrays exactly, id strings approximately)."""
        strings = sum(sys.getsizeof(e) for e in self.ids) + sys.getsizeof(self.ids)
        return int(self.pids.nbytes + self.r.nbytes + self.ts.nbytes + strings)
