"""The hot path's state side: checkpoints, replica snapshots, local recovery and what each
batch writes to the changelog (see :mod:`reloop.processors.hot_path`, docs/guarantees.md).
Where an assigned partition starts (kept, or restored from the changelog) is
:mod:`reloop.processors.hot_restore`.

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
from typing import Any, Awaitable, Callable, Sequence

import numpy as np
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, RebalanceInProgressError

from reloop.processors.changelog import changed_records, key_partition
from reloop.processors.checkpoint import wait_child, write_in_child
from reloop.processors.outputs import produce_batched
from reloop.processors.replica import write_files
from reloop.state.snapshots import write_npz_atomic

log = logging.getLogger("reloop.hot_path")

__all__ = ["HotPathState", "ends_quietly_on_stop", "writer_id"]


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
    checkpoint_in_child: bool
    _writes_in_flight: set[asyncio.Future[Any]]
    _last_checkpoint: float
    topics: dict[str, str]
    writer_id: str
    consumer: Any
    changelog_consumer: Any
    producer: AIOKafkaProducer | None
    restore_log: list[dict[str, Any]]
    _partitioner: Any
    answers: AIOKafkaProducer | None  # recommendations only
    _unacked: asyncio.Future[None] | None
    _acks: asyncio.Future[Any] | None
    _to_commit: dict[Any, int]
    _committer: asyncio.Future[None] | None
    guard: Any
    telemetry: Any

    # ---- the batch sent last: acknowledged, then committed (HotPath.process_inputs) ---------
    async def settle_outputs(self) -> None:
        """Wait until the batch sent last is acknowledged (re-raises its produce error); its
        offsets are then committed in the background (:meth:`commits_flushed`)."""
        if self._unacked is not None:
            unacked, self._unacked = self._unacked, None
            await unacked

    async def commits_flushed(self) -> None:
        """Wait until every acknowledged batch's offsets are committed (at stop)."""
        while self._committer is not None and not self._committer.done():
            await self._committer

    async def outputs_acknowledged(self) -> None:
        """Wait until the outputs sent last are acknowledged (not for their commit: a
        revocation waits here, and a commit during a rebalance waits for the rebalance)."""
        if self._acks is not None:
            await asyncio.wait([self._acks])

    async def _produce(self, outputs: Sequence[Any]) -> None:
        """Produce ``outputs`` and wait until every one is acknowledged (changelog records to
        the partition their key names, the others by key)."""
        await self._send(outputs)

    def _send(self, outputs: Sequence[Any]) -> asyncio.Future[Any]:
        """Start producing ``outputs`` (in order per partition, handed to the producer on the
        next loop turn); returns the future of their acknowledgements."""
        assert self.producer is not None and self.answers is not None
        changelog, recs = self.topics["changelog"], self.topics["recommendations"]
        return asyncio.ensure_future(asyncio.gather(
            produce_batched(self.answers, [o for o in outputs if o[0] == recs], self._partitioner),
            produce_batched(self.producer, [o for o in outputs if o[0] not in (changelog, recs)], self._partitioner),
            self.produce_changelog([o for o in outputs if o[0] == changelog])))

    async def _finish_batch(self, acks: Awaitable[Any], offsets: dict[TopicPartition, int]) -> None:
        """The tail of one batch: its outputs acknowledged, then its input offsets handed to
        the committer.

        The next batch waits for the acknowledgement (the journal's write-ahead rule), not for
        the commit: a restart starts from the checkpoint and journal, a moved partition from
        its changelog's offsets, so a committed offset behind them only means records read
        again and dropped (at-least-once). Awaiting each commit kept ~1.5 ms of round trip on
        every batch's path (at 300 req/s, medians of 5 pairs: p50 43.7 -> 25.0 ms, p99 126.8 ->
        106.2 ms; docs/operations.md, "What a batch waits for")."""
        assert self.consumer is not None
        t_send = time.perf_counter()
        await acks
        self.telemetry.stage_seconds.labels("produce").observe(time.perf_counter() - t_send)
        self._inflight = []
        if self.guard is not None and self.guard.active:
            self.guard.settle(self.positions)
        self._to_commit.update(offsets)
        if self._committer is None or self._committer.done():
            self._committer = asyncio.ensure_future(self._commit_pending())

    async def _commit_pending(self) -> None:
        """Commit the acknowledged offsets, in order, one commit at a time: the offsets that
        arrive during a commit go together in the next one."""
        assert self.consumer is not None
        while self._to_commit:
            offsets, self._to_commit = self._to_commit, {}
            owned = self.consumer.assignment()
            offsets = {tp: o for tp, o in offsets.items() if tp in owned}  # revoked: its next owner's
            if not offsets:
                continue
            t_commit = time.perf_counter()
            try:
                await self.consumer.commit(offsets)
            except (CommitFailedError, RebalanceInProgressError, IllegalStateError) as exc:
                # the group moved on while we were cut off: the outputs are produced and journaled,
                # so the partition's next owner can at most produce them again (at-least-once)
                log.warning("commit_failed_rebalance", extra={"reason": str(exc)[:200]})
            except Exception as exc:  # noqa: BLE001 - e.g. the coordinator unreachable: the next
                # commit carries these partitions' later offsets; recovery never needs this one
                log.warning("commit_failed", extra={"reason": f"{type(exc).__name__}: {str(exc)[:200]}"})
            self.telemetry.stage_seconds.labels("commit").observe(time.perf_counter() - t_commit)

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
        """Checkpoint the input side as it is now (between batches); the journal segments it
        includes are deleted once the file is durable. With :attr:`checkpoint_in_child` a
        forked child encodes and writes it (:func:`~reloop.processors.checkpoint.write_in_child`:
        the loop pays the fork, milliseconds); otherwise the loop collects it and a thread
        writes it."""
        assert self.checkpoint is not None
        ck = self.checkpoint
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        if self.checkpoint_in_child:
            seq = ck.journal.rotate()
            tasks, media, positions, inflight = self.tasks, self.media, self.positions, self._inflight
            pid = write_in_child(lambda: write_npz_atomic(ck.path, ck.arrays(seq, tasks, media, positions, inflight)))
            fut = loop.run_in_executor(None, wait_child, pid)
        else:
            seq, arrays = ck.collect(self.tasks, self.media, self.positions, self._inflight)
            fut = loop.run_in_executor(None, write_npz_atomic, ck.path, arrays)
        seconds = time.perf_counter() - t0  # the loop serves nothing meanwhile
        self.telemetry.stage_seconds.labels("checkpoint").observe(seconds)
        log.info("checkpoint_started", extra={"seq": seq, "pending": self.tasks.pending_count,
                                              "in_child": self.checkpoint_in_child, "seconds": round(seconds, 4)})
        self._checkpoint_busy = True
        self._last_checkpoint = time.monotonic()

        def done(fut: asyncio.Future[None]) -> None:
            self._checkpoint_busy = False
            if fut.exception() is None:
                ck.journal.delete_before(seq)
            elif getattr(self, "should_stop", False):  # the stop writes one after it anyway
                log.info("checkpoint_abandoned_by_stop", extra={"reason": str(fut.exception())})
            else:
                log.error("checkpoint_failed", extra={"reason": str(fut.exception())})

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
        by_part: dict[int, list[tuple[bytes, bytes | None]]] = {}
        for _, k, v in records:
            by_part.setdefault(key_partition(k), []).append((k, v))
        futs = []
        for p, items in by_part.items():
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


_USER_TOPICS = ("requests", "interactions", "media")
