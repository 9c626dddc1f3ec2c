"""The single-predicate tests of a selection round in numba (``kernels.single_tests``) equal
their numpy expression bit for bit (random sums, NaN-free and degenerate rows included)."""

from __future__ import annotations

import numpy as np
import pytest

import reloop.state.schemas.kernels as kernels
from reloop.state.schemas.select import _single_tests


@pytest.mark.parametrize("seed", range(6))
def test_kernel_equals_numpy(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(seed)
    n, n_cols = int(rng.integers(1, 300)), int(rng.integers(1, 6))
    own = rng.exponential(20.0, n) * (rng.random(n) < 0.9)  # some empty slots
    r = rng.normal(0.0, 0.3, n)
    tri = np.stack([own, own * r, own * (r * r + rng.random(n) * 0.1)], axis=1)
    col = rng.integers(0, n_cols, n).astype(np.int32)
    pair = rng.random(n) < 0.3
    parents = np.where(pair[:, None], rng.integers(-1, n, (n, 2)), -1)
    col_tot = np.zeros((n_cols, 3))
    np.add.at(col_tot, col[~pair], tri[~pair])
    chosen = sorted(set(rng.integers(0, n, int(rng.integers(0, 8))).tolist()))
    scale = float(rng.uniform(0.01, 2.0))
    got = _single_tests(tri, col, pair, parents, col_tot, chosen, scale, 1e-4)
    monkeypatch.setattr(kernels, "USE_KERNELS", False)
    want = _single_tests(tri, col, pair, parents, col_tot, chosen, scale, 1e-4)
    assert len(got) == len(want) == 4
    for g, w in zip(got, want):
        assert g.tobytes() == w.tobytes()


@pytest.mark.parametrize("seed", range(6))
def test_vs_rest_kernel_equals_numpy(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The shift screen's tests (``shift._vs_rest``): singles against their column's rest,
    pairs the weaker test against each parent's rest (untracked parents, sign disagreements)."""
    from reloop.state.schemas.shift import _vs_rest

    rng = np.random.default_rng(100 + seed)
    n, n_cols = int(rng.integers(2, 300)), int(rng.integers(1, 6))
    own = rng.exponential(20.0, n) * (rng.random(n) < 0.9)
    r = rng.normal(0.0, 0.3, n)
    tri = np.stack([own, own * r, own * (r * r + rng.random(n) * 0.1)], axis=1)
    pair = rng.random(n) < 0.4
    col = rng.integers(0, n_cols, n).astype(np.int32)
    par = rng.integers(-1, n, (int(pair.sum()), 2)) if pair.any() else None
    scale = float(rng.uniform(0.01, 2.0))
    got = _vs_rest(tri, pair, col, par, scale, 1e-4)
    monkeypatch.setattr(kernels, "USE_KERNELS", False)
    want = _vs_rest(tri, pair, col, par, scale, 1e-4)
    assert got[0].tobytes() == want[0].tobytes() and got[1].tobytes() == want[1].tobytes()
    assert (got[0] != 0).any()
