"""The prediction-shift screen of the schema cache (reloop.state.schemas.shift): a broken input is
promoted sooner than by the residual tests alone; a calibrated covariate shift is not."""

from __future__ import annotations

import msgspec
import numpy as np
import pytest

from reloop.state.schemas.kernels import FAST, N_STATS
from reloop.state.schemas.cache import SchemaCache, SchemaCacheConfig
from reloop.streams.events import ErrorRecord

T0 = 1_700_000_000.0
DEVICES = ["phone", "tv", "web"]


def _records(seed: int, n: int, *, start: float, moved: float, labels_follow: bool, rate: float = 1000.0,
             ) -> list[ErrorRecord]:
    """Calibrated traffic; from ``start`` s on, ``device=web`` predictions move by ``moved``
    (a broken input); the labels move with them only when ``labels_follow``."""
    rng = np.random.default_rng(seed)
    dev = rng.choice(3, n, p=[0.5, 0.25, 0.25])
    genre = rng.integers(0, 8, n)
    q = rng.uniform(0.05, 0.35, n)
    ts = T0 + np.arange(n) / rate
    hit = (dev == 2) & (ts >= T0 + start)
    p = np.clip(q + moved * hit, 0.0, 1.0)
    y = (rng.random(n) < (p if labels_follow else q)).astype(int)
    return [ErrorRecord(error_id=f"e{i}", user_id="u", item_id="i", ts=float(ts[i]), label=int(y[i]),
                        base_pred=float(p[i]), comp_pred=float(p[i]), model_version="v1",
                        features={"device": DEVICES[dev[i]], "genre": f"g{genre[i]}"}) for i in range(n)]


def _first_promotion(cache: SchemaCache, records: list[ErrorRecord]) -> tuple[float, list[str]] | None:
    for lo in range(0, len(records), 500):
        for change in cache.on_batch(records[lo:lo + 500]):
            if change.kind == "promoted":
                return change.ts, change.schema.signature
    return None


@pytest.fixture(scope="module")
def broken() -> list[ErrorRecord]:
    return _records(1, 60_000, start=30.0, moved=0.08, labels_follow=False)


def test_screen_promotes_a_broken_input_sooner(broken) -> None:
    with_screen = _first_promotion(SchemaCache(), broken)
    without = _first_promotion(SchemaCache(SchemaCacheConfig(shift_half_life_s=0.0)), broken)
    assert with_screen is not None and without is not None
    assert with_screen[1] == ["device=web"] and without[1] == ["device=web"]
    assert T0 + 30.0 < with_screen[0] < without[0]
    # affected records seen until the alert: the screen needs well under the main window's count
    affected = [sum(1 for r in broken if T0 + 30.0 <= r.ts < t and r.features["device"] == "web")
                for t in (with_screen[0], without[0])]
    assert affected[0] < 0.7 * affected[1], affected


def test_calibrated_covariate_shift_is_not_an_error() -> None:
    records = _records(2, 60_000, start=30.0, moved=0.15, labels_follow=True)
    assert _first_promotion(SchemaCache(), records) is None


def test_format_1_snapshot_loads_without_the_shift_window(broken) -> None:
    cache = SchemaCache()
    cache.on_batch(broken[:20_000])
    snap = cache.snapshot()
    assert snap["stats"].shape[1] == N_STATS
    old = {**snap, "scalars": np.concatenate(([1.0], snap["scalars"][1:5])), "stats": snap["stats"][:, :6]}
    restored = SchemaCache.restore(old)
    assert restored.landmark_fast is None and restored.landmark == cache.landmark
    n = int(restored._meta[0])
    np.testing.assert_array_equal(restored._stats[:n, :6], cache._stats[:n, :6])
    assert not restored._stats[:n, FAST].any()
    restored.on_batch(broken[20_000:21_000])  # and it goes on
    assert restored.landmark_fast is not None and restored._stats[: int(restored._meta[0]), FAST].any()
    with pytest.raises(ValueError, match="format"):
        SchemaCache.restore({**snap, "scalars": np.concatenate(([9.0], snap["scalars"][1:]))})


def test_shift_config_validation() -> None:
    for bad in ({"shift_half_life_s": 10.0}, {"shift_half_life_s": -1.0}, {"shift_alpha": 0.0}, {"shift_z": 0.0}):
        with pytest.raises(ValueError):
            SchemaCacheConfig(**bad)
    assert msgspec.json.decode(msgspec.json.encode(SchemaCacheConfig()), type=SchemaCacheConfig).shift_z == 6.0


def test_screened_schema_does_not_flap_while_the_fault_lasts(broken) -> None:
    cache = SchemaCache()
    changes = [c for lo in range(0, len(broken), 500) for c in cache.on_batch(broken[lo:lo + 500])
               if c.schema.signature == ["device=web"] and c.kind != "updated"]
    assert [c.kind for c in changes] == ["promoted"]  # held by the screen, then by the main window
    assert [s.signature for s in cache.schemas()][0] == ["device=web"]


def _label_shift(seed: int, n: int, *, start: float, lift: float, rate: float = 1000.0) -> list[ErrorRecord]:
    """Calibrated traffic; from ``start`` s on, the labels of ``device=web & genre=g1`` move by
    ``lift`` while the predictions stay (the world changed, the model did not)."""
    rng = np.random.default_rng(seed)
    dev = rng.choice(3, n, p=[0.5, 0.25, 0.25])
    genre = rng.integers(0, 8, n)
    p = rng.uniform(0.05, 0.35, n)
    ts = T0 + np.arange(n) / rate
    hit = (dev == 2) & (genre == 1) & (ts >= T0 + start)
    y = (rng.random(n) < np.clip(p + lift * hit, 0.0, 1.0)).astype(int)
    return [ErrorRecord(error_id=f"e{i}", user_id="u", item_id="i", ts=float(ts[i]), label=int(y[i]),
                        base_pred=float(p[i]), comp_pred=float(p[i]), model_version="v1",
                        features={"device": DEVICES[dev[i]], "genre": f"g{genre[i]}"}) for i in range(n)]


def test_label_shift_path_promotes_a_moved_slice_sooner() -> None:
    records = _label_shift(3, 120_000, start=30.0, lift=0.4, rate=2000.0)
    fast = _first_promotion(SchemaCache(), records)
    slow = _first_promotion(SchemaCache(SchemaCacheConfig(label_shift=False)), records)
    assert fast is not None and slow is not None
    assert fast[1] == ["device=web", "genre=g1"] and slow[1] == fast[1]
    assert T0 + 30.0 < fast[0] < slow[0]


def test_label_shift_path_stays_closed_on_stationary_traffic() -> None:
    records = _label_shift(4, 120_000, start=1e9, lift=0.0, rate=2000.0)  # no shift: 60 s of clean traffic
    assert _first_promotion(SchemaCache(), records) is None
