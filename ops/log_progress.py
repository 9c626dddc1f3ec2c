"""A one-line progress display of a streaming log read (:mod:`reloop.ops.log_readers`).

Split from :mod:`reloop.ops.log_readers`, which re-exports :class:`Progress`.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any, Iterator

if TYPE_CHECKING:
    from reloop.ops.log_readers import LogStats

__all__ = ["Progress"]


class Progress:
    """A one-line progress display on stderr: events, events/s, percent and ETA.

    The ETA comes from ``stats.bytes_read / stats.bytes_total`` (files: bytes; Kafka:
    records of the range). Enabled only when stderr is a terminal and not ``quiet``.
    """

    def __init__(self, quiet: bool = False, stream: Any = None, every_s: float = 0.5,
                 force: bool = False) -> None:
        import sys

        self.out = stream if stream is not None else sys.stderr
        self.enabled = force or (not quiet and hasattr(self.out, "isatty") and self.out.isatty())
        self.every_s = every_s
        self.t0 = time.monotonic()
        self._next = self.t0

    def line(self, stats: LogStats) -> str:
        """The text shown for ``stats`` now."""
        el = max(time.monotonic() - self.t0, 1e-9)
        rate = stats.events / el
        text = f"replay {stats.events:,} events  {rate:,.0f} ev/s"
        if stats.bytes_total > 0 and stats.bytes_read > 0:
            frac = min(1.0, stats.bytes_read / stats.bytes_total)
            eta = el * (1 - frac) / frac if frac > 0 else math.inf
            text += f"  {100 * frac:5.1f}%  ETA {int(eta) // 60}:{int(eta) % 60:02d}"
        if stats.invalid:
            text += f"  invalid {stats.invalid:,}"
        return text

    def update(self, stats: LogStats, final: bool = False) -> None:
        """Redraw if ``every_s`` passed (or ``final``)."""
        now = time.monotonic()
        if final or now >= self._next:
            self._next = now + self.every_s
            self.out.write("\r" + self.line(stats) + ("\n" if final else ""))
            self.out.flush()

    def wrap(self, events: Iterator[Any], stats: LogStats, every: int = 8192) -> Iterator[Any]:
        """``events`` unchanged, redrawing every ``every`` events when due."""
        n = 0
        for ev in events:
            yield ev
            n += 1
            if n == every:
                n = 0
                self.update(stats)
        self.update(stats, final=True)
