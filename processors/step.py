"""The batch step: one polled batch of admitted inputs -> outputs and state changes, no I/O.

The micro-batch rule every caller shares (DESIGN.md: results do not depend on where a stream
is cut, beyond this rule): within a batch, media events are applied first (a batch's media
counts at once), then every request is scored (``ScoringCore``), then, per user partition in
ascending order, the scored candidates are registered, the interactions join them and the
windows up to the partition's stream time close (``FeedbackTasks``).

:func:`run_step` raises whatever a core raises; :func:`run_one_by_one` is the poison-pill
fallback (docs/guarantees.md): the same step on one record at a time, a record whose step
raises handed to ``reject`` with the exception as reason.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

from reloop.processors.admission import Admission
from reloop.processors.compensation import Compensation
from reloop.processors.journal import TaskDelta
from reloop.processors.media import MediaCore
from reloop.processors.pending import Pending, request_digest
from reloop.processors.scoring import ScoringCore
from reloop.processors.tasks import FeedbackTasks
from reloop.streams.codec import InvalidEvent, decode_event
from reloop.streams.events import ErrorRecord, Interaction, MediaEvent, Recommendation, RecommendationRequest
from reloop.streams.validation import Limits

__all__ = ["Admitted", "StepResult", "INPUT_KINDS", "admit_one", "memory_records", "run_step", "run_one_by_one"]

#: The input topics (logical names) and the event each carries.
INPUT_KINDS: dict[str, type] = {"requests": RecommendationRequest, "interactions": Interaction,
                                "media": MediaEvent}


class Admitted(NamedTuple):
    """A decoded input admitted into a batch: its topic (logical name: ``requests``,
    ``interactions`` or ``media``), partition, raw value, event and the consumer record it
    came from (``msg``: ``topic``, ``partition``, ``offset``, ``key``, ``value``; for a dead
    letter if processing it fails), and for a request the content digest admission computed
    (:meth:`Admission.digest`; None: computed again from ``raw``)."""

    logical: str
    partition: int
    raw: bytes
    event: Any
    msg: Any
    digest: int | None = None  # a request's content digest, if admission computed it


class StepResult(NamedTuple):
    """A step's outputs: recommendations (one per scored request, in input order), error
    records (requests resolved), what it did to each partition (journaled), and the error
    records of each partition (``(partition, records)``, for the binary ``memory`` batches)."""

    recommendations: list[Recommendation]
    errors: list[ErrorRecord]
    deltas: list[TaskDelta]
    partition_errors: list[tuple[int, list[ErrorRecord]]]


def admit_one(admission: Admission, logical: str, partition: int, raw: bytes,
              limits: Limits) -> tuple[Any, str | None]:
    """Decode, validate and admit one input record (``logical``: its topic's logical name).

    Returns:
        ``(event, None)`` to step; ``(None, DUPLICATE)`` for a byte-identical copy of a request
        already scored (no output); ``(None, reason)`` for a dead letter. The worker
        (:mod:`reloop.processors.hot_inputs`) and replay (:mod:`reloop.ops.replay`) both call it,
        after :meth:`Admission.begin_batch`.
    """
    try:
        ev = decode_event(raw, INPUT_KINDS[logical], limits)
    except InvalidEvent as exc:
        return None, str(exc)
    if logical == "requests":
        return admission.request(partition, ev, raw)
    return ev, None


def memory_records(compensation: Compensation, errors: Sequence[ErrorRecord]) -> list[bytes]:
    """The binary ``memory`` records (values) of one partition's error records, as the worker
    produces them (none unless the compensation keeps a shared sketch)."""
    return compensation.memory_records(errors)


def run_step(inputs: Sequence[Admitted], scoring: ScoringCore, tasks: FeedbackTasks,
             media: MediaCore | None) -> StepResult:
    """Apply one batch to the cores in the shared micro-batch order (module doc)."""
    requests = [x for x in inputs if x.logical == "requests"]
    inter: dict[int, tuple[list[bytes], list[Interaction]]] = {}
    for x in inputs:
        if x.logical == "interactions":
            raws, evs = inter.setdefault(x.partition, ([], []))
            raws.append(x.raw)
            evs.append(x.event)
    if media is not None:
        events = [x.event for x in inputs if x.logical == "media"]
        if events:
            media.on_batch(events)
    recs, pending = scoring.score([x.event for x in requests])
    by_part: dict[int, list[Pending]] = {}
    req_ts: dict[int, list[float]] = {}
    digests: dict[int, list[tuple[str, int]]] = {}
    i = 0
    for x in requests:
        n = len(x.event.candidates)
        by_part.setdefault(x.partition, []).extend(pending[i:i + n])
        req_ts.setdefault(x.partition, []).append(x.event.ts)
        digests.setdefault(x.partition, []).append(
            (x.event.request_id, x.digest if x.digest is not None else request_digest(x.raw)))
        i += n
    errors: list[ErrorRecord] = []
    deltas: list[TaskDelta] = []
    per_part: list[tuple[int, list[ErrorRecord]]] = []
    for part in sorted(set(by_part) | set(inter)):
        raws, evs = inter.get(part, ([], []))
        times = tasks.stream_times(part, req_ts.get(part, []), [e.ts for e in evs])
        scored = digests.get(part, [])
        part_errors = tasks.apply(part, by_part.get(part, []), evs, times, scored)
        errors += part_errors
        per_part.append((part, part_errors))
        deltas.append(TaskDelta(part, by_part.get(part, []), raws, times, scored))
    return StepResult(recs, errors, deltas, per_part)


def run_one_by_one(inputs: Sequence[Admitted], scoring: ScoringCore, tasks: FeedbackTasks,
                   media: MediaCore | None, reject: Callable[[Admitted, str], None],
                   before: Callable[[Admitted], None] | None = None) -> StepResult:
    """:func:`run_step` on each record alone; ``reject(record, reason)`` for those that raise.

    ``before(record)`` runs before each record's step (the shell's crash marker). A failed
    batch's records are re-run from the state the failure left: registering a scored request
    is idempotent, so the re-run gives the same pending predictions; media frames applied
    before the failure are applied again (the one stage that is not idempotent).
    """
    out = StepResult([], [], [], [])
    for one in inputs:
        if before is not None:
            before(one)
        try:
            res = run_step([one], scoring, tasks, media)
        except Exception as exc:  # noqa: BLE001 - poison-pill rule
            reject(one, f"processing failed: {type(exc).__name__}: {str(exc)[:300]}")
            continue
        out.recommendations.extend(res.recommendations)
        out.errors.extend(res.errors)
        out.deltas.extend(res.deltas)
        out.partition_errors.extend(res.partition_errors)
    return out
