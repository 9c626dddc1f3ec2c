"""Error schemata as values: :class:`Schema`, :class:`SchemaChange` and stable schema ids."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Literal

import msgspec

__all__ = ["Schema", "SchemaChange", "schema_id_of"]


class Schema(msgspec.Struct, frozen=True, kw_only=True):
    """One error schema (immutable; every change is a new object).

    Attributes:
        schema_id: 16 hex chars of blake2b of the signature (stable across runs/replicas).
        signature: sorted predicates ``name=value``, one or two.
        direction: ``over`` (the model predicts too high here) or ``under``.
        mean_error: decayed mean of ``y - p`` in the slice (probability units).
        calibration_gap: ``mean_error`` minus the mean error of comparable traffic (a
            single: the other values of its column; a pair: the rest of a parent).
        observed_rate / predicted_rate: decayed means of ``y`` and ``p`` in the slice.
        support: decayed number of error records in the slice.
        z: Welch z of the gap (single: against its column's other values; pair: the weaker
            of the tests against each parent's rest).
        impact: ``|calibration_gap| * support``, the decayed number of excess errors; the
            ranking of schemata (largest first).
        first_seen: event time (s) it was promoted; last_seen: time of its latest record;
        tracked_since: time from which its statistics are exact (candidate slot taken).
        model_versions: model versions seen among its recent records.
        example_error_ids: recent error ids in the slice that err in ``direction``.
        state: ``active`` or ``resolved``; reason: why it was resolved.
    """

    schema_id: str
    signature: list[str]
    direction: Literal["over", "under"]
    mean_error: float
    calibration_gap: float
    observed_rate: float
    predicted_rate: float
    support: float
    z: float
    impact: float
    first_seen: float
    last_seen: float
    tracked_since: float
    model_versions: list[str] = []
    example_error_ids: list[str] = []
    state: Literal["active", "resolved"] = "active"
    reason: str = ""


class SchemaChange(msgspec.Struct, frozen=True, kw_only=True):
    """A decision taken at evaluation tick ``ts`` (event time, s)."""

    kind: Literal["promoted", "updated", "resolved"]
    ts: float
    schema: Schema


def schema_id_of(signature: Sequence[str]) -> str:
    """Stable id of a signature: blake2b (8 bytes) of the sorted predicates joined by `` & ``."""
    text = " & ".join(sorted(signature)).encode("utf-8")
    return hashlib.blake2b(text, digest_size=8).hexdigest()
