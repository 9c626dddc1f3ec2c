"""Deployment-dependent validation limits (sizes and clocks that the static schema cannot know)."""

from __future__ import annotations

import time

import msgspec

from reloop.streams.events import ErrorRecord, Interaction, MediaEvent, RecommendationRequest


class Limits(msgspec.Struct, frozen=True, kw_only=True):
    """Limits applied to every decoded input event.

    Attributes:
        max_event_bytes: largest accepted message value, bytes.
        media_dim: exact length of a media segment embedding.
        max_candidates: most candidates in one request.
        max_future_s: event-time policy (docs/guarantees.md): an event whose ``ts`` (or an
            error record's ``label_ts``) is more than this many seconds ahead of the wall clock
            of the process reading it is invalid (a dead letter), so a producer's broken clock
            never moves a partition's stream time, closes windows, or reaches the error
            memory, the schema cache or the training window. 0 = no bound (offline replay of
            logs recorded with a shifted clock).
    """

    max_event_bytes: int = 1_000_000
    media_dim: int = 32
    max_candidates: int = 1000
    max_future_s: float = 3600.0

    def __post_init__(self) -> None:
        if self.max_event_bytes < 1 or self.media_dim < 1 or self.max_candidates < 1:
            raise ValueError("max_event_bytes, media_dim and max_candidates must be >= 1")
        if not self.max_future_s >= 0.0:
            raise ValueError(f"max_future_s must be >= 0, got {self.max_future_s}")


def check_limits(event: object, limits: Limits, now: float | None = None) -> str | None:
    """Return a reason string if ``event`` breaks ``limits``, else ``None``.

    Args:
        now: the wall clock, unix seconds (default: ``time.time()``).

    >>> from reloop.streams.events import Interaction
    >>> check_limits(Interaction(user_id="u", item_id="i", ts=3.25e10, label=1), Limits(), now=1.7e9)
    'event time 32500000000.0 is 30800000000 s ahead of the wall clock (limit 3600 s)'
    """
    cls = event.__class__
    if cls is Interaction or cls is ErrorRecord or (cls is RecommendationRequest and
                                                     len(event.candidates) <= limits.max_candidates):
        # the hot path's kinds (per event: ~0.3 us instead of ~1): only the clock to check
        future = limits.max_future_s
        if not future:
            return None
        now = time.time() if now is None else now
        ts = event.ts
        if cls is ErrorRecord and event.label_ts is not None and event.label_ts > ts:
            ts = event.label_ts
        if ts <= now + future:
            return None
    return _check_limits(event, limits, now)


def _check_limits(event: object, limits: Limits, now: float | None) -> str | None:
    """:func:`check_limits` for any event."""
    if isinstance(event, MediaEvent) and len(event.embedding) != limits.media_dim:
        return f"embedding has length {len(event.embedding)}, expected {limits.media_dim}"
    if isinstance(event, RecommendationRequest) and len(event.candidates) > limits.max_candidates:
        return f"{len(event.candidates)} candidates exceed limit {limits.max_candidates}"
    if limits.max_future_s:
        ts = getattr(event, "ts", None)
        if isinstance(event, ErrorRecord) and event.label_ts is not None:
            ts = max(event.ts, event.label_ts)
        if ts is not None:
            now = time.time() if now is None else now
            if ts > now + limits.max_future_s:
                return (f"event time {ts} is {ts - now:.0f} s ahead of the wall clock "
                        f"(limit {limits.max_future_s:.0f} s)")
    return None
