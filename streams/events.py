"""Typed events carried on ReLoop's topics.

Every event is a ``msgspec.Struct`` tagged by a ``type`` field, so one decoder can read any
event and a JSONL log can mix kinds. Wire format is JSON. Static checks (types, required
fields, ranges, string and list sizes) are expressed as ``msgspec.Meta`` constraints and run
while decoding; checks that depend on deployment limits (embedding length, candidate count,
payload bytes) live in :mod:`reloop.streams.validation`.

Feature dictionaries map a feature name to a categorical value (``str``) or a dense value
(finite ``float``). Event time ``ts`` is unix seconds (float).

>>> from reloop.streams.codec import encode, decode_event
>>> ev = Interaction(user_id="u1", item_id="i9", ts=10.0, label=1)
>>> decode_event(encode(ev)) == ev
True
"""

from __future__ import annotations

import math
from typing import Annotated, Literal, Union

import msgspec
import numpy as np

#: Wire schema version written by this code. Decoders accept versions <= this.
SCHEMA_VERSION = 1
#: Error records' own version: 2 since 2026-12-07 (``ts`` is the prediction's time for every
#: label, the label's time moved to ``label_ts``); version 1 records are still read.
ERROR_SCHEMA_VERSION = 2

Id = Annotated[str, msgspec.Meta(min_length=1, max_length=256, description="opaque identifier")]
Ts = Annotated[float, msgspec.Meta(ge=0.0, le=1e11, description="event time, unix seconds")]
Prob = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
Label = Annotated[int, msgspec.Meta(ge=0, le=1)]
FeatureName = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
FeatureValue = Union[Annotated[str, msgspec.Meta(max_length=256)], float]
Features = Annotated[dict[FeatureName, FeatureValue], msgspec.Meta(max_length=64)]
Version = Annotated[int, msgspec.Meta(ge=1, le=SCHEMA_VERSION, description="event schema version")]
#: Features of a derived record (error record, training sample): a request's features, a
#: candidate's and the media-memory features the worker merges in (``MEDIA_FEATURES_MAX``).
MEDIA_FEATURES_MAX = 32
DerivedFeatures = Annotated[dict[FeatureName, FeatureValue], msgspec.Meta(max_length=2 * 64 + MEDIA_FEATURES_MAX)]
#: ``error_id_for`` of two ids: ``len(request_id)`` (<= 3 digits), two separators, two ids.
ErrorId = Annotated[str, msgspec.Meta(min_length=1, max_length=3 + 2 + 2 * 256)]
Modality = Literal["video", "audio"]
InteractionKind = Literal["impression", "click", "rating", "dwell"]


#: Most bytes of an input kept in its dead letter: base64 (4/3) plus the envelope stays under
#: Kafka's default ``message.max.bytes`` (1,048,588) for any input.
DEAD_LETTER_MAX_ORIGINAL = 512 * 1024

#: Wire form of error-memory codes: one little-endian uint32 per hash table.
CODE_DTYPE = np.dtype("<u4")


def pack_codes(codes: bytes | np.ndarray | tuple[int, ...] | list[int]) -> bytes:
    """Codes in their wire form (:data:`CODE_DTYPE` bytes); bytes pass through unchanged.

    Raises:
        ValueError: a code outside ``[0, 2**32)``.

    >>> rec = ErrorRecord(error_id="r1:i1", user_id="u", item_id="i1", ts=1.0, label=1,
    ...                   base_pred=0.5, comp_pred=0.5, model_version="v", codes=pack_codes([3, 70000]))
    >>> rec.code_array().tolist(), rec.n_codes
    ([3, 70000], 2)
    """
    if codes.__class__ is bytes:
        return codes  # type: ignore[return-value]
    arr = np.asarray(codes, dtype=np.int64).ravel()
    if arr.size and (arr.min() < 0 or arr.max() > 0xFFFFFFFF):
        raise ValueError("codes must lie in [0, 2**32)")
    return arr.astype(CODE_DTYPE).tobytes()


def error_id_for(request_id: str, item_id: str) -> str:
    """The error id of (request, item): length-prefixed, so no two pairs share one.

    >>> error_id_for("col:x", "y"), error_id_for("col", "x:y")
    ('5:col:x:y', '3:col:x:y')
    """
    return f"{len(request_id)}:{request_id}:{item_id}"


def _finite_features(features: dict[str, str | float]) -> bool:
    """Whether every float value of ``features`` is finite (``x - x`` is 0 for a finite
    float, NaN for an infinite or NaN one): the per-event check, without a call per value."""
    for value in features.values():
        if isinstance(value, float) and value - value != 0.0:
            return False
    return True


def _check_features(features: dict[str, str | float], where: str) -> None:
    if not features or _finite_features(features):
        return
    for name, value in features.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{where}[{name!r}] must be finite, got {value}")


class _Event(msgspec.Struct, tag_field="type", kw_only=True, omit_defaults=False, gc=False):
    """Base of all events: a ``type`` tag and a ``schema_version``."""

    schema_version: Version = SCHEMA_VERSION


class Candidate(msgspec.Struct, kw_only=True, gc=False):
    """One item offered for ranking, with its item-side features."""

    item_id: Id
    features: Features = {}


class RecommendationRequest(_Event, tag="request"):
    """A request to rank ``candidates`` for ``user_id`` (key: user_id)."""

    request_id: Id
    user_id: Id
    ts: Ts
    candidates: Annotated[list[Candidate], msgspec.Meta(min_length=1, max_length=4096)]
    features: Features = {}

    def __post_init__(self) -> None:
        _check_features(self.features, "features")
        for c in self.candidates:
            if c.features and not _finite_features(c.features):  # the message only when it fails
                _check_features(c.features, f"candidates[{c.item_id!r}].features")


class ScoredItem(msgspec.Struct, kw_only=True, gc=False):
    """A ranked item: slow-model score, compensated score and the memory evidence used.

    ``evidence`` is the error-memory support behind the correction (mean decayed bucket
    count over the K hash tables; 0 when the memory had nothing to say).
    """

    item_id: Id
    base_score: Prob
    score: Prob
    evidence: float = 0.0
    schemas: list[str] = []


class Recommendation(_Event, tag="recommendation"):
    """Ranked response to a request (key: user_id), highest ``score`` first."""

    request_id: Id
    user_id: Id
    ts: Ts
    model_version: str
    items: list[ScoredItem]


class Interaction(_Event, tag="interaction"):
    """Labelled feedback on an item (key: user_id).

    ``request_id`` links it to the recommendation that showed the item; an interaction
    without one (e.g. a replayed log line) is scored as a one-candidate request.
    ``value`` is the rating (``kind="rating"``) or dwell seconds (``kind="dwell"``).
    """

    user_id: Id
    item_id: Id
    ts: Ts
    label: Label
    kind: InteractionKind = "click"
    request_id: Id | None = None
    value: float | None = None
    features: Features = {}

    def __post_init__(self) -> None:
        _check_features(self.features, "features")
        if self.value is not None and not math.isfinite(self.value):
            raise ValueError(f"value must be finite, got {self.value}")


class MediaEvent(_Event, tag="media"):
    """A perception segment from an upstream encoder (key: user_id).

    ``embedding`` is the segment embedding, length fixed per deployment
    (``limits.media_dim``); ``item_id`` names the content being watched or heard.
    """

    user_id: Id
    ts: Ts
    modality: Modality
    segment_id: Id
    embedding: Annotated[list[float], msgspec.Meta(min_length=1, max_length=4096)]
    item_id: Id | None = None

    def __post_init__(self) -> None:
        if not all(math.isfinite(x) for x in self.embedding):
            raise ValueError("embedding values must be finite")


class ErrorRecord(_Event, tag="error", kw_only=True):
    """A scored-and-labelled sample, written to ``errors`` and applied by every replica.

    ``ts`` is the prediction's event time (the request's ``ts``), for positives and negatives
    alike: one clock per resolved prediction (docs/guarantees.md). ``label_ts`` is when the
    label became final: the click's time for a positive, the attribution window's end for a
    negative (``None`` in version 1 records, whose ``ts`` was that time).

    ``codes`` are the error-memory bucket indices of the sample (one per hash table, empty
    when no error memory is configured), packed as little-endian uint32 (base64 in JSON:
    decoding 64 JSON integers cost ~2 us per record, the packed form ~0.2 us); a list of
    ints (the form before 2026-11-29) is still read. Use :meth:`code_array`. ``error_id`` is
    unique per (request, item) (:func:`error_id_for`, length-prefixed since version 2) so a
    replica can tell a redelivery from a new record. Its limits follow from the inputs': a
    request's, a candidate's and the media-memory features (:data:`DerivedFeatures`).
    """

    schema_version: Annotated[int, msgspec.Meta(ge=1, le=ERROR_SCHEMA_VERSION,
                                                description="event schema version")] = ERROR_SCHEMA_VERSION
    error_id: ErrorId
    user_id: Id
    item_id: Id
    ts: Ts
    label: Label
    base_pred: Prob
    comp_pred: Prob
    model_version: str
    codes: bytes | list[int] = b""
    features: DerivedFeatures = {}
    label_ts: Ts | None = None

    def __post_init__(self) -> None:
        if self.codes.__class__ is bytes and len(self.codes) % 4:
            raise ValueError(f"codes: {len(self.codes)} packed bytes is not a whole number of uint32")

    def code_list(self) -> list[int]:
        """The codes as Python ints (either wire form; a list is returned as is, unchecked)."""
        if self.codes.__class__ is bytes:
            return np.frombuffer(self.codes, CODE_DTYPE).tolist()
        return self.codes  # type: ignore[return-value]

    def code_array(self) -> np.ndarray:
        """``(K,) int64`` codes (either wire form)."""
        if self.codes.__class__ is bytes:
            return np.frombuffer(self.codes, CODE_DTYPE).astype(np.int64)
        return np.array(self.codes, dtype=np.int64)

    @property
    def n_codes(self) -> int:
        """``K``, the number of codes (either wire form)."""
        return len(self.codes) // 4 if self.codes.__class__ is bytes else len(self.codes)


class ModelAnnouncement(_Event, tag="model"):
    """A model version ready to serve (key: "current", compacted topic)."""

    version: str
    path: str
    sha256: Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{64}$")]
    created_ts: float
    metrics: dict[str, float] = {}


class DeadLetter(_Event, tag="dead_letter"):
    """An input that could not be processed, with where it came from and why.

    ``original`` is the raw value, base64-encoded so any bytes survive JSON. A dead letter
    must fit the broker's largest message (Kafka's default is 1 MB), so an original longer
    than :data:`DEAD_LETTER_MAX_ORIGINAL` bytes keeps only its first that many bytes
    (``truncated``); ``original_size`` and ``original_sha256`` describe the whole value either way.
    """

    source_topic: str
    partition: int
    offset: int
    error: str
    original: str
    key: str | None = None
    ts: float = 0.0
    original_size: int | None = None
    original_sha256: str | None = None
    truncated: bool = False


Event = Union[
    RecommendationRequest,
    Recommendation,
    Interaction,
    MediaEvent,
    ErrorRecord,
    ModelAnnouncement,
    DeadLetter,
]

ALL_EVENT_TYPES: tuple[type[_Event], ...] = (
    RecommendationRequest,
    Recommendation,
    Interaction,
    MediaEvent,
    ErrorRecord,
    ModelAnnouncement,
    DeadLetter,
)
