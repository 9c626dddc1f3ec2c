"""EventTimeReorder: error records in a deterministic event-time order, whatever the fetches.

Every worker reads all partitions of ``errors``; how a poll interleaves them is up to the
consumer, and the schema cache's result depends on the order of its input (its clock, its
Space-Saving eviction). This buffer sits in front of it (:class:`reloop.processors.replica.ErrorsReplica`)
and releases records in an order that does not depend on the interleaving.

Rule. Each record gets a *key* when it arrives on partition ``p``:
``key = max(ts, wm_p - lateness_s)``, with ``wm_p`` the largest event time seen on ``p`` before
it (the partition's watermark). Every later record of ``q`` therefore has a key of at least
``wm_q - lateness_s``, so once every partition's ``wm_q - lateness_s`` exceeds a key, nothing
with a smaller key can still come: the *frontier* is ``min_q wm_q - lateness_s`` over the
expected partitions, and records with ``key < frontier`` are released in ``(key, ts, error_id,
partition)`` order (strictly below: a record equal to a watermark may still have siblings).

What the released sequence depends on (tested with arbitrary interleavings and splits):

* always (without the two escapes below): on each partition's own record sequence (after
  duplicates are dropped), never on how partitions interleave in fetches or where batches are
  cut. Two replicas of one ``errors`` log, or one replica before and after a restart from its
  snapshot, therefore feed the cache the same sequence;
* if no record is more than ``lateness_s`` behind its partition's watermark: on the *set* of
  records only (``key == ts`` for all; the sequence is sorted by ``(ts, error_id)``). A record
  later than that (``clamped``, counted) is placed at ``wm_p - lateness_s``, where its own
  partition's order decides.

The escapes, which make the order depend on arrival (counted in ``overtaken`` / ``forced`` and
logged): a partition whose watermark (or, never seen, the earliest first event time of the
others) lags the leading one by more than ``idle_s`` is not waited for (a dead or idle
partition must not stop the cache); and more than ``max_held`` records held releases the
smallest keys. A record that then arrives below what was already released is keyed at the
released maximum (``overtaken``). Partitions not in the expected set are added when first
seen (records released before are not waited for).
"""

from __future__ import annotations

import bisect
import logging
import math
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from reloop.streams.codec import encode
from reloop.streams.events import ErrorRecord

__all__ = ["EventTimeReorder", "REORDER_FORMAT"]

log = logging.getLogger("reloop.reorder")

REORDER_FORMAT = 1
_Entry = tuple[float, float, str, int, int, ErrorRecord]  # key, ts, error_id, partition, seq, record


class EventTimeReorder:
    """Holds error records per partition and releases them in event-time order (module doc).

    Args:
        partitions: the ``errors`` partitions to wait for (ids).
        lateness_s: event-time seconds a record may lag its partition's watermark and still be
            ordered by its own ``ts`` (>= 0); also the delay added before release.
        idle_s: a partition lagging the leading one by more than this (event seconds) is not
            waited for (0 = always wait).
        max_held: most records held; beyond it the oldest keys are released (>= 1).
    """

    def __init__(self, partitions: Iterable[int], *, lateness_s: float = 0.0, idle_s: float = 300.0,
                 max_held: int = 100_000) -> None:
        if not (lateness_s >= 0.0 and idle_s >= 0.0 and max_held >= 1):
            raise ValueError("need lateness_s >= 0, idle_s >= 0, max_held >= 1")
        self.lateness_s, self.idle_s, self.max_held = float(lateness_s), float(idle_s), int(max_held)
        self.expected: set[int] = set(partitions)
        self.watermarks: dict[int, float] = {}  # partition -> largest event time seen, s
        self.first_ts: dict[int, float] = {}  # partition -> event time of its first record, s
        self.released = -math.inf  # largest key released, event-time s
        self.clamped = 0  # records later than lateness_s on their partition (key raised)
        self.overtaken = 0  # records that arrived below the released maximum (order by arrival)
        self.forced = 0  # records released early by max_held
        self._held: list[_Entry] = []  # sorted up to ``_sorted``, then pushed since (unsorted)
        self._sorted = 0
        self._seq = 0
        self._skipped: set[int] = set()

    def approx_nbytes(self, sample: int = 32) -> int:
        """Approximate bytes of the held records (measured on up to ``sample``, scaled)."""
        from reloop.processors.pending import deep_size

        held = self._held
        if not held:
            return 0
        k = min(sample, len(held))
        return sum(deep_size(e) for e in held[:k]) * len(held) // k

    @property
    def held(self) -> int:
        """Records waiting."""
        return len(self._held)

    def push(self, partition: int, records: Sequence[ErrorRecord]) -> None:
        """Hold ``records`` of one partition, in that partition's order."""
        if not records:
            return
        self.expected.add(partition)
        wm = self.watermarks.get(partition, -math.inf)
        if partition not in self.first_ts:
            self.first_ts[partition] = records[0].ts
        late, floor = self.lateness_s, self.released
        seq0, entries = self._seq, []
        append = entries.append
        for j, r in enumerate(records):  # the entry tuples are unique (seq): sorting never reaches r
            ts = r.ts
            key = ts
            if key < wm - late:
                key = wm - late
                self.clamped += 1
            if key < floor:
                key = floor
                self.overtaken += 1
            append((key, ts, r.error_id, partition, seq0 + j, r))
            if ts > wm:
                wm = ts
        self._seq = seq0 + len(entries)
        self._held += entries
        self.watermarks[partition] = wm

    def frontier(self) -> float:
        """Keys below this can be released (event-time s; -inf while a partition is awaited)."""
        if not self.watermarks:
            return -math.inf
        leader = max(self.watermarks.values())
        start = min(self.first_ts.values())
        waits, skipped = [], set()
        for q in self.expected:
            wm = self.watermarks.get(q)
            if self.idle_s > 0.0 and leader - (start if wm is None else wm) > self.idle_s:
                skipped.add(q)
            else:
                waits.append(-math.inf if wm is None else wm)
        if skipped != self._skipped:
            log.warning("reorder_partitions_skipped", extra={"skipped": sorted(skipped), "leader_ts": leader,
                                                             "idle_s": self.idle_s})
            self._skipped = skipped
        return min(waits) - self.lateness_s

    def pop_ready(self) -> list[ErrorRecord]:
        """Release what the frontier allows (and what ``max_held`` forces), in key order.

        The held entries are one sorted list (a sort of the sorted rest plus what was pushed
        since: timsort merges the runs, and compares tuples of floats with its fast path); the
        released ones are its prefix below the frontier, in the order a heap would pop them
        (the tuples are unique, by ``seq``)."""
        held = self._held
        if len(held) > self._sorted:
            held.sort()
        frontier = self.frontier()
        cut = bisect.bisect_left(held, (frontier,)) if held and held[0][0] < frontier else 0
        forced = max(0, len(held) - cut - self.max_held)
        cut += forced
        out = held[:cut]
        if cut:
            del held[:cut]
        self._sorted = len(held)
        if forced:
            self.forced += forced
            log.warning("reorder_forced", extra={"released": forced, "max_held": self.max_held})
        if out:
            self.released = max(self.released, out[-1][0])
        return [e[5] for e in out]

    def held_ids(self) -> list[str]:
        """Error ids of the held records, in release order (key, ts, id, partition)."""
        return [e[2] for e in sorted(self._held, key=lambda e: e[:4])]

    # ---- snapshots ---------------------------------------------------------------------------
    def to_arrays(self) -> dict[str, np.ndarray]:
        """Plain arrays (prefix ``reorder_``): parameters, watermarks, counters and the held
        records (wire-encoded, concatenated), sorted by key; no arrival order is stored."""
        held = sorted(self._held, key=lambda e: e[:4])
        raw = [encode(e[5]) for e in held]
        parts = sorted(self.expected)
        return {
            "reorder_scalars": np.array([REORDER_FORMAT, self.lateness_s, self.idle_s, self.max_held,
                                         self.released, self.clamped, self.overtaken, self.forced], np.float64),
            "reorder_partitions": np.array(parts, np.int64),
            "reorder_watermarks": np.array([self.watermarks.get(q, math.nan) for q in parts], np.float64),
            "reorder_first_ts": np.array([self.first_ts.get(q, math.nan) for q in parts], np.float64),
            "reorder_keys": np.array([e[0] for e in held], np.float64),
            "reorder_held_partitions": np.array([e[3] for e in held], np.int64),
            "reorder_lengths": np.array([len(b) for b in raw], np.int64),
            "reorder_data": np.frombuffer(b"".join(raw), np.uint8).copy(),
        }

    @classmethod
    def from_arrays(cls, snap: dict[str, np.ndarray], decode: Callable[[bytes], ErrorRecord]) -> EventTimeReorder:
        """Inverse of :meth:`to_arrays`; ``decode`` turns wire bytes into a record. ValueError
        (or the decoder's error) if malformed."""
        try:
            fmt, lateness, idle, max_held, released, clamped, overtaken, forced = (
                np.asarray(snap["reorder_scalars"], np.float64).tolist())
            if int(fmt) != REORDER_FORMAT:
                raise ValueError(f"unsupported reorder snapshot format {fmt}")
            out = cls(np.asarray(snap["reorder_partitions"]).tolist(), lateness_s=lateness, idle_s=idle,
                      max_held=int(max_held))
            marks = zip(sorted(out.expected), np.asarray(snap["reorder_watermarks"]).tolist(),
                        np.asarray(snap["reorder_first_ts"]).tolist())
            for q, wm, first in marks:
                if not math.isnan(wm):
                    out.watermarks[q], out.first_ts[q] = wm, first
            keys = np.asarray(snap["reorder_keys"], np.float64).tolist()
            parts = np.asarray(snap["reorder_held_partitions"]).tolist()
            lengths = np.asarray(snap["reorder_lengths"]).tolist()
            data = np.asarray(snap["reorder_data"], np.uint8).tobytes()
        except KeyError as exc:
            raise ValueError(f"bad reorder snapshot: missing {exc}") from exc
        if not (len(keys) == len(parts) == len(lengths)) or sum(lengths) != len(data):
            raise ValueError("bad reorder snapshot: held records do not add up")
        pos = 0
        for key, part, n in zip(keys, parts, lengths):
            rec = decode(data[pos:pos + n])
            pos += n
            out._held.append((key, rec.ts, rec.error_id, int(part), out._seq, rec))
            out._seq += 1
        out.released, out.clamped, out.overtaken, out.forced = released, int(clamped), int(overtaken), int(forced)
        return out
