"""FeedbackCore: join interactions to pending predictions, emit error records, track quality.

Rules (shared by the worker and the replay engine):

- an interaction with ``request_id`` labels the pending prediction ``(request_id, item_id)``;
  a second interaction for the same pair, or one after the request resolved, is a duplicate;
- a request resolves when all its candidates are labelled (e.g. a replayed one-candidate
  request, at once) or when the event-time watermark passes ``ts + window``; unlabelled
  impressions are then negatives (label 0). Its error records are emitted together, so the
  error memory never sees the early clicks without the late negatives;
- an interaction that arrives before its request waits (orphan) until the request is scored
  or its window closes (then it counts as ``unattributed``);
- every resolved prediction yields one :class:`ErrorRecord` and one metrics update, at the
  prediction's event time (the request's ``ts``): a request's positives and negatives share one
  clock, so anything that windows or orders error records by time (schema cache, reorder
  buffer, online metrics, training window, error-memory decay) sees them together.
"""

from __future__ import annotations

from typing import Iterable, Sequence

from reloop.processors.metrics import OnlineMetrics
from reloop.processors.pending import Pending, PendingStore, Resolved
from reloop.streams.events import ErrorRecord, Interaction, error_id_for, pack_codes


def error_record(r: Resolved) -> ErrorRecord:
    """The error record of a resolved prediction: its event time is the prediction's (the
    request's), whatever the label's own time (kept as ``label_ts``)."""
    p = r.pending
    return ErrorRecord(error_id=error_id_for(p.request_id, p.item_id), user_id=p.user_id, item_id=p.item_id,
                       ts=p.ts, label_ts=r.label_ts, label=r.label, base_pred=p.base_pred, comp_pred=p.comp_pred,
                       model_version=p.model_version, codes=pack_codes(p.codes), features=p.features)


class FeedbackCore:
    """Turns interactions (and closed windows) into error records and metric updates."""

    def __init__(self, pending: PendingStore, metrics: OnlineMetrics) -> None:
        self.pending = pending
        self.metrics = metrics
        self.unattributed = 0
        self.duplicates = 0
        self.late = 0  # clicks after their request's attribution window

    def on_scored(self, scored: Iterable[Pending]) -> list[ErrorRecord]:
        """Register newly scored candidates; applies orphans that were waiting for them."""
        scored = list(scored)
        for p in scored:
            self.pending.add(p)
        resolved: list[Resolved] = []
        for p in scored if self.pending.orphan_count else ():  # no orphans: nothing to claim
            orphan = self.pending.claim_orphan(p.request_id, p.item_id)
            if orphan is not None:
                status, done = self.pending.label(p.request_id, p.item_id, orphan.label, orphan.ts)
                self.late += status == "late"
                resolved += done
        return self._emit(resolved)

    def on_batch(self, interactions: Sequence[Interaction]) -> list[ErrorRecord]:
        """Label predictions with a batch of interactions; returns the error records of the
        requests that resolved."""
        resolved: list[Resolved] = []
        for it in interactions:
            if it.request_id is None:
                self.unattributed += 1
                continue
            status, done = self.pending.label(it.request_id, it.item_id, it.label, it.ts)
            if status == "unknown":
                self.pending.park_orphan(it)
            elif status == "duplicate":
                self.duplicates += 1
            elif status == "late":
                self.late += 1
            resolved += done
        return self._emit(resolved)

    def advance(self, watermark: float) -> list[ErrorRecord]:
        """Close attribution windows up to ``watermark`` (event time, s)."""
        return self._expire(self.pending.advance(watermark))

    def drain(self) -> list[ErrorRecord]:
        """Close every window (end of a finite log)."""
        return self._expire(self.pending.drain())

    def _expire(self, expired: Iterable[Resolved | Interaction]) -> list[ErrorRecord]:
        resolved: list[Resolved] = []
        for x in expired:
            if isinstance(x, Resolved):
                resolved.append(x)
            else:
                self.unattributed += 1
        return self._emit(resolved)

    def _emit(self, resolved: list[Resolved]) -> list[ErrorRecord]:
        if not resolved:
            return []
        records = [error_record(r) for r in resolved]
        self.metrics.update_records(records)
        return records
