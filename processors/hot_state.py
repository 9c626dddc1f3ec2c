"""The hot path's state side: checkpoints, replica snapshots, recovery, the changelog, and where
each input partition starts when the group assigns it (see :mod:`reloop.processors.hot_path`,
docs/guarantees.md).

On assignment of user partition p (:class:`SeekToCheckpoint`; aiokafka awaits it before it
fetches): the last record of changelog partition p says who wrote p's state last and up to which
input offsets (:class:`reloop.processors.changelog.Meta`). If this worker wrote it and its local state
(checkpoint + journal) is that state, or one batch newer (the batch was journaled but cut off
mid-produce: its outputs, changelog records included, are re-sent now), the local state is kept
(fast path). Otherwise the partition is rebuilt from its changelog, from the beginning to the end
offset, and the input partitions are sought to the offsets the rebuilt state includes. Partitions
no longer assigned are dropped. On revocation the batch in flight finishes first (its changelog
records acknowledged), so the next owner reads them.

A mixin of :class:`reloop.processors.hot_path.HotPath`: plain methods on its attributes (``tasks``,
``media``, ``positions``, ``checkpoint``, ``replica``, ``snapshot_path``), kept apart so the
shell's module holds the consume/produce loop and this one what is persisted.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import uuid
from pathlib import Path
from typing import Any, Awaitable, Callable

import numpy as np
from aiokafka import AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, RebalanceInProgressError

from reloop.processors.changelog import META, Meta, changed_records, decode_meta, install_media, key_partition, \
    meta_record, repair_records, restore
from reloop.processors.replica import write_files
from reloop.state.snapshots import write_npz_atomic

log = logging.getLogger("reloop.hot_path")

__all__ = ["HotPathState", "SeekToCheckpoint", "changelog_read", "changelog_tail", "ends_quietly_on_stop",
           "writer_id"]


def ends_quietly_on_stop(task: Callable[[Any], Awaitable[None]]) -> Callable[[Any], Awaitable[None]]:
    """A service task that returns (instead of crashing the worker, exit code 1) when it fails
    after the stop began: ``on_stop`` closes the Kafka clients while the task may still be inside
    a fetch or a produce, which then raises (consumer stopped, producer closed)."""

    @functools.wraps(task)
    async def run(self: Any) -> None:
        try:
            await task(self)
        except Exception as exc:  # noqa: BLE001 - only swallowed once stopping; re-raised otherwise
            if not self.should_stop:
                raise
            log.info("task_ended_by_stop", extra={"task": task.__name__, "reason": type(exc).__name__})
    return run


class HotPathState:
    """Snapshot, checkpoint and recovery methods of the hot path (mixin; module doc)."""

    # attributes provided by HotPath
    tasks: Any
    media: Any
    positions: dict[tuple[str, int], int]
    checkpoint: Any
    replica: Any
    snapshot_path: Path | None
    _inflight: list[Any]
    _resend: list[Any]
    _checkpoint_busy: bool
    _writes_in_flight: set[asyncio.Future[Any]]
    _last_checkpoint: float
    topics: dict[str, str]
    writer_id: str
    consumer: Any
    changelog_consumer: Any
    producer: AIOKafkaProducer | None
    restore_log: list[dict[str, Any]]
    _partitioner: Any
    _produce: Any  # HotPath._produce: outputs -> awaitable
    _unacked: asyncio.Future[None] | None
    _acks: asyncio.Future[Any] | None
    guard: Any
    telemetry: Any

    # ---- the batch sent last: acknowledged, then committed (HotPath.process_inputs) ---------
    async def settle_outputs(self) -> None:
        """Wait until the batch sent last is acknowledged and its offsets committed (re-raises
        its produce error)."""
        if self._unacked is not None:
            unacked, self._unacked = self._unacked, None
            await unacked

    async def outputs_acknowledged(self) -> None:
        """Wait until the outputs sent last are acknowledged (not for their commit: a
        revocation waits here, and a commit during a rebalance waits for the rebalance)."""
        if self._acks is not None:
            await asyncio.wait([self._acks])

    async def _finish_batch(self, acks: Awaitable[Any], offsets: dict[TopicPartition, int]) -> None:
        """The tail of one batch: its outputs acknowledged, then its input offsets committed."""
        assert self.consumer is not None
        t_send = time.perf_counter()
        await acks
        t_commit = time.perf_counter()
        self.telemetry.stage_seconds.labels("produce").observe(t_commit - t_send)
        self._inflight = []
        try:
            await self.consumer.commit(offsets)
        except (CommitFailedError, RebalanceInProgressError, IllegalStateError) as exc:
            # the group moved on while we were cut off: the outputs are produced and journaled,
            # so the partition's next owner can at most produce them again (at-least-once)
            log.warning("commit_failed_rebalance", extra={"reason": str(exc)[:200]})
        self.telemetry.stage_seconds.labels("commit").observe(time.perf_counter() - t_commit)
        if self.guard is not None and self.guard.active:
            self.guard.settle(self.positions)

    def collect_snapshot(self, reuse_buffers: bool = False) -> dict[Path, dict[str, np.ndarray]]:
        """Copies of the replica side (see :meth:`ErrorsReplica.collect_snapshot`)."""
        return {} if self.snapshot_path is None else self.replica.collect_snapshot(self.snapshot_path, reuse_buffers)

    def save_snapshot(self) -> None:
        """Collect and write the replica side now (blocking)."""
        write_files(self.collect_snapshot())

    def _recover_inputs(self) -> None:
        """Input side: ``inputs.npz`` + the journal since (see :mod:`reloop.processors.checkpoint`)."""
        assert self.checkpoint is not None
        rec = self.checkpoint.recover(self.tasks, self.media)
        self.tasks, self.media, self.positions, self._resend = rec.tasks, rec.media, rec.positions, rec.resend
        if rec.positions or rec.entries:
            log.info("inputs_recovered", extra={"journal_entries": rec.entries, "pending": self.tasks.pending_count,
                                                "positions": {f"{t}:{p}": o for (t, p), o in rec.positions.items()},
                                                "resend": len(rec.resend)})

    def _start_checkpoint(self) -> None:
        """Collect the input side now (between batches) and write it off the event loop; the
        journal segments it includes are deleted once the file is durable."""
        assert self.checkpoint is not None
        ck = self.checkpoint
        seq, arrays = ck.collect(self.tasks, self.media, self.positions, self._inflight)
        self._checkpoint_busy = True
        self._last_checkpoint = time.monotonic()

        def done(fut: asyncio.Future[None]) -> None:
            self._checkpoint_busy = False
            if fut.exception() is None:
                ck.journal.delete_before(seq)
            else:
                log.error("checkpoint_failed", extra={"reason": str(fut.exception())})

        fut = asyncio.get_running_loop().run_in_executor(None, write_npz_atomic, ck.path, arrays)
        fut.add_done_callback(done)
        self.track_write(fut)

    def track_write(self, fut: asyncio.Future[Any]) -> None:
        """Remember a file write running off the event loop until it ends (:meth:`finish_writes`)."""
        self._writes_in_flight.add(fut)
        fut.add_done_callback(self._writes_in_flight.discard)

    async def finish_writes(self) -> None:
        """Wait for the checkpoint and snapshot writes still running: a final snapshot written
        before an older one lands would be renamed over by it (and the journal already cut)."""
        if self._writes_in_flight:
            await asyncio.gather(*self._writes_in_flight, return_exceptions=True)

    def save_checkpoint(self) -> None:
        """Write the input-side checkpoint now (blocking; at stop)."""
        if self.checkpoint is None:
            return
        seq, arrays = self.checkpoint.collect(self.tasks, self.media, self.positions, self._inflight)
        write_npz_atomic(self.checkpoint.path, arrays)
        self.checkpoint.journal.delete_before(seq)
        self.checkpoint.journal.close()


    # ---- changelog -----------------------------------------------------------------------------
    def changelog_outputs(self, partitions: Any) -> list[tuple[str, bytes, bytes | None]]:
        """The changelog records of what this batch changed in ``partitions`` (and in any task
        the worker-wide pending limit touched): pending state, then the media memories of the
        users it changed, each partition's ``meta`` last."""
        topic = self.topics["changelog"]
        media_users = self._dirty_media_users(set(partitions) | set(self.tasks.tasks))
        parts = set(partitions) | set(media_users) | {p for p, c in self.tasks.tasks.items()
                                                      if c.pending.dirty is not None and (c.pending.dirty.requests or
                                                                                          c.pending.dirty.resolved or
                                                                                          c.pending.dirty.orphans)}
        out = []
        for p in sorted(parts):
            media = (self.media.memory, media_users.get(p, ())) if self.media is not None else None
            out += [(topic, k, v) for k, v in changed_records(self.tasks, p, self._offsets_of(p), self.writer_id,
                                                              media)]
        return out

    def _user_partitions(self) -> list[int]:
        """The user partitions (of ``requests``, co-partitioned with ``media``); [] if unknown."""
        n = len(self.consumer.partitions_for_topic(self.topics["requests"]) or ()) if self.consumer else 0
        return list(range(n))

    def user_partition(self, user_id: str, parts: list[int]) -> int:
        """The user partition of ``user_id`` (the default partitioner of its key, as the inputs)."""
        return self._partitioner.partition(user_id.encode(), parts)

    def _dirty_media_users(self, owned: set[int]) -> dict[int, list[str]]:
        """partition -> the users of it whose media memory changed since the last batch (only
        partitions in ``owned``: another owner writes the rest)."""
        if self.media is None:
            return {}
        users = self.media.take_dirty()
        parts = self._user_partitions()
        out: dict[int, list[str]] = {}
        if parts:
            for user in users:
                p = self.user_partition(user, parts)
                if p in owned:
                    out.setdefault(p, []).append(user)
        return out

    def _offsets_of(self, partition: int) -> dict[str, int]:
        """logical input topic -> next offset of ``partition`` that the state includes."""
        return {logical: self.positions[(self.topics[logical], partition)] for logical in _USER_TOPICS
                if (self.topics[logical], partition) in self.positions}

    async def produce_changelog(self, records: list[tuple[str, bytes, bytes | None]]) -> None:
        """Produce changelog records each to the partition its key names, in order; wait for acks."""
        assert self.producer is not None
        by_part: dict[bytes, list[tuple[bytes, bytes | None]]] = {}
        for _, k, v in records:  # the key's prefix names the partition (key_partition, unparsed)
            by_part.setdefault(k[:k.index(b"/")], []).append((k, v))
        futs = []
        for prefix, items in by_part.items():
            p = int(prefix)
            batch = self.producer.create_batch()
            append = batch.append
            for k, v in items:
                if append(key=k, value=v, timestamp=None) is None:
                    batch.close()
                    futs.append(await self.producer.send_batch(batch, self.topics["changelog"], partition=p))
                    batch = self.producer.create_batch()
                    append = batch.append
                    if append(key=k, value=v, timestamp=None) is None:
                        futs.append(await self.producer.send(self.topics["changelog"], v, key=k, partition=p))
                        batch = self.producer.create_batch()
                        append = batch.append
            if batch.record_count():
                batch.close()
                futs.append(await self.producer.send_batch(batch, self.topics["changelog"], partition=p))
        if futs:
            await asyncio.gather(*futs)

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


_USER_TOPICS = ("requests", "interactions", "media")


def writer_id(directory: Path | None) -> str:
    """This worker's changelog writer id: kept in its data dir (so a restart on the same volume
    recognises its own records), random without one."""
    if directory is None:
        return uuid.uuid4().hex
    path = directory / "writer_id"
    if not path.exists():
        directory.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(uuid.uuid4().hex)
        tmp.replace(path)
    return path.read_text().strip()


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
