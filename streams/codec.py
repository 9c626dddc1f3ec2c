"""Encode and decode events (JSON on the wire, via msgspec).

Decoders are built once per type and reused: msgspec validates while it parses, so one pass
turns bytes into a checked event or raises :class:`InvalidEvent` with a readable reason.
"""

from __future__ import annotations

import base64
import hashlib
import time
from typing import Any, TypeVar

import msgspec

from reloop.streams.events import DEAD_LETTER_MAX_ORIGINAL, DeadLetter, Event, MediaEvent, RecommendationRequest
from reloop.streams.validation import Limits, check_limits

E = TypeVar("E")

_encoder = msgspec.json.Encoder()
_any_decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(Event)
_typed_decoders: dict[type, msgspec.json.Decoder[Any]] = {}


class InvalidEvent(ValueError):
    """Raised when bytes are not a valid event; ``str(exc)`` is the dead-letter reason."""


def encode(event: msgspec.Struct) -> bytes:
    """Serialise an event to JSON bytes (including its ``type`` tag)."""
    return _encoder.encode(event)


def _decoder_for(kind: type[E]) -> msgspec.json.Decoder[E]:
    dec = _typed_decoders.get(kind)
    if dec is None:
        dec = _typed_decoders[kind] = msgspec.json.Decoder(kind)
    return dec


def decode_event(raw: bytes, kind: type[E] | None = None, limits: Limits | None = None) -> E:
    """Decode and validate one event.

    Args:
        raw: the message value.
        kind: expected event class; ``None`` accepts any event type.
        limits: deployment limits (payload bytes, embedding length, candidates);
            ``None`` checks only the static schema.

    Raises:
        InvalidEvent: with a one-line reason suitable for a dead letter. Every exception the
            decoder or a validator raises becomes one (poison-pill rule, docs/guarantees.md):
            e.g. ``RecursionError`` from a deeply nested value, ``MemoryError`` from an
            amplifying one. Only ``KeyboardInterrupt``/``SystemExit`` pass through.
    """
    if limits is not None and len(raw) > limits.max_event_bytes:
        raise InvalidEvent(f"payload of {len(raw)} bytes exceeds limit {limits.max_event_bytes}")
    try:
        event = (_decoder_for(kind) if kind is not None else _any_decoder).decode(raw)
        problem = check_limits(event, limits) if limits is not None else None
    except Exception as exc:  # noqa: BLE001 - any failure on one input is that input's fault
        raise InvalidEvent(f"{type(exc).__name__}: {str(exc)[:500]}") from None
    if problem:
        raise InvalidEvent(problem)
    return event


def decode_batch(
    raws: list[bytes], kind: type[E], limits: Limits | None = None
) -> tuple[list[E], list[tuple[int, str]]]:
    """Decode many values; returns (valid events, [(index, reason)] of the invalid ones)."""
    good: list[E] = []
    bad: list[tuple[int, str]] = []
    for i, raw in enumerate(raws):
        try:
            good.append(decode_event(raw, kind, limits))
        except InvalidEvent as exc:
            bad.append((i, str(exc)))
    return good, bad


def dead_letter(
    raw: bytes | None,
    reason: str,
    *,
    topic: str,
    partition: int = -1,
    offset: int = -1,
    key: bytes | None = None,
    now: float | None = None,
) -> DeadLetter:
    """Wrap undecodable input in a :class:`DeadLetter` (original bytes base64-encoded, cut to
    :data:`~reloop.streams.events.DEAD_LETTER_MAX_ORIGINAL` bytes with its size and sha256 recorded).

    >>> d = dead_letter(b"x" * 600_000, "too big", topic="requests")
    >>> d.truncated, d.original_size, len(original_bytes(d))
    (True, 600000, 524288)
    """
    raw = raw or b""
    kept = raw[:DEAD_LETTER_MAX_ORIGINAL]
    return DeadLetter(
        source_topic=topic,
        partition=partition,
        offset=offset,
        error=reason[:2000],
        original=base64.b64encode(kept).decode("ascii"),
        key=key[:1024].decode("utf-8", "replace") if key is not None else None,
        ts=time.time() if now is None else now,
        original_size=len(raw),
        original_sha256=hashlib.sha256(raw).hexdigest(),
        truncated=len(kept) < len(raw),
    )


def original_bytes(letter: DeadLetter) -> bytes:
    """The raw value a dead letter carries."""
    return base64.b64decode(letter.original)


__all__ = [
    "InvalidEvent",
    "encode",
    "decode_event",
    "decode_batch",
    "dead_letter",
    "original_bytes",
    "MediaEvent",
    "RecommendationRequest",
]
