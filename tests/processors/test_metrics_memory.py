"""The online metrics keep a bounded amount of memory however many samples pass through."""

from __future__ import annotations

import numpy as np

from reloop.processors.metrics import OnlineMetrics


def _held(m: OnlineMetrics) -> int:
    """Samples river's rolling AUCs hold in their Python-side buffers (river >= 0.26 buffers
    updates until read; older versions hold none)."""
    return sum(len(getattr(r, "_buf_labels", ())) for r in m._rolling.values())


def test_rolling_auc_buffers_stay_bounded_and_figures_are_unchanged() -> None:
    rng = np.random.default_rng(0)
    window = 50
    m = OnlineMetrics(window=window)
    most = 0
    for _ in range(400):
        n = int(rng.integers(1, 40))
        y = (rng.random(n) < 0.3).astype(np.int64)
        m.update(y, rng.random(n), rng.random(n), np.zeros(n))
        most = max(most, _held(m))
    assert m.count > 20 * window
    assert most <= 2 * (window + 40)  # each variant: at most a window plus one batch between flushes
    # the figures are what an unflushed copy gives: flushing does not change the rolling AUC
    again = OnlineMetrics.from_state(m.to_state())
    assert again.summary() == m.summary()
