"""Tests of the error-schema cache (reloop.state.schemas.cache) and its kernels (reloop.state.schemas.kernels)."""

from __future__ import annotations

import math

import msgspec
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import reloop.state.schemas.kernels as kernels
from reloop.state.schemas.reference import space_saving_update_ref
from reloop.state.schemas.select import two_sample_z
from reloop.state.schemas.cache import Schema, SchemaCache, SchemaCacheConfig, schema_id_of
from reloop.streams.events import ErrorRecord

T0 = 1_700_000_000.0
GENRES = [f"g{i}" for i in range(10)]
AGES = ["18-24", "25-34", "35-44", "45-54", "55+"]
DEVICES = ["phone", "tv", "web"]


def _stream(seed: int, n: int, t_start: float, rate: float = 1000.0, fault=None, lift: float = 0.0,
            start_id: int = 0) -> list[ErrorRecord]:
    """Records with calibrated predictions; rows matching ``fault`` (dict) get ``lift`` added to
    their true click probability (the model does not know)."""
    rng = np.random.default_rng(seed)
    g, a, d = rng.integers(0, 10, n), rng.integers(0, 5, n), rng.choice(3, n, p=[0.5, 0.3, 0.2])
    p = rng.uniform(0.05, 0.35, n)
    feats = [{"genre": GENRES[x], "age_bucket": AGES[y], "device": DEVICES[z], "popularity": 0.5}
             for x, y, z in zip(g.tolist(), a.tolist(), d.tolist())]
    q = p.copy()
    if fault:
        hit = np.array([all(f[k] == v for k, v in fault.items()) for f in feats])
        q = np.clip(q + lift * hit, 0.0, 1.0)
    y = (rng.random(n) < q).astype(int)
    return [ErrorRecord(error_id=f"e{start_id + i}", user_id="u", item_id="i", ts=t_start + i / rate,
                        label=int(y[i]), base_pred=float(p[i]), comp_pred=float(p[i]), model_version="v1",
                        features=feats[i]) for i in range(n)]


def _feed(cache: SchemaCache, records: list[ErrorRecord], batch: int = 1000) -> list:
    changes = []
    for lo in range(0, len(records), batch):
        changes += cache.on_batch(records[lo:lo + batch])
    return changes


@pytest.fixture(scope="module")
def horror_run() -> tuple[SchemaCache, list, list[ErrorRecord]]:
    """20 s clean, 20 s with g3 over-predicted by ~0.15, kept as (cache, changes, records)."""
    clean = _stream(1, 20_000, T0)
    fault = _stream(2, 20_000, T0 + 20, fault={"genre": "g3"}, lift=-0.15, start_id=20_000)
    cache = SchemaCache()
    changes = _feed(cache, clean + fault)
    return cache, changes, clean + fault


# ------------------------------------------------------------------ kernels vs references


@settings(max_examples=40, deadline=None)
@given(n=st.integers(0, 120), width=st.integers(1, 5), capacity=st.integers(2, 24), vocab=st.integers(1, 12),
       chunks=st.integers(1, 4), seed=st.integers(0, 2**32 - 1))
def test_space_saving_kernel_equals_reference(n: int, width: int, capacity: int, vocab: int, chunks: int,
                                              seed: int) -> None:
    rng = np.random.default_rng(seed)
    pids = np.where(rng.random((n, width)) < 0.8, rng.integers(1, vocab + 1, (n, width)), 0).astype(np.int32)
    pairable = rng.random(width) < 0.7
    w = rng.integers(1, 4, n).astype(np.float64)  # small integers: many priority ties
    wf = rng.random(n) * 3.0
    y = (rng.random(n) < 0.3).astype(np.float64)
    p = rng.random(n)
    r, ts = y - p, np.sort(rng.random(n) * 100.0)
    size = kernels.index_size(capacity)
    shift = 64 - (size.bit_length() - 1)
    k_state = [np.full(capacity, -1, np.int64), np.zeros((capacity, kernels.N_STATS)), np.zeros((capacity, 2))]
    r_state = [a.copy() for a in k_state]
    heap, heap_pos, index = np.zeros(capacity, np.int32), np.zeros(capacity, np.int32), np.full(size, -1, np.int32)
    k_meta, r_meta = np.zeros(2, np.int64), np.zeros(2, np.int64)
    k_glob, r_glob = np.zeros(kernels.N_GLOBAL), np.zeros(kernels.N_GLOBAL)
    bounds = np.linspace(0, n, chunks + 1).astype(int)
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        sl = slice(lo, hi)
        kernels.space_saving_update(np.ascontiguousarray(pids[sl]), pairable, w[sl], wf[sl], r[sl], y[sl], p[sl], ts[sl],
                                    *k_state, heap, heap_pos, index, k_meta, k_glob, shift)
        space_saving_update_ref(pids[sl], pairable, w[sl], wf[sl], r[sl], y[sl], p[sl], ts[sl], *r_state, r_meta,
                                        r_glob)
    for a, b in zip(k_state, r_state):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(k_meta, r_meta)
    np.testing.assert_array_equal(k_glob, r_glob)
    used = int(k_meta[0])
    assert used <= capacity
    got = kernels.lookup_slots(k_state[0][:used], k_state[0], index, shift)
    np.testing.assert_array_equal(got, np.arange(used))
    assert (kernels.lookup_slots(np.array([2**40 + 7], np.int64), k_state[0], index, shift) == -1).all()
    if used:  # the heap's root is the (priority, slot) minimum the reference evicts
        assert heap[0] == int(np.argmin(k_state[1][:used, 0]))


def test_rebuild_index_after_rescale_keeps_agreement() -> None:
    rng = np.random.default_rng(5)
    n, capacity = 400, 16
    pids = rng.integers(1, 30, (n, 3)).astype(np.int32)
    pairable = np.ones(3, bool)
    w, y, p = np.ones(n), (rng.random(n) < 0.2).astype(float), rng.random(n)
    size = kernels.index_size(capacity)
    shift = 64 - (size.bit_length() - 1)
    keys, stats, times = np.full(capacity, -1, np.int64), np.zeros((capacity, kernels.N_STATS)), np.zeros((capacity, 2))
    heap, heap_pos, index = np.zeros(capacity, np.int32), np.zeros(capacity, np.int32), np.full(size, -1, np.int32)
    meta, glob = np.zeros(2, np.int64), np.zeros(5)
    ref = [keys.copy(), stats.copy(), times.copy(), meta.copy(), glob.copy()]
    half = n // 2
    kernels.space_saving_update(pids[:half], pairable, w[:half], w[:half] * 0.5, y[:half] - p[:half], y[:half], p[:half],
                                np.zeros(half), keys, stats, times, heap, heap_pos, index, meta, glob, shift)
    space_saving_update_ref(pids[:half], pairable, w[:half], w[:half] * 0.5, y[:half] - p[:half], y[:half], p[:half],
                                    np.zeros(half), *ref)
    for arr in (stats, glob, ref[1], ref[4]):
        arr *= 0.37  # a landmark move: scale everything, then rebuild index and heap
    index[:] = 12345  # garbage: rebuild must not depend on it
    kernels.rebuild_index(keys, stats, int(meta[0]), index, heap, heap_pos, shift)
    kernels.space_saving_update(pids[half:], pairable, w[half:], w[half:] * 0.5, y[half:] - p[half:], y[half:], p[half:],
                                np.ones(n - half), keys, stats, times, heap, heap_pos, index, meta, glob, shift)
    space_saving_update_ref(pids[half:], pairable, w[half:], w[half:] * 0.5, y[half:] - p[half:], y[half:], p[half:],
                                    np.ones(n - half), *ref)
    for a, b in zip((keys, stats, times, meta, glob), ref):
        np.testing.assert_array_equal(a, b)


def test_two_sample_z_matches_hand_computation() -> None:
    a = np.array([100.0, -10.0, 30.0])  # mean -0.1, var 0.29
    b = np.array([400.0, 8.0, 100.0])  # mean 0.02, var 0.2496
    z, diff = two_sample_z(a, b, 0.5, 1e-4)
    se = math.sqrt(0.29 / 50.0 + 0.2496 / 200.0)
    assert float(diff) == pytest.approx(-0.12)
    assert float(z) == pytest.approx(-0.12 / se)
    z0, _ = two_sample_z(a, np.array([1.0, 0.5, 0.5]), 1.0, 1e-4)  # rest below min_count
    assert float(z0) == 0.0


# ------------------------------------------------------------------ behaviour


def test_planted_pattern_is_promoted_with_signature_and_direction(horror_run) -> None:
    cache, changes, _ = horror_run
    promoted = [c for c in changes if c.kind == "promoted"]
    assert promoted, "the planted slice was not found"
    first = promoted[0].schema
    assert first.signature == ["genre=g3"]
    assert first.direction == "over" and first.mean_error < -0.03 and first.z < -4
    assert first.first_seen >= T0 + 20  # not before the fault
    assert first.schema_id == schema_id_of(["genre=g3"])
    assert {c.schema.signature[0] for c in promoted} == {"genre=g3"}  # no sibling/echo schemata
    top = cache.schemas()[0]
    assert top.signature == ["genre=g3"] and top.state == "active"
    assert top.example_error_ids and all(int(e[1:]) >= 20_000 for e in top.example_error_ids)
    assert top.model_versions == ["v1"] and 0.05 < top.predicted_rate - top.observed_rate < 0.2


def test_planted_pair_is_localised_to_the_pair() -> None:
    clean = _stream(3, 15_000, T0)
    fault = _stream(4, 25_000, T0 + 15, fault={"age_bucket": "25-34", "device": "tv"}, lift=0.4, start_id=15_000)
    cache = SchemaCache()
    changes = _feed(cache, clean + fault)
    promoted = [c.schema.signature for c in changes if c.kind == "promoted"]
    assert promoted and promoted[0] == ["age_bucket=25-34", "device=tv"]
    assert cache.schemas()[0].signature == ["age_bucket=25-34", "device=tv"]
    assert cache.schemas()[0].direction == "under"
    assert ["age_bucket=25-34"] not in [s.signature for s in cache.schemas()]


def test_noise_only_stream_promotes_nothing() -> None:
    cache = SchemaCache()
    assert _feed(cache, _stream(7, 60_000, T0)) == []
    assert cache.schemas() == []


def test_resolved_after_the_pattern_stops(horror_run) -> None:
    cache_a = SchemaCache.restore(horror_run[0].snapshot())
    changes = _feed(cache_a, _stream(9, 60_000, T0 + 40, start_id=40_000))
    resolved = [c for c in changes if c.kind == "resolved"]
    assert [c.schema.signature for c in resolved] == [["genre=g3"]]
    assert resolved[0].schema.state == "resolved" and resolved[0].schema.reason
    assert T0 + 40 < resolved[0].ts < T0 + 100
    assert cache_a.schemas() == [] and cache_a.schemas(include_resolved=True)[0].state == "resolved"
    # with no traffic at all, advancing event time resolves it too (support decays)
    cache_b = SchemaCache.restore(horror_run[0].snapshot())
    assert [c.kind for c in cache_b.advance(T0 + 200)] == ["resolved"]
    assert cache_b.schemas() == []


def test_match_and_bias_for(horror_run) -> None:
    cache, _, _ = horror_run
    hit = cache.match({"genre": "g3", "device": "tv", "popularity": 0.2}, "v1")
    assert [s.signature for s in hit] == [["genre=g3"]]
    assert cache.match({"genre": "g4", "device": "tv"}, "v1") == []
    bias = cache.bias_for({"genre": "g3", "age_bucket": "55+"}, "v1")
    assert -0.2 < bias < -0.05
    assert cache.bias_for({"genre": "g1"}, "v1") == 0.0


def test_results_do_not_depend_on_batching(horror_run) -> None:
    _, changes, records = horror_run
    other = SchemaCache()
    changes_b = _feed(other, records, batch=777)
    assert [(c.kind, c.ts, c.schema.signature) for c in changes_b] == [(c.kind, c.ts, c.schema.signature)
                                                                      for c in changes]
    assert [round(c.schema.z, 9) for c in changes_b] == [round(c.schema.z, 9) for c in changes]


def test_snapshot_restore_gives_identical_behaviour(tmp_path) -> None:
    records = _stream(1, 20_000, T0) + _stream(2, 20_000, T0 + 20, fault={"genre": "g3"}, lift=-0.15,
                                               start_id=20_000)
    later = _stream(11, 30_000, T0 + 40, start_id=40_000)
    original = SchemaCache()
    _feed(original, records)
    path = tmp_path / "cache.npz"
    SchemaCache.restore(original.snapshot()).save(path)
    loaded = SchemaCache.load(path)  # allow_pickle=False inside
    outs = [_feed(c, later, batch=b) for c, b in ((original, 1000), (loaded, 1500))]
    assert outs[0] and msgspec.json.encode(outs[0]) == msgspec.json.encode(outs[1])
    snaps = [c.snapshot() for c in (original, loaded)]
    assert snaps[0].keys() == snaps[1].keys()
    for name in snaps[0]:
        np.testing.assert_array_equal(snaps[0][name], snaps[1][name])
    with pytest.raises(ValueError):
        SchemaCache.restore({k: v for k, v in original.snapshot().items() if k != "stats"})


def test_memory_stays_bounded_under_distinct_signatures() -> None:
    cfg = SchemaCacheConfig(capacity=256, max_predicates=1024, recent_window=1024)
    cache = SchemaCache(cfg)
    sizes = []
    for chunk in range(8):
        recs = [ErrorRecord(error_id=f"x{chunk}-{i}", user_id="u", item_id="i", ts=T0 + chunk * 5 + i / 1000,
                            label=i % 7 == 0, base_pred=0.2, comp_pred=0.2, model_version=f"m{chunk}",
                            features={"a": f"a{chunk}-{i}", "b": f"b{chunk}-{i % 97}", "c": f"c{i}"})
                for i in range(2000)]
        cache.on_batch(recs)
        assert cache.vocab.live <= cfg.max_predicates
        assert int(cache._meta[0]) <= cfg.capacity
        sizes.append(cache.nbytes)
    assert int(cache._meta[1]) > 10_000  # Space-Saving evicted a lot
    assert max(sizes[2:]) < 1.3 * sizes[1]
    assert cache.vocab.free or cache.vocab.dropped  # ids were recycled (or refused when all in use)


def test_config_validation_and_bad_records() -> None:
    for bad in ({"capacity": 1}, {"retire_support": 500.0}, {"z_retire": 9.0}, {"half_life_s": 0.0},
                {"alpha": 1.5}, {"explained_fraction": 2.0}):
        with pytest.raises(ValueError):
            SchemaCacheConfig(**bad)
    cache = SchemaCache()
    rec = _stream(1, 3, T0)
    rec[1] = msgspec.structs.replace(rec[1], base_pred=float("nan"))
    cache.on_batch(rec)
    assert cache.rejected == 1


def test_schema_round_trips_as_json(horror_run) -> None:
    schema = horror_run[0].schemas()[0]
    assert msgspec.json.decode(msgspec.json.encode(schema), type=Schema) == schema


# short windows: the landmark grids (100 T) are crossed several times; a small vocabulary is
# recycled at ticks; a small capacity evicts
_SPLIT_CFG = SchemaCacheConfig(capacity=48, max_predicates=104, min_support=4.0, retire_support=1.0,
                               half_life_s=0.02, shift_half_life_s=0.008, eval_every_s=0.03, recent_window=32,
                               publish_every_s=0.1, cooldown_s=0.2, hold_s=0.2, z_min=2.0, z_retire=1.5)


def _split_stream(seed: int, n: int) -> list[ErrorRecord]:
    span = 100 * _SPLIT_CFG.half_life_s / math.log(2.0)  # the main landmark grid
    start = math.ceil(T0 / span) * span - 0.4  # both grids are crossed within the stream
    recs = _stream(seed, n, start, rate=10_000.0, fault={"device": "phone"}, lift=-0.25)
    rng = np.random.default_rng(seed)
    jitter = rng.uniform(-0.002, 0.0, n) * (rng.random(n) < 0.2)  # some records a little out of order
    return [msgspec.structs.replace(r, ts=r.ts + float(j), features={**r.features, "x": f"x{i % 211}"})
            for i, (r, j) in enumerate(zip(recs, jitter.tolist()))]


_SPLIT_RECORDS = _split_stream(5, 10_000)  # 1 s


@settings(max_examples=30, deadline=None)
@given(cuts=st.lists(st.integers(0, len(_SPLIT_RECORDS)), max_size=40))
def test_state_is_bit_identical_however_the_sequence_is_split(cuts) -> None:
    whole = SchemaCache(_SPLIT_CFG)
    changes_whole = whole.on_batch(_SPLIT_RECORDS)
    split = SchemaCache(_SPLIT_CFG)
    changes_split = []
    bounds = sorted({0, len(_SPLIT_RECORDS), *cuts})
    for lo, hi in zip(bounds, bounds[1:]):
        changes_split += split.on_batch(_SPLIT_RECORDS[lo:hi])
    assert msgspec.json.encode(changes_split) == msgspec.json.encode(changes_whole)
    a, b = whole.snapshot(), split.snapshot()
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_split_fixture_exercises_landmarks_vocabulary_and_eviction() -> None:
    cache = SchemaCache(_SPLIT_CFG)
    changes = cache.on_batch(_SPLIT_RECORDS)
    first = SchemaCache(_SPLIT_CFG)
    first.on_batch(_SPLIT_RECORDS[:1])
    assert cache.landmark > first.landmark and cache.landmark_fast > first.landmark_fast  # grids crossed
    assert cache.vocab.dropped and int(cache._meta[1]) > 0  # vocabulary full (ids freed at ticks), evictions
    assert any(c.kind == "promoted" for c in changes)
