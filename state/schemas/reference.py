"""Plain-Python / numpy specifications of the kernels (:mod:`reloop.state.schemas.kernels`).

* :func:`space_saving_update_ref` -- the Space-Saving update (tests: bit for bit);
* :func:`overlap_sums_ref` -- the overlap sums on the recent-records ring (tests: bit for bit);
* :func:`explained_ref` -- the overlap check with boolean masks memoised per evaluation, run when
  :data:`reloop.state.schemas.kernels.USE_KERNELS` is False (tests compare decisions);
  :func:`overlap_explains` -- its decision, shared with the kernel path.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from reloop.state.schemas.kernels import (F_OWN, F_SUM_P, F_SUM_P2, F_SUM_R, F_SUM_R2, N_GLOBAL, N_STATS, OWN, PRIORITY, SUM_P,
                                   SUM_R, SUM_R2, SUM_Y, pair_key, split_key)
from reloop.state.schemas.ring_kernels import FIXED_ONE, fixed_point

if TYPE_CHECKING:
    from reloop.state.schemas.recent import RecentRecords

__all__ = ["decay_weights", "explained_ref", "overlap_explains", "overlap_sums_ref", "space_saving_update_ref"]


def space_saving_update_ref(pids: np.ndarray, pairable: np.ndarray, w: np.ndarray, wf: np.ndarray, r: np.ndarray,
                            y: np.ndarray, p: np.ndarray, ts: np.ndarray, keys: np.ndarray,
                            stats: np.ndarray, times: np.ndarray, meta: np.ndarray,
                            glob: np.ndarray) -> None:
    """Specification of :func:`reloop.state.schemas.kernels.space_saving_update`: a dict of slots and
    ``np.argmin`` eviction. Same arguments minus the heap and index; same results bit for bit.
    """
    capacity = keys.shape[0]
    slot_of = {int(k): s for s, k in enumerate(keys[: int(meta[0])])}

    def touch(key: int, vals: list[float], t: float) -> None:
        s = slot_of.get(key)
        if s is not None:
            for col, v in enumerate(vals):
                stats[s, col] += v
            times[s, 1] = max(times[s, 1], t)
            return
        base = 0.0
        if meta[0] < capacity:
            s = int(meta[0])
            meta[0] += 1
        else:
            s = int(np.argmin(stats[:, PRIORITY]))  # first minimum = smallest slot among ties
            base = float(stats[s, PRIORITY])
            del slot_of[int(keys[s])]
            meta[1] += 1
        slot_of[key] = s
        keys[s] = key
        stats[s] = (base + vals[0], *vals[1:])
        times[s] = (t, t)

    for i in range(pids.shape[0]):
        wi, wfi, ri, yi, pi = float(w[i]), float(wf[i]), float(r[i]), float(y[i]), float(p[i])
        wr, wfr, wfp = wi * ri, wfi * ri, wfi * pi
        vals = [0.0] * N_STATS
        vals[PRIORITY], vals[OWN], vals[SUM_R], vals[SUM_R2], vals[SUM_Y], vals[SUM_P] = (
            wi, wi, wr, wr * ri, wi * yi, wi * pi)
        vals[F_OWN], vals[F_SUM_R], vals[F_SUM_R2], vals[F_SUM_P], vals[F_SUM_P2] = wfi, wfr, wfr * ri, wfp, wfp * pi
        for col in range(N_GLOBAL):
            glob[col] += vals[col + 1]
        row = [(int(a), bool(pairable[j])) for j, a in enumerate(pids[i]) if a > 0]
        for a, _ in row:
            touch(a, vals, float(ts[i]))
        for j, (a, pa) in enumerate(row):
            for b, pb in row[j + 1:]:
                if pa and pb:
                    touch(pair_key(a, b), vals, float(ts[i]))


def _mask(pids: np.ndarray, ids: np.ndarray, cols: np.ndarray, count: int) -> np.ndarray:
    hit = np.ones(pids.shape[0], dtype=bool)
    for t in range(count):
        hit &= pids[:, cols[t]] == ids[t]
    return hit


def overlap_sums_ref(pids: np.ndarray, wq: np.ndarray, wrq: np.ndarray, key: np.ndarray, key_cols: np.ndarray,
                     others: np.ndarray, other_cols: np.ndarray, other_len: np.ndarray) -> np.ndarray:
    """Specification of one check of :func:`reloop.state.schemas.ring_kernels.overlap_sums`, then
    :func:`~reloop.state.schemas.ring_kernels.member_sums`, with boolean masks: ``(6 + K,) int64``
    (``key``/``key_cols``: the pattern's ids and columns; ``others[k, :other_len[k]]`` at
    ``other_cols[k]``: the other patterns)."""
    inside = _mask(pids, key, key_cols, len(key))
    masks = [_mask(pids, others[k], other_cols[k], int(other_len[k])) for k in range(len(other_len))]
    union = np.zeros_like(inside)
    for m in masks:
        union |= m
    left, away = inside & ~union, union & ~inside
    sums = [int((v * m).sum()) for m in (inside, left, away) for v in (wq, wrq)]
    return np.array(sums + [int((wq * (inside & m)).sum()) for m in masks], dtype=np.int64)


def decay_weights(ring: RecentRecords, now: float, decay_time_s: float, memo: dict) -> None:
    """Put the ring's decay weights ``exp(-(now - ts) / decay_time_s)`` (0 for empty slots) in
    fixed point (:func:`~reloop.state.schemas.ring_kernels.fixed_point`) in ``memo["wq"]``,
    weights x residuals in ``memo["wrq"]`` and their totals in ``memo["tot"]`` (ints), once per
    evaluation (``now``, ``decay_time_s``: s)."""
    if "wq" not in memo:
        w = np.exp(np.minimum((ring.ts - now) / decay_time_s, 0.0))
        memo["wq"], memo["wrq"] = fixed_point(w), fixed_point(w * ring.r)
        memo["tot"] = (int(memo["wq"].sum()), int(memo["wrq"].sum()))


def overlap_explains(sums: list[int], tot: tuple[int, int], gap: float, frac: float) -> bool:
    """The overlap check's decision from its fixed-point sums ``[n_in, s_in, n_left, s_left,
    n_away, s_away]`` and the ring's totals ``tot`` (see
    :meth:`~reloop.state.schemas.recent.RecentRecords.explained_many`). Differences are taken
    in integers (exact), then scaled to decayed record counts."""
    n_in, s_in, n_left, s_left, n_away, s_away = sums
    n_out, s_out = tot[0] - n_in, tot[1] - s_in
    n_rest, s_rest = n_out - n_away, s_out - s_away
    if n_in < 2.0 * FIXED_ONE or n_out < 2.0 * FIXED_ONE:
        return False  # no recent evidence either way
    sign = math.copysign(1.0, gap)
    full = (s_in / n_in - s_out / n_out) * sign  # what the sums see, on recent records
    if n_rest < 2.0 * FIXED_ONE or full < frac * abs(gap):
        return False
    return not (n_left >= FIXED_ONE and (s_left / n_left - s_rest / n_rest) * sign >= frac * full)


def explained_ref(ring: RecentRecords, key: int, others: list[int], gap: float, frac: float, cols: np.ndarray,
                  now: float, decay_time_s: float, memo: dict) -> int:
    """One check of :meth:`reloop.state.schemas.recent.RecentRecords.explained_many` with numpy
    masks of the whole ring (memoised per evaluation in ``memo``), several passes per call: the
    path when :data:`reloop.state.schemas.kernels.USE_KERNELS` is False, and for a batch of checks
    with more than 64 others in all."""
    mine = set(split_key(key))
    others = [o for o in others if not (set(split_key(o)) <= mine or mine <= set(split_key(o)))]
    if not others:
        return -1
    decay_weights(ring, now, decay_time_s, memo)
    wq, wrq = memo["wq"], memo["wrq"]

    def member(k: int) -> np.ndarray:
        if k not in memo:
            hit = np.ones(ring.r.shape[0], dtype=bool)
            for pid in split_key(k):
                hit &= ring.pids[:, cols[pid]] == pid
            memo[k] = hit
        return memo[k]

    inside = member(key)
    union = np.zeros_like(inside)
    for o in others:
        union |= member(o)
    left, away = inside & ~union, union & ~inside
    sums = [int((v * m).sum()) for m in (inside, left, away) for v in (wq, wrq)]
    if not overlap_explains(sums, memo["tot"], gap, frac):
        return -1
    overlap = [int((wq * (inside & member(o))).sum()) for o in others]
    return others[int(np.argmax(overlap))]
