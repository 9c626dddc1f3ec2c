"""The replay core: the worker's batch step fed from a stream of events, without Kafka.

What a worker does per polled batch (:mod:`reloop.processors.hot_path`), replay does per batch:

1. every record is decoded, validated and admitted with :func:`reloop.processors.step.admit_one`
   (the same call the worker's :mod:`reloop.processors.hot_inputs` makes); rejected records are
   dead letters, byte-identical request copies are dropped;
2. :func:`reloop.processors.step.run_step` (media, scoring, feedback per user partition), with
   the poison-pill fallback :func:`reloop.processors.step.run_one_by_one`;
3. the step's error records go to an :class:`~reloop.processors.replica.ErrorsReplica` the way
   they come back to a worker from Kafka: the binary ``memory`` records
   (:func:`reloop.processors.step.memory_records`, keyed by input partition) into the error
   memory, the JSON ``errors`` records (keyed by user) through the reorder buffer into the
   schema cache. Offsets are numbered per (topic, partition) as a broker would.

The one difference from a worker: replay applies a batch's error records before the next batch
is scored (a worker's replica catches up asynchronously, so there the next batch may be scored
before). The parity test (tests/integration/test_replay_parity.py) makes the worker follow the
same order and checks outputs and state bit for bit (docs/replay.md).

Events are routed as the producer routes them: partition = murmur2(user_id) % partitions
(:class:`~reloop.processors.outputs.KeyPartitioner`, the Kafka default partitioner).
"""

from __future__ import annotations

import hashlib
import logging
from typing import TYPE_CHECKING, Any, Iterable, Iterator, NamedTuple, Sequence

import msgspec
import numpy as np

from reloop.processors.admission import DUPLICATE, Admission
from reloop.processors.compensation import Compensation, NoCompensation
from reloop.processors.media import MediaCore
from reloop.processors.metrics import OnlineMetrics
from reloop.processors.outputs import KeyPartitioner
from reloop.processors.prequential import as_feedback, as_request, request_id_for
from reloop.processors.replica import ErrorsReplica
from reloop.processors.schemas import SchemaCore
from reloop.processors.scoring import ScoringCore
from reloop.processors.step import Admitted, StepResult, admit_one, memory_records, run_one_by_one, run_step
from reloop.processors.tasks import FeedbackTasks
from reloop.processors.telemetry import WorkerTelemetry
from reloop.streams.codec import encode
from reloop.streams.events import ErrorRecord, Interaction, MediaEvent, RecommendationRequest
from reloop.streams.topics import TOPICS, USER_PARTITIONS

if TYPE_CHECKING:  # annotations only: the engine itself needs neither torch nor the settings module
    from reloop.models.scorer import OnnxScorer
    from reloop.ops.settings import Settings

__all__ = ["Routed", "route_events", "cut_batches", "route_batches", "cut_runs", "StepReplay", "arrays_digest"]

log = logging.getLogger("reloop.replay")


class Routed(NamedTuple):
    """One input record as a worker would read it: topic (logical name), partition, bytes on
    the wire, and (for dead letters) the offset replay gave it (-1: none)."""

    logical: str
    partition: int
    raw: bytes
    topic: str = ""
    offset: int = -1
    key: bytes | None = None
    value: bytes | None = None


def route_events(events: Iterable[Any], partitions: int = USER_PARTITIONS, seq0: int = 0) -> Iterator[list[Routed]]:
    """The input records of each event, in order (one list per event; streaming).

    A request, media event or interaction carrying a ``request_id`` is one record on its own
    topic. A labelled interaction without ``request_id`` (an interaction log: MovieLens, a
    ``--labelled`` simulator log) is the prequential pair: a one-candidate request then the
    interaction linked to it (request id ``log-<seq>``, ``seq`` counting such interactions
    from ``seq0``), both in the same batch. Other event types are skipped.
    """
    router = _Router(partitions, seq0)
    for ev in events:
        g = router.route(ev)
        if g is not None:
            yield g


def cut_batches(groups: Iterable[list[Routed]], size: int) -> Iterator[list[Routed]]:
    """Micro-batches of ``size`` events (a prequential pair is one event, never split)."""
    batch: list[Routed] = []
    n = 0
    for g in groups:
        batch += g
        n += 1
        if n >= size:
            yield batch
            batch, n = [], 0
    if batch:
        yield batch


def route_batches(events: Iterable[Any], partitions: int, seq0: int, size: int) -> Iterator[list[Routed]]:
    """``cut_batches(route_events(events, partitions, seq0), size)`` in one loop (the same
    batches, without a list per event)."""
    router = _Router(partitions, seq0)
    route, pair = router.route, router.pair
    batch: list[Routed] = []
    n = 0
    for ev in events:
        cls = ev.__class__
        if cls is Interaction and ev.request_id is None:  # the common case of an interaction log
            pair(ev, batch)
        else:
            g = route(ev)
            if g is None:
                continue
            batch += g
        n += 1
        if n >= size:
            yield batch
            batch, n = [], 0
    if batch:
        yield batch


_new = tuple.__new__
_json = msgspec.json.Encoder()
_encode = _json.encode  # reloop.streams.codec.encode without its frame (the same default Encoder)
#: the request a prequential pair makes, as a dict in the field order ``encode`` writes a
#: :class:`RecommendationRequest` (checked against ``encode(as_request(...))``, see _Router)
_REQ_TAG = RecommendationRequest.__struct_config__.tag
_REQ_VERSION = next(f.default for f in msgspec.structs.fields(RecommendationRequest) if f.name == "schema_version")
_NULL_REQUEST_ID = b'"request_id":null'


class _Router:
    """Routes events to records (:func:`route_events`), memoising each user's partition.

    A prequential pair's two records are built as bytes, not as events: the request from a
    dict in :class:`RecommendationRequest`'s field order, the linked interaction by writing the
    request id into the interaction's own encoding (``"request_id":null`` is its first such
    key: field values are JSON strings, where a quote is escaped). Both are byte-identical to
    ``encode(as_request(ev, seq))`` and ``encode(as_feedback(ev, seq))``, which the first pair
    and every :data:`CHECK_EVERY`-th one verify (on a mismatch the router falls back to
    them for good). The records are decoded and validated by ``admit_one`` like any other.
    """

    CHECK_EVERY = 1 << 16

    def __init__(self, partitions: int, seq0: int) -> None:
        self.parts = list(range(partitions))
        self.partitioner = KeyPartitioner()
        self.seq = seq0
        self._user_part: dict[str, int] = {}
        self._fast = True
        self._checked = False

    def partition(self, user_id: str) -> int:
        """The partition of ``user_id`` (murmur2, as the producer)."""
        p = self._user_part.get(user_id)
        if p is None:
            if len(self._user_part) >= 1_000_000:
                self._user_part.clear()
            p = self._user_part[user_id] = self.partitioner.partition(user_id.encode(), self.parts)
        return p

    def route(self, ev: Any) -> list[Routed] | None:
        """The records of one event (None: not an input event)."""
        if isinstance(ev, Interaction):
            if ev.request_id is None:
                out: list[Routed] = []
                self.pair(ev, out)
                return out
            logical = "interactions"
        elif isinstance(ev, RecommendationRequest):
            logical = "requests"
        elif isinstance(ev, MediaEvent):
            logical = "media"
        else:
            return None
        return [_new(Routed, (logical, self.partition(ev.user_id), encode(ev), "", -1, None, None))]

    def pair(self, ev: Interaction, out: list[Routed]) -> None:
        """Append the prequential pair of interaction ``ev`` (no ``request_id``) to ``out``."""
        seq = self.seq
        self.seq = seq + 1
        p = self.partition(ev.user_id)
        if self._fast:
            rid = request_id_for(seq)
            req = _json.encode({"type": _REQ_TAG, "request_id": rid, "user_id": ev.user_id, "ts": ev.ts,
                                "candidates": [{"item_id": ev.item_id, "features": ev.features}],
                                "features": {}, "schema_version": _REQ_VERSION})
            fb = encode(ev).replace(_NULL_REQUEST_ID, b'"request_id":' + _json.encode(rid), 1)
            if not self._checked or seq % self.CHECK_EVERY == 0:
                self._checked = True
                if (req, fb) != (encode(as_request(ev, seq)), encode(as_feedback(ev, seq))):
                    log.warning("replay_pair_bytes_fallback", extra={"seq": seq})
                    self._fast = False
        if not self._fast:
            req, fb = encode(as_request(ev, seq)), encode(as_feedback(ev, seq))
        out.append(_new(Routed, ("requests", p, req, "", -1, None, None)))
        out.append(_new(Routed, ("interactions", p, fb, "", -1, None, None)))


def cut_runs(groups: Iterable[list[Routed]], size: int) -> Iterator[list[Routed]]:
    """Batches a Kafka consumer is sure to see whole: maximal runs of consecutive records of
    one (topic, partition), at most ``size`` records (each produced as one record batch, such a
    run is fetched by one ``getmany``). Used by the parity test."""
    batch: list[Routed] = []
    for g in groups:
        for r in g:
            if batch and ((r.logical, r.partition) != (batch[-1].logical, batch[-1].partition) or len(batch) >= size):
                yield batch
                batch = []
            batch.append(r)
    if batch:
        yield batch


class _Msg(NamedTuple):  # the fields of a consumer record the replica reads
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes


class _TP(NamedTuple):
    topic: str
    partition: int


def arrays_digest(arrays: dict[str, np.ndarray]) -> str:
    """sha256 over named arrays (sorted by name; name, dtype, shape and bytes of each)."""
    h = hashlib.sha256()
    for k in sorted(arrays):
        a = np.asarray(arrays[k])
        h.update(f"{k}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes() if a.dtype != object else repr(a.tolist()).encode())
    return h.hexdigest()


#: Alerts a replay keeps for its report (the rest are counted).
MAX_ALERTS = 1000


class StepReplay:
    """A worker's cores and replica, stepped batch by batch (module doc).

    Args:
        settings: the deployment settings (worker, media, schemas, error_memory, limits).
        scorer: the model served.
        compensation: the error-memory replica (None: identity).
    """

    def __init__(self, settings: Settings, scorer: OnnxScorer, compensation: Compensation | None) -> None:
        ws = settings.worker
        self.limits = settings.limits
        self.tasks = FeedbackTasks(ws.attribution_window_s, ws.pending_limit, OnlineMetrics(window=ws.metrics_window))
        self.admission = Admission(self.tasks)
        self.media = MediaCore(settings.media) if ws.media_features else None
        schema_core = SchemaCore(settings.schemas) if ws.schema_cache else None
        parts = settings.kafka.partitions  # ``errors`` and ``memory`` have one per user partition
        self.replica = ErrorsReplica(compensation or NoCompensation(), schema_core, self.limits, WorkerTelemetry(),
                                     errors_partitions=parts)
        self.scoring = ScoringCore(scorer, self.replica.compensation, self.media, schemas=schema_core)
        self._part = KeyPartitioner()
        self._next: dict[tuple[str, int], int] = {}  # (topic, partition) -> next offset
        self._parts = {t: list(range(TOPICS[t].count(parts))) for t in ("memory", "errors")}
        self._errors_tps = [_TP("errors", p) for p in self._parts["errors"]]  # == ("errors", p)
        self.dead_letters: list[tuple[Routed, str]] = []
        self.duplicates = 0
        # what the replica would publish (a worker's leader sends its outbox to ``schemas``,
        # ``alerts`` and ``dlq``): counted per topic, the first MAX_ALERTS alerts kept
        self.published: dict[str, int] = {}
        self.alerts: list[Any] = []

    def _offset(self, topic: str, partition: int) -> int:
        o = self._next.get((topic, partition), 0)
        self._next[(topic, partition)] = o + 1
        return o

    def step(self, batch: Sequence[Routed]) -> StepResult:
        """One polled batch: admit, :func:`run_step`, then the replica (module doc)."""
        self.admission.begin_batch(self.tasks)
        admitted: list[Admitted] = []
        keep = admitted.append
        admission, limits, nxt = self.admission, self.limits, self._next
        for r in batch:
            logical, part, raw = r[0], r[1], r[2]
            o = nxt.get((logical, part), 0)  # the offset a broker would give it (as _offset)
            nxt[(logical, part)] = o + 1
            r = _new(Routed, (logical, part, raw, r[3], o, r[5], raw))  # not _replace: per record
            ev, reason = admit_one(admission, logical, part, raw, limits)
            if ev is None:
                if reason == DUPLICATE:
                    self.duplicates += 1
                else:
                    self.dead_letters.append((r, reason or "rejected"))
                continue
            keep(_new(Admitted, (logical, part, raw, ev, r,
                                 admission.digest(part, ev.request_id) if logical == "requests" else None)))
        cores = (self.scoring, self.tasks, self.media)
        try:
            res = run_step(admitted, *cores)
        except Exception:  # noqa: BLE001 - poison-pill rule, as the worker
            res = run_one_by_one(admitted, *cores, lambda one, why: self.dead_letters.append((one.msg, why)))
        self.apply_errors(res.partition_errors)
        return res

    def apply_errors(self, per_partition: Sequence[tuple[int, list[ErrorRecord]]]) -> None:
        """Feed a step's error records to the replica as the ``memory`` and ``errors`` topics
        would deliver them (memory first, as :meth:`HotPathReplica.apply_error_batch`)."""
        memory: dict[_TP, list[_Msg]] = {}
        for part, errs in per_partition:
            key = str(part).encode()
            for raw in memory_records(self.replica.compensation, errs):
                p = self._part.partition(key, self._parts["memory"])
                memory.setdefault(_TP("memory", p), []).append(_Msg("memory", p, self._offset("memory", p), key, raw))
        if memory:
            self.replica.apply_memory(memory)
        if self.replica.schema_core is None:
            return
        # per record (~160k on sim10k): no NamedTuple call, no method call per offset, the
        # (topic, partition) keys made once; the same messages and offsets as ``_offset``
        errors: dict[_TP, list[_Msg]] = {}
        partition, parts, nxt, tps = self._part.partition, self._parts["errors"], self._next, self._errors_tps
        for _, errs in per_partition:
            for e in errs:
                key = e.user_id.encode()
                p = partition(key, parts)
                tp = tps[p]
                o = nxt.get(tp, 0)
                nxt[tp] = o + 1
                msgs = errors.get(tp)
                if msgs is None:
                    msgs = errors[tp] = []
                msgs.append(_new(_Msg, ("errors", p, o, key, _encode(e))))
        if errors:
            self.replica.apply_batch(errors)
        if self.replica.outbox:  # drained as the worker's leader does, or it grows with the log
            for topic, message in self.replica.outbox:
                self.published[topic] = self.published.get(topic, 0) + 1
                if topic == "alerts" and len(self.alerts) < MAX_ALERTS:
                    self.alerts.append(message)
            self.replica.outbox.clear()

    # ---- state -----------------------------------------------------------------------------
    def state_arrays(self) -> dict[str, dict[str, np.ndarray]]:
        """The three memories' snapshot arrays (as the worker writes them to its snapshots):
        ``error_memory``, ``media`` and ``schema_cache`` (cache plus reorder buffer)."""
        out = {"error_memory": self.replica.compensation.snapshot()}
        if self.media is not None:
            out["media"] = self.media.snapshot()
        if self.replica.schema_core is not None and self.replica.reorder is not None:
            out["schema_cache"] = {**self.replica.schema_core.snapshot(), **self.replica.reorder.to_arrays()}
        return out

    def digests(self) -> dict[str, str]:
        """:func:`arrays_digest` of each memory in :meth:`state_arrays`."""
        return {k: arrays_digest(v) for k, v in self.state_arrays().items()}
