"""Property: a promoted schema's statistics are the decayed means of the records it matches.

For any stream (random features, predictions, labels, event times in or out of order, any
cut into batches) and every ``promoted`` or ``updated`` change, with ``j`` the index of the
record whose clock crossed the change's tick (the tick is decided before that record is
applied) and ``w_i = exp(-(now - ts_i) / T)``, ``T = half_life_s / ln 2``:

* ``observed_rate  == sum_i w_i y_i / sum_i w_i``,
* ``predicted_rate == sum_i w_i p_i / sum_i w_i``,
* ``support        == sum_i w_i``,

over the records ``i < j`` that match every predicate of the signature. Without Space-Saving
evictions the sums run over all such records; with evictions, over the records since the slot
was taken: then the three must hold over one common *suffix* of them.

Tolerance: relative 1e-9 (the cache sums forward-decay weights against a landmark and rescales
when the landmark moves; that rounding is ~1e-15 per operation).
"""

from __future__ import annotations

import math

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reloop.state.schemas.cache import SchemaCache, SchemaCacheConfig
from reloop.streams.events import ErrorRecord

T0 = 1_700_000_000.0
RTOL = 1e-9
COLUMNS = {"genre": [f"g{i}" for i in range(6)], "device": ["phone", "tv", "web"], "segment": ["s0", "s1"]}


def _records(seed: int, n: int, rate: float, jitter: float, lift: float, versions: int) -> list[ErrorRecord]:
    """Calibrated predictions except on one random slice (``lift`` added to its true rate);
    event times at ``rate`` per s plus uniform jitter up to ``jitter`` s (out of order)."""
    rng = np.random.default_rng(seed)
    cols = {k: rng.integers(0, len(v), n) for k, v in COLUMNS.items()}
    slice_col = list(COLUMNS)[int(rng.integers(0, len(COLUMNS)))]
    slice_val = int(rng.integers(0, len(COLUMNS[slice_col])))
    p = rng.uniform(0.02, 0.5, n)
    q = np.clip(p + lift * (cols[slice_col] == slice_val), 0.0, 1.0)
    y = (rng.random(n) < q).astype(int)
    ts = T0 + np.arange(n) / rate + rng.uniform(0.0, jitter, n)
    ver = rng.integers(0, versions, n)
    return [ErrorRecord(error_id=f"e{i}", user_id="u", item_id="i", ts=float(ts[i]), label=int(y[i]),
                        base_pred=float(p[i]), comp_pred=float(p[i]), model_version=f"v{ver[i] + 1}",
                        features={**{k: COLUMNS[k][int(cols[k][i])] for k in COLUMNS}, "popularity": 0.3})
            for i in range(n)]


def _matches(r: ErrorRecord, signature: list[str]) -> bool:
    for pred in signature:
        name, _, value = pred.partition("=")
        got = r.model_version if name == "model_version" else r.features.get(name)
        if got != value:
            return False
    return True


def _decayed(records: list[ErrorRecord], now: float, decay_s: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Suffix sums (index k: over records[k:]) of w, w*y, w*p."""
    w = np.array([math.exp(-(now - r.ts) / decay_s) for r in records])
    y = np.array([r.label for r in records], np.float64)
    p = np.array([r.base_pred for r in records], np.float64)
    suffix = lambda a: np.cumsum(a[::-1])[::-1]  # noqa: E731
    return suffix(w), suffix(w * y), suffix(w * p)


def _close(a: np.ndarray | float, b: float) -> np.ndarray:
    return np.abs(np.asarray(a) - b) <= RTOL * max(abs(b), 1e-12)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(300, 2500), rate=st.floats(200.0, 2000.0),
       jitter=st.sampled_from([0.0, 0.0, 0.5, 5.0]), lift=st.sampled_from([0.0, 0.3, -0.3, 0.45, 0.45]),
       versions=st.integers(1, 2), capacity=st.sampled_from([64, 128, 4096]),
       half_life=st.floats(1.0, 30.0), batch=st.integers(1, 700))
def test_promoted_schema_rates_are_decayed_means(seed, n, rate, jitter, lift, versions, capacity, half_life, batch):
    cfg = SchemaCacheConfig(capacity=capacity, max_predicates=max(65536, 2 * capacity + 8), min_support=10.0,
                            retire_support=5.0, z_min=3.0, half_life_s=half_life, shift_half_life_s=0.0,
                            eval_every_s=0.25, publish_every_s=0.0)
    records = _records(seed, n, rate, jitter, lift, versions)
    cache = SchemaCache(cfg)
    changes = []
    for lo in range(0, n, batch):
        changes += cache.on_batch(records[lo:lo + batch])
    step = cfg.eval_every_s
    clock = np.maximum.accumulate([r.ts for r in records])
    tick_of = np.floor(clock / step)
    decay_s = half_life / math.log(2.0)
    evicted = int(cache._meta[1]) > 0
    checked = 0
    for ch in changes:
        if ch.kind == "resolved":
            continue
        s = ch.schema
        j = int(np.flatnonzero(tick_of == round(ch.ts / step))[0])  # first record past the tick
        matching = [r for r in records[:j] if _matches(r, s.signature)]
        assert matching, s.signature
        w, wy, wp = _decayed(matching, ch.ts, decay_s)
        ok = _close(w, s.support) & _close(wy / w, s.observed_rate) & _close(wp / w, s.predicted_rate)
        if evicted:  # over the records since the slot was taken: one common suffix
            assert ok.any(), (s.signature, s.support, s.observed_rate, s.predicted_rate, w[0], wy[0] / w[0])
        else:
            assert ok[0], (s.signature, s.support, s.observed_rate, s.predicted_rate, w[0], wy[0] / w[0],
                           wp[0] / w[0])
        checked += 1
    if lift == 0.45 and capacity == 4096 and n >= 1500 and half_life >= 2.0:
        assert checked, "a strong planted slice with room to track it must be promoted"


def test_strong_slice_promotes_and_matches_its_records():
    """A fixed example (no hypothesis): the planted slice is promoted and its rates equal
    the decayed means of its records, so the property above is never vacuous."""
    records = _records(7, 4000, 400.0, 0.0, 0.45, 1)
    cfg = SchemaCacheConfig(min_support=20.0, retire_support=5.0, z_min=3.0, shift_half_life_s=0.0)
    cache = SchemaCache(cfg)
    promoted = [c for c in cache.on_batch(records) if c.kind == "promoted"]
    assert promoted
    s, now = promoted[0].schema, promoted[0].ts
    clock = np.maximum.accumulate([r.ts for r in records])
    j = int(np.flatnonzero(np.floor(clock / cfg.eval_every_s) == round(now / cfg.eval_every_s))[0])
    matching = [r for r in records[:j] if _matches(r, s.signature)]
    w, wy, wp = _decayed(matching, now, cfg.half_life_s / math.log(2.0))
    assert _close(w[0], s.support) and _close(wy[0] / w[0], s.observed_rate) and _close(wp[0] / w[0],
                                                                                       s.predicted_rate)
    assert s.observed_rate > s.predicted_rate + 0.2 and s.direction == "under"
