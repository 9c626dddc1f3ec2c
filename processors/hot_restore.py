"""Where each input partition starts when the group assigns it (see
:mod:`reloop.processors.hot_path`, docs/guarantees.md).

On assignment of user partition p (:class:`SeekToCheckpoint`; aiokafka awaits it before it
fetches): the last record of changelog partition p says who wrote p's state last and up to which
input offsets (:class:`reloop.processors.changelog.Meta`). If this worker wrote it and its local state
(checkpoint + journal) is that state, or one batch newer (the batch was journaled but cut off
mid-produce: its outputs, changelog records included, are re-sent now), the local state is kept
(fast path). Otherwise the partition is rebuilt from its changelog, from the beginning to the end
offset, and the input partitions are sought to the offsets the rebuilt state includes. Partitions
no longer assigned are dropped. On revocation the batch in flight finishes first (its changelog
records acknowledged), so the next owner reads them.

:class:`HotPathRestore` is a mixin of :class:`reloop.processors.hot_path.HotPath`;
:func:`changelog_tail` and :func:`changelog_read` read any compacted topic's partition (the
trainer, replay from Kafka and the tests use them too).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from aiokafka import ConsumerRebalanceListener, TopicPartition

from reloop.processors.changelog import META, Meta, decode_meta, install_media, key_partition, meta_record, \
    repair_records, restore
from reloop.processors.hot_state import _USER_TOPICS

log = logging.getLogger("reloop.hot_path")

__all__ = ["HotPathRestore", "SeekToCheckpoint", "changelog_read", "changelog_tail"]


class HotPathRestore:
    """Restore-on-assignment methods of the hot path (mixin; module doc)."""

    # attributes and methods provided by HotPath / HotPathState
    tasks: Any
    media: Any
    positions: dict[tuple[str, int], int]
    topics: dict[str, str]
    writer_id: str
    consumer: Any
    changelog_consumer: Any
    restore_log: list[dict[str, Any]]
    _resend: list[Any]
    _partitioner: Any
    _produce: Any  # HotPath._produce: outputs -> awaitable
    produce_changelog: Any
    _user_partitions: Any
    user_partition: Any
    _offsets_of: Any

    async def _changelog_tail(self, tp: TopicPartition) -> tuple[int, Any]:
        return await changelog_tail(self.changelog_consumer, tp)

    async def _changelog_read(self, tp: TopicPartition, end: int) -> list[tuple[bytes, bytes | None]]:
        return await changelog_read(self.changelog_consumer, tp, end)

    async def restore_partitions(self, parts: list[int]) -> dict[int, bool]:
        """Make the state of each assigned user partition current (module doc); returns
        partition -> True where the local state was kept."""
        kept: dict[int, bool] = {}
        for p in parts:
            t0 = time.perf_counter()
            tp = TopicPartition(self.topics["changelog"], p)
            end, last = await self._changelog_tail(tp)
            if end == 0:  # nothing written yet: local state, if any, is all there is
                kept[p] = True
                continue
            meta = decode_meta(last.value) if last.key.endswith(f"/{META}".encode()) else None
            records = None
            if meta is None:  # a batch cut off after some of its records: find the last meta
                records = await self._changelog_read(tp, end)
                meta = restore(p, records, self.tasks.window_s, self.tasks.limit).meta
            if self._local_is_current(p, meta):
                kept[p] = True
                log.info("changelog_local_kept", extra={"partition": p, "seq": meta.seq if meta else None})
                continue
            if records is None:
                records = await self._changelog_read(tp, end)
            r = restore(p, records, self.tasks.window_s, self.tasks.limit)
            self.tasks.install(p, r.core, r.meta.max_ts if r.meta else {}, r.meta.seq if r.meta else 0)
            if self.media is not None:  # the partition's users' media memories, as its last writer left them
                all_parts = self._user_partitions()
                stale = [u for u in self.media.memory.users if self.user_partition(u, all_parts) == p]
                install_media(self.media.memory, r.media, stale)
                self.media.dirty.difference_update(stale)
            for logical in _USER_TOPICS:
                self.positions.pop((self.topics[logical], p), None)
            for logical, off in (r.meta.offsets if r.meta else {}).items():
                self.positions[(self.topics[logical], p)] = off
            if r.tail_keys:  # the cut-off batch's keys, re-written from the restored state
                fix = [(self.topics["changelog"], k, v) for k, v in repair_records(
                    p, r.core.pending, r.tail_keys, self.media.memory if self.media is not None else None)]
                k, v = meta_record(self.tasks, p, self._offsets_of(p), self.writer_id)
                await self.produce_changelog(fix + [(self.topics["changelog"], k, v)])
            kept[p] = False
            seconds = time.perf_counter() - t0
            self.restore_log.append({"partition": p, "records": r.records, "bytes": r.nbytes, "seconds": seconds,
                                     "pending": len(r.core.pending), "media_users": len(r.media),
                                     "t_assigned": time.time() - seconds})
            log.info("changelog_restored", extra={"partition": p, "records": r.records, "bytes": r.nbytes,
                                                  "pending": len(r.core.pending), "media_users": len(r.media),
                                                  "seconds": round(seconds, 4),
                                                  "repaired": len(r.tail_keys),
                                                  "offsets": r.meta.offsets if r.meta else {}})
        return kept

    async def resend_for(self, kept: dict[int, bool]) -> None:
        """Re-send the outputs of the last journaled batch (maybe cut off mid-produce) that
        belong to the user partitions whose local state was kept; the others' next owner
        produces them from its own state."""
        if not self._resend:
            return
        n = len(self.consumer.partitions_for_topic(self.topics["requests"]) or ()) if self.consumer else 0
        parts = list(range(n or max(kept, default=0) + 1))
        by_topic = {v: k for k, v in self.topics.items()}

        def partition(o: Any) -> int:
            logical, key = by_topic.get(o[0]), o[1]
            if logical == "changelog":
                return key_partition(key)
            if logical == "memory":
                return int(key)
            return -1 if key is None else self._partitioner.partition(key, parts)

        out = [o for o in self._resend if kept.get(partition(o), partition(o) == -1)]
        self._resend = []
        if out:
            await self._produce(out)
        log.info("outputs_resent", extra={"count": len(out)})

    def _local_is_current(self, p: int, meta: Meta | None) -> bool:
        """Whether this worker's local state of ``p`` is what the changelog holds (or one
        journaled batch newer: its records are in the outputs re-sent on assignment)."""
        seq = self.tasks.changelog_seq.get(p)
        if meta is None:
            return p in self.tasks.tasks
        return meta.writer == self.writer_id and seq is not None and meta.seq in (seq, seq - 1)

    def drop_partitions(self, keep: set[int]) -> None:
        """Forget the input-side state of user partitions not in ``keep``."""
        for p in [p for p in self.tasks.tasks if p not in keep]:
            self.tasks.drop(p)
        parts = self._user_partitions()
        if self.media is not None and parts:  # moved users' media memories live in the changelog
            gone = [u for u in self.media.memory.users if self.user_partition(u, parts) not in keep]
            for user in gone:
                del self.media.memory.users[user]
            self.media.dirty.difference_update(gone)
        for key in [k for k in self.positions if k[1] not in keep]:
            del self.positions[key]


async def changelog_tail(c: Any, tp: TopicPartition, timeout_s: float = 60.0) -> tuple[int, Any]:
    """(end offset, last record or None) of one changelog partition, read with consumer ``c``.

    The end is the high watermark of a fetch, not the ListOffsets answer: the embedded broker
    (Tansu) answers ListOffsets(latest) with the base offset of the last record *batch* + 1
    (measured: 460 for a partition whose fetches report 498), which would cut a restore short."""
    c.assign([tp])
    listed = (await c.end_offsets([tp]))[tp]
    if listed == 0:
        return 0, None
    c.seek(tp, listed - 1)
    last = None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        msgs = (await c.getmany(tp, timeout_ms=200, max_records=50_000)).get(tp, [])
        if msgs:
            last = msgs[-1]
        hw = c.highwater(tp)
        if last is not None and hw is not None and last.offset + 1 >= hw:
            return hw, last
    raise TimeoutError(f"changelog {tp}: last record not read")


async def changelog_read(c: Any, tp: TopicPartition, end: int, timeout_s: float = 300.0) -> list[tuple[bytes, bytes | None]]:
    """Every record of one changelog partition up to ``end`` (exclusive), in log order."""
    c.assign([tp])
    await c.seek_to_beginning(tp)
    out: list[tuple[bytes, bytes | None]] = []
    deadline = time.monotonic() + timeout_s
    while await c.position(tp) < end:
        if time.monotonic() > deadline:
            raise TimeoutError(f"changelog {tp}: read {len(out)} records, not up to {end}")
        for m in (await c.getmany(tp, timeout_ms=200, max_records=50_000)).get(tp, []):
            if m.offset < end:
                out.append((m.key, m.value))
    return out


class SeekToCheckpoint(ConsumerRebalanceListener):
    """On assignment, start each input partition where the recovered state ends (the group's
    committed offset can be behind it: the journal is written before the commit)."""

    def __init__(self, hot: Any) -> None:
        self.hot = hot

    async def on_partitions_revoked(self, revoked: Any) -> None:
        async with self.hot.batch_lock:  # the batch in flight finishes: its changelog is acknowledged
            await self.hot.outputs_acknowledged()

    async def on_partitions_assigned(self, assigned: Any) -> None:
        consumer = self.hot.consumer
        assert consumer is not None
        requests = self.hot.topics["requests"]
        parts = sorted({tp.partition for tp in assigned if tp.topic == requests})
        async with self.hot.batch_lock:
            await self.hot.outputs_acknowledged()
            self.hot.generation += 1
            self.hot.drop_partitions(set(parts))
            kept = await self.hot.restore_partitions(parts)
            await self.hot.resend_for(kept)
        for tp in assigned:
            pos = self.hot.positions.get((tp.topic, tp.partition))
            if pos is not None:
                consumer.seek(tp, pos)
        requests = self.hot.topics["requests"]
        self.hot.is_leader = any(tp.topic == requests and tp.partition == 0 for tp in assigned)
        self.hot.inputs_ready = True  # /ready: the group has given this worker its partitions
        log.info("inputs_assigned", extra={"partitions": sorted(f"{tp.topic}:{tp.partition}" for tp in assigned),
                                           "leader": self.hot.is_leader})
        if not assigned:  # serves nothing until a rebalance gives it some (a standby replica)
            n = len(consumer.partitions_for_topic(requests) or ())
            log.warning("inputs_none_assigned", extra={
                "requests_partitions": n, "hint": "the group has more workers than the input topics have "
                "partitions (kafka.partitions when the topics were created); this one keeps a replica only"})
