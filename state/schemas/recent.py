"""The recent-records ring of the error-schema cache (examples, model versions, overlaps)."""

from __future__ import annotations

import sys

import numpy as np

from reloop.state.schemas import kernels
from reloop.state.schemas.kernels import split_key
from reloop.state.schemas.reference import decay_weights, explained_ref, overlap_explains
from reloop.state.schemas.ring_kernels import key_rows, mark_members, member_sums, overlap_sums

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
        """One check of :meth:`explained_many`: the key in ``others`` that explains ``key``, or -1."""
        return self.explained_many([(key, others, gap, frac)], cols, now, decay_time_s, memo)[0]

    def explained_many(self, checks: list[tuple[int, list[int], float, float]], cols: np.ndarray,
                       now: float, decay_time_s: float, memo: dict) -> list[int]:
        """For each check ``(key, others, gap, frac)``: the key of the pattern in ``others`` that
        explains ``key``, or -1.

        Only overlaps across columns count: ``key``'s parents and children among ``others`` are
        left out (the pair test and the child-pair rule handle them). On the recent records,
        weighted ``exp(-(now - ts) / decay_time_s)`` like the sums, ``key``'s excess error over
        the rest must show (at least ``frac * |gap|`` in the direction of ``gap``; otherwise it
        is kept and the sums decide); it is explained when, with the others' records removed
        from it and from the rest, less than ``frac`` of that excess is left; then by the other
        pattern that covers most of it. ``memo`` caches the weights, membership bits and rows of
        one evaluation (the ring does not change during one); ``cols``: predicate id -> column;
        ``now``, ``decay_time_s``: s.

        All the checks' sums come from one pass of
        :func:`~reloop.state.schemas.ring_kernels.overlap_sums` (numba, GIL released) over each
        key's rows and the ring's membership bits of the others (:meth:`_bits`). A key's union of
        the others is kept for the evaluation (``memo["unions"]``, with the widest of the last
        call): checked again against more others (the next round's set), only the added
        patterns' rows are visited. The sums are exact fixed-point integers, so they equal the
        numpy masks of :func:`~reloop.state.schemas.reference.explained_ref` bit for bit, and
        both paths decide with :func:`~reloop.state.schemas.reference.overlap_explains`. ``explained_ref`` runs
        instead when :data:`reloop.state.schemas.kernels.USE_KERNELS` is False, and when the
        checks name more than 64 others in all.
        """
        across = [_across(key, others) for key, others, _, _ in checks]
        bit_of = self._bits({o for a in across for o in a}, cols, memo) if kernels.USE_KERNELS else None
        if bit_of is None:
            return [explained_ref(self, key, others, gap, frac, cols, now, decay_time_s, memo)
                    for key, others, gap, frac in checks]
        answers = [-1] * len(checks)
        live = [j for j, a in enumerate(across) if a]
        if not live:
            return answers
        decay_weights(self, now, decay_time_s, memo)
        rows = [self._rows(checks[j][0], cols, memo) for j in live]
        masks = [[1 << bit_of[o] for o in across[j]] for j in live]
        oms = [sum(m) for m in masks]
        # key -> its last union (bits, sums); None -> the largest union of the last call
        unions: dict[int | None, tuple[int, int, int]] = memo["unions"]
        last = [_grows_from(unions.get(checks[j][0]), om) or _grows_from(unions.get(None), om)
                for j, om in zip(live, oms)]
        scan = None  # every row, unless each union grows from its last one (a round adds one pattern)
        if all(u is not None for u in last):
            grown = 0
            for om, u in zip(oms, last):
                grown |= om & ~u[0]
            added = [self._rows(o, cols, memo) for o, b in bit_of.items() if (grown >> b) & 1]
            scan = np.unique(np.concatenate(added or [np.zeros(0, np.int64)]))  # each row once
        sums = overlap_sums(memo["wq"], memo["wrq"], memo["bits"], rows, np.array(oms, np.uint64),
                            np.array([u[0] if u else 0 for u in last], np.uint64),
                            np.array([u[1:] if u else (0, 0) for u in last], np.int64), scan).tolist()
        for t, j in enumerate(live):
            unions[checks[j][0]] = (oms[t], sums[t][6], sums[t][7])
        widest = max(range(len(live)), key=lambda t: oms[t].bit_count())
        unions[None] = (oms[widest], sums[widest][6], sums[widest][7])
        for t, j in enumerate(live):
            if overlap_explains(sums[t][:6], memo["tot"], checks[j][2], checks[j][3]):
                cover = member_sums(memo["wq"], memo["bits"], rows[t], np.array(masks[t], np.uint64))
                answers[j] = across[j][int(np.argmax(cover))]
        return answers

    def _rows(self, key: int, cols: np.ndarray, memo: dict) -> np.ndarray:
        """The ring rows inside pattern ``key`` (memoised per evaluation)."""
        rows = memo.get(("rows", key))
        if rows is None:  # (int keys of the memo are explained_ref's masks)
            key_ids = np.array(split_key(key), np.int64)
            rows = memo["rows", key] = key_rows(self.pids, key_ids, cols[key_ids])
        return rows

    def _bits(self, patterns: set[int], cols: np.ndarray, memo: dict) -> dict[int, int] | None:
        """Pattern -> its bit in ``memo["bits"]`` (``(size,) uint64``, one bit per pattern marked
        in this evaluation; the ring does not change during one), for at least ``patterns``.
        Unmarked ones are marked (one pass each); when the 64 bits are used up they are
        reassigned to ``patterns``. None if there are more than 64 of them."""
        if len(patterns) > _BITS:
            return None
        if "bits" not in memo:
            memo["bits"], memo["bit_of"], memo["unions"] = np.zeros(self.r.shape[0], np.uint64), {}, {}
        bit_of: dict[int, int] = memo["bit_of"]
        new = sorted(o for o in patterns if o not in bit_of)
        if new and len(bit_of) + len(new) > _BITS:
            bit_of.clear()
            memo["unions"].clear()  # their bits mean other patterns now
            new = sorted(patterns)
        for o in new:
            bit_of[o] = len(bit_of)
            ids = np.array(split_key(o), np.int64)
            mark_members(self.pids, memo["bits"], bit_of[o], ids, cols[ids].astype(np.int64))
        return bit_of

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


def _grows_from(union: tuple[int, int, int] | None, om: int) -> tuple[int, int, int] | None:
    """``union`` if its bits are a subset of ``om`` (the union of ``om`` grows from it), else None."""
    return union if union is not None and union[0] & ~om == 0 else None


def _across(key: int, others: list[int]) -> list[int]:
    """``others`` without ``key``'s parents and children (patterns whose ids contain or are
    contained in ``key``'s): ``set(split_key(o)) <= mine or mine <= set(split_key(o))``, in
    integer tests."""
    if key < (1 << 32):  # a single: drop itself and the pairs holding it
        return [o for o in others if o != key and (o < (1 << 32) or (o >> 32 != key and o & 0xFFFFFFFF != key))]
    a, b = key >> 32, key & 0xFFFFFFFF  # a pair: drop itself and its two singles
    return [o for o in others if o != key and o != a and o != b]
