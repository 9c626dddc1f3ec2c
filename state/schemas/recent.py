"""The recent-records ring of the error-schema cache (examples, model versions, overlaps)."""

from __future__ import annotations

import math
import sys

import numpy as np

from reloop.state.schemas import kernels
from reloop.state.schemas.kernels import split_key
from reloop.state.schemas.ring_kernels import key_rows, mark_members, marked_rows, ring_sums_rows
from reloop.state.schemas.reference import decay_weights, explained_ref

__all__ = ["RecentRecords"]

_BITS = 64  # patterns marked at once in the membership bits of one evaluation


class RecentRecords:
    """The last ``size`` records (a ring): predicate ids, residual, event time, error id.

    Used for what the pattern sums cannot answer: example error ids, the model versions
    of a slice, and overlaps between a candidate and the chosen schemata across columns.
    """

    def __init__(self, size: int, width: int) -> None:
        # column-major: the overlap check reads one or two columns of every record
        self.pids = np.zeros((size, width), np.int32, order="F")
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

    def explained(self, key: int, others: list[int], gap: float, frac: float, cols: np.ndarray,
                  now: float, decay_time_s: float, memo: dict) -> int:
        """Key of the chosen pattern in ``others`` that explains ``key``, or -1.

        Only overlaps across columns count: chosen parents and children of ``key`` are left out
        (the pair test and the child-pair rule handle them). On the recent records, weighted
        ``exp(-(now - ts) / decay_time_s)`` like the sums, ``key``'s excess error over the rest
        must show (at least ``frac * |gap|`` in the direction of ``gap``; otherwise it is kept
        and the sums decide); it is explained when, with the others' records removed from it
        and from the rest, less than ``frac`` of that excess is left. ``memo`` caches the
        weights for one evaluation (``cols``: predicate id -> column; ``now``, ``decay_time_s``: s).

        All sums come from :func:`~reloop.state.schemas.ring_kernels.ring_sums_rows` (numba, GIL
        released) over ``key``'s rows (``memo["rows", key]``) and the rows of the others' membership bits
        (``memo["bits"]``, marked once per evaluation, :meth:`_masks`; ``memo["marked"]``); they
        are bit-identical to the numpy masks
        of :func:`~reloop.state.schemas.reference.explained_ref`, which runs instead when
        :data:`reloop.state.schemas.kernels.USE_KERNELS` is False (and for a call with more than
        64 others).
        """
        if not kernels.USE_KERNELS:
            return explained_ref(self, key, others, gap, frac, cols, now, decay_time_s, memo)
        others = _across(key, others)
        if not others:
            return -1
        decay_weights(self, now, decay_time_s, memo)
        masks = self._masks(others, cols, memo)
        if masks is None:  # more than 64 others in one call: no bits for them
            return explained_ref(self, key, others, gap, frac, cols, now, decay_time_s, memo)
        rows = memo.get(("rows", key))  # the ring does not change during one evaluation
        if rows is None:  # (int keys of the memo are explained_ref's masks)
            key_ids = np.array(split_key(key), np.int64)
            rows = memo["rows", key] = key_rows(self.pids, key_ids, cols[key_ids])
        if memo.get("marked") is None:
            memo["marked"] = marked_rows(memo["bits"])
        sums = ring_sums_rows(self.r.shape[0], memo["w"], memo["wr"], rows, memo["marked"], memo["bits"], masks)
        n_in, s_in = sums[:2].tolist()
        n_out, s_out = memo["tot"][0] - n_in, memo["tot"][1] - s_in
        if n_in < 2.0 or n_out < 2.0:
            return -1  # no recent evidence either way
        sign = math.copysign(1.0, gap)
        full = (s_in / n_in - s_out / n_out) * sign  # what the sums see, on recent records
        n_left, s_left, n_away, s_away = sums[2:6].tolist()
        n_rest, s_rest = n_out - n_away, s_out - s_away
        if n_rest < 2.0 or full < frac * abs(gap):
            return -1
        if n_left >= 1.0 and (s_left / n_left - s_rest / n_rest) * sign >= frac * full:
            return -1
        return others[int(np.argmax(sums[6:]))]

    def _masks(self, others: list[int], cols: np.ndarray, memo: dict) -> np.ndarray | None:
        """``(K,) uint64``: the bit of each pattern of ``others`` in ``memo["bits"]`` (``(size,)
        uint64``, one bit per pattern marked in this evaluation; the ring does not change during
        one). Unmarked ones are marked (one pass each); when the 64 bits are used up they are
        reassigned to ``others``. None if ``others`` has more than 64 patterns."""
        if len(others) > _BITS:
            return None
        if "bits" not in memo:
            memo["bits"], memo["bit_of"] = np.zeros(self.r.shape[0], np.uint64), {}
        bit_of: dict[int, int] = memo["bit_of"]
        new = [o for o in others if o not in bit_of]
        if new and len(bit_of) + len(new) > _BITS:
            bit_of.clear()
            new = others
        for o in new:
            bit_of[o] = len(bit_of)
            ids = np.array(split_key(o), np.int64)
            mark_members(self.pids, memo["bits"], bit_of[o], ids, cols[ids].astype(np.int64))
            memo["marked"] = None  # the rows with a bit set changed
        return np.array([1 << bit_of[o] for o in others], np.uint64)

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


def _across(key: int, others: list[int]) -> list[int]:
    """``others`` without ``key``'s parents and children (patterns whose ids contain or are
    contained in ``key``'s): ``set(split_key(o)) <= mine or mine <= set(split_key(o))``, in
    integer tests."""
    if key < (1 << 32):  # a single: drop itself and the pairs holding it
        return [o for o in others if o != key and (o < (1 << 32) or (o >> 32 != key and o & 0xFFFFFFFF != key))]
    a, b = key >> 32, key & 0xFFFFFFFF  # a pair: drop itself and its two singles
    return [o for o in others if o != key and o != a and o != b]
