"""The replica's per-record fast paths against the code they replaced.

- :class:`RecentErrorIds.fresh` keeps exactly the records :meth:`RecentIds.first_time` would
  (duplicates inside a batch, evictions inside a batch);
- :meth:`ErrorsReplica._decode_all` accepts and rejects (with the same dead-letter reason) what
  :func:`decode_event` does;
- :class:`EventTimeReorder` (one sorted list) releases the sequence the former heap released.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import namedtuple

import pytest

from reloop.processors.checkpoint import RecentIds
from reloop.processors.compensation import NoCompensation
from reloop.processors.reorder import EventTimeReorder
from reloop.processors.replica import ErrorsReplica, RecentErrorIds
from reloop.processors.telemetry import WorkerTelemetry
from reloop.streams.codec import InvalidEvent, decode_event, encode
from reloop.streams.events import ErrorRecord
from reloop.streams.validation import Limits

T0 = 1_700_000_000.0
Msg = namedtuple("Msg", "topic partition offset key value")


def rec(i: str, ts: float, label_ts: float | None = None) -> ErrorRecord:
    return ErrorRecord(error_id=i, user_id="u", item_id="x", ts=ts, label=1, base_pred=0.5, comp_pred=0.5,
                       model_version="v1", label_ts=label_ts, features={"genre": "drama", "pop": 0.5})


@pytest.mark.parametrize("seed", range(5))
def test_fresh_is_first_time_per_record(seed: int) -> None:
    rng = random.Random(seed)
    fast, slow = RecentErrorIds(capacity=7), RecentIds(capacity=7)
    for _ in range(60):
        part = rng.randrange(2)
        batch = [rec(f"e{rng.randrange(20)}", T0) for _ in range(rng.randrange(0, 15))]
        want = [r for r in batch if slow.first_time(part, r.error_id)]
        assert fast.fresh(part, batch) == want
    assert {k: v.tolist() for k, v in fast.to_arrays().items()} == {k: v.tolist() for k, v in slow.to_arrays().items()}


def test_decode_all_accepts_and_rejects_as_decode_event() -> None:
    limits = Limits()
    future = 9e10  # far ahead of the wall clock, below the schema's bound
    raws = [encode(rec("a", T0)), b"{not json", b"", encode(rec("b", future)), encode(rec("c", T0, label_ts=future)),
            encode(rec("d", T0, label_ts=T0 + 1)), b'{"type":"error"}', b"x" * (limits.max_event_bytes + 1),
            encode(rec("e", T0)).replace(b'"codes":""', b'"codes":"AAA="'), encode(rec("f", T0))]
    replica = ErrorsReplica(NoCompensation(), None, limits, WorkerTelemetry())
    got = replica._decode_all([Msg("errors", 0, j, None, v) for j, v in enumerate(raws)])
    want, reasons = [], []
    for raw in raws:
        try:
            want.append(decode_event(raw, ErrorRecord, limits))
        except InvalidEvent as exc:
            reasons.append(str(exc))
    assert [r.error_id for r in got] == [r.error_id for r in want] == ["a", "d", "f"]
    assert got == want
    letters = [m for t, m in replica.outbox if t == "dlq"]
    assert [m.error for m in letters] == reasons and len(reasons) == 7


class HeapReorder(EventTimeReorder):
    """The buffer as it was: a heap, one push and one pop per record."""

    def __init__(self, *a, **k) -> None:
        super().__init__(*a, **k)
        self._h: list = []

    def push(self, partition, records) -> None:
        if not records:
            return
        self.expected.add(partition)
        wm = self.watermarks.get(partition, -math.inf)
        self.first_ts.setdefault(partition, records[0].ts)
        for r in records:
            key = max(r.ts, wm - self.lateness_s)
            key = max(key, self.released)
            heapq.heappush(self._h, (key, r.ts, r.error_id, partition, self._seq, r))
            self._seq += 1
            wm = max(wm, r.ts)
        self.watermarks[partition] = wm

    def pop_ready(self):
        out, frontier = [], self.frontier()
        while self._h and self._h[0][0] < frontier:
            out.append(heapq.heappop(self._h))
        while len(self._h) > self.max_held:
            out.append(heapq.heappop(self._h))
        if out:
            self.released = max(self.released, out[-1][0])
        return [e[5] for e in out]


@pytest.mark.parametrize("seed", range(8))
def test_sorted_list_releases_what_the_heap_released(seed: int) -> None:
    """Ties on time (a request's candidates share it), late records, overtaking, max_held."""
    rng = random.Random(seed)
    kw = dict(lateness_s=rng.choice([0.0, 0.5]), idle_s=rng.choice([0.0, 3.0]), max_held=rng.choice([5, 40, 10_000]))
    new, old = EventTimeReorder(range(3), **kw), HeapReorder(range(3), **kw)
    clocks, n = [T0] * 3, 0
    for _ in range(80):
        p = rng.randrange(3)
        batch = []
        for _ in range(rng.randrange(0, 12)):
            clocks[p] += rng.choice([0.0, 0.0, 0.1, 0.3])
            ts = clocks[p] - (rng.random() * 2.0 if rng.random() < 0.15 else 0.0)
            batch.append(rec(f"e{n:05d}"[::-1], round(ts, 3)))
            n += 1
        new.push(p, batch)
        old.push(p, batch)
        if rng.random() < 0.6:
            assert [r.error_id for r in new.pop_ready()] == [r.error_id for r in old.pop_ready()]
            assert new.released == old.released
    assert sorted(e[:5] for e in new._held) == sorted(e[:5] for e in old._h)
    assert new.to_arrays()["reorder_keys"].tolist() == [e[0] for e in sorted(old._h, key=lambda e: e[:4])]
