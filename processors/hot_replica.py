"""The hot path's replica side: which replica topics a worker reads, applying them, and
publishing what the elected worker distils (see :mod:`reloop.processors.hot_path`).

Every worker reads ``memory`` (binary error-memory writes, into its error-memory replica); the
elected worker (owner of partition 0 of ``requests``) also reads ``errors`` into the schema
cache and publishes its updates, alerts and the dead letters of bad error records; the others
read ``schemas`` and match against what it published. A mixin of
:class:`reloop.processors.hot_path.HotPath`.

Replica thread: polls of the replica topics are applied, and the replica snapshots collected,
by one thread (:attr:`HotPath.replica_thread`), in poll order, while the event loop serves; the
numba kernels release the GIL. Scoring reads the sketch while that thread writes it: both go
through :class:`~reloop.processors.replica.GuardedCompensation` (many readers or one writer, per
memory batch), so a read sees each batch wholly or not at all. The schema cache's matcher is
replaced by one reference assignment at a decision tick, so scoring reads either the old or the
new one. A snapshot is collected in that thread between two polls, so it matches its offsets.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Sequence

from aiokafka import TopicPartition

from reloop.processors.compensation import Compensation
from reloop.processors.schemas import PublishedSchemas, SchemaCore, SchemaUpdate, topic_key
from reloop.streams.codec import encode

log = logging.getLogger("reloop.hot_path")

__all__ = ["HotPathReplica"]


class HotPathReplica:
    """Replica-topic methods of the hot path (mixin; module doc)."""

    # attributes provided by HotPath
    replica: Any
    published: PublishedSchemas | None
    is_leader: bool | None
    errors_consumer: Any
    producer: Any
    scoring: Any
    topics: dict[str, str]
    telemetry: Any
    _replica_parts: dict[str, list[TopicPartition]]
    replica_thread: Any

    async def find_replica_partitions(self) -> None:
        """The partitions of ``memory``, ``errors`` and ``schemas`` (:attr:`_replica_parts`).

        ``memory`` feeds the error memory; ``errors`` (per-record JSON) the schema cache of the
        elected worker only (added by :meth:`_sync_replica_topics` once the group has elected
        it), ``schemas`` the matcher of the others."""
        self._replica_parts = {}
        for logical in ("memory", "errors", "schemas"):
            parts = self.errors_consumer.partitions_for_topic(self.topics[logical]) or set()
            if not parts:
                await self.errors_consumer._client.force_metadata_update()  # noqa: SLF001
                parts = self.errors_consumer.partitions_for_topic(self.topics[logical]) or {0}
            self._replica_parts[logical] = [TopicPartition(self.topics[logical], p) for p in sorted(parts)]
        self.replica.expect_partitions(len(self._replica_parts["errors"]))

    async def _sync_replica_topics(self) -> None:
        """Read ``errors`` (and distil) while this worker is the leader, ``schemas`` while it is
        not; scoring matches against the distilled cache or the published one accordingly. A
        worker that stops distilling keeps its cache at the offsets it includes and resumes
        from them if it is elected again."""
        consumer = self.errors_consumer
        if self.published is None or self.is_leader is None or consumer is None:
            return
        want = set(self._replica_parts["memory"]) | set(
            self._replica_parts["errors" if self.is_leader else "schemas"])
        have = set(consumer.assignment())
        if want != have:
            consumer.assign(sorted(want, key=lambda tp: (tp.topic, tp.partition)))
            for tp in want:  # a new assignment forgets positions: every partition is placed again
                applied = self.replica.memory_applied if tp.topic == self.topics["memory"] else self.errors_applied
                if tp.topic == self.topics["schemas"]:
                    self.published = PublishedSchemas(self.published.config)  # the whole topic again
                    await consumer.seek_to_beginning(tp)
                elif tp.partition in applied:
                    consumer.seek(tp, applied[tp.partition])
                else:
                    await consumer.seek_to_beginning(tp)
            log.info("schema_role", extra={"distils": self.is_leader})
            if self.is_leader and self.schema_core is not None:  # a child process warms up now,
                # not when the first errors wait for it (in the replica thread: calls stay in order)
                await asyncio.get_running_loop().run_in_executor(self.replica_thread, self.schema_core.start)
        if self.scoring is not None:
            self.scoring.schemas = self.schema_core if self.is_leader else self.published  # type: ignore[assignment]

    async def _publish_schema_outbox(self) -> None:
        """Publish schema updates, alerts and the replica's dead letters; only the leader does
        (every worker keeps the same cache from the same ``errors`` log, so one copy of each
        message is enough)."""
        assert self.producer is not None
        if self.is_leader is None:  # hold them until the group assigned the inputs
            return
        out, self.replica.outbox = self.replica.outbox, []
        if not self.is_leader:
            return
        futs = [await self.producer.send(self.topics[topic], encode(msg), key=_outbox_key(topic, msg))
                for topic, msg in out]
        await asyncio.gather(*futs)
        self.telemetry.events_out.labels("schemas").inc(sum(t == "schemas" for t, _ in out))
        self.telemetry.events_out.labels("alerts").inc(sum(t == "alerts" for t, _ in out))
        self.telemetry.events_out.labels("dlq").inc(sum(t == "dlq" for t, _ in out))

    # ---- snapshots -----------------------------------------------------------------------
    def apply_error_batch(self, batch: dict[TopicPartition, Sequence[Any]]) -> int:
        """Apply a poll of ``errors`` (schema cache, :meth:`ErrorsReplica.apply_batch`) and
        ``memory`` (error memory, :meth:`ErrorsReplica.apply_memory`) to the local replicas."""
        memory, schemas = self.topics["memory"], self.topics["schemas"]
        written = self.replica.apply_memory({tp: m for tp, m in batch.items() if tp.topic == memory})
        if self.published is not None:
            self.published.apply(_schema_updates(m for tp, msgs in batch.items() if tp.topic == schemas for m in msgs))
        errors = {tp: m for tp, m in batch.items() if tp.topic == self.topics["errors"]}
        return written + (self.replica.apply_batch(errors) if errors else 0)

    # ---- replica state, read by the web pages ---------------------------------------------
    @property
    def compensation(self) -> Compensation:
        return self.replica.compensation

    @property
    def schema_core(self) -> SchemaCore | None:
        return self.replica.schema_core

    @property
    def errors_applied(self) -> dict[int, int]:
        return self.replica.applied

    @property
    def memory_applied(self) -> dict[int, int]:
        return self.replica.memory_applied

    @property
    def duplicates_skipped(self) -> int:
        return self.replica.duplicates_skipped


def _outbox_key(topic: str, msg: Any) -> bytes | None:
    """Kafka key of a replica outbox message: a dead letter keeps its source's key."""
    if topic == "dlq":
        return msg.key.encode("utf-8") if msg.key else None
    return topic_key(msg)


def _schema_updates(msgs: Any) -> list[SchemaUpdate]:
    """The valid :class:`SchemaUpdate` values among ``schemas`` messages (others are skipped)."""
    import msgspec

    out = []
    for m in msgs:
        try:
            out.append(msgspec.json.decode(m.value or b"", type=SchemaUpdate))
        except Exception as exc:  # noqa: BLE001 - poison-pill rule: skip it, never stop the replica
            log.warning("bad_schema_update", extra={"offset": m.offset, "reason": f"{type(exc).__name__}: {str(exc)[:200]}"})
    return out
