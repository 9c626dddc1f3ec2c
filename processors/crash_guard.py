"""CrashGuard: a record that kills the worker process again and again is skipped, not retried forever.

The poison-pill rule (docs/guarantees.md) turns every Python exception raised by one record
into a dead letter. What it cannot catch is a record that takes the process down (a crash in
native code, the kernel's OOM killer): the restarted worker would read the same offsets and
die again, a crash loop. So, around the cores' work on each batch, the shell leaves a marker
file naming the batch's offsets (a few hundred bytes, no fsync: a process crash, not a machine
crash, is what it guards against) and clears it when the batch is through:

1. a start that finds a marker knows the previous process died inside that batch and counts
   a crash against its offsets (``crashes.json``);
2. once a batch has ``threshold`` crashes, its records are processed one at a time, each under
   its own marker;
3. once a single record has ``threshold`` crashes, it is dead-lettered without processing
   ("crashed the worker N times"), logged, and the worker moves on.

>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> g = CrashGuard(d, threshold=2)
>>> g.begin({("requests", 0): (10, 19)})      # ... the process dies here, twice:
>>> g = CrashGuard(d, threshold=2); g.begin({("requests", 0): (10, 19)})
>>> g = CrashGuard(d, threshold=2)
>>> g.isolate(("requests", 0), 12), g.is_poison(("requests", 0), 12)
(True, False)
>>> g.begin({("requests", 0): (12, 12)})      # one record at a time: this one kills it twice
>>> g = CrashGuard(d, threshold=2); g.begin({("requests", 0): (12, 12)})
>>> g = CrashGuard(d, threshold=2)
>>> g.is_poison(("requests", 0), 12), g.is_poison(("requests", 0), 13)
(True, False)
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

__all__ = ["CrashGuard", "FAULT_ENV", "fault_point"]

log = logging.getLogger("reloop.crash_guard")

#: Fault injection, for the crash-loop test (tests/integration/test_poison_pill_broker.py): a
#: worker whose environment names a request id here exits at once, as a crash in native code
#: would (``os._exit(86)``: no exception, no cleanup), when its cores are about to process it.
FAULT_ENV = "RELOOP_FAULT_EXIT_ON_REQUEST"
_FAULT_REQUEST = os.environ.get(FAULT_ENV)


def fault_point(inputs: list) -> None:
    """Exit the process if :data:`FAULT_ENV` names a request among ``inputs`` (admitted
    records with ``.event``); a no-op when the variable is unset."""
    if _FAULT_REQUEST is not None and any(getattr(x.event, "request_id", None) == _FAULT_REQUEST for x in inputs):
        log.error("fault_injected_exit", extra={"request_id": _FAULT_REQUEST})
        os._exit(86)

Source = tuple[str, int]  # (topic, partition)


class CrashGuard:
    """Counts process crashes per batch of input offsets (module doc).

    Args:
        folder: the worker's state folder (``marker.json`` and ``crashes.json`` live there).
        threshold: crashes of one batch before its records go one at a time, and of one
            record before it is dead-lettered (>= 1).
    """

    def __init__(self, folder: Path, threshold: int = 2) -> None:
        if threshold < 1:
            raise ValueError("threshold must be >= 1")
        self.threshold = threshold
        folder.mkdir(parents=True, exist_ok=True)
        self.marker = folder / "inflight.json"
        self.counts_path = folder / "crashes.json"
        self._counts: dict[str, int] = {}
        if self.counts_path.exists():
            try:
                self._counts = {str(k): int(v) for k, v in json.loads(self.counts_path.read_text()).items()}
            except (OSError, ValueError, AttributeError):
                self._counts = {}
        if self.marker.exists():
            try:
                ranges = json.loads(self.marker.read_text())
                key = _key(ranges)
            except (OSError, ValueError, TypeError):
                key = None  # torn marker: the crash happened while writing it, not in the batch
            if key is not None:
                self._counts[key] = self._counts.get(key, 0) + 1
                log.error("crash_in_batch_detected", extra={"batch": key, "crashes": self._counts[key],
                                                            "threshold": self.threshold})
                self._save_counts()
            self.marker.unlink(missing_ok=True)
        self._ranges = [(json.loads(k), n) for k, n in self._counts.items()]
        self.active = any(n >= threshold for _, n in self._ranges)

    def _save_counts(self) -> None:
        tmp = self.counts_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._counts))
        os.replace(tmp, self.counts_path)

    def begin(self, ranges: dict[Source, tuple[int, int]]) -> None:
        """Mark a batch (``(topic, partition) -> (first offset, last offset)``) as in progress."""
        self.marker.write_text(json.dumps(sorted([t, p, lo, hi] for (t, p), (lo, hi) in ranges.items())))

    def end(self) -> None:
        """The batch's cores are done (its outputs may follow)."""
        self.marker.unlink(missing_ok=True)

    def _crashes(self, source: Source, offset: int, single: bool) -> int:
        worst = 0
        for ranges, n in self._ranges:
            if single and (len(ranges) != 1 or ranges[0][2] != ranges[0][3]):
                continue
            for t, p, lo, hi in ranges:
                if (t, p) == source and lo <= offset <= hi:
                    worst = max(worst, n)
        return worst

    def isolate(self, source: Source, offset: int) -> bool:
        """Process this record alone (its batch crashed the worker ``threshold`` times)."""
        return self.active and self._crashes(source, offset, single=False) >= self.threshold

    def is_poison(self, source: Source, offset: int) -> bool:
        """Dead-letter this record unprocessed (it crashed the worker alone ``threshold`` times)."""
        return self.active and self._crashes(source, offset, single=True) >= self.threshold

    def settle(self, positions: dict[Source, int]) -> None:
        """Forget the crash counts of batches now wholly behind ``positions`` (next offset to
        read per source): they were got past."""
        if not self._counts:
            return
        keep = {k: n for k, n in self._counts.items()
                if any(hi >= positions.get((t, p), 0) for t, p, _, hi in json.loads(k))}
        if keep != self._counts:
            self._counts = keep
            self._ranges = [(json.loads(k), n) for k, n in keep.items()]
            self.active = any(n >= self.threshold for _, n in self._ranges)
            self._save_counts()

    def crashes(self, source: Source, offset: int) -> int:
        """Crashes counted against this record alone."""
        return self._crashes(source, offset, single=True)


def _key(ranges: list) -> str:
    return json.dumps(sorted([str(t), int(p), int(lo), int(hi)] for t, p, lo, hi in ranges))
