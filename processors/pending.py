"""Pending predictions: what was scored and shown, waiting for its labels.

Predictions are grouped by request. A candidate's label is known when an interaction for it
arrives; a request *resolves* when every candidate has a label, or when the event-time
watermark passes ``request ts + window`` (then unlabelled impressions are negatives). All of
a request's labelled predictions leave the store together when it resolves. Holding early
clicks until their request resolves keeps the error memory unbiased: otherwise positives
(which arrive within seconds) would be written long before the negatives (which are only known
when the window closes), and compensation would drift upwards.

Interactions that arrive before their request (the topics are read independently) wait as
*orphans* until the request arrives or their own window closes.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Iterator, NamedTuple

import msgspec

from streams.events import Features, Interaction


class Pending(NamedTuple):
    """One scored candidate awaiting feedback.

    ``codes`` are the error-memory bucket indices (K, packed as in
    :func:`streams.events.pack_codes`; empty without error memory), kept so that feedback
    writes need no re-hashing. Checkpoints written before 2026-11-29 hold a tuple of ints.
    """

    request_id: str
    item_id: str
    user_id: str
    ts: float
    base_pred: float
    comp_pred: float
    model_version: str
    codes: bytes | tuple[int, ...]
    features: Features


class Resolved(NamedTuple):
    """A prediction with its final label.

    Its event time is the prediction's (``pending.ts``, the request's time): every record of
    one resolved request carries that one clock (docs/guarantees.md, "Event time").
    ``label_ts`` is when the label became final: the click's own time for a positive, the
    window's end (``request ts + window``) for a negative.
    """

    pending: Pending
    label: int
    label_ts: float


@dataclass
class _Request:
    deadline: float
    items: dict[str, Pending] = field(default_factory=dict)
    labels: dict[str, tuple[int, float]] = field(default_factory=dict)


class PendingStore:
    """Pending predictions by request, and orphan interactions, expired by watermark.

    >>> s = PendingStore(window_s=10.0)
    >>> s.add(Pending("r1", "i1", "u1", 100.0, 0.3, 0.3, "v1", (), {}))
    >>> s.add(Pending("r1", "i2", "u1", 100.0, 0.6, 0.6, "v1", (), {}))
    >>> s.label("r1", "i1", 1, 101.0)
    ('joined', [])
    >>> [(r.pending.item_id, r.label) for r in s.advance(110.0)]
    [('i1', 1), ('i2', 0)]
    """

    def __init__(self, window_s: float, limit: int = 1_000_000) -> None:
        self.window_s = window_s
        self.limit = limit
        self._requests: dict[str, _Request] = {}
        self._orphans: dict[tuple[str, str], Interaction] = {}
        self._resolved: dict[str, float] = {}  # request ids resolved -> deadline (dedupe)
        self._deadlines: list[tuple[float, int, str]] = []  # (time, kind 0=req 1=orphan 2=forget, id)
        self._size = 0
        self.watermark = 0.0

    def __len__(self) -> int:
        """Number of pending (not yet resolved) predictions."""
        return self._size

    @property
    def orphan_count(self) -> int:
        return len(self._orphans)

    def add(self, p: Pending) -> None:
        """Register a scored candidate. A redelivered request that already resolved is ignored,
        so a duplicate never yields a second record or a false negative."""
        if p.request_id in self._resolved:
            return
        req = self._requests.get(p.request_id)
        if req is None:
            req = self._requests[p.request_id] = _Request(p.ts + self.window_s)
            heapq.heappush(self._deadlines, (req.deadline, 0, p.request_id))
        if p.item_id not in req.items:
            self._size += 1
        req.items[p.item_id] = p

    def label(self, request_id: str, item_id: str, label: int, ts: float) -> tuple[str, list[Resolved]]:
        """Record a label. Returns (status, resolved) where status is ``joined``,
        ``duplicate`` (already labelled or resolved), ``late`` (event time past the request's
        window: not attributed, so the label never depends on when the window happened to be
        closed) or ``unknown`` (no such prediction), and
        ``resolved`` holds the request's predictions if this label completed it."""
        resolved_deadline = self._resolved.get(request_id)
        if resolved_deadline is not None:
            return ("late" if ts > resolved_deadline else "duplicate"), []
        req = self._requests.get(request_id)
        if req is None or item_id not in req.items:
            return "unknown", []
        if ts > req.deadline:  # outside the attribution window, whether or not it has closed yet
            return "late", []
        if item_id in req.labels:
            return "duplicate", []
        req.labels[item_id] = (label, ts)
        if len(req.labels) == len(req.items):
            return "joined", self._resolve(request_id)
        return "joined", []

    def _resolve(self, request_id: str) -> list[Resolved]:
        req = self._requests.pop(request_id)
        self._resolved[request_id] = req.deadline
        # remembered for one more window (a redelivery or late click is recognised), then
        # forgotten, so the store stays bounded
        heapq.heappush(self._deadlines, (req.deadline + self.window_s, 2, request_id))
        self._size -= len(req.items)
        out = []
        for item_id, p in req.items.items():
            label, ts = req.labels.get(item_id, (0, req.deadline))
            out.append(Resolved(p, label, max(ts, p.ts)))  # label_ts
        return out

    def park_orphan(self, it: Interaction) -> None:
        """Keep an interaction whose request has not been seen yet."""
        assert it.request_id is not None
        key = (it.request_id, it.item_id)
        if key not in self._orphans:
            self._orphans[key] = it
            heapq.heappush(self._deadlines, (it.ts + self.window_s, 1, f"{it.request_id}\x00{it.item_id}"))

    def claim_orphan(self, request_id: str, item_id: str) -> Interaction | None:
        """The orphan waiting for this candidate, if any (removed)."""
        return self._orphans.pop((request_id, item_id), None)

    def advance(self, watermark: float) -> Iterator[Resolved | Interaction]:
        """Move the watermark; yield resolved predictions of requests whose window closed
        (in deadline order) and orphans whose request never came (``Interaction``)."""
        self.watermark = max(self.watermark, watermark)
        while self._deadlines and (self._deadlines[0][0] <= self.watermark or self._size > self.limit):
            deadline, kind, ident = heapq.heappop(self._deadlines)
            if kind == 0:
                if ident in self._requests:
                    yield from self._resolve(ident)
            elif kind == 2:
                self._resolved.pop(ident, None)
            else:
                rid, _, iid = ident.partition("\x00")
                orphan = self._orphans.pop((rid, iid), None)
                if orphan is not None:
                    yield orphan

    def drain(self) -> Iterator[Resolved | Interaction]:
        """Resolve everything (end of a finite log)."""
        yield from self.advance(float("inf"))

    # ---- snapshots -------------------------------------------------------------------------
    def to_state(self) -> bytes:
        """The whole store as msgpack bytes (insertion and heap orders kept, so a restored
        store resolves in exactly the same order as the original)."""
        return msgspec.msgpack.encode(_StoreState(
            window_s=self.window_s, limit=self.limit, watermark=self.watermark, size=self._size,
            requests=[_RequestState(rid, r.deadline, list(r.items.values()),
                                    [(i, lab, ts) for i, (lab, ts) in r.labels.items()])
                      for rid, r in self._requests.items()],
            orphans=list(self._orphans.values()), resolved=list(self._resolved.items()),
            deadlines=self._deadlines))

    @classmethod
    def from_state(cls, raw: bytes) -> PendingStore:
        """Rebuild a store written by :meth:`to_state`."""
        st = msgspec.msgpack.decode(raw, type=_StoreState)
        store = cls(st.window_s, st.limit)
        store.watermark, store._size = st.watermark, st.size
        for r in st.requests:
            store._requests[r.request_id] = _Request(r.deadline, {p.item_id: p for p in r.items},
                                                     {i: (lab, ts) for i, lab, ts in r.labels})
        store._orphans = {(it.request_id or "", it.item_id): it for it in st.orphans}
        store._resolved = dict(st.resolved)
        store._deadlines = [tuple(d) for d in st.deadlines]  # type: ignore[misc]
        return store


class _RequestState(msgspec.Struct, array_like=True):
    request_id: str
    deadline: float
    items: list[Pending]
    labels: list[tuple[str, int, float]]


class _StoreState(msgspec.Struct, array_like=True):
    window_s: float
    limit: int
    watermark: float
    size: int
    requests: list[_RequestState]
    orphans: list[Interaction]
    resolved: list[tuple[str, float]]
    deadlines: list[tuple[float, int, str]]
