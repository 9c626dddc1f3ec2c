"""The streaming shell of the hot topics: aiokafka batch consumers feeding the cores.

Runs as a ``mode.Service`` inside the Faust app (DESIGN.md: Faust's per-event streams cost
more than the whole per-event budget, so ``requests``, ``interactions`` and ``media`` are read
with ``getmany`` by one consumer group with range assignment, which keeps partition i of each
co-partitioned topic on the same worker; ``errors`` is read by every worker over all
partitions with manual assignment).

Per polled batch, in this order (the rule the replay engine shares):

1. decode and validate every record, then admit it (:mod:`reloop.processors.admission`: event-time
   policy, reused request ids); a rejected one becomes a dead letter (original bytes, source
   topic/partition/offset, reason) and processing goes on;
2. the batch step (:mod:`reloop.processors.step`): media, then scoring, then feedback per user
   partition; if it raises, the same step runs record by record and the record that raises
   becomes a dead letter (poison-pill rule); a record that crashes the process itself again
   and again is skipped by :class:`~reloop.processors.crash_guard.CrashGuard`;
3. what the batch changed in each partition's state becomes ``changelog`` records
   (:mod:`reloop.processors.changelog`); the batch is journaled (write-ahead: inputs, pending
   predictions, outputs, changelog records), its outputs are produced and flushed, then its
   input offsets are committed (at-least-once).

Error-memory writes also go out as binary ``memory`` batches (one per scored batch and input
partition, :mod:`reloop.streams.memory_batch`), which every worker reads back into its error-memory
replica; only the elected worker (partition 0 of ``requests``) reads ``errors`` back, into the
schema cache, and the others match against ``schemas``. Per-partition offsets make a
redelivered record a no-op, and filters of recent error / batch ids drop the copies a crashed
worker produced twice.

Replica thread: see :mod:`reloop.processors.hot_replica`.

Recovery (docs/guarantees.md): the input side restarts from ``inputs.npz`` plus the journal
(:mod:`reloop.processors.checkpoint`); on assignment each partition's state is kept if it is what the
changelog holds, else rebuilt from the changelog (:mod:`reloop.processors.hot_restore`), and each input
partition is sought to the offset its state includes; the replica side restarts from its
snapshot and the ``errors`` offsets in it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import mode
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.coordinator.assignors.range import RangePartitionAssignor

from reloop.models.scorer import OnnxScorer
from reloop.processors.admission import Admission
from reloop.processors.checkpoint import InputCheckpoint
from reloop.processors.compensation import Compensation, NoCompensation
from reloop.processors.crash_guard import CrashGuard, fault_point
from reloop.processors.feedback import FeedbackCore
from reloop.processors.hot_inputs import INPUT_KINDS, HotPathInputs
from reloop.processors.hot_model import HotPathModel
from reloop.processors.hot_replica import HotPathReplica
from reloop.processors.hot_restore import HotPathRestore, SeekToCheckpoint
from reloop.processors.hot_state import HotPathState, ends_quietly_on_stop, writer_id
from reloop.processors.journal import JournalEntry
from reloop.processors.media import MediaCore
from reloop.processors.outputs import KeyPartitioner, Output
from reloop.processors.replica import ErrorsReplica, write_files
from reloop.processors.schema_child import SchemaCoreChild
from reloop.processors.schemas import PublishedSchemas, SchemaCore
from reloop.processors.scoring import ScoringCore
from reloop.processors.step import run_one_by_one, run_step
from reloop.processors.tasks import FeedbackTasks
from reloop.processors.warmup import warm_up
from reloop.state.error_memory.memory import ErrorMemoryConfig
from reloop.processors.telemetry import WorkerTelemetry
from reloop.streams.codec import encode
from reloop.streams.validation import Limits

log = logging.getLogger("reloop.hot_path")


class HotPath(HotPathModel, HotPathInputs, HotPathState, HotPathRestore, HotPathReplica, mode.Service):
    """Batch consumer of requests/interactions/media plus the errors replica consumer.

    Args:
        client: aiokafka connection kwargs (bootstrap, TLS, SASL).
        topics: logical name -> cluster topic name for every catalog topic.
        group_id: consumer group shared by all workers for the user-keyed topics.
        limits: validation limits for input events.
        feedback: a feedback core: its window, pending limit and online metrics configure the
            per-partition :class:`FeedbackTasks` that hold the pending predictions.
        compensation_factory: builds the compensation replica for the first model served
            (``scorer -> Compensation | None``; None = identity).
        telemetry: Prometheus metrics.
        fetch_max_records: most records per ``getmany``.
        idle_fetch_wait_ms: fetch wait of the replica and changelog consumers (off the latency
            path; ``kafka.idle_fetch_wait_ms``); the input consumer keeps 10 ms.
        session_timeout_ms / rebalance_timeout_ms: group membership timeouts.
        snapshot_path: where the error-memory replica is snapshotted with the ``errors``
            offsets it includes; its directory also holds ``inputs.npz`` and the input
            journal (None = no snapshots and no journal: a restart loses the input-side state).
        snapshot_every_s: seconds between input checkpoints (and one at stop).
        checkpoint_in_child: a forked child encodes and writes each periodic input checkpoint
            (copy-on-write; the loop pays the fork) instead of the event loop
            (``worker.checkpoint_in_child``; off where ``os.fork`` does not exist).
        replica_snapshot_every_s: seconds between ``errors`` replica snapshots (and one at stop).
        journal_fsync: fsync each journal entry (machine-crash safe; process crashes are safe
            without it; ``worker.journal_fsync``).
        recent_ids: size of the replica's duplicate filter per ``errors`` partition.
        crash_threshold: process crashes inside one batch before its records are processed
            one at a time, and of one record before it is dead-lettered unprocessed
            (:class:`~reloop.processors.crash_guard.CrashGuard`; ``worker.crash_threshold``).
        media: the per-user media memories (None = media events are validated, not kept).
        schema_core: the error-schema cache fed from ``errors`` (None = off); its updates go
            to ``schemas`` and its alerts to ``alerts``.
        error_memory: the error memory's configuration, whose kernels are compiled at start
            with the others (:func:`~reloop.processors.warmup.warm_up`; None = no error memory).
    """

    def __init__(self, *, client: dict[str, Any], topics: dict[str, str], group_id: str,
                 limits: Limits, feedback: FeedbackCore,
                 compensation_factory: Callable[[OnnxScorer], Compensation | None],
                 telemetry: WorkerTelemetry, fetch_max_records: int = 5000,
                 session_timeout_ms: int = 6000, rebalance_timeout_ms: int = 6000,
                 snapshot_path: Path | None = None, snapshot_every_s: float = 10.0,
                 replica_snapshot_every_s: float = 60.0,
                 media: MediaCore | None = None, schema_core: SchemaCore | SchemaCoreChild | None = None,
                 journal_fsync: bool = False, recent_ids: int = 65_536, crash_threshold: int = 2,
                 group_instance_id: str | None = None, idle_fetch_wait_ms: int = 100,
                 checkpoint_in_child: bool = True, error_memory: ErrorMemoryConfig | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.client = client
        self.topics = topics
        self.group_id = group_id
        self.limits = limits
        self.tasks = FeedbackTasks(feedback.pending.window_s, feedback.pending.limit, feedback.metrics)
        self.admission = Admission(self.tasks)
        self.compensation_factory = compensation_factory
        self.telemetry = telemetry
        self.fetch_max_records = fetch_max_records
        self.idle_fetch_wait_ms = idle_fetch_wait_ms
        self.session_timeout_ms = session_timeout_ms
        self.group_instance_id = group_instance_id or None  # static membership (None: dynamic)
        self.rebalance_timeout_ms = rebalance_timeout_ms
        self.media = media
        self.error_memory_config = error_memory
        self.replica = ErrorsReplica(NoCompensation(), schema_core, limits, telemetry, recent_ids,
                                     quality_window=feedback.metrics.window)
        # schema distillation runs on the elected worker only (the leader); the others match
        # against what it publishes on ``schemas`` (None: no schema cache configured)
        self.published = PublishedSchemas(schema_core.cache.config) if schema_core is not None else None
        self.snapshot_path = snapshot_path
        self.snapshot_every_s = snapshot_every_s
        self.replica_snapshot_every_s = replica_snapshot_every_s
        self.scoring: ScoringCore | None = None
        self._next_scorer: OnnxScorer | None = None
        self._model_ready = asyncio.Event()
        self._by_topic = {v: k for k, v in topics.items()}
        self.checkpoint = (InputCheckpoint(snapshot_path.parent, limits, fsync=journal_fsync)
                           if snapshot_path is not None else None)
        self.guard = CrashGuard(snapshot_path.parent, crash_threshold) if snapshot_path is not None else None
        self.positions: dict[tuple[str, int], int] = {}  # input (topic, partition) -> next offset
        self._resend: list[Output] = []  # outputs of the last journaled batch, produced again at start
        self._inflight: list[Output] = []  # outputs of the batch being produced
        self._last_checkpoint = time.monotonic()
        self._checkpoint_busy = False
        self.checkpoint_in_child = checkpoint_in_child and hasattr(os, "fork")
        self._unacked: asyncio.Future[None] | None = None  # the last batch's acks, then its commit queued
        self._acks: asyncio.Future[Any] | None = None  # the last batch's acks alone
        self._to_commit: dict[TopicPartition, int] = {}  # acknowledged offsets not yet committed
        self._committer: asyncio.Future[None] | None = None  # commits them (hot_state)
        self._writes_in_flight: set[asyncio.Future[Any]] = set()  # file writes off the loop (hot_state)
        # applies ``memory``/``errors``/``schemas`` polls and collects the replica snapshots, one
        # at a time and in poll order, off the event loop (module doc: "Replica thread")
        self.replica_thread = ThreadPoolExecutor(1, thread_name_prefix="replica")
        # owns partition 0 of requests: publishes the schema cache (None: not assigned yet)
        self.is_leader: bool | None = None
        self.inputs_ready = False
        self.producer: AIOKafkaProducer | None = None
        self.answers: AIOKafkaProducer | None = None  # recommendations only (on_start)
        self.consumer: AIOKafkaConsumer | None = None
        self.errors_consumer: AIOKafkaConsumer | None = None
        self.changelog_consumer: AIOKafkaConsumer | None = None
        self._partitioner = KeyPartitioner()
        self.batch_lock = asyncio.Lock()  # a revocation waits for the batch in flight
        self.generation = 0  # assignments so far: a batch polled under an older one is dropped
        self.writer_id = writer_id(snapshot_path.parent if snapshot_path is not None else None)
        self.restore_log: list[dict[str, Any]] = []  # partitions rebuilt from the changelog

    # ---- lifecycle -----------------------------------------------------------------------
    async def on_start(self) -> None:
        # compile the numba kernels in a thread now, not on the loop inside the first batch
        # (a schema cache in a child process warms its kernels there)
        here = self.schema_core if isinstance(self.schema_core, SchemaCore) else None
        secs = await asyncio.get_running_loop().run_in_executor(
            None, warm_up, self.media.config if self.media is not None else None,
            here.cache.config if here is not None else None, 64, self.error_memory_config)
        log.info("kernels_warm", extra={"seconds": round(secs, 3)})
        self.producer = AIOKafkaProducer(**self.client, acks="all", linger_ms=2,
                                         max_batch_size=1 << 20, max_request_size=8 << 20)
        await self.producer.start()
        # recommendations on their own connection: the producer keeps one request in flight per
        # broker, so on the shared one an answer waited behind the previous batch's changelog,
        # memory and error records (measured: produce ~90 ms per batch at 300 req/s mixed)
        self.answers = AIOKafkaProducer(**self.client, acks="all", linger_ms=0,
                                        max_batch_size=1 << 20, max_request_size=8 << 20)
        await self.answers.start()
        self.errors_consumer = AIOKafkaConsumer(**self.client, group_id=None, enable_auto_commit=False,
                                                auto_offset_reset="earliest",
                                                max_partition_fetch_bytes=8 << 20,
                                                # off the latency path: the wait bounds the replica's
                                                # staleness; 10 ms made the broker spin
                                                fetch_max_wait_ms=self.idle_fetch_wait_ms)
        await self.errors_consumer.start()
        await self.find_replica_partitions()
        self.errors_consumer.assign(self._replica_parts["memory"])
        self.changelog_consumer = AIOKafkaConsumer(**self.client, group_id=None, enable_auto_commit=False,
                                                   auto_offset_reset="earliest", max_partition_fetch_bytes=8 << 20,
                                                   # restores read up to a known end (no wait at the
                                                   # end), but the last partition read stays assigned
                                                   fetch_max_wait_ms=self.idle_fetch_wait_ms)
        await self.changelog_consumer.start()

    async def on_stop(self) -> None:
        if self.scoring is not None:
            async with self.batch_lock:  # the batch in flight ends first, then nothing runs between
                with contextlib.suppress(Exception):  # a failed produce: its batch is in the journal
                    await self.settle_outputs()
                with contextlib.suppress(Exception):  # a failed commit: the offsets are journaled too
                    await self.commits_flushed()
                await self.finish_writes()
                self.save_checkpoint()
                # after the poll being applied, if any (the replica thread runs one at a time)
                await asyncio.get_running_loop().run_in_executor(self.replica_thread, self.save_snapshot)
        self.replica_thread.shutdown(wait=True)
        if self.schema_core is not None:
            self.schema_core.close()  # after the final snapshot: a child-process cache ends its child
        for c in (self.consumer, self.errors_consumer, self.changelog_consumer):
            if c is not None:
                await c.stop()
        for p in (self.producer, self.answers):
            if p is not None:
                await p.stop()

    # ---- inputs --------------------------------------------------------------------------
    @mode.Service.task
    @ends_quietly_on_stop
    async def _consume_inputs(self) -> None:
        await self._model_ready.wait()
        self.consumer = AIOKafkaConsumer(
            **self.client, group_id=self.group_id,
            enable_auto_commit=False, auto_offset_reset="earliest",
            partition_assignment_strategy=(RangePartitionAssignor,),
            group_instance_id=self.group_instance_id,
            session_timeout_ms=self.session_timeout_ms, rebalance_timeout_ms=self.rebalance_timeout_ms,
            max_partition_fetch_bytes=8 << 20, fetch_max_bytes=32 << 20,
            fetch_max_wait_ms=10)  # the broker's default wait (500 ms) added ~0.1 s of latency
        await self.consumer.start()
        # the last journaled batch may have been cut off mid-produce: its outputs are re-sent on
        # assignment, for the partitions whose local state is kept (SeekToCheckpoint)
        self.consumer.subscribe([self.topics[t] for t in INPUT_KINDS], listener=SeekToCheckpoint(self))
        log.info("inputs_consuming", extra={"group": self.group_id, "instance": self.group_instance_id})
        while not self.should_stop:
            generation = self.generation
            t_fetch = time.perf_counter()
            batch = await self.consumer.getmany(timeout_ms=100, max_records=self.fetch_max_records)
            if batch:
                self.telemetry.stage_seconds.labels("fetch").observe(time.perf_counter() - t_fetch)
                await self.process_inputs(batch, generation)
                self._update_lag(batch)
            if self.checkpoint is not None and not self._checkpoint_busy and \
                    time.monotonic() - self._last_checkpoint >= self.snapshot_every_s:
                self._start_checkpoint()

    async def process_inputs(self, batch: dict[TopicPartition, list[Any]], generation: int | None = None) -> None:
        """Run one polled batch through the cores, journal it, send its outputs; their
        acknowledgement finishes in the background (:meth:`_finish_batch`) while the next
        batch is fetched and scored, and the commit of its offsets after that, off the batch
        path (:meth:`_commit_pending`).

        At most one batch is unacknowledged: a batch is journaled only once the previous one
        is acknowledged (:meth:`settle_outputs`), so the journal's last entry is still the
        only batch a crash can cut off mid-produce (its outputs are re-sent at start).

        ``generation``: :attr:`generation` when the batch was polled; a batch polled before a
        rebalance is dropped (the rebalance placed every partition where its state ends, so
        its records are fetched again by whoever owns them now)."""
        assert self.consumer is not None
        async with self.batch_lock:
            if generation is not None and generation != self.generation:
                # fetch its records again from where this worker's state of them ends
                owned = self.consumer.assignment()
                for tp, msgs in batch.items():
                    if tp in owned:
                        self.consumer.seek(tp, self.positions.get((tp.topic, tp.partition), msgs[0].offset))
                log.info("batch_dropped_after_rebalance", extra={"records": sum(len(m) for m in batch.values())})
                return
            owned = self.consumer.assignment()
            batch = {tp: msgs for tp, msgs in batch.items() if tp in owned}
            if not batch:
                return
            offsets, acks = await self._process_locked(batch)
            self._acks = acks
            self._unacked = asyncio.ensure_future(self._finish_batch(acks, offsets))
            if self.guard is not None and self.guard.active:
                await self.settle_outputs()  # isolating crashes: one batch at a time, as before

    async def _process_locked(self, batch: dict[TopicPartition, list[Any]]
                              ) -> tuple[dict[TopicPartition, int], asyncio.Future[Any]]:
        """The batch up to sending its outputs (under :attr:`batch_lock`); returns the offsets
        to commit and the future of the outputs' acknowledgements."""
        assert self.scoring is not None and self.producer is not None
        t0 = time.perf_counter()
        clock = self.telemetry.stages()
        # the oldest request's age: clicks and media come from producers that batch them (the
        # driver lingers 50 ms), so their create time says when they were made, not how long
        # they queued; requests are the latency path
        sent = [msgs[0].timestamp for tp, msgs in batch.items() if tp.topic == self.topics["requests"]]
        if sent:
            clock.observe("queueing", time.time() - min(sent) / 1000.0)
        self._swap_if_due()
        outputs: list[Output] = []
        guard = self.guard
        if guard is not None:
            isolate = guard.active and any(guard.isolate((tp.topic, tp.partition), m.offset)
                                           for tp, msgs in batch.items() for m in msgs)
            guard.begin({(tp.topic, tp.partition): (msgs[0].offset, msgs[-1].offset) for tp, msgs in batch.items()})
        inputs = self._admit(batch, outputs)
        clock.lap("decode")
        timings = self.scoring.timings
        timings["model"] = timings["compensation"] = 0.0
        cores = (self.scoring, self.tasks, self.media)
        if guard is not None and isolate:
            log.warning("batch_isolated_after_crashes", extra={"records": len(inputs)})
            recs, errors, deltas, per_part = run_one_by_one(inputs, *cores, self._reject(outputs), self._mark)
        else:
            try:
                fault_point(inputs)
                recs, errors, deltas, per_part = run_step(inputs, *cores)
            except Exception as exc:  # noqa: BLE001 - poison-pill rule: isolate the record, never crash
                log.error("batch_failed_isolating", extra={"reason": f"{type(exc).__name__}: {str(exc)[:200]}",
                                                            "records": len(inputs)})
                recs, errors, deltas, per_part = run_one_by_one(inputs, *cores, self._reject(outputs), self._mark)
        if guard is not None:
            guard.end()
        for stage in ("model", "compensation"):
            clock.observe(stage, timings[stage])
        clock.lap("cores")  # media + model + compensation + feedback
        for part, part_errors in per_part:
            outputs += self._memory_outputs(part, part_errors)
        out_recs, out_err = self.topics["recommendations"], self.topics["errors"]
        outputs += [(out_recs, rec.user_id.encode(), encode(rec)) for rec in recs]
        outputs += [(out_err, err.user_id.encode(), encode(err)) for err in errors]
        offsets = {tp: msgs[-1].offset + 1 for tp, msgs in batch.items()}
        for tp, o in offsets.items():
            self.positions[(tp.topic, tp.partition)] = o
        outputs += self.changelog_outputs({tp.partition for tp in batch})
        t_wait = time.perf_counter()
        await self.settle_outputs()  # the previous batch acknowledged: the journal's last entry
        clock.t += time.perf_counter() - t_wait  # stays the only one a crash can cut off mid-produce;
        # the wait is part of the previous batch's "produce" (send -> acks), not of "journal"
        if self.checkpoint is not None:  # write-ahead: before any output leaves
            self.checkpoint.journal.append(JournalEntry(
                [(tp.topic, tp.partition, o) for tp, o in offsets.items()],
                [x.raw for x in inputs if x.logical == "media"],
                [x.raw for x in inputs if x.logical == "requests"] if self.media is not None else [],
                deltas, outputs))
        clock.lap("journal")
        self._inflight = outputs
        acks = self._send(outputs)  # "produce" (send to acknowledgement) is observed by _finish_batch
        self.telemetry.events_out.labels("recommendations").inc(len(recs))
        self.telemetry.events_out.labels("errors").inc(len(errors))
        self.telemetry.pending.set(self.tasks.pending_count)
        self.telemetry.batch_seconds.labels("inputs").observe(time.perf_counter() - t0)
        return offsets, acks

    # ---- errors replica ------------------------------------------------------------------
    @mode.Service.task
    @ends_quietly_on_stop
    async def _consume_errors(self) -> None:
        await self._model_ready.wait()  # the replica exists once the first model is known
        assert self.errors_consumer is not None
        for tp in self.errors_consumer.assignment():
            applied = self.replica.memory_applied if tp.topic == self.topics["memory"] else self.errors_applied
            if tp.partition in applied:  # restored: resume after the snapshot
                self.errors_consumer.seek(tp, applied[tp.partition])
            else:
                await self.errors_consumer.seek_to_beginning(tp)
        while not self.should_stop:
            await self._sync_replica_topics()
            batch = await self.errors_consumer.getmany(timeout_ms=100, max_records=self.fetch_max_records)
            if batch:  # off the loop; the next poll waits for it (offsets, outbox stay in order)
                await asyncio.get_running_loop().run_in_executor(self.replica_thread, self.apply_error_batch, batch)
            if self.replica.outbox:
                await self._publish_schema_outbox()

    @mode.Service.task
    @ends_quietly_on_stop
    async def _snapshot_periodically(self) -> None:
        await self._model_ready.wait()
        while not self.should_stop:
            await self.sleep(self.replica_snapshot_every_s)
            if not self.should_stop:
                # consistent copy, between batches, into the buffers of the previous one (its
                # write below has finished): no fresh 100 MB allocation stalling the loop
                files = await asyncio.get_running_loop().run_in_executor(
                    self.replica_thread, self.collect_snapshot, True)  # between two polls' applies
                # the write (100 MB at the default sketch size) runs off the event loop
                write = asyncio.get_running_loop().run_in_executor(None, write_files, files)
                self.track_write(write)
                await write
