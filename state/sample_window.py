"""The training window: a bounded, durable store of labelled samples for the slow model.

Every error record is a labelled training sample (user, item, features, label, event time);
the trainer feeds them here and retrains on :meth:`SampleWindow.samples`.

On disk (``root/``)::

    seg-0000000001.jsonl   sealed segment: one JSON object per line (:class:`Sample`)
    seg-0000000002.jsonl   ...
    seg-0000000007.jsonl   the active segment (append-only, fsync'ed by :meth:`SampleWindow.flush`)

- **Append-only JSONL segments**, rotated every ``segment_max_samples`` lines. Lines are
  decoded into typed structs (msgspec, no pickle); a torn last line (crash mid-write) or a
  corrupted line fails validation and is skipped and counted (``skipped_lines``).
- **Durability**: :meth:`SampleWindow.flush` fsyncs the active segment; the trainer commits
  its Kafka offsets only after a flush, so a crash loses nothing and a redelivery is dropped
  by the dedupe below (effectively-once from at-least-once input).
- **Dedupe** by ``sample_id`` (the error record's ``error_id``) over the samples held.
- **Retention** by count (``max_samples``, oldest arrivals evicted first) and by age (samples
  with ``ts`` older than ``newest ts - max_age_s`` are dropped; event time, not wall clock,
  so replaying a log gives the same window). A sealed segment is deleted once none of its
  samples is held any more, so the disk holds at most ``max_samples + segment_max_samples``
  lines (plus duplicates).
- **Restart**: opening a window reads the segments in order, applies dedupe and retention and
  starts a new active segment, so the window after a restart equals the window before it.

One writer per directory (the trainer holds the registry lock); not thread-safe.
"""

from __future__ import annotations

import logging
import os
import re
from collections import deque
from pathlib import Path
from typing import Annotated, BinaryIO, Iterable, Sequence

import msgspec

from reloop.streams.events import DerivedFeatures, ErrorRecord

__all__ = ["Sample", "SampleWindow", "sample_from_error"]

log = logging.getLogger("reloop.sample_window")

_SEGMENT = re.compile(r"^seg-(\d{10})\.jsonl$")


class Sample(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One labelled training sample.

    Attributes:
        sample_id: unique id (the error record's ``error_id``: request id + item id).
        user_id, item_id: the pair that was scored.
        ts: the prediction's event time (the error record's ``ts``: the request's time, for
            positives and negatives alike since error-record schema version 2; version 1
            records carried the label's time), unix seconds. Retention and the trainer's
            event-time order use it, so one request's samples stay together.
        label: 0 or 1.
        features: request + candidate features (str = categorical, float = dense).
    """

    sample_id: Annotated[str, msgspec.Meta(min_length=1)]
    user_id: Annotated[str, msgspec.Meta(min_length=1)]
    item_id: Annotated[str, msgspec.Meta(min_length=1)]
    ts: Annotated[float, msgspec.Meta(ge=0.0)]
    label: Annotated[int, msgspec.Meta(ge=0, le=1)]
    features: DerivedFeatures = {}

    @property
    def row(self) -> tuple[str, str, DerivedFeatures]:
        """``(user_id, item_id, features)``: the model's input row."""
        return (self.user_id, self.item_id, self.features)


def sample_from_error(record: ErrorRecord) -> Sample:
    """The training sample an error record carries."""
    return Sample(sample_id=record.error_id, user_id=record.user_id, item_id=record.item_id,
                  ts=record.ts, label=record.label, features=record.features)


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Sample)


class SampleWindow:
    """A bounded, durable, deduplicated window of labelled samples (see module docstring).

    Args:
        root: directory of the segments (created if missing).
        max_samples: most samples held (count retention).
        max_age_s: event-time seconds kept behind the newest sample (age retention).
        segment_max_samples: lines per segment before it is sealed and a new one started.
        fsync: fsync on :meth:`flush` (tests may turn it off for speed).
    """

    def __init__(self, root: str | os.PathLike[str], *, max_samples: int = 50_000,
                 max_age_s: float = 7 * 86400.0, segment_max_samples: int = 10_000,
                 fsync: bool = True) -> None:
        if max_samples < 1 or segment_max_samples < 1 or not max_age_s > 0:
            raise ValueError("max_samples >= 1, segment_max_samples >= 1 and max_age_s > 0 are required")
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_samples = int(max_samples)
        self.max_age_s = float(max_age_s)
        self.segment_max_samples = int(segment_max_samples)
        self.fsync = fsync
        self._held: deque[tuple[Sample, int]] = deque()  # (sample, segment seq), arrival order
        self._ids: set[str] = set()
        self._live: dict[int, int] = {}  # segment seq -> samples of it still held
        self._newest_ts = float("-inf")
        self._active: BinaryIO | None = None
        self._active_seq = 0
        self._active_lines = 0
        self.skipped_lines = 0
        self.duplicates = 0
        self.too_old = 0
        self._load()

    # ---- reading -------------------------------------------------------------------------
    def __len__(self) -> int:
        """Samples held (before the age filter of :meth:`samples`)."""
        return len(self._held)

    @property
    def cutoff_ts(self) -> float:
        """Samples with ``ts`` below this are out of the window (event time, unix s)."""
        return self._newest_ts - self.max_age_s

    def samples(self) -> list[Sample]:
        """The window in event-time order (stable for equal ``ts``), age filter applied."""
        cutoff = self.cutoff_ts
        held = [s for s, _ in self._held if s.ts >= cutoff]
        held.sort(key=lambda s: s.ts)
        return held

    def bounds(self) -> tuple[float, float] | None:
        """``(oldest ts, newest ts)`` of the window, or None when empty."""
        cutoff = self.cutoff_ts
        stamps = [s.ts for s, _ in self._held if s.ts >= cutoff]
        return (min(stamps), max(stamps)) if stamps else None

    def segment_paths(self) -> list[Path]:
        """Segment files on disk, oldest first."""
        found = [(int(m.group(1)), p) for p in self.root.iterdir() if (m := _SEGMENT.match(p.name))]
        return [p for _, p in sorted(found)]

    # ---- writing -------------------------------------------------------------------------
    def add(self, samples: Iterable[Sample]) -> list[Sample]:
        """Append new samples; returns those accepted (not duplicates, not older than the window).

        Accepted samples are written to the active segment at once (OS buffers) and are
        durable after :meth:`flush`.
        """
        accepted: list[Sample] = []
        lines: list[bytes] = []
        for s in samples:
            if s.sample_id in self._ids:
                self.duplicates += 1
                continue
            if s.ts < self.cutoff_ts:
                self.too_old += 1
                continue
            if self._active is None or self._active_lines >= self.segment_max_samples:
                self._write(lines)
                lines = []
                self._rotate()
            self._ids.add(s.sample_id)
            self._held.append((s, self._active_seq))
            self._live[self._active_seq] = self._live.get(self._active_seq, 0) + 1
            self._newest_ts = max(self._newest_ts, s.ts)
            self._active_lines += 1
            lines.append(_encoder.encode(s))
            accepted.append(s)
        self._write(lines)
        self._evict()
        return accepted

    def flush(self) -> None:
        """Make every accepted sample durable (flush + fsync of the active segment)."""
        if self._active is not None:
            self._active.flush()
            if self.fsync:
                os.fsync(self._active.fileno())

    def close(self) -> None:
        """Flush and close the active segment (the window can no longer be written)."""
        if self._active is not None:
            self.flush()
            self._active.close()
            self._active = None

    def __enter__(self) -> SampleWindow:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- internals -----------------------------------------------------------------------
    def _write(self, lines: Sequence[bytes]) -> None:
        if lines:
            assert self._active is not None
            self._active.write(b"\n".join(lines) + b"\n")

    def _segment_path(self, seq: int) -> Path:
        return self.root / f"seg-{seq:010d}.jsonl"

    def _rotate(self) -> None:
        """Seal the active segment (if any) and open the next one."""
        if self._active is not None:
            self.flush()
            self._active.close()
            self._active = None
            if self._live.get(self._active_seq, 0) == 0:
                self._delete_segment(self._active_seq)
        existing = self.segment_paths()
        last = int(_SEGMENT.match(existing[-1].name).group(1)) if existing else 0  # type: ignore[union-attr]
        self._active_seq = max(last, self._active_seq) + 1
        self._active = open(self._segment_path(self._active_seq), "ab")
        self._active_lines = 0
        if self.fsync:
            _fsync_dir(self.root)

    def _evict(self) -> None:
        """Drop held samples beyond the count or age limit, oldest arrivals first."""
        cutoff = self.cutoff_ts
        held = self._held
        while held and (len(held) > self.max_samples or held[0][0].ts < cutoff):
            sample, seq = held.popleft()
            self._ids.discard(sample.sample_id)
            left = self._live[seq] - 1
            if left:
                self._live[seq] = left
            else:
                del self._live[seq]
                if not (self._active is not None and seq == self._active_seq):
                    self._delete_segment(seq)

    def _delete_segment(self, seq: int) -> None:
        self._live.pop(seq, None)
        try:
            self._segment_path(seq).unlink()
            log.debug("segment_deleted", extra={"segment": seq})
        except FileNotFoundError:
            pass

    def _load(self) -> None:
        """Rebuild the window from the segments on disk (see module docstring)."""
        paths = self.segment_paths()
        for path in paths:
            seq = int(_SEGMENT.match(path.name).group(1))  # type: ignore[union-attr]
            self._active_seq = seq
            with open(path, "rb") as handle:
                for line in handle:
                    line = line.strip()
                    if not line:
                        continue
                    try:
                        sample = _decoder.decode(line)
                    except (msgspec.DecodeError, msgspec.ValidationError):
                        self.skipped_lines += 1
                        continue
                    if sample.sample_id in self._ids:
                        self.duplicates += 1
                        continue
                    self._ids.add(sample.sample_id)
                    self._held.append((sample, seq))
                    self._live[seq] = self._live.get(seq, 0) + 1
                    self._newest_ts = max(self._newest_ts, sample.ts)
        self._evict()
        for path in paths:  # sealed segments with nothing held (all evicted or duplicates)
            seq = int(_SEGMENT.match(path.name).group(1))  # type: ignore[union-attr]
            if seq not in self._live:
                self._delete_segment(seq)
        if paths:
            log.info("window_loaded", extra={"root": str(self.root), "samples": len(self._held),
                                             "segments": len(self._live), "skipped_lines": self.skipped_lines})


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
