"""A tick with no active schema and no pattern at ``min_support`` (on either window) returns
at once (``SchemaCache._below_support``): sparse logs such as MovieLens-100K, one rating per
~200 s of event time, cross a tick at nearly every record. The shortcut must change nothing:
the same changes and the same snapshot as a cache that runs every test at every tick."""

from __future__ import annotations

import msgspec
import numpy as np
import pytest

from reloop.state.schemas.cache import SchemaCache, SchemaCacheConfig
from reloop.streams.events import ErrorRecord

T0 = 1_700_000_000.0


def _records(seed: int) -> list[ErrorRecord]:
    """Sparse records (30-300 s apart), then a burst of 4,000 in 40 s in which
    ``genre=g1`` (half the records) is over-predicted by 0.3, then sparse again: promoted in
    the burst, resolved after it (at a tick with no support but an active schema), and quiet
    ticks before and after."""
    rng = np.random.default_rng(seed)
    gaps = np.concatenate([rng.uniform(30, 300, 300), np.full(4000, 0.01), rng.uniform(30, 300, 300)])
    ts = T0 + np.cumsum(gaps)
    n = ts.size
    genre = rng.choice(5, n, p=[0.125, 0.5, 0.125, 0.125, 0.125])  # g1: the largest slice
    p = rng.uniform(0.05, 0.5, n)
    burst = (np.arange(n) >= 300) & (np.arange(n) < 4300)
    y = (rng.random(n) < np.clip(p - 0.3 * (burst & (genre == 1)), 0.0, 1.0)).astype(int)
    return [ErrorRecord(error_id=f"e{i}", user_id=f"u{i % 7}", item_id="i", ts=float(ts[i]), label=int(y[i]),
                        base_pred=float(p[i]), comp_pred=float(p[i]), model_version="v1",
                        features={"genre": f"g{genre[i]}", "device": str(i % 3)}) for i in range(n)]


def _run(records: list[ErrorRecord], shortcut: bool, monkeypatch: pytest.MonkeyPatch,
         config: SchemaCacheConfig) -> tuple[list, dict, int]:
    quiet = 0
    original = SchemaCache._below_support

    def below(self, *args):  # type: ignore[no-untyped-def]
        nonlocal quiet
        out = original(self, *args)
        quiet += out
        return out and shortcut

    monkeypatch.setattr(SchemaCache, "_below_support", below)
    cache, changes = SchemaCache(config), []
    for lo in range(0, len(records), 500):
        changes += cache.on_batch(records[lo:lo + 500])
    monkeypatch.undo()
    return changes, cache.snapshot(), quiet


@pytest.mark.parametrize("model_version_predicate", [True, False])
def test_quiet_ticks_change_nothing(monkeypatch: pytest.MonkeyPatch, model_version_predicate: bool) -> None:
    """With the default ``model_version=v1`` predicate the largest support is all the traffic;
    without it, ``genre=g1`` is the largest pattern and is promoted at the first tick where it
    has ``min_support`` (12.5 decayed records a tick: within 7% of it): a shortcut that
    fired there would miss it."""
    records = _records(5)
    config = SchemaCacheConfig(model_version_predicate=model_version_predicate)
    fast, snap_fast, quiet = _run(records, True, monkeypatch, config)
    slow, snap_slow, quiet_slow = _run(records, False, monkeypatch, config)
    kinds = [(c.kind, c.schema.signature) for c in fast]
    assert ("promoted", ["genre=g1"]) in kinds and ("resolved", ["genre=g1"]) in kinds
    assert quiet == quiet_slow and quiet > 400  # most sparse records cross a quiet tick
    assert msgspec.json.encode(fast) == msgspec.json.encode(slow)
    assert snap_fast.keys() == snap_slow.keys()
    for k in snap_fast:
        assert snap_fast[k].tobytes() == snap_slow[k].tobytes(), k
