"""Parquet logs: read by record batches with a columnar fast path, and written in the same form.

Form (see :mod:`reloop.ops.log_readers`): a row whose ``json`` column is set is that event's
topic JSON; any other row is a labelled interaction in flat form, columns ``user_id``,
``item_id``, ``ts``, ``label`` and optionally ``kind``, ``request_id``, ``value``,
``schema_version``, ``type`` (``interaction``); every other non-null column is a feature
(strings stay categorical, numbers become dense floats, booleans ``"true"``/``"false"``).

Fast path: the schema's checks (id lengths, ``ts`` range, label, kind, finite numbers, feature
sizes, ``limits.max_future_s``) run on whole columns (``pyarrow.compute``) and the rows that
pass become :class:`~reloop.streams.events.Interaction` directly. A row that fails any check is
decoded one by one through the JSON path, so its reason is exactly the JSONL reader's.
"""

from __future__ import annotations

import os
import time
from typing import Any, Iterable, Iterator

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from reloop.ops.log_readers import FLAT_FIELDS, PARQUET_BATCH_ROWS, PARQUET_ROW_GROUP_ROWS, LogStats, decode_line, encode_obj
from reloop.streams.codec import InvalidEvent, encode
from reloop.streams.events import Event, Interaction
from reloop.streams.validation import Limits

_SPECIAL = set(FLAT_FIELDS) | {"json", "type", "schema_version"}
_KINDS = pa.array(["impression", "click", "rating", "dwell"])


def _flat_interaction(row: dict[str, Any]) -> dict[str, Any]:
    """A flat row as the labelled interaction JSON object (extra columns as features)."""
    obj: dict[str, Any] = {"type": "interaction"}
    feats: dict[str, Any] = {}
    for k, v in row.items():
        if v is None or k == "json":
            continue
        if k in FLAT_FIELDS or k == "schema_version":
            obj[k] = v
        elif k == "type":
            if v != "interaction":
                raise InvalidEvent(f"flat row of type {v!r}: only interactions have a flat form")
        else:
            feats[k] = str(v).lower() if isinstance(v, bool) else v
    if feats:
        obj["features"] = feats
    return obj


def _ok_ids(col: pa.Array, nullable: bool) -> pa.Array:
    if not pa.types.is_string(col.type) and not pa.types.is_large_string(col.type):
        return pa.array(np.zeros(len(col), bool)) if not nullable else pc.is_null(col)
    n = pc.utf8_length(col)
    ok = pc.and_(pc.greater_equal(n, 1), pc.less_equal(n, 256))
    return pc.fill_null(ok, nullable)


def _fast_mask(b: pa.RecordBatch, feats: list[str], limits: Limits, now: float) -> np.ndarray:
    """``(rows,) bool``: rows valid as flat interactions by column checks (module doc)."""
    n = b.num_rows
    names = b.schema.names
    if any(f not in names for f in ("user_id", "item_id", "ts", "label")) or len(feats) > 64 \
            or any(not 1 <= len(f) <= 64 for f in feats):
        return np.zeros(n, bool)
    col = b.column
    ok = pc.and_(_ok_ids(col("user_id"), False), _ok_ids(col("item_id"), False))
    ts, label = col("ts"), col("label")
    if not (pa.types.is_floating(ts.type) or pa.types.is_integer(ts.type)) or not pa.types.is_integer(label.type):
        return np.zeros(n, bool)
    hi = 1e11 if not limits.max_future_s else min(1e11, now + limits.max_future_s)
    ts = pc.cast(ts, pa.float64())
    ok = pc.and_(ok, pc.fill_null(pc.and_(pc.greater_equal(ts, 0.0), pc.less_equal(ts, hi)), False))
    ok = pc.and_(ok, pc.fill_null(pc.is_in(label, pa.array([0, 1], label.type)), False))
    for name, check in (("json", pc.is_null), ("request_id", lambda c: _ok_ids(c, True)),
                        ("kind", lambda c: pc.fill_null(pc.is_in(c, _KINDS), True)),
                        ("type", lambda c: pc.fill_null(pc.equal(c, "interaction"), True)),
                        ("schema_version", lambda c: pc.fill_null(pc.equal(c, 1), True)),
                        ("value", lambda c: pc.fill_null(pc.is_finite(c), True))):
        if name in names:
            try:
                ok = pc.and_(ok, check(col(name)))
            except (pa.ArrowNotImplementedError, pa.ArrowInvalid, TypeError):
                return np.zeros(n, bool)
    for f in feats:
        c = col(f)
        if pa.types.is_string(c.type):
            ok = pc.and_(ok, pc.fill_null(pc.less_equal(pc.utf8_length(c), 256), True))
        elif pa.types.is_floating(c.type):
            ok = pc.and_(ok, pc.fill_null(pc.is_finite(c), True))
        elif not (pa.types.is_integer(c.type) or pa.types.is_boolean(c.type)):
            ok = pc.and_(ok, pc.is_null(c))  # other types: the slow path decides
    return ok.to_numpy(zero_copy_only=False)


def _feature_values(c: pa.Array) -> list[Any]:
    if pa.types.is_integer(c.type):
        return pc.cast(c, pa.float64()).to_pylist()
    if pa.types.is_boolean(c.type):
        return [None if v is None else str(v).lower() for v in c.to_pylist()]
    return c.to_pylist()


def _batch_events(b: pa.RecordBatch, limits: Limits, now: float) -> Iterator[Event | str]:
    """Each row's event, or the reason it is invalid (a ``str``)."""
    names = b.schema.names
    feats = [f for f in names if f not in _SPECIAL]
    mask = _fast_mask(b, feats, limits, now)
    n = b.num_rows
    frows: Iterable[tuple] = ((),) * n
    if mask.any():
        none = [None] * n
        u, i = b.column("user_id").to_pylist(), b.column("item_id").to_pylist()
        ts = pc.cast(b.column("ts"), pa.float64()).to_pylist()
        lab = b.column("label").to_pylist()
        kind, rid, val = ((b.column(c).to_pylist() if c in names else none) for c in ("kind", "request_id", "value"))
        fv = [_feature_values(b.column(f)) for f in feats]
        if fv:
            frows = zip(*fv)
    rows = None
    for r, (good, fr) in enumerate(zip(mask.tolist(), frows)):
        if good:
            try:
                yield Interaction(user_id=u[r], item_id=i[r], ts=ts[r], label=lab[r], kind=kind[r] or "click",
                                  request_id=rid[r], value=None if val[r] is None else float(val[r]),
                                  features={k: v for k, v in zip(feats, fr) if v is not None})
                continue
            except (ValueError, TypeError):
                pass  # e.g. a non-finite value __post_init__ refused: the slow path names it
        if rows is None:
            rows = b.to_pylist()
        rec = rows[r]
        try:
            raw = rec.get("json")
            if raw is not None:
                yield decode_line(raw.encode() if isinstance(raw, str) else raw, limits, now)
            else:
                yield decode_line(encode_obj(_flat_interaction(rec)), limits, now)
        except InvalidEvent as exc:
            yield str(exc)


def parquet_records(path: str, limits: Limits, stats: LogStats) -> Iterator[tuple[int, Event]]:
    """``(row number, event)`` of a Parquet file, read one row group at a time (memory: one row
    group's Arrow data) and decoded :data:`~reloop.ops.log_readers.PARQUET_BATCH_ROWS` rows at
    a time. ``stats.bytes_read`` advances by the file size times the fraction of rows read."""
    base = stats.bytes_read
    size = os.path.getsize(path)
    pf = pq.ParquetFile(path)
    total = max(1, pf.metadata.num_rows)
    row = 0
    for group in range(pf.metadata.num_row_groups):  # not iter_batches: its buffers grow with the file
        for batch in pf.read_row_group(group).to_batches(PARQUET_BATCH_ROWS):
            for out in _batch_events(batch, limits, time.time()):
                row += 1
                stats.lines += 1
                if out.__class__ is str:
                    stats.add_invalid(path, row, out)  # type: ignore[arg-type]
                    continue
                stats.events += 1
                yield row, out  # type: ignore[misc]
        stats.bytes_read = base + size * row // total


def write_parquet(events: Iterable[msgspec.Struct], path: str, row_group_rows: int = PARQUET_ROW_GROUP_ROWS) -> int:
    """Write events as Parquet in the flat form :func:`iter_events` reads; returns the count.

    Interactions become flat rows (their features as columns, typed by the first row group:
    strings, or float64 for numbers); any other event, or an interaction whose features do
    not fit those columns, goes whole as topic JSON in the ``json`` column.
    """
    writer = None
    feats: dict[str, Any] = {}
    rows: list[Any] = []
    n = 0

    def flush() -> None:
        nonlocal writer, feats
        if writer is None:
            for ev in rows:
                if isinstance(ev, Interaction):
                    for k, v in ev.features.items():
                        feats.setdefault(k, pa.string() if isinstance(v, str) else pa.float64())
            feats = {k: t for k, t in feats.items() if k not in FLAT_FIELDS and k not in ("json", "type")}
            schema = pa.schema([("user_id", pa.string()), ("item_id", pa.string()), ("ts", pa.float64()),
                                ("label", pa.int8()), ("kind", pa.string()), ("request_id", pa.string()),
                                ("value", pa.float64()), *feats.items(), ("json", pa.binary())])
            writer = pq.ParquetWriter(path, schema, compression="zstd")
        cols: dict[str, list[Any]] = {name: [] for name in writer.schema.names}
        for ev in rows:
            fits = isinstance(ev, Interaction) and all(
                k in feats and isinstance(v, str) == (feats[k] == pa.string()) for k, v in ev.features.items())
            for name in FLAT_FIELDS:
                cols[name].append(getattr(ev, name) if fits else None)
            for k in feats:
                cols[k].append(ev.features.get(k) if fits else None)  # type: ignore[union-attr]
            cols["json"].append(None if fits else encode(ev))
        writer.write_table(pa.table(cols, schema=writer.schema))
        rows.clear()

    try:
        for ev in events:
            rows.append(ev)
            n += 1
            if len(rows) >= row_group_rows:
                flush()
        if rows or writer is None:
            flush()
    finally:
        if writer is not None:
            writer.close()
    return n
