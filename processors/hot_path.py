"""The streaming shell of the hot topics: aiokafka batch consumers feeding the cores.

Runs as a ``mode.Service`` inside the Faust app (DESIGN.md: Faust's per-event streams cost
more than the whole per-event budget, so ``requests``, ``interactions`` and ``media`` are read
with ``getmany`` by one consumer group with range assignment, which keeps partition i of each
co-partitioned topic on the same worker; ``errors`` is read by every worker over all
partitions with manual assignment).

Per polled batch, in this order (the rule the replay engine shares):

1. decode and validate every record; an invalid one becomes a dead letter (original bytes,
   source topic/partition/offset, reason) and processing goes on;
2. requests are scored (``ScoringCore``), recommendations produced, predictions kept pending;
3. interactions are joined (``FeedbackCore``), then windows up to the watermark close;
   error records are produced to ``errors``;
4. outputs are flushed, then the batch's input offsets are committed (at-least-once).

Error records come back through the ``errors`` consumer and are applied to the local
compensation replica; per-partition offsets make a redelivered record a no-op.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import mode
import numpy as np
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.coordinator.assignors.range import RangePartitionAssignor

from models.scorer import OnnxScorer
from processors.compensation import Compensation, NoCompensation
from processors.feedback import FeedbackCore
from processors.media import MediaCore
from processors.schemas import SchemaCore, topic_key
from processors.scoring import ScoringCore
from processors.telemetry import WorkerTelemetry
from state.snapshots import read_npz, write_npz_atomic
from streams.codec import InvalidEvent, dead_letter, decode_event, encode
from streams.events import ErrorRecord, Interaction, MediaEvent, RecommendationRequest
from streams.validation import Limits

log = logging.getLogger("reloop.hot_path")

_INPUT_KINDS: dict[str, type] = {"requests": RecommendationRequest, "interactions": Interaction,
                                 "media": MediaEvent}


class HotPath(mode.Service):
    """Batch consumer of requests/interactions/media plus the errors replica consumer.

    Args:
        client: aiokafka connection kwargs (bootstrap, TLS, SASL).
        topics: logical name -> cluster topic name for every catalog topic.
        group_id: consumer group shared by all workers for the user-keyed topics.
        limits: validation limits for input events.
        feedback: the feedback core (owns pending predictions and online metrics).
        compensation_factory: builds the compensation replica for the first model served
            (``scorer -> Compensation | None``; None = identity).
        telemetry: Prometheus metrics.
        fetch_max_records: most records per ``getmany``.
        session_timeout_ms / rebalance_timeout_ms: group membership timeouts.
        snapshot_path: where the error-memory replica is snapshotted with the ``errors``
            offsets it includes (None = no snapshots; a restart then replays ``errors``).
        snapshot_every_s: seconds between snapshots (and one at stop).
        media: the per-user media memories (None = media events are validated, not kept).
        schema_core: the error-schema cache fed from ``errors`` (None = off); its updates go
            to ``schemas`` and its alerts to ``alerts``.
    """

    def __init__(self, *, client: dict[str, Any], topics: dict[str, str], group_id: str,
                 limits: Limits, feedback: FeedbackCore,
                 compensation_factory: Callable[[OnnxScorer], Compensation | None],
                 telemetry: WorkerTelemetry, fetch_max_records: int = 5000,
                 session_timeout_ms: int = 6000, rebalance_timeout_ms: int = 6000,
                 snapshot_path: Path | None = None, snapshot_every_s: float = 10.0,
                 media: MediaCore | None = None, schema_core: SchemaCore | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.client = client
        self.topics = topics
        self.group_id = group_id
        self.limits = limits
        self.feedback = feedback
        self.compensation_factory = compensation_factory
        self.compensation: Compensation = NoCompensation()
        self.telemetry = telemetry
        self.fetch_max_records = fetch_max_records
        self.session_timeout_ms = session_timeout_ms
        self.rebalance_timeout_ms = rebalance_timeout_ms
        self.media = media
        self.schema_core = schema_core
        self.schema_outbox: list[tuple[str, Any]] = []
        self.snapshot_path = snapshot_path
        self.snapshot_every_s = snapshot_every_s
        self.scoring: ScoringCore | None = None
        self._next_scorer: OnnxScorer | None = None
        self._model_ready = asyncio.Event()
        self._by_topic = {v: k for k, v in topics.items()}
        self.max_ts: dict[str, float] = {}  # per input stream, event time (s)
        self.errors_applied: dict[int, int] = {}  # errors partition -> next offset to apply
        self.inputs_ready = False
        self.producer: AIOKafkaProducer | None = None
        self.consumer: AIOKafkaConsumer | None = None
        self.errors_consumer: AIOKafkaConsumer | None = None

    # ---- model ---------------------------------------------------------------------------
    def install_model(self, scorer: OnnxScorer) -> None:
        """Serve ``scorer`` from the next batch on (the current batch finishes on the old one)."""
        if self.scoring is None:
            self.compensation = self.compensation_factory(scorer) or NoCompensation()
            self._restore_snapshot()
            self.scoring = ScoringCore(scorer, self.compensation, self.media)
            self.telemetry.model_info.labels(scorer.version).set(1)
            self._model_ready.set()
        else:
            self._next_scorer = scorer

    def _swap_if_due(self) -> None:
        if self._next_scorer is not None and self.scoring is not None:
            old = self.scoring.model_version
            self.scoring.swap_model(self._next_scorer)
            self._next_scorer = None
            self.telemetry.model_info.labels(old).set(0)
            self.telemetry.model_info.labels(self.scoring.model_version).set(1)
            self.telemetry.model_swaps.inc()
            log.info("model_swapped", extra={"old": old, "new": self.scoring.model_version})

    # ---- lifecycle -----------------------------------------------------------------------
    async def on_start(self) -> None:
        self.producer = AIOKafkaProducer(**self.client, acks="all", linger_ms=2,
                                         max_batch_size=1 << 20, max_request_size=8 << 20)
        await self.producer.start()
        self.errors_consumer = AIOKafkaConsumer(**self.client, group_id=None, enable_auto_commit=False,
                                                auto_offset_reset="earliest",
                                                max_partition_fetch_bytes=8 << 20)
        await self.errors_consumer.start()
        parts = self.errors_consumer.partitions_for_topic(self.topics["errors"]) or set()
        if not parts:
            await self.errors_consumer._client.force_metadata_update()  # noqa: SLF001
            parts = self.errors_consumer.partitions_for_topic(self.topics["errors"]) or {0}
        self.errors_consumer.assign([TopicPartition(self.topics["errors"], p) for p in sorted(parts)])

    async def on_stop(self) -> None:
        if self.scoring is not None:
            self.save_snapshot()
        for c in (self.consumer, self.errors_consumer):
            if c is not None:
                await c.stop()
        if self.producer is not None:
            await self.producer.stop()

    # ---- inputs --------------------------------------------------------------------------
    @mode.Service.task
    async def _consume_inputs(self) -> None:
        await self._model_ready.wait()
        self.consumer = AIOKafkaConsumer(
            *(self.topics[t] for t in _INPUT_KINDS), **self.client, group_id=self.group_id,
            enable_auto_commit=False, auto_offset_reset="earliest",
            partition_assignment_strategy=(RangePartitionAssignor,),
            session_timeout_ms=self.session_timeout_ms, rebalance_timeout_ms=self.rebalance_timeout_ms,
            max_partition_fetch_bytes=8 << 20, fetch_max_bytes=32 << 20)
        await self.consumer.start()
        self.inputs_ready = True
        log.info("inputs_consuming", extra={"group": self.group_id})
        while not self.should_stop:
            batch = await self.consumer.getmany(timeout_ms=100, max_records=self.fetch_max_records)
            if batch:
                await self.process_inputs(batch)

    async def process_inputs(self, batch: dict[TopicPartition, list[Any]]) -> None:
        """Run one polled batch through the cores, produce outputs, then commit offsets."""
        assert self.scoring is not None and self.producer is not None and self.consumer is not None
        t0 = time.perf_counter()
        self._swap_if_due()
        decoded: dict[str, list[Any]] = {t: [] for t in _INPUT_KINDS}
        sends: list[asyncio.Future[Any]] = []
        for tp, msgs in batch.items():
            logical = self._by_topic[tp.topic]
            kind = _INPUT_KINDS[logical]
            self.telemetry.events_in.labels(logical).inc(len(msgs))
            for m in msgs:
                try:
                    decoded[logical].append(decode_event(m.value or b"", kind, self.limits))
                except InvalidEvent as exc:
                    sends.append(await self._dead_letter(m, logical, str(exc)))
        if self.media is not None:
            self.media.on_batch(decoded["media"])  # before scoring: a batch's media counts at once
        requests: list[RecommendationRequest] = decoded["requests"]
        interactions: list[Interaction] = decoded["interactions"]
        recs, pending = self.scoring.score(requests)
        errors = self.feedback.on_scored(pending)
        errors += self.feedback.on_batch(interactions)
        watermark = self._watermark(requests, interactions)
        if watermark is not None:
            errors += self.feedback.advance(watermark)
        out_recs, out_err = self.topics["recommendations"], self.topics["errors"]
        for rec in recs:
            sends.append(await self.producer.send(out_recs, encode(rec), key=rec.user_id.encode()))
        for err in errors:
            sends.append(await self.producer.send(out_err, encode(err), key=err.user_id.encode()))
        if sends:
            await asyncio.gather(*sends)
        await self.consumer.commit({tp: msgs[-1].offset + 1 for tp, msgs in batch.items()})
        self.telemetry.events_out.labels("recommendations").inc(len(recs))
        self.telemetry.events_out.labels("errors").inc(len(errors))
        self.telemetry.pending.set(len(self.feedback.pending))
        self.telemetry.batch_seconds.labels("inputs").observe(time.perf_counter() - t0)

    def _watermark(self, requests: Sequence[RecommendationRequest],
                   interactions: Sequence[Interaction]) -> float | None:
        """Event-time watermark: the slower of the request and interaction streams.

        Windows close only when *both* streams have moved past them: if interactions ran
        ahead of lagging requests (or the reverse), closing on the faster stream would turn
        requests into negatives before their clicks were read.
        """
        for name, evs in (("requests", requests), ("interactions", interactions)):
            if evs:
                self.max_ts[name] = max(self.max_ts.get(name, 0.0), max(e.ts for e in evs))
        return min(self.max_ts.values()) if self.max_ts else None

    async def _dead_letter(self, msg: Any, logical: str, reason: str) -> asyncio.Future[Any]:
        assert self.producer is not None
        self.telemetry.dead_letters.labels(logical).inc()
        log.warning("dead_letter", extra={"topic": msg.topic, "partition": msg.partition,
                                          "offset": msg.offset, "reason": reason[:200]})
        letter = dead_letter(msg.value, reason, topic=msg.topic, partition=msg.partition,
                             offset=msg.offset, key=msg.key)
        return await self.producer.send(self.topics["dlq"], encode(letter), key=msg.key)

    # ---- errors replica ------------------------------------------------------------------
    @mode.Service.task
    async def _consume_errors(self) -> None:
        await self._model_ready.wait()  # the replica exists once the first model is known
        assert self.errors_consumer is not None
        for tp in self.errors_consumer.assignment():
            if tp.partition in self.errors_applied:  # restored: resume after the snapshot
                self.errors_consumer.seek(tp, self.errors_applied[tp.partition])
            else:
                await self.errors_consumer.seek_to_beginning(tp)
        while not self.should_stop:
            batch = await self.errors_consumer.getmany(timeout_ms=100, max_records=self.fetch_max_records)
            if batch:
                self.apply_error_batch(batch)
            if self.schema_outbox:
                await self._publish_schema_outbox()

    async def _publish_schema_outbox(self) -> None:
        assert self.producer is not None
        out, self.schema_outbox = self.schema_outbox, []
        futs = [await self.producer.send(self.topics[topic], encode(msg), key=topic_key(msg)) for topic, msg in out]
        await asyncio.gather(*futs)
        self.telemetry.events_out.labels("schemas").inc(sum(t == "schemas" for t, _ in out))
        self.telemetry.events_out.labels("alerts").inc(sum(t == "alerts" for t, _ in out))

    # ---- snapshots -----------------------------------------------------------------------
    def collect_snapshot(self) -> dict[Path, dict[str, np.ndarray]]:
        """Copies of the replica (with the ``errors`` offsets it includes) and the media
        memory, taken between batches so each is consistent; written by :meth:`save_snapshot`."""
        files: dict[Path, dict[str, np.ndarray]] = {}
        if self.snapshot_path is None:
            return files
        if self.media is not None:
            files[self.snapshot_path.with_name("media_memory.npz")] = self.media.snapshot()
        parts = sorted(self.errors_applied)
        offsets = {"errors_partitions": np.array(parts, dtype=np.int64),
                   "errors_offsets": np.array([self.errors_applied[p] for p in parts], dtype=np.int64)}
        if self.schema_core is not None:
            files[self.snapshot_path.with_name("schema_cache.npz")] = {**self.schema_core.snapshot(), **offsets}
        arrays = self.compensation.snapshot()
        if arrays:
            files[self.snapshot_path] = {**arrays, **offsets}
        return files

    @staticmethod
    def write_snapshot(files: dict[Path, dict[str, np.ndarray]]) -> None:
        """Write collected snapshot files atomically (safe to run in a thread)."""
        for path, arrays in files.items():
            write_npz_atomic(path, arrays)
        if files:
            log.info("snapshot_saved", extra={"files": [str(p) for p in files]})

    def save_snapshot(self) -> None:
        """Collect and write a snapshot now (blocking)."""
        self.write_snapshot(self.collect_snapshot())

    def _restore_snapshot(self) -> None:
        if self.snapshot_path is None:
            return
        media_path = self.snapshot_path.with_name("media_memory.npz")
        if self.media is not None and media_path.exists():
            self.media = MediaCore.restore(read_npz(media_path))
            log.info("media_snapshot_restored", extra={"users": len(self.media.memory.users)})
        schema_path = self.snapshot_path.with_name("schema_cache.npz")
        if self.schema_core is not None and schema_path.exists():
            self.schema_core = SchemaCore.restore(read_npz(schema_path))
            log.info("schema_snapshot_restored", extra={"schemas": len(self.schema_core.schemas())})
        if not self.snapshot_path.exists():
            return
        try:
            snap = read_npz(self.snapshot_path)
            if self.compensation.restore(snap):
                self.errors_applied = dict(zip(snap["errors_partitions"].tolist(), snap["errors_offsets"].tolist()))
                log.info("snapshot_restored", extra={"offsets": self.errors_applied})
            else:
                log.warning("snapshot_ignored", extra={"reason": "keyed by another model version"})
        except (OSError, ValueError, KeyError) as exc:
            log.error("snapshot_unreadable", extra={"path": str(self.snapshot_path), "reason": str(exc)})

    @mode.Service.task
    async def _snapshot_periodically(self) -> None:
        await self._model_ready.wait()
        while not self.should_stop:
            await self.sleep(self.snapshot_every_s)
            if not self.should_stop:
                files = self.collect_snapshot()  # consistent copy, between batches
                # the write (100 MB at the default sketch size) runs off the event loop
                await asyncio.get_running_loop().run_in_executor(None, self.write_snapshot, files)

    def apply_error_batch(self, batch: dict[TopicPartition, Sequence[Any]]) -> int:
        """Apply error records to the local replica, skipping offsets already applied."""
        t0 = time.perf_counter()
        records: list[ErrorRecord] = []
        for tp, msgs in batch.items():
            start = self.errors_applied.get(tp.partition, 0)
            for m in msgs:
                if m.offset < start:
                    continue
                try:
                    records.append(decode_event(m.value or b"", ErrorRecord, self.limits))
                except InvalidEvent as exc:
                    log.warning("bad_error_record", extra={"offset": m.offset, "reason": str(exc)[:200]})
            if msgs:
                self.errors_applied[tp.partition] = max(start, msgs[-1].offset + 1)
        self.telemetry.events_in.labels("errors").inc(len(records))
        stored = self.compensation.apply_errors(records)
        if self.schema_core is not None and records:
            updates, alerts = self.schema_core.on_batch(records)
            self.schema_outbox += [("schemas", u) for u in updates] + [("alerts", a) for a in alerts]
        self.telemetry.batch_seconds.labels("errors").observe(time.perf_counter() - t0)
        return stored
