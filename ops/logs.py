"""Readers of interaction logs for offline replay: ReLoop JSONL and MovieLens.

Both yield validated events in event-time order (stable for equal timestamps) and collect
the lines they had to skip with a reason, so a replay report can count them.

JSONL: one event per line, tagged by ``type`` (see docs/schemas/). Fields of an
``interaction`` beyond the schema are kept as features (strings stay categorical, finite
numbers become dense); a line that fails validation is skipped and reported.

MovieLens: a directory in RecBole atomic layout (``*.inter``, ``*.user``, ``*.item``, like
``../shared/data/ml-100k``) or a GroupLens ``u.data`` file (with ``u.user``/``u.item`` beside
it when present). Label = rating >= 4.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from reloop.streams.codec import InvalidEvent
from reloop.streams.validation import check_limits
from reloop.streams.events import Event, Interaction, MediaEvent
from reloop.streams.validation import Limits

_line_decoder = msgspec.json.Decoder()
_KNOWN_INTERACTION_FIELDS = set(Interaction.__struct_fields__) | {"type"}


@dataclass
class LoadedLog:
    """Events of a log in event-time order plus the lines that were skipped.

    Attributes:
        events: interactions and media events sorted by ``ts`` (stable).
        invalid: ``(line number, reason)`` of each skipped line (1-based).
        source: path it was read from.
    """

    events: list[Event]
    invalid: list[tuple[int, str]] = field(default_factory=list)
    source: str = ""

    @property
    def interactions(self) -> list[Interaction]:
        return [e for e in self.events if isinstance(e, Interaction)]


def _scalar_feature(value: Any) -> str | float | None:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, str):
        return value
    return None


def parse_jsonl_line(line: bytes, limits: Limits) -> Event:
    """Decode one JSONL line into an event; extra interaction fields become features.

    Raises:
        InvalidEvent: with the reason.
    """
    if len(line) > limits.max_event_bytes:
        raise InvalidEvent(f"line of {len(line)} bytes exceeds limit {limits.max_event_bytes}")
    try:
        obj = _line_decoder.decode(line)
    except msgspec.DecodeError as exc:
        raise InvalidEvent(f"DecodeError: {exc}") from None
    if not isinstance(obj, dict):
        raise InvalidEvent("line is not a JSON object")
    if obj.get("type") == "interaction":
        extras = {k: obj.pop(k) for k in list(obj) if k not in _KNOWN_INTERACTION_FIELDS}
        if extras:
            feats = dict(obj.get("features") or {})
            for k, v in extras.items():
                sv = _scalar_feature(v)
                if sv is None:
                    raise InvalidEvent(f"extra field {k!r} is not a string or finite number")
                feats.setdefault(k, sv)
            obj["features"] = feats
    try:
        event = msgspec.convert(obj, Event)
    except (msgspec.ValidationError, ValueError, TypeError) as exc:
        raise InvalidEvent(f"{type(exc).__name__}: {exc}") from None
    if not isinstance(event, (Interaction, MediaEvent)):
        raise InvalidEvent(f"event type {obj.get('type')!r} is not replayable (interaction or media)")
    problem = check_limits(event, limits)
    if problem:
        raise InvalidEvent(problem)
    return event


def read_jsonl(path: str | Path, limits: Limits) -> LoadedLog:
    """Read a ReLoop JSONL log (see module docstring)."""
    events: list[Event] = []
    invalid: list[tuple[int, str]] = []
    with open(path, "rb") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                events.append(parse_jsonl_line(line.rstrip(b"\r\n"), limits))
            except InvalidEvent as exc:
                invalid.append((lineno, str(exc)))
    events.sort(key=lambda e: e.ts)
    return LoadedLog(events, invalid, str(path))


def _age_bucket(age: str) -> str:
    try:
        a = int(age)
    except ValueError:
        return "unknown"
    for hi, name in ((17, "<18"), (24, "18-24"), (34, "25-34"), (44, "35-44"), (54, "45-54")):
        if a <= hi:
            return name
    return "55+"


def _read_table(path: Path, sep: str, header: bool) -> list[list[str]]:
    with open(path, encoding="latin-1") as fh:
        lines = fh.read().splitlines()
    rows = [ln.split(sep) for ln in lines[1 if header else 0:] if ln.strip()]
    return rows


def _user_features(rows: list[list[str]]) -> dict[str, dict[str, str]]:
    return {r[0]: {"age": _age_bucket(r[1]), "gender": r[2], "occupation": r[3]} for r in rows if len(r) >= 4}


def read_movielens(path: str | Path) -> LoadedLog:
    """Read MovieLens (atomic-file directory or ``u.data``) as labelled interactions.

    Features per interaction: user ``age`` (bucket), ``gender``, ``occupation``; item
    ``genre`` (first listed), ``genre2`` (second, if any), ``decade``.
    """
    path = Path(path)
    users: dict[str, dict[str, str]] = {}
    items: dict[str, dict[str, str]] = {}
    invalid: list[tuple[int, str]] = []
    if path.is_dir() and list(path.glob("*.inter")):
        inter_rows = _read_table(next(path.glob("*.inter")), "\t", header=True)
        if (u := next(path.glob("*.user"), None)) is not None:
            users = _user_features(_read_table(u, "\t", header=True))
        if (i := next(path.glob("*.item"), None)) is not None:
            for r in _read_table(i, "\t", header=True):
                genres = r[3].split() if len(r) > 3 else []
                year = r[2] if len(r) > 2 else ""
                items[r[0]] = _item_features(genres, year)
        first_line = 2
    else:
        data = path / "u.data" if path.is_dir() else path
        inter_rows = _read_table(data, "\t", header=False)
        if (u := data.parent / "u.user").exists():
            users = _user_features(_read_table(u, "|", header=False))
        if (i := data.parent / "u.item").exists():
            for r in _read_table(i, "|", header=False):
                flags = r[5:24]
                names = _ML_GENRES[: len(flags)]
                year = r[2][-4:] if len(r) > 2 else ""
                items[r[0]] = _item_features([g for g, f in zip(names, flags) if f == "1"], year)
        path, first_line = data, 1
    events: list[Event] = []
    for n, r in enumerate(inter_rows, first_line):
        try:
            user, item, rating, ts = r[0], r[1], float(r[2]), float(r[3])
            events.append(Interaction(user_id=user, item_id=item, ts=ts, label=int(rating >= 4),
                                      kind="rating", value=rating,
                                      features={**users.get(user, {}), **items.get(item, {})}))
        except (IndexError, ValueError, msgspec.ValidationError) as exc:
            invalid.append((n, f"{type(exc).__name__}: {exc}"))
    events.sort(key=lambda e: e.ts)
    return LoadedLog(events, invalid, str(path))


_ML_GENRES = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
              "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
              "Romance", "Sci-Fi", "Thriller", "War", "Western"]


def _item_features(genres: list[str], year: str) -> dict[str, str]:
    feats = {"genre": genres[0] if genres else "unknown"}
    if len(genres) > 1:
        feats["genre2"] = genres[1]
    feats["decade"] = f"{year[:3]}0s" if year[:3].isdigit() else "unknown"
    return feats


def read_log(path: str | Path, fmt: str, limits: Limits) -> LoadedLog:
    """Read ``path`` in format ``jsonl`` or ``movielens``."""
    if fmt == "jsonl":
        return read_jsonl(path, limits)
    if fmt == "movielens":
        return read_movielens(path)
    raise ValueError(f"unknown log format {fmt!r} (expected 'jsonl' or 'movielens')")
