"""PredictionLog: spilled columns read back unchanged; exact AUC and log loss against the
whole-array metrics, whatever the chunking."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from reloop.models.metrics import auc, logloss
from reloop.ops.replay_predictions import PredictionLog


def _records(n: int, seed: int) -> list[SimpleNamespace]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    # scores rounded so ties occur within and across chunks; positives score higher on average
    base = np.round(np.clip(rng.normal(0.4 + 0.2 * y, 0.2), 0, 1), 2)
    comp = np.round(np.clip(base + rng.normal(0, 0.05, n), 0, 1), 3)
    users = rng.integers(0, 37, n)
    return [SimpleNamespace(user_id=f"u{users[k]}", ts=float(k), label=int(y[k]), base_pred=float(base[k]),
                            comp_pred=float(comp[k])) for k in range(n)]


@pytest.mark.parametrize("chunk_rows, batch", [(1 << 20, 64), (100, 7), (64, 64), (50, 1)])
def test_columns_and_metrics_match_whole_arrays(chunk_rows: int, batch: int) -> None:
    recs = _records(1500, seed=chunk_rows)
    log = PredictionLog(chunk_rows=chunk_rows)
    for k in range(0, len(recs), batch):
        log.append(recs[k:k + batch])
    y = np.array([r.label for r in recs])
    b = np.array([r.base_pred for r in recs])
    c = np.array([r.comp_pred for r in recs])
    assert len(log) == 1500 and log.positives == int(y.sum())
    held = chunks = 0  # a chunk is spilled once a batch brings the rows held to chunk_rows
    for k in range(0, len(recs), batch):
        held += len(recs[k:k + batch])
        if held >= chunk_rows:
            held, chunks = 0, chunks + 1
    assert log.spilled_chunks == chunks
    np.testing.assert_array_equal(log.column("y"), y)
    np.testing.assert_array_equal(log.column("b"), b)
    np.testing.assert_array_equal(log.column("c"), c)
    np.testing.assert_array_equal(log.column("t"), np.arange(1500, dtype=np.float64))
    assert log.user_ids().tolist() == [r.user_id for r in recs]
    # the AUC is bit-identical to the rank-sum over the whole arrays (exact half-integer sums)
    assert log.auc("b") == auc(y, b)
    assert log.auc("c") == auc(y, c)
    if chunks == 0:  # one sum: the same float as the whole-array mean
        assert log.logloss("b") == logloss(y, b)
    assert log.logloss("b") == pytest.approx(logloss(y, b), rel=1e-13)
    assert log.logloss("c") == pytest.approx(logloss(y, c), rel=1e-13)
    log.close()


def test_memory_holds_one_chunk() -> None:
    log = PredictionLog(chunk_rows=100)
    for k in range(0, 1000, 10):
        log.append(_records(10, seed=k))
        assert log._buf_n < 100  # noqa: SLF001 - the bound this class exists for
    assert log.spilled_chunks == 10


def test_one_label_kind_and_empty() -> None:
    log = PredictionLog(chunk_rows=3)
    assert np.isnan(log.auc("b")) and np.isnan(log.logloss("b")) and len(log.column("y")) == 0
    log.append([SimpleNamespace(user_id="u", ts=0.0, label=1, base_pred=0.5, comp_pred=0.5)] * 5)
    assert np.isnan(log.auc("c")) and log.positives == 5
    assert log.user_ids().tolist() == ["u"] * 5
