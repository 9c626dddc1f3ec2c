"""Generate JSON Schema files for every event type (``python -m reloop.streams.schemas docs/schemas``).

The files are derived from the msgspec classes in :mod:`reloop.streams.events`, so the wire contract
in docs/ can never drift from the code (a test regenerates and compares them).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import msgspec

from reloop.streams.events import ALL_EVENT_TYPES


def event_schemas() -> dict[str, dict]:
    """``{type tag: JSON Schema}`` for every event type."""
    out: dict[str, dict] = {}
    for kind in ALL_EVENT_TYPES:
        schema = msgspec.json.schema(kind)
        out[kind.__struct_config__.tag] = schema
    return out


def write_schemas(folder: str | Path) -> list[Path]:
    """Write ``<tag>.schema.json`` files into ``folder``; returns their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for tag, schema in event_schemas().items():
        path = folder / f"{tag}.schema.json"
        path.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")
        paths.append(path)
    return paths


if __name__ == "__main__":
    for p in write_schemas(sys.argv[1] if len(sys.argv) > 1 else "docs/schemas"):
        print(p)
