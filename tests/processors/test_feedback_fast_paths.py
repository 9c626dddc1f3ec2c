"""The feedback path's shortcuts give what the plain forms give: the memoised choice of the
features a pending prediction keeps, the rolling AUC fed only a batch's last window, the
metrics' columns built in one pass."""

from __future__ import annotations

import numpy as np
import pytest

from reloop.processors.feedback import FeedbackCore
from reloop.processors.metrics import OnlineMetrics
from reloop.processors.pending import Pending, PendingStore
from reloop.processors.scoring import KeptFeatures, model_features
from reloop.streams.events import Interaction


def _random_features(rng: np.random.Generator) -> dict:
    names = [f"f{j}" for j in rng.permutation(12)[:rng.integers(0, 12)]]
    out: dict = {}
    for name in names:
        kind = rng.integers(0, 3)  # the same name is a string in one row, a number in another
        out[name] = f"v{rng.integers(0, 3)}" if kind == 0 else (float(rng.random()) if kind == 1 else int(rng.integers(0, 5)))
    return out


@pytest.mark.parametrize("seed", range(5))
def test_kept_features_match_model_features_row_by_row(seed):
    rng = np.random.default_rng(seed)
    kept = KeptFeatures(max_shapes=7)  # small: the memo is cleared and refilled on the way
    for _ in range(40):
        keep = (int(rng.integers(0, 6)), tuple(f"f{j}" for j in rng.permutation(12)[:rng.integers(0, 5)]))
        rows = [_random_features(rng) for _ in range(int(rng.integers(1, 30)))]
        got = kept.rows(rows, keep)
        want = [model_features(r, keep) for r in rows]
        assert got == want
        assert [list(g) for g in got] == [list(w) for w in want]  # same order of names too
        assert len(kept._names) <= 7  # noqa: SLF001


def test_rolling_auc_of_large_batches_equals_every_sample_fed():
    """Batches larger than the window feed the rolling AUC their last ``window`` samples only;
    its value is the one of river's metric fed every sample (bit for bit, ties included)."""
    from river import metrics as river_metrics

    rng = np.random.default_rng(3)
    window = 50
    m = OnlineMetrics(window=window)
    ref = {v: river_metrics.RollingROCAUC(window_size=window) for v in ("base", "compensated")}
    for n in (3, 180, 1, 51, 400, 49, 50):
        y = rng.integers(0, 2, n)
        pb, pc = np.round(rng.random(n), 2), rng.random(n)  # rounded: ties in the ranking
        m.update(y, pb, pc, np.arange(n, dtype=np.float64))
        for v, p in (("base", pb), ("compensated", pc)):
            for yi, pi in zip(y.tolist(), np.clip(p, 1e-7, 1 - 1e-7).tolist()):
                ref[v].update(yi, pi)
            assert m.summary()[f"rolling_auc_{v}"] == ref[v].get()


def test_emitted_metrics_equal_the_records_columns():
    store = PendingStore(window_s=10.0)
    core = FeedbackCore(store, OnlineMetrics(window=4))
    scored = [Pending(f"r{i}", "i", "u", 100.0 + i, 0.1 * (i + 1), 0.05 * (i + 1), "v", (), {}) for i in range(6)]
    core.on_scored(scored)
    records = core.on_batch([Interaction(user_id="u", item_id="i", ts=100.5 + i, label=i % 2, request_id=f"r{i}")
                             for i in range(6)])
    ref = OnlineMetrics(window=4)
    ref.update(np.array([r.label for r in records]), np.array([r.base_pred for r in records]),
               np.array([r.comp_pred for r in records]), np.array([r.ts for r in records]))
    assert [r.label for r in records] == [0, 1, 0, 1, 0, 1]
    assert core.metrics.to_state() == ref.to_state()
