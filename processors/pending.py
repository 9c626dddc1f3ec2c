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

import hashlib
import heapq
import sys
from dataclasses import dataclass, field
from typing import Iterator, NamedTuple

import msgspec

from reloop.streams.events import DerivedFeatures, Interaction


class Pending(NamedTuple):
    """One scored candidate awaiting feedback.

    ``codes`` are the error-memory bucket indices (K, packed as in
    :func:`reloop.streams.events.pack_codes`; empty without error memory), kept so that feedback
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
    features: DerivedFeatures


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


class _Request:
    """A pending request: its window's end (event-time s), its scored candidates by item id,
    and the labels so far (item id -> (label, label time)). Slotted: one per request."""

    __slots__ = ("deadline", "items", "labels")

    def __init__(self, deadline: float, items: dict[str, Pending] | None = None,
                 labels: dict[str, tuple[int, float]] | None = None) -> None:
        self.deadline = deadline
        self.items: dict[str, Pending] = {} if items is None else items
        self.labels: dict[str, tuple[int, float]] = {} if labels is None else labels

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Request) and (self.deadline, self.items, self.labels) == (
            other.deadline, other.items, other.labels)

    def __repr__(self) -> str:
        return f"_Request(deadline={self.deadline!r}, items={self.items!r}, labels={self.labels!r})"


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
        self.limit = limit  # pending predictions + orphans held, most
        self._requests: dict[str, _Request] = {}
        self._orphans: dict[tuple[str, str], Interaction] = {}
        self._resolved: dict[str, float] = {}  # request ids resolved -> deadline (dedupe)
        self._digests: dict[str, int] = {}  # request id -> content digest, while the id is known
        self._deadlines: list[tuple[float, int, str]] = []  # (time, kind 0=req 1=orphan 2=forget, id)
        self._size = 0
        self.watermark = 0.0
        # keys changed since the last :meth:`take_dirty` (for the changelog; None = not tracked)
        self.dirty: _Dirty | None = None

    def __len__(self) -> int:
        """Number of pending (not yet resolved) predictions."""
        return self._size

    @property
    def orphan_count(self) -> int:
        return len(self._orphans)

    @property
    def held(self) -> int:
        """Pending predictions plus orphans: what :attr:`limit` bounds."""
        return self._size + len(self._orphans)

    def remember(self, request_id: str, digest: int) -> None:
        """Keep the content digest of a scored request (:func:`request_digest`) for as long as
        its id is known (pending, then one window after it resolved)."""
        self._digests.setdefault(request_id, digest)
        if self.dirty is not None:
            self.dirty.requests.add(request_id)

    def digest_of(self, request_id: str) -> int | None:
        """The digest a request id was first scored with, or None if the id is not known."""
        return self._digests.get(request_id)

    def approx_nbytes(self, sample: int = 32) -> int:
        """Approximate bytes held (pending predictions, orphans, resolved ids): the measured
        size of up to ``sample`` requests and orphans, scaled to all of them."""
        n_req = len(self._requests)
        per_req, k = 0, 0
        for req in self._requests.values():
            per_req += deep_size(req.items) + deep_size(req.labels)
            k += 1
            if k >= sample:
                break
        total = (per_req // max(k, 1)) * n_req
        orphans = list(self._orphans.values())[:sample]
        if orphans:
            total += sum(deep_size(o) for o in orphans) // len(orphans) * len(self._orphans)
        total += (sys.getsizeof(self._requests) + sys.getsizeof(self._orphans) + sys.getsizeof(self._resolved)
                  + sys.getsizeof(self._digests) + 80 * (len(self._resolved) + len(self._digests))
                  + sys.getsizeof(self._deadlines) + 90 * len(self._deadlines))
        return int(total)

    def add(self, p: Pending) -> None:
        """Register a scored candidate. A redelivered request that already resolved is ignored,
        so a duplicate never yields a second record or a false negative."""
        if p.request_id in self._resolved:
            return
        rid = p.request_id
        req = self._requests.get(rid)
        dirty = self.dirty
        if req is None:
            req = self._requests[rid] = _Request(p.ts + self.window_s)
            heapq.heappush(self._deadlines, (req.deadline, 0, rid))
            if dirty is not None and rid not in dirty.resolved:
                dirty.created.add(rid)  # not pending when last read: the changelog holds no req/lab of it
        if p.item_id not in req.items:
            self._size += 1
        req.items[p.item_id] = p
        if dirty is not None:
            dirty.requests.add(rid)

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
        if self.dirty is not None:
            self.dirty.requests.add(request_id)
        if len(req.labels) == len(req.items):
            return "joined", self._resolve(request_id)
        return "joined", []

    def _resolve(self, request_id: str) -> list[Resolved]:
        req = self._requests.pop(request_id)
        self._resolved[request_id] = req.deadline
        if self.dirty is not None:
            self.dirty.requests.add(request_id)
            self.dirty.resolved.add(request_id)
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
            if self.dirty is not None:
                self.dirty.orphans.add(key)
            heapq.heappush(self._deadlines, (it.ts + self.window_s, 1, _join_pair(it.request_id, it.item_id)))

    def claim_orphan(self, request_id: str, item_id: str) -> Interaction | None:
        """The orphan waiting for this candidate, if any (removed)."""
        it = self._orphans.pop((request_id, item_id), None)
        if it is not None and self.dirty is not None:
            self.dirty.orphans.add((request_id, item_id))
        return it

    def _forget(self, request_id: str) -> None:
        self._resolved.pop(request_id, None)
        self._digests.pop(request_id, None)
        if self.dirty is not None:
            self.dirty.resolved.add(request_id)

    def _pop_orphan(self, ident: str) -> Interaction | None:
        key = _split_pair(ident)
        orphan = self._orphans.pop(key, None)
        if orphan is not None and self.dirty is not None:
            self.dirty.orphans.add(key)
        return orphan

    def take_dirty(self) -> _Dirty:
        """The keys changed since the last call (requests, resolved ids, orphans), and track
        anew (:mod:`reloop.processors.changelog` writes them)."""
        out, self.dirty = self.dirty or _Dirty(), _Dirty()
        return out

    def advance(self, watermark: float) -> Iterator[Resolved | Interaction]:
        """Move the watermark; yield resolved predictions of requests whose window closed
        (in deadline order) and orphans whose request never came (``Interaction``)."""
        self.watermark = max(self.watermark, watermark)
        while self._deadlines and (self._deadlines[0][0] <= self.watermark
                                   or self._size + len(self._orphans) > self.limit):
            deadline, kind, ident = heapq.heappop(self._deadlines)
            if kind == 0:
                if ident in self._requests:
                    yield from self._resolve(ident)
            elif kind == 2:
                self._forget(ident)
            else:
                orphan = self._pop_orphan(ident)
                if orphan is not None:
                    yield orphan

    def expire_oldest(self) -> list[Resolved | Interaction]:
        """Force out the entry with the earliest deadline, whatever the watermark (the
        worker-wide limit, :meth:`reloop.processors.tasks.FeedbackTasks.apply`); [] if none is held."""
        while self._deadlines:
            deadline, kind, ident = heapq.heappop(self._deadlines)
            if kind == 0 and ident in self._requests:
                return self._resolve(ident)
            if kind == 1:
                orphan = self._pop_orphan(ident)
                if orphan is not None:
                    return [orphan]
            if kind == 2:
                self._forget(ident)
        return []

    def next_deadline(self) -> float:
        """Earliest deadline held (event-time s; inf when empty)."""
        return self._deadlines[0][0] if self._deadlines else float("inf")

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
            deadlines=self._deadlines, digests=list(self._digests.items()), pair_ids=True))

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
        store._digests = dict(st.digests)
        store._deadlines = [tuple(d) for d in st.deadlines]  # type: ignore[misc]
        if not st.pair_ids:  # older checkpoints joined an orphan's ids with NUL
            store._deadlines = [(t, k, _join_pair(*i.split("\x00", 1)) if k == 1 and "\x00" in i else i)
                                for t, k, i in store._deadlines]
            heapq.heapify(store._deadlines)
        return store


def request_digest(raw: bytes) -> int:
    """A request as the store remembers it: a 64-bit hash of its bytes on the wire (a
    byte-identical copy has the same digest and is a duplicate; the same id with any other
    content is a reuse).

    >>> request_digest(b'{"a":1}') == request_digest(b'{"a":1}'), request_digest(b'{"a":1}') == request_digest(b'{"a":2}')
    (True, False)
    """
    return int.from_bytes(hashlib.blake2b(raw, digest_size=8).digest(), "little", signed=True)


def _join_pair(request_id: str, item_id: str) -> str:
    """One string for (request id, item id), length-prefixed: no character is special."""
    return f"{len(request_id)}:{request_id}{item_id}"


def _split_pair(ident: str) -> tuple[str, str]:
    n, _, rest = ident.partition(":")
    k = int(n)
    return rest[:k], rest[k:]


def deep_size(obj: object) -> int:
    """Bytes of ``obj`` and what it holds (tuples, dicts, lists, structs, str, numbers)."""
    size = sys.getsizeof(obj)
    if isinstance(obj, dict):
        return size + sum(deep_size(k) + deep_size(v) for k, v in obj.items())
    if isinstance(obj, (tuple, list)):
        return size + sum(deep_size(x) for x in obj)
    if isinstance(obj, msgspec.Struct):
        return size + sum(deep_size(getattr(obj, f)) for f in obj.__struct_fields__)
    return size


@dataclass
class _Dirty:
    """Keys of a store changed since the changelog last read them. ``created``: the requests
    first registered since then (their ``req``/``lab`` keys were never written: if they
    resolve before the changelog reads them, there is nothing to tombstone)."""

    requests: set[str] = field(default_factory=set)
    resolved: set[str] = field(default_factory=set)
    orphans: set[tuple[str, str]] = field(default_factory=set)
    created: set[str] = field(default_factory=set)


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
    digests: list[tuple[str, int]] = []
    pair_ids: bool = False  # orphan deadlines hold _join_pair ids (NUL-joined before 2026-12-07)
