"""The replicas every worker keeps: error memory (from ``memory``) + schema cache (from ``errors``).

The error memory is fed by the binary ``memory`` topic (:mod:`reloop.streams.memory_batch`: one
record per scored batch, arrays of codes, labels, predictions, times), read over all
partitions by every worker: no per-row Python work. The schema cache reads the per-record
JSON ``errors`` topic. Per-partition offsets make a redelivered record a no-op;
:class:`~reloop.processors.checkpoint.RecentIds` drops the byte-identical copies a crashed worker
produced twice (by error id on ``errors``, by batch id on ``memory``). Both replicas are
snapshotted with the offsets and filters they include (the error memory's file carries both
topics' offsets), atomically; a restart resumes after those offsets.

Without the ``memory`` topic (``memory_topic=False``, e.g. error records from a producer that
writes no batches) the error memory is fed from ``errors`` as before.

The error memory gets every record at once (additive: order does not matter, and serving
wants it fresh). The schema cache is order-sensitive, so its records pass through an
:class:`~reloop.processors.reorder.EventTimeReorder` first, which releases them in an order that does
not depend on how polls interleave the partitions; the held records are part of the
schema-cache snapshot (an older snapshot without them restores with an empty buffer).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable, Sequence

import msgspec
import numpy as np

from reloop.models.scorer import OnnxScorer
from reloop.processors.checkpoint import RecentIds
from reloop.processors.compensation import Compensation, NoCompensation
from reloop.processors.metrics import ClusterQuality
from reloop.processors.reorder import EventTimeReorder
from reloop.processors.replica_lock import GuardedCompensation, ReadWriteLock
from reloop.processors.schema_child import SchemaChildGone
from reloop.processors.schemas import SchemaCore
from reloop.processors.telemetry import WorkerTelemetry
from reloop.state.snapshots import read_npz, write_npz_atomic
from reloop.streams.codec import InvalidEvent, dead_letter, decode_event
from reloop.streams.events import ErrorRecord
from reloop.streams.memory_batch import InvalidMemoryBatch, decode_batch
from reloop.streams.topics import TOPICS
from reloop.streams.validation import Limits

__all__ = ["ErrorsReplica", "GuardedCompensation", "ReadWriteLock", "RecentErrorIds", "previous", "write_files"]

log = logging.getLogger("reloop.replica")
_record_decoder = msgspec.json.Decoder(ErrorRecord)


class RecentErrorIds(RecentIds):
    """:class:`~reloop.processors.checkpoint.RecentIds` with a batch filter for the replica's
    hot loop (same state, same snapshot arrays, same answers as :meth:`first_time` per id)."""

    def fresh(self, partition: int, records: Sequence[ErrorRecord]) -> list[ErrorRecord]:
        """The records of ``partition`` whose ``error_id`` is not among the last ``capacity``
        (in order; each kept id is recorded as :meth:`first_time` would, evicting the oldest)."""
        seen = self._seen.setdefault(partition, set())
        order = self._order.setdefault(partition, deque())
        cap, out = self.capacity, []
        add, push, keep = seen.add, order.append, out.append
        for rec in records:
            e = rec.error_id
            if e in seen:
                continue
            add(e)
            push(e)
            keep(rec)
            if len(order) > cap:
                seen.discard(order.popleft())
        return out


class ErrorsReplica:
    """Applies ``errors`` batches to the compensation and the schema cache, exactly once.

    Args:
        compensation: the error-memory replica (identity = no compensation).
        schema_core: the schema cache (None = off); its updates and alerts collect in
            :attr:`outbox` as ``(topic, message)`` for the shell to publish.
        limits: validation limits for error records.
        telemetry: Prometheus metrics.
        recent_ids: size of the duplicate filter per ``errors`` partition.
        memory_topic: the error memory is fed by ``memory`` batches (:meth:`apply_memory`),
            not by ``errors`` records.
        quality_window: measure the cluster's quality from the fresh ``errors`` records
            (:attr:`quality`, :class:`~reloop.processors.metrics.ClusterQuality`, windows of
            this many records; 0 = off; only with a schema cache, whose worker reads
            ``errors``). Snapshotted with the schema cache.
        errors_partitions: the partitions of ``errors`` the reorder buffer waits for (the
            cluster's count: :meth:`expect_partitions` once the worker has read it; replay
            passes ``kafka.partitions``).

    The reorder buffer in front of the schema cache (:attr:`reorder`) takes its parameters
    from the cache's configuration (``reorder_*`` fields of :class:`SchemaCacheConfig`).
    """

    def __init__(self, compensation: Compensation, schema_core: SchemaCore | None, limits: Limits,
                 telemetry: WorkerTelemetry, recent_ids: int = 65_536, memory_topic: bool = True,
                 quality_window: int = 0, errors_partitions: int = TOPICS["errors"].partitions) -> None:
        self.compensation = compensation
        self.errors_partitions = errors_partitions
        self.memory_topic = memory_topic
        self.memory_applied: dict[int, int] = {}  # memory partition -> next offset to apply
        self.memory_recent = RecentIds(4096)  # batch ids (hex) per memory partition
        self.memory_rows = 0  # rows received on ``memory`` (before the write policy)
        self.memory_invalid = 0
        self.schema_core = schema_core
        self.limits = limits
        self.telemetry = telemetry
        self.applied: dict[int, int] = {}  # errors partition -> next offset to apply
        self.recent_ids = RecentErrorIds(recent_ids)
        self.duplicates_skipped = 0
        self.outbox: list[tuple[str, Any]] = []
        self.reorder = self._new_reorder() if schema_core is not None else None
        self.quality_window = quality_window
        self.quality = ClusterQuality(quality_window) if quality_window and schema_core is not None else None
        telemetry.schema_ticks.set_function(lambda: self.schema_core.cache.ticks if self.schema_core else 0)
        telemetry.schema_tick_seconds.set_function(
            lambda: self.schema_core.cache.tick_seconds if self.schema_core else 0.0)

    def _reorder_partitions(self) -> range:
        assert self.schema_core is not None
        return range(self.schema_core.cache.config.reorder_partitions or self.errors_partitions)

    def _new_reorder(self) -> EventTimeReorder:
        assert self.schema_core is not None
        cfg = self.schema_core.cache.config
        return EventTimeReorder(self._reorder_partitions(), lateness_s=cfg.reorder_lateness_s,
                                idle_s=cfg.reorder_idle_s, max_held=cfg.reorder_max_held)

    def expect_partitions(self, n: int) -> None:
        """``errors`` has ``n`` partitions: the reorder buffer waits for each of them (a
        partition it was not told of would count only from its first record, so records of
        the others could be released before it)."""
        self.errors_partitions = n
        if self.reorder is not None:
            self.reorder.expected.update(self._reorder_partitions())

    def _decode(self, raw: bytes) -> ErrorRecord:
        return decode_event(raw, ErrorRecord, self.limits)

    def apply_batch(self, batch: dict[Any, Sequence[Any]]) -> int:
        """Apply a polled batch (TopicPartition -> messages), skipping offsets already applied
        and ids applied recently; returns the number of sketch writes."""
        t0 = time.perf_counter()
        records: list[ErrorRecord] = []
        for tp, msgs in batch.items():
            start = self.applied.get(tp.partition, 0)
            if msgs and msgs[0].offset < start:
                msgs = [m for m in msgs if m.offset >= start]
            decoded = self._decode_all(msgs)
            fresh = self.recent_ids.fresh(tp.partition, decoded)
            self.duplicates_skipped += len(decoded) - len(fresh)
            if msgs:
                self.applied[tp.partition] = max(start, msgs[-1].offset + 1)
            if self.reorder is not None:
                self.reorder.push(tp.partition, fresh)
            records += fresh
        self.telemetry.events_in.labels("errors").inc(len(records))
        if self.quality is not None:  # every fresh record at once, not held for the cache's order
            self.quality.measure(records)
        stored = 0 if self.memory_topic else self._isolated(self.compensation.apply_errors, records, "error_memory")
        if self.schema_core is not None and self.reorder is not None:
            ready = self.reorder.pop_ready()
            if ready:
                out = self._isolated(self.schema_core.on_batch, ready, "schema_cache")
                if out:
                    updates, alerts = out
                    self.outbox += [("schemas", u) for u in updates] + [("alerts", a) for a in alerts]
        self.telemetry.batch_seconds.labels("errors").observe(time.perf_counter() - t0)
        return stored

    def _decode_all(self, msgs: Sequence[Any]) -> list[ErrorRecord]:
        """The valid error records of ``msgs`` (in order); the others are rejected as
        :func:`~reloop.streams.codec.decode_event` would reject them (:meth:`_reject`).

        The common case without a Python frame per record: the msgspec decoder straight, the
        size limit and the event-time limit of :func:`~reloop.streams.validation.check_limits`
        inline (the wall clock read once per call); anything else goes through
        :func:`decode_event` for its reason."""
        limits, dec, out = self.limits, _record_decoder.decode, []
        max_bytes, future = limits.max_event_bytes, limits.max_future_s
        latest = time.time() + future if future else math.inf
        for m in msgs:
            raw = m.value or b""
            try:
                if len(raw) > max_bytes:
                    raise ValueError
                rec = dec(raw)
                ts = rec.ts if rec.label_ts is None or rec.label_ts <= rec.ts else rec.label_ts
                if not ts <= latest:
                    raise ValueError
            except Exception:  # noqa: BLE001 - the slow path names the reason (or accepts it)
                try:
                    rec = decode_event(raw, ErrorRecord, limits)
                except InvalidEvent as exc:
                    self._reject(m, str(exc))
                    continue
            out.append(rec)
        return out

    def _reject(self, msg: Any, reason: str) -> None:
        """A record no replica can apply: logged, counted, and queued as a dead letter (only the
        leader publishes the outbox, so the cluster writes one copy)."""
        log.warning("bad_error_record", extra={"partition": msg.partition, "offset": msg.offset,
                                               "reason": reason[:200]})
        self.telemetry.dead_letters.labels("errors").inc()
        letter = dead_letter(msg.value, reason, topic=msg.topic, partition=msg.partition,
                             offset=msg.offset, key=msg.key)
        self.outbox.append(("dlq", letter))

    def _isolated(self, apply: Callable[[list[ErrorRecord]], Any], records: list[ErrorRecord], what: str) -> Any:
        """``apply(records)``; if it raises, apply them one at a time and drop (log, count) the
        ones that raise, so one record never stops the replica (poison-pill rule). Returns the
        first result, or the sum of the per-record ones for counts."""
        try:
            return apply(records)
        except SchemaChildGone:
            raise  # not a record's fault: the worker stops and restarts from its snapshots
        except Exception as exc:  # noqa: BLE001
            log.error("replica_batch_failed_isolating", extra={"replica": what, "records": len(records),
                                                               "reason": f"{type(exc).__name__}: {str(exc)[:200]}"})
        results = []
        for rec in records:
            try:
                results.append(apply([rec]))
            except SchemaChildGone:
                raise
            except Exception as exc:  # noqa: BLE001
                self.telemetry.dead_letters.labels("errors").inc()
                log.error("error_record_failed", extra={"replica": what, "error_id": rec.error_id[:100],
                                                        "reason": f"{type(exc).__name__}: {str(exc)[:200]}"})
        if results and isinstance(results[0], tuple):
            return tuple(sum((list(r[i]) for r in results), []) for i in range(len(results[0])))
        return sum(r or 0 for r in results)

    def apply_memory(self, batch: dict[Any, Sequence[Any]]) -> int:
        """Apply a poll of the ``memory`` topic (TopicPartition -> messages): offsets already
        applied and batch ids seen recently are skipped, malformed records logged and skipped
        (they carry no state of their own: the same rows are on ``errors``). Returns rows written."""
        t0 = time.perf_counter()
        stored = 0
        for tp, msgs in batch.items():
            start = self.memory_applied.get(tp.partition, 0)
            for m in msgs:
                if m.offset < start:
                    continue
                try:
                    b = decode_batch(m.value or b"", max_ts=self._max_ts())
                except InvalidMemoryBatch as exc:
                    self.memory_invalid += 1
                    log.warning("bad_memory_batch", extra={"partition": tp.partition, "offset": m.offset,
                                                           "reason": str(exc)[:200]})
                    continue
                if not self.memory_recent.first_time(tp.partition, b.batch_id.hex()):
                    self.duplicates_skipped += 1
                    continue
                self.memory_rows += b.n
                self.telemetry.events_in.labels("memory").inc(b.n)  # rows, not records
                try:
                    stored += self.compensation.apply_memory_batch(b)
                except Exception as exc:  # noqa: BLE001 - poison-pill rule: skip it, never stop the replica
                    self.memory_invalid += 1
                    log.error("memory_batch_failed", extra={"partition": tp.partition, "offset": m.offset,
                                                            "reason": f"{type(exc).__name__}: {str(exc)[:200]}"})
            if msgs:
                self.memory_applied[tp.partition] = max(start, msgs[-1].offset + 1)
        self.telemetry.batch_seconds.labels("memory").observe(time.perf_counter() - t0)
        return stored

    def _max_ts(self) -> float | None:
        """Latest event time a write may carry now (the event-time policy, :class:`Limits`)."""
        return time.time() + self.limits.max_future_s if self.limits.max_future_s else None

    # ---- snapshots ---------------------------------------------------------------------------
    def collect_snapshot(self, path: Path, reuse_buffers: bool = False) -> dict[Path, dict[str, np.ndarray]]:
        """Copies of the sketch (``path``) and the schema cache (beside it), each with the
        offsets and id filter it includes; taken between batches, written by :func:`write_files`."""
        parts = sorted(self.applied)
        offsets = {"errors_partitions": np.array(parts, dtype=np.int64),
                   "errors_offsets": np.array([self.applied[p] for p in parts], dtype=np.int64),
                   **self.recent_ids.to_arrays()}
        files: dict[Path, dict[str, np.ndarray]] = {}
        if self.schema_core is not None and self.reorder is not None:
            quality = {} if self.quality is None else {"quality": np.frombuffer(self.quality.to_state(), np.uint8)}
            files[path.with_name("schema_cache.npz")] = {**self.schema_core.snapshot(), **self.reorder.to_arrays(),
                                                         **offsets, **quality}
        arrays = self.compensation.snapshot(reuse_buffers)
        if arrays:
            mparts = sorted(self.memory_applied)
            memory = {"memory_partitions": np.array(mparts, dtype=np.int64),
                      "memory_offsets": np.array([self.memory_applied[p] for p in mparts], dtype=np.int64),
                      **{f"memory_{k}": v for k, v in self.memory_recent.to_arrays().items()}}
            files[path] = {**arrays, **offsets, **memory}
        return files

    def restore(self, path: Path, scorer: OnnxScorer,
                compensation_factory: Callable[[OnnxScorer], Compensation | None]) -> None:
        """Restore from the snapshots beside ``path`` if every replica present has a readable
        one at the same offsets; otherwise rebuild all of them from the start of ``errors``
        (slower, never wrong)."""
        wanted: dict[str, Path] = {}
        if not isinstance(self.compensation, NoCompensation):
            wanted["error_memory"] = path
        if self.schema_core is not None:
            wanted["schema_cache"] = path.with_name("schema_cache.npz")
        if not wanted or not any(p.exists() or previous(p).exists() for p in wanted.values()):
            return
        try:
            snaps = _matching_snapshots(wanted)
            if "error_memory" in snaps and self.memory_topic and "memory_offsets" not in snaps["error_memory"]:
                raise ValueError("error-memory snapshot without memory offsets (written before the memory topic)")
            if "error_memory" in snaps and not self.compensation.restore(snaps["error_memory"]):
                raise ValueError("error memory keyed by another model version")
            if "schema_cache" in snaps:
                snap = snaps["schema_cache"]
                self.schema_core = self.schema_core.restored(snap)
                # format without the buffer: the cache includes every record up to the offsets
                self.reorder = (EventTimeReorder.from_arrays(snap, self._decode) if "reorder_scalars" in snap
                                else self._new_reorder())
                self.expect_partitions(self.errors_partitions)  # a snapshot may know fewer
                if self.quality is not None:  # a snapshot from before it: measured from here on
                    self.quality = (ClusterQuality.from_state(snap["quality"].tobytes()) if "quality" in snap
                                    else ClusterQuality(self.quality_window))
        except (OSError, ValueError, KeyError, InvalidEvent) as exc:
            log.warning("replica_rebuild", extra={"reason": str(exc)[:300]})
            self.compensation = compensation_factory(scorer) or NoCompensation()
            if self.schema_core is not None:
                self.schema_core = self.schema_core.fresh()
                self.reorder = self._new_reorder()
                if self.quality is not None:
                    self.quality = ClusterQuality(self.quality_window)
            self.applied, self.recent_ids = {}, RecentErrorIds(self.recent_ids.capacity)
            self.memory_applied, self.memory_recent = {}, RecentIds(self.memory_recent.capacity)
            return
        first = next(iter(snaps.values()))
        self.applied = dict(zip(first["errors_partitions"].tolist(), first["errors_offsets"].tolist()))
        self.recent_ids.restore(first)
        em = snaps.get("error_memory")
        if em is not None and "memory_offsets" in em:
            self.memory_applied = dict(zip(em["memory_partitions"].tolist(), em["memory_offsets"].tolist()))
            self.memory_recent.restore({k[7:]: v for k, v in em.items() if k.startswith("memory_recent_")})
        log.info("snapshot_restored", extra={"offsets": self.applied, "memory_offsets": self.memory_applied,
                                             "replicas": sorted(snaps)})
        if self.schema_core is not None and self.reorder is not None:
            log.info("schema_snapshot_restored", extra={"schemas": len(self.schema_core.schemas()),
                                                        "reorder_held": self.reorder.held})


def previous(path: Path) -> Path:
    """Where the generation before ``path`` is kept (``x.npz`` -> ``x.prev.npz``)."""
    return path.with_name(path.stem + ".prev.npz")


def _offsets(snap: dict[str, np.ndarray]) -> tuple[tuple[int, int], ...]:
    return tuple(sorted(zip(snap["errors_partitions"].tolist(), snap["errors_offsets"].tolist())))


def _matching_snapshots(wanted: dict[str, Path]) -> dict[str, dict[str, np.ndarray]]:
    """One snapshot per replica, all at the same offsets: the newest such set among the
    current and previous generations (the replicas' files are renamed one after the other, so
    a crash between two renames leaves one replica a generation ahead)."""
    options: dict[str, dict[tuple, dict[str, np.ndarray]]] = {}
    for name, path in wanted.items():
        for candidate in (path, previous(path)):
            if candidate.exists():
                try:
                    snap = read_npz(candidate)
                    options.setdefault(name, {}).setdefault(_offsets(snap), snap)
                except (OSError, ValueError, KeyError) as exc:
                    log.warning("snapshot_unreadable", extra={"path": str(candidate), "reason": str(exc)[:200]})
    if set(options) != set(wanted):
        raise ValueError(f"no readable snapshot for {sorted(set(wanted) - set(options))}")
    common = set.intersection(*(set(o) for o in options.values()))
    if not common:
        raise ValueError(f"no generation common to {sorted(wanted)}")
    best = max(common, key=lambda offs: sum(o for _, o in offs))
    return {name: options[name][best] for name in wanted}


def write_files(files: dict[Path, dict[str, np.ndarray]]) -> None:
    """Write collected snapshot files atomically, keeping each file's previous generation
    (see :func:`_matching_snapshots`); safe to run in a thread."""
    for path, arrays in files.items():
        if path.exists():
            os.replace(path, previous(path))
        write_npz_atomic(path, arrays)
    if files:
        log.info("snapshot_saved", extra={"files": [str(p) for p in files]})
