"""Writers of the log forms :mod:`reloop.ops.log_readers` reads: JSONL (plain, .gz, .zst) and
Parquet (flat interactions plus topic JSON), streaming (for tests, benches and conversions).
"""

from __future__ import annotations

import gzip
from typing import Any, Iterable

import msgspec

from reloop.ops.log_readers import FLAT_FIELDS, PARQUET_BATCH_ROWS
from reloop.streams.codec import encode
from reloop.streams.events import Interaction


def write_jsonl_compressed(events: Iterable[msgspec.Struct], path: str, level: int = 3) -> int:
    """Write events as JSON lines, compressed by suffix (.gz, .zst, else plain); returns the count."""
    with open(path, "wb") as raw:
        out: Any = raw
        if path.endswith(".gz"):
            out = gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=level)
        elif path.endswith((".zst", ".zstd")):
            import zstandard

            out = zstandard.ZstdCompressor(level=level).stream_writer(raw, closefd=False)
        n = 0
        buf: list[bytes] = []
        for ev in events:
            buf.append(encode(ev))
            n += 1
            if len(buf) >= 8192:
                out.write(b"\n".join(buf) + b"\n")
                buf.clear()
        if buf:
            out.write(b"\n".join(buf) + b"\n")
        if out is not raw:
            out.close()
    return n


def write_parquet(events: Iterable[msgspec.Struct], path: str, row_group_rows: int = PARQUET_BATCH_ROWS) -> int:
    """Write events as Parquet in the flat form :func:`iter_events` reads; returns the count.

    Interactions become flat rows (their features as columns, typed by the first row group:
    strings, or float64 for numbers); any other event, or an interaction whose features do
    not fit those columns, goes whole as topic JSON in the ``json`` column.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

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
