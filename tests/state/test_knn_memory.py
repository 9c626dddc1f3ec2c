"""Tests of the exact-kNN error memory baseline (reloop.state.error_memory.knn)."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import reloop.state.error_memory.knn as knn_module
from reloop.state.error_memory.memory import ErrorMemory, ErrorMemoryConfig
from reloop.state.error_memory.knn import ExactKnnMemory, knn_search, knn_search_ref


def _norms(h: np.ndarray) -> np.ndarray:
    return np.sqrt((h.astype(np.float64) ** 2).sum(axis=1))


@settings(max_examples=30, deadline=None)
@given(
    size=st.integers(0, 5000),
    n=st.integers(1, 12),
    dim=st.integers(1, 20),
    k=st.integers(1, 40),
    seed=st.integers(0, 10**6),
)
def test_knn_search_equals_reference(size: int, n: int, dim: int, k: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    capacity = size + 3
    keys = rng.standard_normal((capacity, dim)).astype(np.float32)
    keys[rng.random(capacity) < 0.05] = 0.0  # zero-norm keys have cosine 0
    if size > 4:
        keys[1] = keys[3]  # exact ties: lower slot index first
    queries = rng.standard_normal((n, dim)).astype(np.float32)
    args = (queries, _norms(queries), np.ascontiguousarray(keys.T), _norms(keys), size, k)
    idx, cos = knn_search(*args)
    ref_idx, ref_cos = knn_search_ref(*args)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_array_equal(cos, ref_cos)
    assert (idx[:, min(k, size) :] == -1).all()


def test_neighbours_are_the_most_similar_rows() -> None:
    memory = ExactKnnMemory(dim=2, capacity=10)
    angles = np.linspace(0, np.pi, 5)
    keys = np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)
    memory.write(keys, np.zeros(5), np.zeros(5), np.zeros(5))
    idx, cos = memory.neighbours(np.array([[1.0, 0.1]], np.float32), k=2)
    np.testing.assert_array_equal(idx[0], [0, 1])
    assert cos[0, 0] > cos[0, 1]


def test_ring_buffer_keeps_the_latest_capacity_rows() -> None:
    memory = ExactKnnMemory(dim=3, capacity=4)
    rows = np.arange(18, dtype=np.float32).reshape(6, 3) + 1.0
    memory.write(rows[:3], np.zeros(3), np.zeros(3), np.arange(3.0))
    memory.write(rows[3:], np.ones(3), np.zeros(3), np.arange(3.0, 6.0))
    assert memory.size == 4 and memory.head == 2
    assert sorted(memory.ts.tolist()) == [2.0, 3.0, 4.0, 5.0]
    np.testing.assert_array_equal(memory.keys_t[:, 0], rows[4])  # slot 0 overwritten by row 4


def test_lam_zero_and_empty_memory_are_the_identity() -> None:
    rng = np.random.default_rng(0)
    p = rng.random(20)
    h = rng.standard_normal((20, 5)).astype(np.float32)
    empty = ExactKnnMemory(5, 100, lam=1.0)
    np.testing.assert_array_equal(empty.compensate(p, h, now=0.0), p)
    off = ExactKnnMemory(5, 100, lam=0.0)
    off.write(h, np.ones(20), np.zeros(20), np.zeros(20))
    np.testing.assert_array_equal(off.compensate(p, h, now=0.0), p)


def test_decay_prefers_recent_neighbours() -> None:
    memory = ExactKnnMemory(2, 10, lam=1.0, tau=1.0, half_life_s=10.0)
    h = np.array([[1.0, 0.0], [1.0, 0.0]], np.float32)
    memory.write(h, np.array([0.0, 1.0]), np.array([0.5, 0.5]), np.array([0.0, 10.0]))
    out = memory.compensate(np.array([0.5]), h[:1], now=10.0, k=2)
    # weights 1/2 (old, y=0) and 1 (new, y=1): y_bar = 2/3
    assert out[0] == pytest.approx(0.5 + (2.0 / 3.0 - 0.5))


def test_knn_beats_or_matches_the_sketch_on_a_planted_bias() -> None:
    rng = np.random.default_rng(42)
    direction = rng.standard_normal(16)
    direction /= np.linalg.norm(direction)

    def draw(n: int) -> tuple[np.ndarray, ...]:
        in_region = rng.random(n) < 0.2
        hidden = rng.standard_normal((n, 16))
        hidden[in_region] += 4.0 * direction
        y = np.where(in_region, 1.0, (rng.random(n) < 0.2).astype(np.float64))
        return hidden.astype(np.float32), y, np.full(n, 0.2)

    def log_loss(y: np.ndarray, q: np.ndarray) -> float:
        q = np.clip(q, 1e-7, 1 - 1e-7)
        return float(-np.mean(y * np.log(q) + (1 - y) * np.log(1 - q)))

    hidden, y, p = draw(5000)
    test_hidden, test_y, test_p = draw(2000)
    knn = ExactKnnMemory(16, 10000, lam=1.0)
    knn.write(hidden, y, p, np.zeros(5000))
    # the sketch configuration this ceiling check was built on (before the ML-100K tuning)
    sketch = ErrorMemory(16, ErrorMemoryConfig(lam=1.0, bits=8, tau=1.0))
    sketch.write(sketch.codes(hidden), y, p, np.zeros(5000))
    knn_loss = log_loss(test_y, knn.compensate(test_p, test_hidden, now=0.0, k=32))
    sketch_loss = log_loss(test_y, sketch.compensate(test_p, sketch.codes(test_hidden), 0.0)[0])
    base_loss = log_loss(test_y, test_p)
    assert knn_loss < base_loss - 0.15
    assert knn_loss <= sketch_loss + 0.01


def test_docstring_examples() -> None:
    result = doctest.testmod(knn_module)
    assert result.failed == 0 and result.attempted >= 3
