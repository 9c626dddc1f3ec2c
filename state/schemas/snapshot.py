"""Snapshot and restore of a :class:`reloop.state.schemas.cache.SchemaCache` (plain arrays, no pickle).

A snapshot is a ``dict`` of numpy arrays: the slot arrays (``keys``, ``stats``, ``times``),
counters, the recent-records ring, and the text parts (configuration, vocabulary, active and
recently resolved schemata, publication/cooldown/hold clocks) as 0-d ``str`` arrays of JSON,
so it can be written with ``np.savez`` and read with ``allow_pickle=False``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

import msgspec
import numpy as np

from reloop.state.schemas.kernels import N_STATS
from reloop.state.schemas.config import SchemaCacheConfig
from reloop.state.schemas.types import Schema

if TYPE_CHECKING:
    from reloop.state.schemas.cache import SchemaCache

__all__ = ["SNAPSHOT_FORMAT", "restore_into", "snapshot_of"]

SNAPSHOT_FORMAT = 2  # 2: shift-window statistics (format 1, without them, still loads)
_TEXT = ("vocab", "ring_ids", "active", "history", "published", "cooling", "strong")


def snapshot_of(cache: SchemaCache) -> dict[str, np.ndarray]:
    """Plain arrays of ``cache``'s state (copies); inverse of :func:`restore_into`."""
    n_used = int(cache._meta[0])
    text = {"config": cache.config, "vocab": cache.vocab.state(), "ring_ids": cache._recent.ids,
            "active": list(cache._active.items()), "history": cache._history, "published": cache._published,
            "cooling": list(cache._cooling.items()), "strong": list(cache._strong.items())}
    arrays = {"keys": cache._keys[:n_used], "stats": cache._stats[:n_used], "times": cache._times[:n_used],
              "meta": cache._meta, "glob": cache._glob, **cache._recent.arrays()}
    scalars = [SNAPSHOT_FORMAT, math.nan if cache.landmark is None else cache.landmark, cache.max_ts,
               cache._recent.count, cache.rejected, math.nan if cache.landmark_fast is None else cache.landmark_fast]
    return {"scalars": np.array(scalars, np.float64), **{k: v.copy() for k, v in arrays.items()},
            **{k: np.array(msgspec.json.encode(v).decode()) for k, v in text.items()}}


def config_of(snap: Mapping[str, np.ndarray]) -> SchemaCacheConfig:
    """The configuration stored in a snapshot; ValueError if it is malformed."""
    try:
        return msgspec.json.decode(str(np.asarray(snap["config"])[()]), type=SchemaCacheConfig)
    except (KeyError, msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ValueError(f"bad schema-cache snapshot: {exc}") from exc


def restore_into(cache: SchemaCache, snap: Mapping[str, np.ndarray]) -> SchemaCache:
    """Load ``snap`` into a fresh ``cache`` built with :func:`config_of` ``(snap)``; ValueError
    if the snapshot is malformed."""
    try:
        scalars = np.asarray(snap["scalars"], np.float64).tolist()
        fmt = int(scalars[0])
        if fmt not in (1, SNAPSHOT_FORMAT):
            raise ValueError(f"unsupported schema-cache snapshot format {fmt}")
        landmark, max_ts, ring_n, rejected = scalars[1:5]
        landmark_fast = scalars[5] if fmt >= 2 else math.nan  # format 1: the shift window starts empty
        text = {k: msgspec.json.decode(str(np.asarray(snap[k])[()])) for k in _TEXT}
        n_used = int(np.asarray(snap["meta"])[0])
        if np.asarray(snap["stats"]).shape[-1] != (6 if fmt == 1 else N_STATS):
            raise ValueError(f"stats have {np.asarray(snap['stats']).shape[-1]} columns")
        for name in ("keys", "stats", "times"):
            arr = np.asarray(snap[name])
            getattr(cache, f"_{name}")[:n_used, ...][..., : arr.shape[-1] if name == "stats" else None] = arr
        for name in ("meta", "glob"):
            getattr(cache, f"_{name}")[...] = snap[name]
        for name, arr in cache._recent.arrays().items():
            arr[...] = snap[name]
        cache.vocab.load_state(text["vocab"])
        cache._active = {int(k): msgspec.convert(v, Schema) for k, v in text["active"]}
        cache._history = [msgspec.convert(v, Schema) for v in text["history"]]
    except (KeyError, TypeError, ValueError, IndexError, msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ValueError(f"bad schema-cache snapshot: {exc}") from exc
    if len(text["ring_ids"]) != cache.config.recent_window:
        raise ValueError("bad schema-cache snapshot: example ring has the wrong size")
    cache._recent.ids, cache._published = list(text["ring_ids"]), dict(text["published"])
    cache._cooling = {int(k): float(t) for k, t in text["cooling"]}
    cache._strong = {int(k): float(t) for k, t in text["strong"]}
    cache.landmark = None if math.isnan(landmark) else landmark
    cache.landmark_fast = None if math.isnan(landmark_fast) else landmark_fast
    cache.max_ts, cache._recent.count, cache.rejected = max_ts, int(ring_n), int(rejected)
    cache._rebuild()
    cache._reindex()
    return cache
