"""Deployment-dependent validation limits (sizes that the static schema cannot know)."""

from __future__ import annotations

import msgspec

from streams.events import MediaEvent, RecommendationRequest


class Limits(msgspec.Struct, frozen=True, kw_only=True):
    """Size limits applied to every decoded input event.

    Attributes:
        max_event_bytes: largest accepted message value, bytes.
        media_dim: exact length of a media segment embedding.
        max_candidates: most candidates in one request.
    """

    max_event_bytes: int = 1_000_000
    media_dim: int = 32
    max_candidates: int = 1000


def check_limits(event: object, limits: Limits) -> str | None:
    """Return a reason string if ``event`` breaks ``limits``, else ``None``."""
    if isinstance(event, MediaEvent) and len(event.embedding) != limits.media_dim:
        return f"embedding has length {len(event.embedding)}, expected {limits.media_dim}"
    if isinstance(event, RecommendationRequest) and len(event.candidates) > limits.max_candidates:
        return f"{len(event.candidates)} candidates exceed limit {limits.max_candidates}"
    return None
