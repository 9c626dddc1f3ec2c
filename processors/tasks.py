"""Feedback per user partition ("task"), each with its own stream time.

Partition p of ``requests``, ``interactions`` and ``media`` carries the same users (the topics
are co-partitioned by user_id), so the join of a request with its clicks happens inside one
task. Each task keeps its own pending predictions and its own stream time: the watermark of
task p is the slower of the request and interaction streams *of partition p*. Within a
partition events are in time order, so a request's window closes only after its partition's
interactions have moved past the window's end, i.e. after its clicks were read, however the
consumer happened to batch the partitions. Closing windows on a worker-wide watermark (as a
single store would) made labels depend on which partitions a poll returned first; per-task
time makes them depend on the log alone, which is what crash recovery needs to reproduce them.
Until a partition's interactions have been seen at all, its time does not move (a first poll
holding only requests must not close their windows); a partition that never receives
interactions keeps its requests until the pending limit forces the oldest out.
"""

from __future__ import annotations

from typing import Sequence

import msgspec

from reloop.processors.feedback import FeedbackCore
from reloop.processors.metrics import OnlineMetrics
from reloop.processors.pending import Pending, PendingStore
from reloop.streams.events import ErrorRecord, Interaction


STREAMS = ("requests", "interactions")


class FeedbackTasks:
    """One :class:`FeedbackCore` per user partition, sharing one :class:`OnlineMetrics`.

    >>> from reloop.processors.metrics import OnlineMetrics
    >>> t = FeedbackTasks(window_s=10.0, limit=1000, metrics=OnlineMetrics(window=10))
    >>> p = Pending("r1", "i1", "u1", 100.0, 0.3, 0.3, "v1", (), {})
    >>> t.apply(0, [p], [], {"requests": 500.0})  # no interactions seen yet: time holds
    []
    >>> len(t.apply(1, [], [], {"requests": 500.0, "interactions": 500.0}))  # other partition
    0
    >>> [e.label for e in t.apply(0, [], [], {"requests": 111.0, "interactions": 111.0})]
    [0]
    """

    def __init__(self, window_s: float, limit: int, metrics: OnlineMetrics) -> None:
        self.window_s = window_s
        self.limit = limit
        self.metrics = metrics
        self.tasks: dict[int, FeedbackCore] = {}
        self.max_ts: dict[int, dict[str, float]] = {}  # partition -> stream -> event time (s)
        # changelog (processors/changelog.py): batches written per partition, and whether the
        # stores track the keys each batch changes
        self.changelog_seq: dict[int, int] = {}
        self.track_changes = False
        # partition -> request id -> (items, digest) of the last full ``req`` record written:
        # a batch that only labelled the request writes a small ``lab`` record instead
        self.changelog_written: dict[int, dict[str, tuple[int, int | None]]] = {}

    def task(self, partition: int) -> FeedbackCore:
        """The feedback core of ``partition`` (created on first use)."""
        core = self.tasks.get(partition)
        if core is None:
            core = self.tasks[partition] = FeedbackCore(PendingStore(self.window_s, self.limit), self.metrics)
            if self.track_changes:
                core.pending.take_dirty()
        return core

    def enable_tracking(self) -> None:
        """Track the keys every batch changes, in every task (for the changelog)."""
        self.track_changes = True
        for core in self.tasks.values():
            if core.pending.dirty is None:
                core.pending.take_dirty()

    def install(self, partition: int, core: FeedbackCore, max_ts: dict[str, float], seq: int) -> None:
        """Replace ``partition``'s task by one restored from the changelog."""
        core.metrics = self.metrics
        self.tasks[partition] = core
        self.max_ts[partition] = dict(max_ts)
        self.changelog_seq[partition] = seq
        self.changelog_written.pop(partition, None)
        if self.track_changes:
            core.pending.take_dirty()

    def drop(self, partition: int) -> None:
        """Forget ``partition`` (moved to another worker; its state lives in the changelog)."""
        self.tasks.pop(partition, None)
        self.max_ts.pop(partition, None)
        self.changelog_seq.pop(partition, None)
        self.changelog_written.pop(partition, None)

    def stream_times(self, partition: int, requests_ts: Sequence[float],
                     interactions_ts: Sequence[float]) -> dict[str, float]:
        """Partition ``partition``'s stream times after a batch with these event times."""
        times = dict(self.max_ts.get(partition, {}))
        for name, ts in (("requests", requests_ts), ("interactions", interactions_ts)):
            if len(ts):
                times[name] = max(times.get(name, 0.0), max(ts))
        return times

    def apply(self, partition: int, pending: Sequence[Pending], interactions: Sequence[Interaction],
              stream_times: dict[str, float], digests: Sequence[tuple[str, int]] = ()) -> list[ErrorRecord]:
        """One batch's effect on one task: remember the scored requests' content digests
        (``(request id, digest)``, :func:`reloop.processors.pending.request_digest`), register scored
        candidates, label them, move the task's stream time to ``stream_times`` and close the
        windows it passed."""
        core = self.task(partition)
        for rid, digest in digests:
            core.pending.remember(rid, digest)
        errors = core.on_scored(pending)
        errors += core.on_batch(interactions)
        self.max_ts[partition] = stream_times
        if len(stream_times) == len(STREAMS):  # a stream not seen yet holds time back
            errors += core.advance(min(stream_times.values()))
        errors += self._enforce_limit()
        return errors

    def _enforce_limit(self) -> list[ErrorRecord]:
        """Hold at most :attr:`limit` pending predictions plus orphans over all partitions of
        this worker: past it, the entry with the earliest deadline (any partition) is forced
        out, a request as if its window had closed (docs/configuration.md,
        ``worker.pending_limit``)."""
        errors: list[ErrorRecord] = []
        if self.held <= self.limit:
            return errors
        while self.held > self.limit:
            part = min(self.tasks, key=lambda p: (self.tasks[p].pending.next_deadline(), p))
            core = self.tasks[part]
            out = core.pending.expire_oldest()
            if not out:
                break
            errors += core._expire(out)  # noqa: SLF001 - the same expiry path as a closed window
        return errors

    def watermark(self, partition: int) -> float | None:
        """Partition ``partition``'s stream time (event-time s), None until both of its streams
        were seen (then no window of it has closed)."""
        times = self.max_ts.get(partition, {})
        return min(times.values()) if len(times) == len(STREAMS) else None

    def digest_of(self, partition: int, request_id: str) -> int | None:
        """The content digest request ``request_id`` was scored with on ``partition``."""
        core = self.tasks.get(partition)
        return core.pending.digest_of(request_id) if core is not None else None

    # ---- figures -----------------------------------------------------------------------------
    @property
    def pending_count(self) -> int:
        return sum(len(c.pending) for c in self.tasks.values())

    @property
    def orphan_count(self) -> int:
        return sum(c.pending.orphan_count for c in self.tasks.values())

    @property
    def held(self) -> int:
        """Pending predictions plus orphans, all partitions (bounded by :attr:`limit`)."""
        return sum(c.pending.held for c in self.tasks.values())

    def approx_nbytes(self) -> int:
        """Approximate bytes of every partition's pending predictions and orphans."""
        return sum(c.pending.approx_nbytes() for c in self.tasks.values())

    @property
    def unattributed(self) -> int:
        return sum(c.unattributed for c in self.tasks.values())

    @property
    def duplicates(self) -> int:
        return sum(c.duplicates for c in self.tasks.values())

    # ---- snapshots ---------------------------------------------------------------------------
    def to_state(self) -> bytes:
        """Every task (pending store, counters, stream times) and the metrics, as msgpack."""
        return msgspec.msgpack.encode({
            "window_s": self.window_s, "limit": self.limit, "metrics": self.metrics.to_state(),
            "tasks": [[p, c.pending.to_state(), c.unattributed, c.duplicates, c.late, self.max_ts.get(p, {})]
                      for p, c in sorted(self.tasks.items())],
            "changelog_seq": [[p, n] for p, n in sorted(self.changelog_seq.items())]})

    @classmethod
    def from_state(cls, raw: bytes) -> FeedbackTasks:
        """Rebuild tasks written by :meth:`to_state`."""
        st = msgspec.msgpack.decode(raw)
        out = cls(st["window_s"], st["limit"], OnlineMetrics.from_state(st["metrics"]))
        for p, store, unattributed, duplicates, late, times in st["tasks"]:
            core = out.tasks[p] = FeedbackCore(PendingStore.from_state(store), out.metrics)
            core.unattributed, core.duplicates, core.late = unattributed, duplicates, late
            out.max_ts[p] = times
        out.changelog_seq = {int(p): int(n) for p, n in st.get("changelog_seq", [])}
        return out

