"""SchemaCore: error records -> error-schema cache -> ``schemas`` updates and ``alerts``.

Pure, synchronous and batch-first like every core: no Kafka, no clocks (event time comes
from the records). The cache (:class:`reloop.state.schemas.cache.SchemaCache`) decides at event-time
ticks, so the output does not depend on how the ``errors`` stream is cut into batches.

Messages (msgspec Structs with a ``type`` tag and ``schema_version``, like
:mod:`reloop.streams.events`; defined here until they move to ``streams/events.py``):

- :class:`SchemaUpdate` -- one per cache change (``promoted``, ``updated``, ``resolved``),
  for the compacted ``schemas`` topic, key ``schema_id``: the latest value per key is the
  schema's current state;
- :class:`SchemaAlert` -- ``new`` when a schema is promoted, ``resolved`` when it goes, for
  the ``alerts`` topic, key ``schema_id``, with a human-readable ``description``.

Redelivered records are counted twice: the shell must skip offsets it already applied (as
the error-memory replica does) and snapshot the core with the offsets it includes.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from typing import Literal

import msgspec
import numpy as np

from reloop.state.schemas.cache import Schema, SchemaCache, SchemaCacheConfig, SchemaChange
from reloop.streams.events import ErrorRecord, _Event

__all__ = ["SchemaAlert", "SchemaCore", "SchemaUpdate", "describe", "format_table", "latest", "topic_key"]


class SchemaUpdate(_Event, tag="schema_update"):
    """A change of one schema (topic ``schemas``, compacted, key ``schema_id``).

    ``change`` is what happened at event time ``ts`` (s); the other fields are the schema
    after it (see :class:`reloop.state.schemas.cache.Schema` for their meaning and units).
    """

    schema_id: str
    ts: float
    change: Literal["promoted", "updated", "resolved"]
    state: Literal["active", "resolved"]
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
    reason: str = ""


class SchemaAlert(_Event, tag="schema_alert"):
    """A new recurring failure or the end of one (topic ``alerts``, key ``schema_id``).

    ``alert_id`` (``schema_id:kind:ts``) is unique per alert, so a consumer can drop
    redeliveries; ``since`` is when the schema was promoted (event time, s).
    """

    alert_id: str
    schema_id: str
    ts: float
    kind: Literal["new", "resolved"]
    signature: list[str]
    direction: Literal["over", "under"]
    mean_error: float
    calibration_gap: float
    support: float
    z: float
    impact: float
    since: float
    description: str
    reason: str = ""


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, tz=dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def describe(schema: Schema, kind: Literal["new", "resolved"], ts: float) -> str:
    """One line for humans, e.g. ``over-predicting by 0.21 on genre=horror & device=tv
    (observed 0.01 vs predicted 0.22; support 812, z=-9.3) since 2023-11-14T22:13:20Z``."""
    verb = "over-predicting" if schema.direction == "over" else "under-predicting"
    where = " & ".join(schema.signature)
    if kind == "new":
        return (f"{verb} by {abs(schema.mean_error):.2f} on {where} (observed {schema.observed_rate:.3f} vs "
                f"predicted {schema.predicted_rate:.3f}; support {schema.support:.0f}, z={schema.z:.1f}) "
                f"since {_iso(schema.first_seen)}")
    return (f"resolved: no longer {verb} on {where} ({schema.reason or 'resolved'}; active from "
            f"{_iso(schema.first_seen)} for {ts - schema.first_seen:.0f} s)")


def _update(change: SchemaChange) -> SchemaUpdate:
    fields = msgspec.structs.asdict(change.schema)
    return SchemaUpdate(ts=change.ts, change=change.kind, **fields)


def _alert(change: SchemaChange) -> SchemaAlert:
    s = change.schema
    kind: Literal["new", "resolved"] = "new" if change.kind == "promoted" else "resolved"
    return SchemaAlert(alert_id=f"{s.schema_id}:{kind}:{change.ts:.6f}", schema_id=s.schema_id, ts=change.ts,
                       kind=kind, signature=s.signature, direction=s.direction, mean_error=s.mean_error,
                       calibration_gap=s.calibration_gap, support=s.support, z=s.z, impact=s.impact, since=s.first_seen,
                       description=describe(s, kind, change.ts), reason=s.reason)


def topic_key(message: SchemaUpdate | SchemaAlert) -> bytes:
    """Kafka key of a message on ``schemas`` or ``alerts``: the schema id."""
    return message.schema_id.encode("utf-8")


class SchemaCore:
    """Feeds error records to a :class:`SchemaCache` and turns its changes into messages.

    Args:
        config: cache configuration (defaults if None); ignored when ``cache`` is given.
        cache: an existing cache (e.g. restored from a snapshot).
    """

    def __init__(self, config: SchemaCacheConfig | None = None, *, cache: SchemaCache | None = None) -> None:
        self.cache = cache if cache is not None else SchemaCache(config)
        self.records_in = 0

    def on_batch(self, records: Sequence[ErrorRecord]) -> tuple[list[SchemaUpdate], list[SchemaAlert]]:
        """Apply a batch of error records; returns the schema updates and alerts it caused."""
        self.records_in += len(records)
        return self._messages(self.cache.on_batch(records))

    def advance(self, watermark: float) -> tuple[list[SchemaUpdate], list[SchemaAlert]]:
        """Move event time to ``watermark`` (s) with no records (idle stream): may resolve."""
        return self._messages(self.cache.advance(watermark))

    @staticmethod
    def _messages(changes: Iterable[SchemaChange]) -> tuple[list[SchemaUpdate], list[SchemaAlert]]:
        updates, alerts = [], []
        for change in changes:
            updates.append(_update(change))
            if change.kind != "updated":
                alerts.append(_alert(change))
        return updates, alerts

    def schemas(self, include_resolved: bool = False) -> list[Schema]:
        """The cache's schemata (active by decreasing impact, then recently resolved)."""
        return self.cache.schemas(include_resolved)

    def snapshot(self) -> dict[str, np.ndarray]:
        """The cache snapshot plus this core's counter (plain arrays; no pickle)."""
        return {**self.cache.snapshot(), "core_records_in": np.array(self.records_in, np.int64)}

    @classmethod
    def restore(cls, snap: dict[str, np.ndarray]) -> SchemaCore:
        """Inverse of :meth:`snapshot`."""
        core = cls(cache=SchemaCache.restore(snap))
        core.records_in = int(snap.get("core_records_in", 0))
        return core

    def restored(self, snap: dict[str, np.ndarray]) -> SchemaCore:
        """The core of ``snap`` in this one's place (:meth:`restore`; a core run in a child
        process, :class:`~reloop.processors.schema_child.SchemaCoreChild`, restores its child)."""
        return SchemaCore.restore(snap)

    def fresh(self) -> SchemaCore:
        """An empty core with this one's configuration, in its place."""
        return SchemaCore(self.cache.config)

    def start(self) -> None:
        """Nothing to start in process (a child process's core starts its child)."""

    def close(self) -> None:
        """Nothing to release in process (a child process's core ends its child)."""


def latest(updates: Iterable[SchemaUpdate]) -> dict[str, SchemaUpdate]:
    """The compacted view of a ``schemas`` stream: the last update per schema id."""
    out: dict[str, SchemaUpdate] = {}
    for u in updates:
        out[u.schema_id] = u
    return out


def format_table(rows: Sequence[SchemaUpdate | Schema], *, include_resolved: bool = False) -> str:
    """A plain-text table of schemata (active first, by decreasing impact), for ``reloop schemas``."""
    keep = [r for r in rows if include_resolved or r.state == "active"]
    keep.sort(key=lambda r: (r.state != "active", -r.impact))
    lines = [f"{'schema_id':16}  {'state':8}  {'dir':5}  {'mean_err':>8}  {'gap':>7}  {'support':>8}  "
             f"{'z':>6}  {'since':20}  signature"]
    for r in keep:
        lines.append(f"{r.schema_id:16}  {r.state:8}  {r.direction:5}  {r.mean_error:+8.3f}  "
                     f"{r.calibration_gap:+7.3f}  {r.support:8.0f}  {r.z:+6.1f}  {_iso(r.first_seen):20}  "
                     f"{' & '.join(r.signature)}")
    return "\n".join(lines)


class PublishedSchemas:
    """The schemata a worker that does not distil matches against: the latest value per
    ``schema_id`` on the ``schemas`` topic (published by the one elected worker).

    Duck-types the part of :class:`SchemaCore` that scoring reads (``.cache.matcher`` and
    ``.cache.config``, ``schemas()``); the matcher is rebuilt when an update arrives, over
    the active schemata by decreasing impact, as the distilling cache builds it.

    >>> p = PublishedSchemas(SchemaCacheConfig())
    >>> len(p.cache.matcher), p.schemas()
    (0, [])
    """

    def __init__(self, config: SchemaCacheConfig) -> None:
        from reloop.state.schemas.match import SchemaMatcher

        self.config = config
        self.latest: dict[str, SchemaUpdate] = {}
        self.updates_in = 0
        self._matcher_cls = SchemaMatcher
        self.matcher = SchemaMatcher([], config.bias_prior, config.max_logit_bias)

    @property
    def cache(self) -> PublishedSchemas:
        return self

    def apply(self, updates: Iterable[SchemaUpdate]) -> int:
        """Take ``updates`` in topic order (the last value per id wins, as compaction keeps);
        returns how many there were."""
        n = 0
        for u in updates:
            self.latest[u.schema_id] = u
            n += 1
        if n:
            self.updates_in += n
            self.matcher = self._matcher_cls(self.schemas(), self.config.bias_prior, self.config.max_logit_bias)
        return n

    def schemas(self, include_resolved: bool = False) -> list[Schema]:
        """Active schemata by decreasing impact (then resolved ones, newest first)."""
        fields = Schema.__struct_fields__
        every = [Schema(**{f: getattr(u, f) for f in fields}) for u in self.latest.values()]
        active = sorted((s for s in every if s.state == "active"), key=lambda s: (-s.impact, s.schema_id))
        resolved = sorted((s for s in every if s.state != "active"), key=lambda s: -s.last_seen)
        return active + (resolved if include_resolved else [])
