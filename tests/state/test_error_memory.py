"""Tests of the ReLoop2 error memory (reloop.state.error_memory.memory) and its kernels (reloop.state.error_memory.kernels)."""

from __future__ import annotations

import doctest
import math

import msgspec
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import reloop.state.error_memory.kernels as kernels
import reloop.state.error_memory.memory as error_memory_module
from reloop.state.error_memory.memory import (
    ErrorMemory,
    ErrorMemoryConfig,
    apply_compensation,
    key_uniforms,
    stable_key,
    stable_keys,
)

WEEK = 86400.0 * 7


def _records(rng: np.random.Generator, n: int, dim: int) -> tuple[np.ndarray, ...]:
    hidden = rng.standard_normal((n, dim)).astype(np.float32)
    y = (rng.random(n) < 0.3).astype(np.float64)
    p = rng.random(n)
    return hidden, y, p


def _state(memory: ErrorMemory) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return memory.counts, memory.sum_y, memory.sum_p


# ------------------------------------------------------------------ kernels vs references


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(0, 40),
    dim=st.integers(1, 24),
    tables=st.integers(1, 12),
    bits=st.integers(1, 12),
    seed=st.integers(0, 2**32 - 1),
)
def test_simhash_codes_equal_reference(n: int, dim: int, tables: int, bits: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    h = rng.standard_normal((n, dim)).astype(np.float32)
    planes = rng.standard_normal((tables, bits, dim)).astype(np.float32)
    codes = kernels.simhash_codes(h, planes)
    assert codes.dtype == np.int32 and codes.shape == (n, tables)
    np.testing.assert_array_equal(codes, kernels.simhash_codes_ref(h, planes))
    if n:
        assert codes.min() >= 0 and codes.max() < 2**bits


def test_simhash_bits_follow_the_sign_of_each_projection() -> None:
    planes = np.zeros((1, 3, 2), dtype=np.float32)
    planes[0, 0] = [1.0, 0.0]  # bit 0: x > 0
    planes[0, 1] = [0.0, 1.0]  # bit 1: y > 0
    planes[0, 2] = [-1.0, -1.0]  # bit 2: x + y < 0
    h = np.array([[1.0, 1.0], [1.0, -2.0], [-1.0, 0.5], [0.0, 0.0]], dtype=np.float32)
    codes = kernels.simhash_codes(h, planes)[:, 0]
    np.testing.assert_array_equal(codes, [0b011, 0b101, 0b110, 0b000])


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(0, 300),
    tables=st.integers(1, 8),
    bits=st.integers(1, 6),
    seed=st.integers(0, 10**6),
)
def test_sketch_write_and_read_match_reference(n: int, tables: int, bits: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 2**bits, size=(n, tables)).astype(np.int32)
    weights = np.exp(rng.uniform(-5, 5, n))
    y = (rng.random(n) < 0.5).astype(np.float64)
    p = rng.random(n)
    shape = (tables, 2**bits, 3)
    fast, ref = np.zeros(shape), np.zeros(shape)
    kernels.sketch_write(codes, weights, y, p, fast)
    kernels.sketch_write_ref(codes, weights, y, p, ref)
    np.testing.assert_array_equal(fast, ref)  # same per-bucket order: bit-identical
    queries = rng.integers(0, 2**bits, size=(25, tables)).astype(np.int32)
    for tau in (0.1, 1.0, 2.5):
        got = kernels.sketch_read(queries, fast, 0.37, tau)
        want = kernels.sketch_read_ref(queries, ref, 0.37, tau)
        for a, b in zip(got, want):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=0.0)


def test_sketch_block_must_be_contiguous_float64_with_three_sums() -> None:
    codes = np.zeros((1, 2), dtype=np.int32)
    for bad in (np.zeros((2, 4, 3))[:, ::2], np.zeros((2, 4, 2)), np.zeros((2, 4, 3), np.float32)):
        with pytest.raises(ValueError, match="sketch block"):
            kernels.sketch_read(codes, bad, 1.0, 1.0)


def test_sketch_read_pools_buckets_by_count_at_tau_one() -> None:
    block = np.zeros((2, 2, 3))
    counts, sum_y, sum_p = block[:, :, 0], block[:, :, 1], block[:, :, 2]
    # table 0 bucket 0: 3 records, labels sum 3; table 1 bucket 1: 1 record, label 0
    counts[0, 0], sum_y[0, 0], sum_p[0, 0] = 3.0, 3.0, 0.6
    counts[1, 1], sum_y[1, 1], sum_p[1, 1] = 1.0, 0.0, 0.5
    codes = np.array([[0, 1], [1, 0]], dtype=np.int32)
    y_bar, p_bar, evidence = kernels.sketch_read(codes, block, 1.0, 1.0)
    assert y_bar[0] == pytest.approx(3.0 / 4.0)  # pooled: (3 + 0) / (3 + 1)
    assert p_bar[0] == pytest.approx(1.1 / 4.0)
    assert evidence[0] == pytest.approx(2.0)  # (3 + 1) / 2 tables
    assert (y_bar[1], p_bar[1], evidence[1]) == (0.0, 0.0, 0.0)  # both buckets empty
    y_sharp, _, _ = kernels.sketch_read(codes[:1], block, 1.0, 0.1)
    assert y_sharp[0] > 0.999  # tau -> 0 picks the fuller bucket


# ------------------------------------------------------------------ identity cases


def test_lam_zero_is_exactly_the_identity() -> None:
    rng = np.random.default_rng(0)
    memory = ErrorMemory(8, ErrorMemoryConfig(lam=0.0, tables=16, bits=4))
    hidden, y, p = _records(rng, 500, 8)
    codes = memory.codes(hidden)
    memory.write(codes, y, p, np.zeros(500))
    query = rng.random(500)
    compensated, evidence = memory.compensate(query, codes, now=10.0)
    assert (evidence > 0).all()
    assert compensated.dtype == np.float64
    np.testing.assert_array_equal(compensated, query)


def test_empty_memory_is_the_identity() -> None:
    memory = ErrorMemory(8, ErrorMemoryConfig(lam=1.0, min_evidence=0.0))
    p = np.array([0.0, 0.3, 1.0])
    codes = memory.codes(np.ones((3, 8), dtype=np.float32))
    compensated, evidence = memory.compensate(p, codes, now=0.0)
    np.testing.assert_array_equal(compensated, p)
    np.testing.assert_array_equal(evidence, 0.0)
    assert memory.total_weight(0.0) == 0.0


def test_unseen_buckets_are_left_alone_and_min_evidence_zero_gives_full_step() -> None:
    memory = ErrorMemory(2, ErrorMemoryConfig(tables=4, bits=6, lam=1.0, min_evidence=0.0))
    seen = memory.codes(np.array([[1.0, 0.0]], dtype=np.float32))
    unseen = (seen + 1) % memory.n_buckets
    memory.write(seen, np.array([1.0]), np.array([0.3]), np.array([0.0]))
    comp, evidence = memory.compensate(np.array([0.3, 0.3]), np.vstack([seen, unseen]), 0.0)
    assert comp[0] == pytest.approx(1.0)  # full correction 0.3 + (1 - 0.3)
    assert (comp[1], evidence[1]) == (0.3, 0.0)


def test_apply_compensation_formula_mixes_the_two_error_estimates() -> None:
    p = np.array([0.4])
    out = apply_compensation(p, np.array([0.9]), np.array([0.5]), np.array([0.5]), 0.8, 0.25)
    y_err = 0.25 * (0.9 - 0.4) + 0.75 * (0.9 - 0.5)
    assert out[0] == pytest.approx(0.4 + 0.8 * 0.5 * y_err)
    clipped = apply_compensation(p, np.array([1.0]), np.array([0.0]), np.array([1.0]), 5.0, 0.0)
    assert clipped[0] == 1.0


# ------------------------------------------------------------------ replicas and decay


def _replica_pair_after_shuffled_writes(
    ts: np.ndarray, batch: int, seed: int
) -> tuple[ErrorMemory, ErrorMemory, np.ndarray]:
    rng = np.random.default_rng(seed)
    config = ErrorMemoryConfig(tables=16, bits=5, half_life_s=3600.0)
    a, b = ErrorMemory(12, config), ErrorMemory(12, config)
    hidden, y, p = _records(rng, ts.shape[0], 12)
    codes = a.codes(hidden)
    a.write(codes, y, p, ts)  # one batch, event-time order as given
    order = rng.permutation(ts.shape[0])
    for start in range(0, ts.shape[0], batch):  # shuffled, small batches
        sel = order[start : start + batch]
        b.write(codes[sel], y[sel], p[sel], ts[sel])
    return a, b, codes


@pytest.mark.parametrize("batch", [1, 7, 250])
def test_replicas_converge_under_any_order_and_batching(batch: int) -> None:
    rng = np.random.default_rng(batch)
    ts = np.sort(rng.uniform(1.7e9, 1.7e9 + 20 * 3600.0, 1000))
    a, b, codes = _replica_pair_after_shuffled_writes(ts, batch, seed=batch)
    assert a.landmark == b.landmark and a.max_ts == b.max_ts
    for x, y in zip(_state(a), _state(b)):
        np.testing.assert_allclose(x, y, rtol=1e-9, atol=0.0)
    now = float(ts.max())
    ca, ea = a.compensate(np.full(50, 0.5), codes[:50], now)
    cb, eb = b.compensate(np.full(50, 0.5), codes[:50], now)
    np.testing.assert_allclose(ca, cb, rtol=1e-9)
    np.testing.assert_allclose(ea, eb, rtol=1e-9)


def test_replicas_converge_across_landmark_renormalisation() -> None:
    decay_time = 3600.0 / math.log(2.0)
    span = 100.0 * decay_time
    rng = np.random.default_rng(5)
    # event times spanning three landmark grid cells, ~ 2.5 spans
    ts = rng.uniform(0.1 * span, 2.6 * span, 600)
    ts[:200] = rng.uniform(2.55 * span, 2.6 * span, 200)  # plenty of recent mass
    a, b, _ = _replica_pair_after_shuffled_writes(ts, batch=5, seed=9)
    assert a.landmark == b.landmark == 2 * span
    # replica `c` sees time move forward in order: the landmark moves twice, rescaling
    config = a.config
    c = ErrorMemory(12, config)
    rng2 = np.random.default_rng(9)
    hidden, y, p = _records(rng2, 600, 12)
    codes = c.codes(hidden)
    landmarks = set()
    for sel in np.array_split(np.argsort(ts), 12):
        c.write(codes[sel], y[sel], p[sel], ts[sel])
        landmarks.add(c.landmark)
    assert len(landmarks) == 3 and c.landmark == a.landmark
    for x, y_, z in zip(_state(a), _state(b), _state(c)):
        np.testing.assert_allclose(x, y_, rtol=1e-9, atol=0.0)
        np.testing.assert_allclose(x, z, rtol=1e-9, atol=0.0)
    assert np.isfinite(a.counts).all() and a.counts.max() < math.exp(101) * 600


def test_record_one_half_life_old_counts_half() -> None:
    config = ErrorMemoryConfig(tables=4, bits=4, half_life_s=3600.0, min_evidence=0.0)
    memory = ErrorMemory(3, config)
    codes = memory.codes(np.array([[0.2, 0.5, -1.0]], dtype=np.float32))
    memory.write(codes, np.array([1.0]), np.array([0.1]), np.array([1.7e9]))
    assert memory.total_weight(1.7e9) == pytest.approx(1.0, rel=1e-12)
    assert memory.total_weight(1.7e9 + 3600.0) == pytest.approx(0.5, rel=1e-12)
    assert memory.total_weight(1.7e9 + 7200.0) == pytest.approx(0.25, rel=1e-12)
    _, evidence = memory.compensate(np.array([0.1]), codes, now=1.7e9 + 3600.0)
    assert evidence[0] == pytest.approx(0.5, rel=1e-12)
    # a fresh record and a one-half-life-old one: the fresh one weighs twice as much
    memory.reset()
    memory.write(codes, np.array([1.0]), np.array([0.1]), np.array([1.7e9]))
    memory.write(codes, np.array([0.0]), np.array([0.1]), np.array([1.7e9 + 3600.0]))
    y_bar, _, _ = kernels.sketch_read(codes, memory._buckets, 1.0, 1.0)
    assert y_bar[0] == pytest.approx(1.0 / 3.0, rel=1e-12)


# ------------------------------------------------------------------ quality


def _biased_draw(rng: np.random.Generator, n: int, direction: np.ndarray) -> tuple[np.ndarray, ...]:
    """20% of samples near ``direction`` with y=1 although p=0.2; elsewhere calibrated."""
    in_region = rng.random(n) < 0.2
    hidden = rng.standard_normal((n, direction.shape[0]))
    hidden[in_region] += 4.0 * direction
    y = np.where(in_region, 1.0, (rng.random(n) < 0.2).astype(np.float64))
    return hidden.astype(np.float32), y, np.full(n, 0.2), in_region


def _log_loss(y: np.ndarray, q: np.ndarray) -> float:
    q = np.clip(q, 1e-7, 1 - 1e-7)
    return float(-np.mean(y * np.log(q) + (1 - y) * np.log(1 - q)))


def test_planted_bias_is_compensated_and_log_loss_drops() -> None:
    rng = np.random.default_rng(42)
    direction = rng.standard_normal(16)
    direction /= np.linalg.norm(direction)
    memory = ErrorMemory(16, ErrorMemoryConfig(lam=1.0))
    hidden, y, p, _ = _biased_draw(rng, 5000, direction)
    assert memory.write(memory.codes(hidden), y, p, np.zeros(5000)) == 5000
    test_hidden, test_y, test_p, in_region = _biased_draw(rng, 2000, direction)
    compensated, evidence = memory.compensate(test_p, memory.codes(test_hidden), now=0.0)
    assert (evidence > 0).all()
    assert compensated[in_region].mean() > 0.6  # moved from 0.2 towards the label 1
    assert compensated[in_region].mean() > compensated[~in_region].mean() + 0.25
    assert _log_loss(test_y, compensated) < _log_loss(test_y, test_p) - 0.1


# ------------------------------------------------------------------ write policy


def test_write_threshold_skips_small_errors() -> None:
    memory = ErrorMemory(4, ErrorMemoryConfig(write_threshold=0.5, tables=4, bits=3))
    y = np.array([1.0, 1.0, 0.0, 0.0])
    p = np.array([0.9, 0.4, 0.5, 0.49])
    np.testing.assert_array_equal(memory.keep_mask(y, p, None), [False, True, True, False])
    codes = memory.codes(np.eye(4, dtype=np.float32))
    assert memory.write(codes, y, p, np.zeros(4)) == 2
    assert memory.total_weight(0.0) == pytest.approx(2.0)


def test_write_sampling_is_deterministic_per_key_and_has_the_right_rate() -> None:
    config = ErrorMemoryConfig(write_sample=0.3, tables=4, bits=3)
    keys = stable_keys(f"req-{i}:item-{i % 17}" for i in range(20000))
    a, b = ErrorMemory(4, config), ErrorMemory(4, ErrorMemoryConfig(write_sample=0.3, seed=7))
    y, p = np.ones(20000), np.zeros(20000)
    mask_a, mask_b = a.keep_mask(y, p, keys), b.keep_mask(y, p, keys)
    np.testing.assert_array_equal(mask_a, mask_b)
    assert abs(mask_a.mean() - 0.3) < 0.015
    perm = np.random.default_rng(0).permutation(20000)  # per record, not per position
    np.testing.assert_array_equal(a.keep_mask(y[perm], p[perm], keys[perm]), mask_a[perm])
    with pytest.raises(ValueError, match="keys"):
        a.keep_mask(y, p, None)
    u = key_uniforms(keys)
    assert u.min() >= 0.0 and u.max() < 1.0


def test_stable_key_is_blake2b_little_endian() -> None:
    import hashlib

    digest = hashlib.blake2b(b"err-1", digest_size=8).digest()
    assert stable_key("err-1") == int.from_bytes(digest, "little")
    assert stable_keys(["err-1"]).dtype == np.uint64
    assert int(stable_keys(["err-1"])[0]) == stable_key("err-1")


def test_bad_inputs_are_rejected() -> None:
    memory = ErrorMemory(4, ErrorMemoryConfig(tables=4, bits=3))
    good = memory.codes(np.ones((2, 4), dtype=np.float32))
    with pytest.raises(ValueError, match="codes"):
        memory.write(good + 8, np.ones(2), np.ones(2), np.zeros(2))  # out of range
    with pytest.raises(ValueError, match="codes"):
        memory.compensate(np.ones(2), good[:, :3], 0.0)
    with pytest.raises(ValueError, match="codes"):  # would wrap to 0 in int32
        memory.compensate(np.ones(2), good.astype(np.int64) + 2**32, 0.0)
    with pytest.raises(ValueError, match="finite"):
        memory.write(good, np.array([1.0, np.nan]), np.ones(2), np.zeros(2))
    with pytest.raises(ValueError, match="hidden"):
        memory.codes(np.ones((2, 5), dtype=np.float32))
    with pytest.raises(ValueError):
        ErrorMemoryConfig(write_sample=0.0)
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(b'{"gamma": 2.0}', type=ErrorMemoryConfig)


# ------------------------------------------------------------------ persistence


def _filled_memory() -> ErrorMemory:
    rng = np.random.default_rng(3)
    memory = ErrorMemory(8, ErrorMemoryConfig(tables=8, bits=5, seed=11, tau=0.5))
    hidden, y, p = _records(rng, 400, 8)
    memory.write(memory.codes(hidden), y, p, rng.uniform(1e9, 1e9 + 1e5, 400))
    return memory


def _assert_same(a: ErrorMemory, b: ErrorMemory) -> None:
    assert a.config == b.config and a.dim == b.dim
    assert a.landmark == b.landmark and a.max_ts == b.max_ts
    for name in ("planes", "counts", "sum_y", "sum_p"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    h = np.random.default_rng(4).standard_normal((30, 8)).astype(np.float32)
    np.testing.assert_array_equal(a.codes(h), b.codes(h))
    now = 1e9 + 2e5
    ca, ea = a.compensate(np.full(30, 0.3), a.codes(h), now)
    cb, eb = b.compensate(np.full(30, 0.3), b.codes(h), now)
    np.testing.assert_array_equal(ca, cb)
    np.testing.assert_array_equal(ea, eb)


def test_snapshot_restore_round_trips_exactly() -> None:
    memory = _filled_memory()
    snap = memory.snapshot()
    assert all(isinstance(v, np.ndarray) and v.dtype != object for v in snap.values())
    _assert_same(memory, ErrorMemory.restore(snap))
    empty = ErrorMemory.restore(ErrorMemory(8, memory.config).snapshot())
    assert empty.landmark is None and empty.total_weight(0.0) == 0.0


def test_save_load_round_trips_exactly_without_pickle(tmp_path) -> None:
    memory = _filled_memory()
    path = tmp_path / "error_memory.npz"
    memory.save(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["error_memory.npz"]  # no tmp left
    loaded = ErrorMemory.load(path)
    _assert_same(memory, loaded)
    memory.save(path)  # overwrite in place
    with np.load(path, allow_pickle=False) as npz:
        assert {"config", "landmark", "planes", "counts"} <= set(npz.files)


def test_restore_rejects_a_corrupt_snapshot() -> None:
    snap = _filled_memory().snapshot()
    bad = dict(snap, counts=snap["counts"][:, :3])
    with pytest.raises(ValueError, match="counts"):
        ErrorMemory.restore(bad)
    with pytest.raises(ValueError, match="lacks"):
        ErrorMemory.restore({k: v for k, v in snap.items() if k != "sum_p"})


def test_reset_and_nbytes() -> None:
    memory = _filled_memory()
    assert memory.nbytes >= 3 * 8 * 32 * 8
    memory.reset()
    assert memory.landmark is None and not memory.counts.any()


def test_docstring_examples() -> None:
    for module in (error_memory_module, kernels):
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert result.failed == 0
    assert doctest.testmod(error_memory_module).attempted >= 8


def test_snapshot_into_previous_buffers_equals_a_fresh_copy() -> None:
    memory = ErrorMemory(3, ErrorMemoryConfig(tables=4, bits=6, lam=1.0, min_evidence=0.0))
    rng = np.random.default_rng(3)
    hidden = rng.standard_normal((50, 3)).astype(np.float32)
    memory.write(memory.codes(hidden), rng.integers(0, 2, 50).astype(float), np.full(50, 0.4), np.arange(50.0))
    first = memory.snapshot()
    memory.write(memory.codes(hidden), np.ones(50), np.full(50, 0.2), np.arange(50.0, 100.0))
    reused = memory.snapshot(into=first)
    assert reused["counts"] is first["counts"]  # the buffers were overwritten, not reallocated
    fresh = memory.snapshot()
    for name in ("counts", "sum_y", "sum_p", "planes"):
        np.testing.assert_array_equal(reused[name], fresh[name])
    assert ErrorMemory.restore(reused).compensate(np.full(5, 0.3), memory.codes(hidden[:5]), 100.0)[0].tolist() == \
        memory.compensate(np.full(5, 0.3), memory.codes(hidden[:5]), 100.0)[0].tolist()
