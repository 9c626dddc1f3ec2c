"""Pending predictions: what was scored and shown, waiting for its label.

A pending prediction is keyed by ``(request_id, item_id)`` and lives until feedback joins it
or its attribution window (event time) closes, at which point an unlabelled impression
becomes a negative. Interactions that arrive before their request (the two topics are read
independently) wait as *orphans* until the request arrives or their own window closes.

The store is plain Python state (dicts and a heap) so it snapshots to JSON-able builtins.
"""

from __future__ import annotations

import heapq
from typing import Iterator, NamedTuple

from streams.events import Features, Interaction


class Pending(NamedTuple):
    """One scored candidate awaiting feedback.

    ``codes`` are the error-memory bucket indices (K ints; empty without error memory),
    kept so that feedback writes need no re-hashing.
    """

    request_id: str
    item_id: str
    user_id: str
    ts: float
    base_pred: float
    comp_pred: float
    model_version: str
    codes: tuple[int, ...]
    features: Features


class PendingStore:
    """Pending predictions and orphan interactions, expired by event-time watermark.

    >>> s = PendingStore(window_s=10.0)
    >>> s.add(Pending("r1", "i1", "u1", 100.0, 0.3, 0.3, "v1", (), {}))
    >>> s.take("r1", "i1").base_pred, s.take("r1", "i1")
    (0.3, None)
    """

    def __init__(self, window_s: float, limit: int = 1_000_000) -> None:
        self.window_s = window_s
        self.limit = limit
        self._items: dict[tuple[str, str], Pending] = {}
        self._orphans: dict[tuple[str, str], Interaction] = {}
        self._resolved: dict[tuple[str, str], float] = {}  # joined keys -> window end
        self._deadlines: list[tuple[float, str, str]] = []  # heap of (expire_ts, request, item)
        self.watermark = 0.0

    def __len__(self) -> int:
        return len(self._items)

    @property
    def orphan_count(self) -> int:
        return len(self._orphans)

    def add(self, p: Pending) -> None:
        """Register a scored candidate. A re-delivered duplicate replaces itself, and one whose
        feedback was already joined is ignored (so a redelivery never yields a false negative)."""
        key = (p.request_id, p.item_id)
        if key in self._resolved:
            return
        if key not in self._items:
            heapq.heappush(self._deadlines, (p.ts + self.window_s, p.request_id, p.item_id))
        self._items[key] = p
        self.watermark = max(self.watermark, p.ts)

    def take(self, request_id: str, item_id: str) -> Pending | None:
        """Remove and return the pending prediction, or None if absent or already taken."""
        p = self._items.pop((request_id, item_id), None)
        if p is not None:
            self._resolved[(request_id, item_id)] = p.ts + self.window_s
        return p

    def park_orphan(self, it: Interaction) -> None:
        """Keep an interaction whose request has not been seen yet."""
        assert it.request_id is not None
        self._orphans[(it.request_id, it.item_id)] = it
        heapq.heappush(self._deadlines, (it.ts + self.window_s, it.request_id, it.item_id))

    def claim_orphan(self, request_id: str, item_id: str) -> Interaction | None:
        """The orphan waiting for this candidate, if any (removed)."""
        return self._orphans.pop((request_id, item_id), None)

    def advance(self, watermark: float) -> Iterator[tuple[Pending | None, Interaction | None]]:
        """Move the watermark and yield what expired: ``(pending, None)`` for an unlabelled
        impression (a negative), ``(None, orphan)`` for feedback whose request never came."""
        self.watermark = max(self.watermark, watermark)
        while self._deadlines and (self._deadlines[0][0] <= self.watermark
                                   or len(self._items) > self.limit):
            _, rid, iid = heapq.heappop(self._deadlines)
            self._resolved.pop((rid, iid), None)
            p = self._items.pop((rid, iid), None)
            if p is not None:
                yield p, None
            o = self._orphans.pop((rid, iid), None)
            if o is not None:
                yield None, o

    def drain(self) -> Iterator[tuple[Pending | None, Interaction | None]]:
        """Expire everything (end of a finite replay)."""
        yield from self.advance(float("inf"))
