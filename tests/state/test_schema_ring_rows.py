"""The overlap sums from row lists (:func:`ring_sums_rows`, what a tick's memo feeds) equal
numpy's masked sums bit for bit, whatever superset of the others' rows is passed."""

from __future__ import annotations

import numpy as np
import pytest

from reloop.state.schemas.reference import ring_sums_ref
from reloop.state.schemas.ring_kernels import key_rows, mark_members, marked_rows, ring_sums_rows


@pytest.mark.parametrize("n", [1, 9, 128, 300, 4099])
def test_rows_path_equals_numpy(n: int) -> None:
    rng = np.random.default_rng(n)
    pids = np.asfortranarray(rng.integers(0, 4, (n, 4)).astype(np.int32))
    w = np.exp(-rng.random(n) * 4.0) * (rng.random(n) < 0.9)
    wr = w * (rng.integers(0, 2, n) - rng.uniform(0.05, 0.4, n))
    for _ in range(8):
        k = int(rng.integers(0, 5))
        key_cols = rng.choice(4, int(rng.integers(1, 3)), replace=False)
        key = rng.integers(1, 4, key_cols.size)
        lens = rng.integers(1, 3, k)
        others = rng.integers(1, 4, (k, 2))
        other_cols = np.stack([rng.choice(4, 2, replace=False) for _ in range(k)]) if k else np.zeros((0, 2), int)
        bits = np.zeros(n, np.uint64)
        for j in range(k):
            mark_members(pids, bits, j, others[j, :lens[j]], other_cols[j, :lens[j]])
        # a pattern marked but not among the others: its rows are candidates, not terms
        mark_members(pids, bits, 60, np.array([1]), np.array([int(rng.integers(0, 4))]))
        masks = np.array([1 << j for j in range(k)], np.uint64)
        want = ring_sums_ref(np.ascontiguousarray(pids), w, wr, key, key_cols, others, other_cols, lens)
        rows = key_rows(pids, key, key_cols)
        assert rows.tolist() == np.flatnonzero(np.all(pids[:, key_cols] == key, axis=1)).tolist()
        for cand in (marked_rows(bits), np.arange(n, dtype=np.int64)):  # marked rows, or every row
            got = ring_sums_rows(n, w, wr, rows, cand, bits, masks)
            np.testing.assert_array_equal(got, want)
