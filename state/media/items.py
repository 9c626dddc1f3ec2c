"""The item content table of the media memory: ``item_id -> content embedding``, bounded LRU.

Content embeddings are learned from media events that carry an ``item_id`` (the latest
frame of the item wins); scoring looks candidates up here to match them against a user's
clip keys.
"""

from __future__ import annotations

import math
import sys
from collections import OrderedDict
from typing import Sequence

import numpy as np

__all__ = ["ItemContent"]


class ItemContent:
    """Bounded LRU map ``item_id -> latest content embedding``, learned from media events.

    Rows live in one ``(capacity, d) float32`` table (unit rows); a read or write moves the
    item to the most-recently-used end; past ``capacity`` the least recently used is evicted.
    "Latest" is by the event's ``(ts, segment_id)`` stamp, not by arrival: one item's frames
    come from many users, i.e. from many partitions whose interleaving differs between runs
    (and after a restart), so the content kept must not depend on it.
    """

    def __init__(self, dim: int, capacity: int) -> None:
        self.dim, self.capacity = int(dim), int(capacity)
        self.table = np.zeros((0, self.dim), dtype=np.float32)  # grows by doubling up to capacity
        self.rows: OrderedDict[str, int] = OrderedDict()
        self.stamps: dict[str, tuple[float, str]] = {}  # (event seconds, segment id) of the vector held

    def __len__(self) -> int:
        return len(self.rows)

    def update(self, item_ids: Sequence[str], embeddings: np.ndarray, ts: Sequence[float] | None = None,
               segment_ids: Sequence[str] | None = None) -> None:
        """Store ``(n, d) float32`` unit ``embeddings`` for ``item_ids``.

        With ``ts`` (event seconds) and ``segment_ids``, an item keeps the vector of its
        largest ``(ts, segment_id)`` so far, whatever the order of the calls; without them,
        later rows win (stamp ``(-inf, "")``, beaten by any stamped update).
        """
        rows, stamps = self.rows, self.stamps
        unstamped = (-math.inf, "")
        for k, (item_id, vec) in enumerate(zip(item_ids, embeddings)):
            stamp = unstamped if ts is None or segment_ids is None else (float(ts[k]), segment_ids[k])
            row = rows.get(item_id)
            if row is not None:
                rows.move_to_end(item_id)
                if stamp < stamps[item_id]:
                    continue  # an older frame than the one held: keep the content
            elif len(rows) < self.capacity:
                row = len(rows)
                if row >= self.table.shape[0]:
                    grown = np.zeros((min(self.capacity, max(64, 2 * row)), self.dim), np.float32)
                    grown[:row] = self.table[:row]
                    self.table = grown
                rows[item_id] = row
            else:
                evicted, row = rows.popitem(last=False)
                del stamps[evicted]
                rows[item_id] = row
            self.table[row] = vec
            stamps[item_id] = stamp

    def lookup(self, item_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """``(n, d) float32`` embeddings (zero rows when unknown) and ``(n,) bool`` known flags."""
        rows = self.rows
        idx = np.fromiter((rows.get(i, -1) for i in item_ids), dtype=np.int64, count=len(item_ids))
        known = idx >= 0
        for item_id, ok in zip(item_ids, known.tolist()):
            if ok:
                rows.move_to_end(item_id)
        out = np.zeros((len(item_ids), self.dim), dtype=np.float32)
        out[known] = self.table[idx[known]]
        return out, known

    @property
    def nbytes(self) -> int:
        """Bytes of the table plus the id map and stamps (strings included)."""
        ids = sum(sys.getsizeof(k) for k in self.rows)
        stamps = sum(sys.getsizeof(st) + sys.getsizeof(st[1]) + 24 for st in self.stamps.values())
        return int(self.table.nbytes + sys.getsizeof(self.rows) + sys.getsizeof(self.stamps) + ids + stamps)

    def snapshot(self) -> dict[str, np.ndarray]:
        """``item_ids`` (str, LRU order, oldest first), ``item_vectors (n, d) float32`` and the
        stamps of those vectors: ``item_ts (n,) float64``, ``item_segments (n,) str``."""
        ids = list(self.rows)
        vectors = self.table[np.array([self.rows[i] for i in ids], dtype=np.int64)].reshape(len(ids), self.dim)
        return {"item_ids": np.array(ids, dtype=str), "item_vectors": vectors,
                "item_ts": np.array([self.stamps[i][0] for i in ids], dtype=np.float64),
                "item_segments": np.array([self.stamps[i][1] for i in ids], dtype=str)}

    def restore(self, snap: dict[str, np.ndarray]) -> None:
        """Replace the contents with a :meth:`snapshot` (one without stamps: all ``(-inf, "")``)."""
        self.table = np.zeros((0, self.dim), dtype=np.float32)
        self.rows, self.stamps = OrderedDict(), {}
        ids = [str(i) for i in np.asarray(snap["item_ids"]).tolist()]
        ts = np.asarray(snap["item_ts"], np.float64) if "item_ts" in snap else None
        segments = [str(x) for x in np.asarray(snap["item_segments"]).tolist()] if "item_segments" in snap else None
        if (ts is None) != (segments is None) or (ts is not None and not len(ts) == len(segments) == len(ids)):
            raise ValueError("item stamps do not match the item ids")
        self.update(ids, np.asarray(snap["item_vectors"], np.float32).reshape(len(ids), self.dim), ts, segments)
