"""FeedbackCore: join interactions to pending predictions, emit error records, track quality.

Rules (shared by the worker and the replay engine):

- an interaction with ``request_id`` joins the pending prediction ``(request_id, item_id)``;
  its ``label`` is the truth; a second interaction for the same pair is ignored;
- an interaction that arrives before its request waits (orphan) until the request is scored
  or its attribution window closes (then it is counted as ``unattributed``);
- when the event-time watermark passes a pending prediction's ``ts + window``, the
  impression was not acted on: it becomes a negative (label 0);
- every joined or expired prediction yields one :class:`ErrorRecord` and one metrics update.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from processors.metrics import OnlineMetrics
from processors.pending import Pending, PendingStore
from streams.events import ErrorRecord, Interaction


def error_record(p: Pending, label: int, ts: float) -> ErrorRecord:
    """The error record of pending prediction ``p`` labelled ``label`` at event time ``ts``."""
    return ErrorRecord(error_id=f"{p.request_id}:{p.item_id}", user_id=p.user_id, item_id=p.item_id,
                       ts=ts, label=label, base_pred=p.base_pred, comp_pred=p.comp_pred,
                       model_version=p.model_version, codes=list(p.codes), features=p.features)


class FeedbackCore:
    """Turns interactions (and closed windows) into error records and metric updates."""

    def __init__(self, pending: PendingStore, metrics: OnlineMetrics) -> None:
        self.pending = pending
        self.metrics = metrics
        self.unattributed = 0
        self.duplicates = 0

    def on_scored(self, scored: Iterable[Pending]) -> list[ErrorRecord]:
        """Register newly scored candidates; joins orphans that were waiting for them."""
        out: list[ErrorRecord] = []
        for p in scored:
            self.pending.add(p)
            orphan = self.pending.claim_orphan(p.request_id, p.item_id)
            if orphan is not None:
                taken = self.pending.take(p.request_id, p.item_id)
                if taken is not None:
                    out.append(error_record(taken, orphan.label, max(orphan.ts, taken.ts)))
        self._record(out)
        return out

    def on_batch(self, interactions: Sequence[Interaction]) -> list[ErrorRecord]:
        """Join a batch of interactions; returns the error records they produce."""
        out: list[ErrorRecord] = []
        for it in interactions:
            if it.request_id is None:
                self.unattributed += 1
                continue
            p = self.pending.take(it.request_id, it.item_id)
            if p is not None:
                out.append(error_record(p, it.label, max(it.ts, p.ts)))
            elif (it.request_id, it.item_id) in self.pending._resolved:
                self.duplicates += 1
            else:
                self.pending.park_orphan(it)
        self._record(out)
        return out

    def advance(self, watermark: float) -> list[ErrorRecord]:
        """Close attribution windows up to ``watermark`` (event time, s): negatives out."""
        return self._expire(self.pending.advance(watermark))

    def drain(self) -> list[ErrorRecord]:
        """Close every window (end of a finite log)."""
        return self._expire(self.pending.drain())

    def _expire(self, expired) -> list[ErrorRecord]:
        out: list[ErrorRecord] = []
        for p, orphan in expired:
            if p is not None:
                out.append(error_record(p, 0, p.ts + self.pending.window_s))
            else:
                self.unattributed += 1
        self._record(out)
        return out

    def _record(self, records: list[ErrorRecord]) -> None:
        if records:
            self.metrics.update(np.fromiter((r.label for r in records), np.int64, len(records)),
                                np.fromiter((r.base_pred for r in records), np.float64, len(records)),
                                np.fromiter((r.comp_pred for r in records), np.float64, len(records)),
                                np.fromiter((r.ts for r in records), np.float64, len(records)))
