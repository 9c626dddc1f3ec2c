"""The recent-records ring of the error-schema cache (examples, model versions, overlaps)."""

from __future__ import annotations

import math
import sys

import numpy as np

from reloop.state.schemas.kernels import split_key

__all__ = ["RecentRecords"]


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
