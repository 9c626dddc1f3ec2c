"""Streaming log readers for replay at production sizes: constant memory, event-time order.

:func:`iter_events` reads one or more logs and yields events in event-time order without
loading a log into memory. Memory per open file: one read chunk (1 MiB of decompressed text;
a line longer than ``limits.max_event_bytes`` is skipped, not buffered) or one Parquet row
group (its Arrow data, decoded 8,192 rows at a time); plus the reorder window's events.

Formats (``fmt``):

- ``jsonl``: one event per line in the topics' own JSON (``reloop.streams.codec``): requests
  with their candidates, interactions, media events; plus the labelled interaction form
  (fields of an ``interaction`` beyond the schema become features, as
  :func:`reloop.ops.logs.parse_jsonl_line` reads them). Compression by suffix: ``.gz``
  (gzip), ``.zst``/``.zstd`` (zstandard), anything else is plain.
- ``parquet`` (:mod:`reloop.ops.log_parquet`, pyarrow): a row whose ``json`` column is set is
  that event's topic JSON; any other row is a labelled interaction in flat form: columns
  ``user_id``, ``item_id``, ``ts``, ``label`` and optionally ``kind``, ``request_id``,
  ``value``; every other non-null column is a feature (``write_parquet`` writes this form).
- ``auto``: ``parquet`` for ``.parquet``/``.pq`` files, else ``jsonl``.

Ordering. Each file must be sorted by event time (``ts``, ties keep file order); several
files are merged (``heapq.merge``, ties go to the earlier file). With ``reorder_s = 0`` an
event earlier than its predecessor raises :class:`UnsortedLogError` naming the file and line.
With ``reorder_s = W > 0`` events are held in a heap until the latest event time seen is
``W`` seconds past them, so any event at most ``W`` seconds (event time) behind the latest one
before it is put back in order (memory: the events of ``W`` seconds); one that is later than
that *and* earlier than an event already released still raises.

Invalid input is never fatal: an undecodable line, a line that breaks a schema or a
:class:`~reloop.streams.validation.Limits` limit, or an event type replay does not read
(recommendations, error records, ...) is counted in :class:`LogStats` with its reason, and
the first ``max_examples`` are kept with their file and line number.

>>> import tempfile, os
>>> from reloop.streams.validation import Limits
>>> d = tempfile.mkdtemp()
>>> p = os.path.join(d, "a.jsonl")
>>> _ = open(p, "w").write('{"type":"interaction","user_id":"u","item_id":"i","ts":2,"label":1}\\nnot json\\n')
>>> stream = iter_events([p], "jsonl", Limits())
>>> [(e.item_id, e.ts) for e in stream], stream.stats.invalid, stream.stats.examples[0][1:]
([('i', 2.0)], 1, (2, 'DecodeError: JSON is malformed: invalid character (byte 4)'))
"""

from __future__ import annotations

import gzip
import heapq
import logging
import math
import os
import time
from dataclasses import dataclass, field
from typing import IO, Any, Iterable, Iterator, Union

import msgspec

from reloop.ops.log_progress import Progress
from reloop.streams.codec import InvalidEvent, encode
from reloop.streams.events import Event, Interaction, MediaEvent, RecommendationRequest
from reloop.streams.validation import Limits, check_limits

log = logging.getLogger("reloop.log_readers")

#: Event types a replay reads (the workers' input topics).
REPLAYABLE = (RecommendationRequest, Interaction, MediaEvent)
CHUNK_BYTES = 1 << 20
PARQUET_BATCH_ROWS = 8192  # rows decoded at a time (Python objects of one batch live together)
PARQUET_ROW_GROUP_ROWS = 65_536  # rows per row group written
FLAT_FIELDS = ("user_id", "item_id", "ts", "label", "kind", "request_id", "value")


class UnsortedLogError(ValueError):
    """A log is not in event-time order (beyond the reorder window); names file and line."""


class _StrictInteraction(Interaction, tag="interaction", forbid_unknown_fields=True):
    """Interaction that refuses unknown fields: the fast path decodes into it, and a line with
    extra fields (the labelled form's features) falls back to ``parse_jsonl_line``. Same
    layout as :class:`Interaction`, so a decoded one becomes an ``Interaction`` by setting
    ``__class__`` (no copy)."""


_fast_decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(
    Union[_StrictInteraction, RecommendationRequest, MediaEvent])


@dataclass
class LogStats:
    """Counters of a read, updated as it goes (read them at any time).

    Attributes:
        lines: input records seen (JSONL lines incl. blank ones, Parquet rows, Kafka records).
        events: valid events decoded.
        invalid: records skipped (undecodable, invalid, or not a replayable type).
        examples: ``(source, line or offset, reason)`` of the first ``max_examples`` skipped.
        bytes_read: bytes consumed from storage (compressed bytes for .gz/.zst; Parquet:
            estimated from rows read); Kafka: records consumed.
        bytes_total: the sum of the inputs' sizes (Kafka: records in the range), for the ETA.
        reordered: events that arrived out of order and were put back within the window.
    """

    lines: int = 0
    events: int = 0
    invalid: int = 0
    examples: list[tuple[str, int, str]] = field(default_factory=list)
    bytes_read: int = 0
    bytes_total: int = 0
    reordered: int = 0
    max_examples: int = 20

    def add_invalid(self, source: str, line: int, reason: str) -> None:
        """Count one skipped record (keeps the first ``max_examples``)."""
        self.invalid += 1
        if len(self.examples) < self.max_examples:
            self.examples.append((source, line, reason))

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready summary (for a replay report)."""
        return {"lines": self.lines, "events": self.events, "invalid": self.invalid,
                "invalid_examples": [{"source": s, "line": n, "reason": r} for s, n, r in self.examples],
                "bytes_read": self.bytes_read, "reordered": self.reordered}


class EventStream:
    """An iterator of events with its :class:`LogStats` (``stream.stats``).

    ``for ev in stream`` iterates the underlying generator directly (no per-event wrapper).
    """

    def __init__(self, gen: Iterator[Event], stats: LogStats) -> None:
        self._gen = gen
        self.stats = stats

    def __iter__(self) -> Iterator[Event]:
        return self._gen

    def __next__(self) -> Event:
        return next(self._gen)

    def close(self) -> None:
        """Stop reading and close the files (also done when the iteration ends)."""
        self._gen.close()


# --- one JSONL line ------------------------------------------------------------------------

def decode_line(line: bytes, limits: Limits, now: float) -> Event:
    """Decode one line of topic JSON or the labelled interaction form into a replayable event.

    Args:
        now: wall clock for the ``max_future_s`` check, unix seconds.

    Raises:
        InvalidEvent: with the reason.
    """
    if len(line) > limits.max_event_bytes:
        raise InvalidEvent(f"line of {len(line)} bytes exceeds limit {limits.max_event_bytes}")
    try:
        ev = _fast_decoder.decode(line)
    except msgspec.ValidationError as exc:
        if "unknown field" not in str(exc):
            raise InvalidEvent(f"ValidationError: {str(exc)[:500]}") from None
        from reloop.ops.logs import parse_jsonl_line  # extra fields: the labelled form

        return parse_jsonl_line(line, limits)
    except Exception as exc:  # noqa: BLE001 - any failure on one line is that line's fault
        raise InvalidEvent(f"{type(exc).__name__}: {str(exc)[:500]}") from None
    if ev.__class__ is _StrictInteraction:
        ev.__class__ = Interaction
        if limits.max_future_s and ev.ts > now + limits.max_future_s:
            raise InvalidEvent(check_limits(ev, limits, now) or "event time ahead of the wall clock")
        return ev
    problem = check_limits(ev, limits, now)
    if problem:
        raise InvalidEvent(problem)
    return ev


# --- files ---------------------------------------------------------------------------------

def open_decompressed(path: str, raw: IO[bytes]) -> IO[bytes]:
    """A binary reader of ``raw``'s decompressed content, chosen by ``path``'s suffix."""
    if path.endswith(".gz"):
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if path.endswith((".zst", ".zstd")):
        import zstandard

        return zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
    return raw


def _jsonl_records(path: str, limits: Limits, stats: LogStats) -> Iterator[tuple[int, Event]]:
    """``(line number, event)`` of a JSONL file, read in :data:`CHUNK_BYTES` chunks.

    Hot loop: a line that decodes as a schema-valid interaction within the size and clock
    limits takes no other step; everything else (blank lines, other event types, extra
    fields, invalid lines) goes through :func:`decode_line` for its checks and reason."""
    base = stats.bytes_read
    maxb = limits.max_event_bytes
    fast, strict, plain, slow = _fast_decoder.decode, _StrictInteraction, Interaction, decode_line
    n_events = 0
    with open(path, "rb") as raw, open_decompressed(path, raw) as fh:
        carry = b""
        lineno = 0
        skipping = 0  # > 0: inside an over-long line that started at this line number
        try:
            while True:
                now = time.time()
                future = now + limits.max_future_s if limits.max_future_s else math.inf
                chunk = fh.read(CHUNK_BYTES)
                if not chunk:
                    lines = [carry] if carry or skipping else []
                else:
                    lines = (carry + chunk).split(b"\n") if carry else chunk.split(b"\n")
                    carry = lines.pop()
                    if skipping == 0 and len(carry) > maxb:  # constant memory: drop the rest of it
                        skipping, carry = lineno + len(lines) + 1, b""
                for line in lines:
                    lineno += 1
                    if skipping and lineno == skipping:
                        stats.add_invalid(path, lineno, f"line longer than the limit of {maxb} bytes")
                        skipping = 0
                        continue
                    try:
                        ev = fast(line)
                    except Exception:  # noqa: BLE001 - decode_line below gives the reason
                        ev = None
                    if ev is not None and ev.__class__ is strict and ev.ts <= future and len(line) <= maxb:
                        ev.__class__ = plain
                    elif ev is not None and ev.__class__ is not strict and len(line) <= maxb:
                        problem = check_limits(ev, limits, now)  # a request or media event
                        if problem:
                            stats.add_invalid(path, lineno, problem)
                            continue
                    else:
                        if line.endswith(b"\r"):
                            line = line[:-1]
                        if not line or line.isspace():
                            continue
                        try:
                            ev = slow(line, limits, now)
                        except InvalidEvent as exc:
                            stats.add_invalid(path, lineno, str(exc))
                            continue
                    n_events += 1
                    yield lineno, ev
                stats.lines += len(lines)
                stats.events += n_events
                n_events = 0
                if skipping and chunk:
                    carry = b""
                stats.bytes_read = base + raw.tell()
                if not chunk:
                    break
        finally:
            stats.events += n_events


_obj_encoder = msgspec.json.Encoder()


def encode_obj(obj: Any) -> bytes:
    """JSON bytes of a plain object (a non-finite float fails later, at validation)."""
    try:
        return _obj_encoder.encode(obj)
    except (TypeError, ValueError) as exc:
        raise InvalidEvent(f"{type(exc).__name__}: {exc}") from None


# --- ordering ------------------------------------------------------------------------------

def in_order(records: Iterable[tuple[int, Event]], source: str, reorder_s: float,
             stats: LogStats) -> Iterator[Event]:
    """Events of one source in event-time order (module doc: ``reorder_s``).

    Raises:
        UnsortedLogError: an event too far out of order, naming ``source`` and its line.
    """
    last = -math.inf
    if reorder_s <= 0:
        for n, ev in records:
            ts = ev.ts
            if ts < last:
                raise UnsortedLogError(
                    f"{source}:{n}: event time {ts} is {last - ts:.6g} s before the previous event's "
                    f"({last}); logs must be sorted by event time (or pass --reorder-s SECONDS to "
                    "reorder within a window)")
            last = ts
            yield ev
        return
    heap: list[tuple[float, int, Event]] = []
    released = -math.inf
    seq = 0
    for n, ev in records:
        ts = ev.ts
        if ts < released:
            raise UnsortedLogError(
                f"{source}:{n}: event time {ts} is {last - ts:.6g} s behind the latest event, more than "
                f"the reorder window of {reorder_s} s (an event at {released} was already released)")
        if ts < last:
            stats.reordered += 1
        else:
            last = ts
        heapq.heappush(heap, (ts, seq, ev))
        seq += 1
        horizon = last - reorder_s
        while heap[0][0] <= horizon:
            released, _, out = heapq.heappop(heap)
            yield out
    while heap:
        yield heapq.heappop(heap)[2]


# --- entry point ---------------------------------------------------------------------------

def detect_format(path: str) -> str:
    """``parquet`` for ``.parquet``/``.pq``, else ``jsonl``."""
    return "parquet" if path.endswith((".parquet", ".pq")) else "jsonl"


def file_events(path: str, fmt: str, limits: Limits, stats: LogStats, reorder_s: float = 0.0) -> Iterator[Event]:
    """Events of one file in event-time order (``fmt``: jsonl, parquet or auto)."""
    fmt = detect_format(path) if fmt == "auto" else fmt
    if fmt == "jsonl":
        records = _jsonl_records(path, limits, stats)
    elif fmt == "parquet":
        from reloop.ops.log_parquet import parquet_records

        records = parquet_records(path, limits, stats)
    else:
        raise ValueError(f"unknown streaming log format {fmt!r} (expected jsonl, parquet or auto)")
    return in_order(records, path, reorder_s, stats)


def iter_events(paths: list[str], fmt: str, limits: Limits, reorder_s: float = 0.0, *,
                stats: LogStats | None = None, progress: Progress | None = None) -> EventStream:
    """Events of ``paths`` merged in event-time order, streaming (module doc).

    Args:
        paths: log files, each sorted by event time (or within ``reorder_s``).
        fmt: ``jsonl``, ``parquet`` or ``auto`` (by suffix).
        limits: validation limits (``max_event_bytes`` also bounds a line in memory).
        reorder_s: reorder window, event-time seconds (0: unsorted input raises).
        stats: counters to update (a new :class:`LogStats` by default).
        progress: a progress display fed from ``stats`` (bytes read / total for the ETA).

    Returns:
        an :class:`EventStream`; its ``stats`` are final once it is exhausted.
    """
    stats = stats if stats is not None else LogStats()
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(f"log file(s) not found: {', '.join(missing)}")
    stats.bytes_total += sum(os.path.getsize(p) for p in paths)
    streams = [file_events(p, fmt, limits, stats, reorder_s) for p in paths]
    gen: Iterator[Event] = streams[0] if len(streams) == 1 else heapq.merge(*streams, key=_ts)
    if progress is not None and progress.enabled:
        gen = progress.wrap(gen, stats)
    return EventStream(_finished(gen, stats, paths), stats)


def _ts(ev: Event) -> float:
    return ev.ts  # type: ignore[union-attr]


def _finished(gen: Iterator[Event], stats: LogStats, sources: list[str]) -> Iterator[Event]:
    yield from gen
    log.info("log_read", extra={"sources": sources, **{k: v for k, v in stats.as_dict().items()
                                                        if k != "invalid_examples"}})


# --- writing -------------------------------------------------------------------------------

def write_jsonl_compressed(events: Iterable[msgspec.Struct], path: str, level: int = 3) -> int:
    """Write events as JSON lines, compressed by suffix (.gz, .zst, else plain); returns the count."""
    with open(path, "wb") as raw:
        out: Any = raw
        if path.endswith(".gz"):
            out = gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=level)
        elif path.endswith((".zst", ".zstd")):
            import zstandard

            out = zstandard.ZstdCompressor(level=level).stream_writer(raw, closefd=False)
        n = 0
        buf: list[bytes] = []
        for ev in events:
            buf.append(encode(ev))
            n += 1
            if len(buf) >= 8192:
                out.write(b"\n".join(buf) + b"\n")
                buf.clear()
        if buf:
            out.write(b"\n".join(buf) + b"\n")
        if out is not raw:
            out.close()
    return n
