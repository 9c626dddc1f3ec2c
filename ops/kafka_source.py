"""Replay straight from Kafka: the workers' input topics read as one event-time-ordered stream.

:func:`kafka_events` reads ``requests``, ``interactions`` and ``media`` (with the deployment's
topic prefix) from a broker, decodes every record exactly as a worker does
(:func:`reloop.streams.codec.decode_event` with the topic's event type and the limits), and
merges all partitions of all topics by event time (``heapq.merge``; each partition must be in
event-time order, or within ``reorder_s``, as for files: :func:`reloop.ops.log_readers.in_order`).

The range is fixed when reading starts:

- **end**: per partition, the high watermark of a fetch, captured before reading
  (:func:`reloop.processors.hot_restore.changelog_tail`; not ListOffsets, which the embedded broker
  answers wrongly), or ``end_offset`` if lower; records produced later are not read.
- **start**: the beginning, or ``start_offset`` (per partition); with ``since``, also no
  earlier than the record-timestamp offset of ``since - seek_slack_s`` (``offsets_for_times``):
  a record's timestamp (producer clock) is assumed to trail no event time it carries by more
  than the slack, 1 hour by default, the workers' own bound on future event times
  (``limits.max_future_s``).
- **event-time filter**: with ``since``/``until`` only events with ``since <= ts < until`` are
  yielded (the others count in ``LogStats.lines`` only). ``until`` does not move the end
  offsets: a record re-produced later than its event time must not be cut off.

Undecodable records are counted in :class:`~reloop.ops.log_readers.LogStats` as
``("topic[p]", offset, reason)``, never fatal. The source is synchronous (its own event loop
in the calling thread): iterate it from plain code, not from inside a running event loop.

:func:`open_source` opens what ``reloop replay``'s source flags (:mod:`reloop.ops.replay_cli`) name.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import heapq
import logging
import time
from dataclasses import dataclass
from typing import Any, Iterator

from aiokafka import AIOKafkaConsumer, TopicPartition

from reloop.ops.kafka import client_kwargs
from reloop.ops.log_readers import EventStream, LogStats, Progress, in_order, iter_events
from reloop.ops.settings import KafkaSettings, Settings
from reloop.streams.codec import InvalidEvent, decode_event
from reloop.streams.events import Event, Interaction, MediaEvent, RecommendationRequest
from reloop.streams.topics import TOPICS
from reloop.streams.validation import Limits

log = logging.getLogger("reloop.kafka_source")

#: Event type each replayable input topic carries.
TOPIC_KINDS: dict[str, type] = {"requests": RecommendationRequest, "interactions": Interaction,
                                "media": MediaEvent}


def parse_time(text: str | float | None) -> float | None:
    """Unix seconds from epoch seconds or an ISO 8601 time (no zone = UTC).

    >>> parse_time("1700000000"), parse_time("2023-11-14T22:13:20Z"), parse_time("2023-11-14 22:13:20")
    (1700000000.0, 1700000000.0, 1700000000.0)
    """
    if text is None or text == "":
        return None
    try:
        return float(text)
    except ValueError:
        pass
    t = dt.datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.timezone.utc)
    return t.timestamp()


@dataclass(frozen=True)
class KafkaRange:
    """What to read (module doc).

    Attributes:
        topics: logical input topics (catalog names, the prefix is the settings').
        since / until: event-time range, unix seconds (``None``: open).
        start_offset / end_offset: per-partition offset range ``[start, end)`` (``None``: open).
        seek_slack_s: how far record timestamps may trail event times, seconds (see module doc).
        fetch_records: most records per fetch of one partition.
        idle_timeout_s: give up when a partition below its end yields nothing for this long.
    """

    topics: tuple[str, ...] = ("requests", "interactions", "media")
    since: float | None = None
    until: float | None = None
    start_offset: int | None = None
    end_offset: int | None = None
    seek_slack_s: float = 3600.0
    fetch_records: int = 10_000
    idle_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        unknown = [t for t in self.topics if t not in TOPIC_KINDS]
        if unknown:
            raise ValueError(f"topics {unknown} are not replayable inputs (expected some of {list(TOPIC_KINDS)})")


class _Reader:
    """A consumer driven by a private event loop (sync calls)."""

    def __init__(self, ks: KafkaSettings) -> None:
        self.loop = asyncio.new_event_loop()

        async def make() -> AIOKafkaConsumer:  # aiokafka binds a client to the running loop
            return AIOKafkaConsumer(**client_kwargs(ks), group_id=None, enable_auto_commit=False,
                                    auto_offset_reset="earliest", max_partition_fetch_bytes=8 << 20,
                                    fetch_max_bytes=64 << 20)

        self.c: AIOKafkaConsumer = self.run(make())

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def call(self, fn: Any, *args: Any) -> Any:
        """A sync consumer method, inside the loop (aiokafka creates futures in it)."""
        async def inside() -> Any:
            return fn(*args)
        return self.run(inside())

    def close(self) -> None:
        try:
            self.run(self.c.stop())
        finally:
            self.loop.close()


async def _bounds(c: AIOKafkaConsumer, tps: list[TopicPartition], rng: KafkaRange) -> dict[TopicPartition, tuple[int, int]]:
    """``tp -> (start, end)`` (module doc)."""
    from reloop.processors.hot_restore import changelog_tail

    ends = {tp: (await changelog_tail(c, tp))[0] for tp in tps}
    starts = await c.beginning_offsets(tps)
    out = {}
    for tp in tps:
        start, end = starts[tp], ends[tp]
        if rng.start_offset is not None:
            start = max(start, rng.start_offset)
        if rng.end_offset is not None:
            end = min(end, rng.end_offset)
        out[tp] = (start, end)
    if rng.since is not None:  # record timestamps trail event times by at most the slack
        try:
            found = await c.offsets_for_times({tp: max(0, int((rng.since - rng.seek_slack_s) * 1000)) for tp in tps})
        except Exception as exc:  # noqa: BLE001 - an optimisation only: the event-time filter decides
            log.info("offsets_for_times_unavailable", extra={"reason": f"{type(exc).__name__}: {exc}"})
            found = {}
        for tp, hit in found.items():
            s, e = out[tp]
            if hit is not None:
                out[tp] = (max(s, min(hit.offset, e)), e)
    return out


def _partition_records(r: _Reader, tp: TopicPartition, start: int, end: int, kind: type, limits: Limits,
                       rng: KafkaRange, stats: LogStats) -> Iterator[tuple[int, Event]]:
    """``(offset, event)`` of one partition in ``[start, end)``, fetched on demand."""
    c = r.c
    where = f"{tp.topic}[{tp.partition}]"
    lo = -float("inf") if rng.since is None else rng.since
    hi = float("inf") if rng.until is None else rng.until
    pos = start
    idle_since = time.monotonic()
    while pos < end:
        batch = r.run(c.getmany(tp, timeout_ms=500, max_records=rng.fetch_records)).get(tp, [])
        if not batch:
            pos = max(pos, r.run(c.position(tp)))
            if pos < end and time.monotonic() - idle_since > rng.idle_timeout_s:
                raise TimeoutError(f"{where}: no records for {rng.idle_timeout_s}s at offset {pos}, end {end}")
            continue
        idle_since = time.monotonic()
        for m in batch:
            if m.offset >= end:
                pos = end
                break
            pos = m.offset + 1
            stats.lines += 1
            stats.bytes_read += 1
            try:
                ev = decode_event(m.value, kind, limits)
            except InvalidEvent as exc:
                stats.add_invalid(where, m.offset, str(exc))
                continue
            if lo <= ev.ts < hi:
                stats.events += 1
                yield m.offset, ev


def kafka_events(settings: Settings, rng: KafkaRange | None = None, reorder_s: float = 0.0, *,
                 stats: LogStats | None = None, progress: Progress | None = None) -> EventStream:
    """The input topics of ``settings.kafka`` in ``rng``, merged by event time (module doc).

    The broker is contacted and the range fixed when iteration starts. ``stats.bytes_total``
    is the number of records in the range and ``bytes_read`` the records consumed (ETA).
    """
    rng = rng or KafkaRange()
    stats = stats if stats is not None else LogStats()
    return EventStream(_kafka_gen(settings, rng, reorder_s, stats, progress), stats)


def _kafka_gen(settings: Settings, rng: KafkaRange, reorder_s: float, stats: LogStats,
               progress: Progress | None) -> Iterator[Event]:
    ks = settings.kafka
    r = _Reader(ks)
    try:
        r.run(r.c.start())
        names = {TOPICS[t].full_name(ks.topic_prefix): TOPIC_KINDS[t] for t in rng.topics}
        present = r.run(r.c.topics())
        missing = [n for n in names if n not in present]
        if missing:
            raise ValueError(f"topics {missing} not found on {ks.broker}")
        tps = [TopicPartition(n, p) for n in names for p in sorted(r.c.partitions_for_topic(n) or ())]
        bounds = r.run(_bounds(r.c, tps, rng))
        live = [tp for tp in tps if bounds[tp][0] < bounds[tp][1]]
        r.call(r.c.assign, live)
        streams = []
        for tp in live:
            start, end = bounds[tp]
            r.call(r.c.seek, tp, start)
            stats.bytes_total += end - start
            recs = _partition_records(r, tp, start, end, names[tp.topic], settings.limits, rng, stats)
            streams.append(in_order(recs, f"{tp.topic}[{tp.partition}]", reorder_s, stats))
        log.info("kafka_source_range", extra={"broker": ks.broker, "records": stats.bytes_total,
                                              "bounds": {f"{tp.topic}[{tp.partition}]": b for tp, b in bounds.items()}})
        gen: Iterator[Event] = heapq.merge(*streams, key=lambda e: e.ts)
        if progress is not None and progress.enabled:
            gen = progress.wrap(gen, stats)
        yield from gen
        log.info("kafka_source_read", extra={k: v for k, v in stats.as_dict().items() if k != "invalid_examples"})
    finally:
        r.close()


# --- CLI glue (called by ops/cli.py) ---------------------------------------------------------

def open_source(args: argparse.Namespace, settings: Settings) -> EventStream:
    """The event stream ``args`` name: Kafka when ``--broker`` is given, else the files.

    Files: ``args.paths`` (or ``args.path``), format ``args.format`` (``jsonl``, ``parquet``,
    ``auto`` or ``topics``: by suffix; ``movielens`` loads and sorts the small MovieLens files
    in memory).
    """
    stats = LogStats(max_examples=getattr(args, "max_examples", 20))
    progress = Progress(quiet=getattr(args, "quiet", False))
    reorder = getattr(args, "reorder_s", 0.0) or 0.0
    if getattr(args, "broker", None):
        over = {"broker": args.broker}
        if getattr(args, "topic_prefix", None) is not None:
            over["topic_prefix"] = args.topic_prefix
        settings = settings.with_overrides(kafka=over)
        start = end = None
        if getattr(args, "offsets", None):
            a, _, b = args.offsets.partition(":")
            start, end = (int(a) if a else None), (int(b) if b else None)
        rng = KafkaRange(topics=tuple(t.strip() for t in args.topics.split(",") if t.strip()),
                         since=parse_time(args.since), until=parse_time(args.until),
                         start_offset=start, end_offset=end)
        return kafka_events(settings, rng, reorder, stats=stats, progress=progress)
    paths = list(getattr(args, "paths", None) or [args.path])
    fmt = getattr(args, "format", "auto") or "auto"
    if fmt == "topics":  # recorded traffic: the same readers (topic JSON lines or Parquet)
        fmt = "auto"
    if fmt == "movielens":
        from reloop.ops.logs import read_movielens

        loaded = read_movielens(paths[0])
        for n, reason in loaded.invalid:
            stats.add_invalid(loaded.source, n, reason)
        stats.events = len(loaded.events)
        stats.lines = stats.events + stats.invalid
        return EventStream(iter(loaded.events), stats)
    return iter_events(paths, fmt, settings.limits, reorder, stats=stats, progress=progress)
