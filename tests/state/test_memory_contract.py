"""One conformance suite for the snapshot/restore contract (reloop.state.snapshots.Snapshottable),
parametrised over every memory: the error memory, the media memory and the schema cache.

Each case builds a memory under a config, fills it with seeded writes, and gives a ``read``
(everything a caller can observe, as plain Python/numpy values), a ``more`` (further writes)
and a second config that differs in one field.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any, Callable

import msgspec
import numpy as np
import pytest

from reloop.state.error_memory import ErrorMemory, ErrorMemoryConfig
from reloop.state.media import MediaMemory, MediaMemoryConfig
from reloop.state.schemas import SchemaCache, SchemaCacheConfig
from reloop.state.snapshots import Snapshottable, is_plain
from reloop.streams.events import ErrorRecord, MediaEvent

T0 = 1_700_000_000.0


@dataclass
class Case:
    """A memory under test: ``build(config)`` -> filled memory, ``read(memory)`` -> observable
    state, ``more(memory)`` -> applies further writes; ``other`` differs from ``config``."""

    cls: type
    config: Any
    other: Any
    build: Callable[[Any], Any]
    read: Callable[[Any], Any]
    more: Callable[[Any], None]


# ------------------------------------------------------------------ error memory

_EM_DIM = 6


def _em_hidden(seed: int, n: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, _EM_DIM)).astype(np.float32)


def _em_write(memory: ErrorMemory, seed: int, t: float) -> None:
    rng = np.random.default_rng(seed)
    h = _em_hidden(seed, 300)
    memory.write(memory.codes(h), y=(rng.random(300) < 0.3).astype(float), p=rng.uniform(0.05, 0.6, 300),
                 ts=t + np.arange(300.0))


def _em_build(config: ErrorMemoryConfig) -> ErrorMemory:
    memory = ErrorMemory(_EM_DIM, config)
    _em_write(memory, 1, T0)
    return memory


def _em_read(memory: ErrorMemory) -> list:
    h = _em_hidden(99, 50)
    p = np.linspace(0.05, 0.9, 50)
    out = []
    for now in (T0 + 300.0, T0 + 86400.0):
        comp, evidence = memory.compensate(p, memory.codes(h), now=now)
        out += [comp.tolist(), evidence.tolist(), memory.total_weight(now)]
    return out


# ------------------------------------------------------------------ media memory

_MM_DIM = 8


def _mm_events(seed: int, t: float) -> list[MediaEvent]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(6, _MM_DIM))
    events = []
    for i in range(240):
        user, run = f"u{i % 3}", (i // 12) % 6
        emb = centres[run] + 0.05 * rng.normal(size=_MM_DIM)
        events.append(MediaEvent(user_id=user, ts=t + i, modality="audio" if i % 5 == 0 else "video",
                                 segment_id=f"s{seed}-{i}", embedding=emb.tolist(),
                                 item_id=f"item{run}" if i % 4 == 0 else None))
    return events


def _mm_build(config: MediaMemoryConfig) -> MediaMemory:
    memory = MediaMemory(config)
    memory.on_batch(_mm_events(1, T0))
    return memory


def _mm_read(memory: MediaMemory) -> list:
    q = np.random.default_rng(7).normal(size=(5, _MM_DIM)).astype(np.float32)
    out = []
    for user in ("u0", "u1", "u2", "nobody"):
        out.append(memory.features(user, q, now=T0 + 400.0, touch=False).tolist())
        out.append(memory.features_for_items(user, [f"item{i}" for i in range(6)], now=T0 + 400.0,
                                             touch=False).tolist())
        out.append(memory.describe(user))
    return out


# ------------------------------------------------------------------ schema cache

_GENRES = [f"g{i}" for i in range(6)]


def _sc_records(seed: int, t: float, n: int = 4000) -> list[ErrorRecord]:
    rng = np.random.default_rng(seed)
    g, d = rng.integers(0, 6, n), rng.integers(0, 3, n)
    p = rng.uniform(0.05, 0.35, n)
    q = np.clip(p + 0.3 * (g == 2), 0.0, 1.0)  # the model under-predicts genre g2
    y = (rng.random(n) < q).astype(int)
    return [ErrorRecord(error_id=f"e{seed}-{i}", user_id="u", item_id="i", ts=t + i / 100.0, label=int(y[i]),
                        base_pred=float(p[i]), comp_pred=float(p[i]), model_version="v1",
                        features={"genre": _GENRES[g[i]], "device": ["phone", "tv", "web"][d[i]]})
            for i in range(n)]


def _sc_build(config: SchemaCacheConfig) -> SchemaCache:
    cache = SchemaCache(config)
    cache.on_batch(_sc_records(1, T0))
    return cache


def _sc_read(cache: SchemaCache) -> list:
    schemas = [msgspec.to_builtins(s) for s in cache.schemas(include_resolved=True)]
    biases = [cache.bias_for({"genre": g, "device": "tv"}, "v1") for g in _GENRES]
    return [schemas, biases, cache.max_ts, cache.landmark]


CASES = {
    "error_memory": Case(
        ErrorMemory, ErrorMemoryConfig(tables=8, bits=6, half_life_s=3600.0),
        ErrorMemoryConfig(tables=8, bits=6, half_life_s=7200.0),
        _em_build, _em_read, lambda m: _em_write(m, 2, T0 + 400.0)),
    "media_memory": Case(
        MediaMemory, MediaMemoryConfig(dim=_MM_DIM, capacity_clips=8, flash_clips=2),
        MediaMemoryConfig(dim=_MM_DIM, capacity_clips=10, flash_clips=2),
        _mm_build, _mm_read, lambda m: m.on_batch(_mm_events(2, T0 + 300.0))),
    "schema_cache": Case(
        SchemaCache, SchemaCacheConfig(min_support=50.0, half_life_s=30.0, eval_every_s=5.0),
        SchemaCacheConfig(min_support=60.0, half_life_s=30.0, eval_every_s=5.0),
        _sc_build, _sc_read, lambda c: c.on_batch(_sc_records(2, T0 + 40.0, 1500))),
}


@pytest.fixture(params=sorted(CASES))
def case(request: pytest.FixtureRequest) -> Case:
    return CASES[request.param]


def _savez_roundtrip(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    buf.seek(0)
    with np.load(buf, allow_pickle=False) as npz:
        return {name: npz[name] for name in npz.files}


def test_every_memory_implements_the_protocol(case: Case) -> None:
    memory = case.build(case.config)
    assert isinstance(memory, Snapshottable)
    assert isinstance(case.cls.__dict__["restore"], classmethod)


def test_round_trip_gives_equal_reads_now_and_after_the_same_writes(case: Case) -> None:
    memory = case.build(case.config)
    before = case.read(memory)
    restored = case.cls.restore(memory.snapshot())
    assert type(restored) is case.cls and restored.config == case.config
    assert case.read(restored) == before
    assert case.read(memory) == before  # reading the snapshot left the original alone
    case.more(memory)
    case.more(restored)
    after = case.read(memory)
    assert after != before  # the further writes are visible ...
    assert case.read(restored) == after  # ... and the restored memory took them the same way


def test_snapshot_is_a_dict_of_plain_numpy_arrays_that_survives_savez(case: Case) -> None:
    memory = case.build(case.config)
    snap = memory.snapshot()
    assert type(snap) is dict and snap and is_plain(snap)
    for name, arr in snap.items():
        assert arr.dtype.kind in "biufU", (name, arr.dtype)  # numbers or text, never objects
    loaded = _savez_roundtrip(snap)
    assert sorted(loaded) == sorted(snap)
    assert case.read(case.cls.restore(loaded)) == case.read(memory)


def test_snapshot_is_a_copy(case: Case) -> None:
    memory = case.build(case.config)
    snap = memory.snapshot()
    frozen = {k: v.copy() for k, v in snap.items()}
    case.more(memory)
    assert all(np.array_equal(snap[k], frozen[k]) for k in snap)


def test_restore_under_the_same_config_is_accepted(case: Case) -> None:
    memory = case.build(case.config)
    restored = case.cls.restore(memory.snapshot(), config=case.config)
    assert case.read(restored) == case.read(memory)


def test_restore_of_a_snapshot_from_another_config_is_refused(case: Case) -> None:
    snap = case.build(case.config).snapshot()
    with pytest.raises(ValueError, match="another config") as err:
        case.cls.restore(snap, config=case.other)
    changed = [k for k in msgspec.structs.asdict(case.config)
               if getattr(case.config, k) != getattr(case.other, k)]
    assert changed and all(k in str(err.value) for k in changed)  # the message names the field


def test_restore_of_a_foreign_or_truncated_snapshot_is_refused(case: Case) -> None:
    snap = case.build(case.config).snapshot()
    with pytest.raises(ValueError):
        case.cls.restore({k: v for k, v in snap.items() if k != "config"})
    others = [c for name, c in CASES.items() if c.cls is not case.cls]
    with pytest.raises(ValueError):
        case.cls.restore(others[0].build(others[0].config).snapshot())
