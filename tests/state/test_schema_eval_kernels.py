"""The schema cache's overlap check in numba (``overlap_sums``) against its numpy reference.

Sums bit for bit on random rings; the decisions of :meth:`RecentRecords.explained_many` on
random calls, one at a time and batched; and the change lists of whole runs -- a stream made by the feedback path
(``bench/_schema_pipeline.error_stream``) and a planted overlap that the check explains away --
equal with the kernels and with the numpy paths they replaced (``kernels.USE_KERNELS``).
"""

from __future__ import annotations

from collections import Counter

import msgspec
import numpy as np
import pytest

import reloop.state.schemas.kernels as kernels
from bench._schema_pipeline import error_stream
from reloop.ops.settings import Settings
from reloop.state.schemas.cache import SchemaCache, SchemaCacheConfig
from reloop.state.schemas.kernels import mark_members, overlap_sums
from reloop.state.schemas.recent import RecentRecords
from reloop.state.schemas.reference import explained_ref, overlap_sums_ref
from reloop.state.schemas.ring_kernels import fixed_point, key_rows, member_sums
from reloop.state.schemas.select import two_sample_z
from reloop.streams.events import ErrorRecord

T0 = 1_700_000_000.0


def _ring(rng: np.random.Generator, n: int, width: int, values: int) -> tuple[np.ndarray, ...]:
    """Column-major ids (0 = absent), weights with empty (0) slots, residuals of both signs."""
    pids = np.asfortranarray(rng.integers(0, values, (n, width)).astype(np.int32))
    w = np.exp(-rng.random(n) * 4.0) * (rng.random(n) < 0.9)
    return pids, w, w * (rng.integers(0, 2, n) - rng.uniform(0.05, 0.4, n))


@pytest.mark.parametrize("n", [1, 5, 8, 13, 127, 128, 129, 200, 1000, 3333, 16384])
def test_overlap_sums_equal_numpy_bit_for_bit(n: int) -> None:
    """Several checks in one pass, each against its own others (a marked pattern that no check
    names adds rows to visit, not terms), against numpy masks, one check at a time."""
    rng = np.random.default_rng(n)
    for values in (3, 12):
        pids, w, wr = _ring(rng, n, 5, values)
        wq, wrq = fixed_point(w), fixed_point(wr)
        checks = []
        bits = np.zeros(n, np.uint64)
        for _ in range(6):
            k = int(rng.integers(0, 6))
            key_len = int(rng.integers(1, 3))
            key_cols = rng.choice(5, key_len, replace=False)
            key = rng.integers(1, values, key_len)
            lens = rng.integers(1, 3, k)
            others = rng.integers(1, values, (k, 2))
            other_cols = np.stack([rng.choice(5, 2, replace=False) for _ in range(k)]) if k else np.zeros((0, 2), int)
            checks.append((key, key_cols, others, other_cols, lens))
        marked_bits: dict[int, int] = {}
        for j, (_, _, others, other_cols, lens) in enumerate(checks):
            for t in range(len(lens)):  # a bit of its own per (check, other)
                bit = (j * 7 + t) % 64
                mark_members(pids, bits, bit, others[t, :lens[t]], other_cols[t, :lens[t]])
                marked_bits[j, t] = bit
        mark_members(pids, bits, 63, np.array([1]), np.array([0]))
        rows = [key_rows(pids, key, key_cols) for key, key_cols, *_ in checks]
        masks = [[1 << marked_bits[j, t] for t in range(len(c[4]))] for j, c in enumerate(checks)]
        got = overlap_sums(wq, wrq, bits, rows, np.array([sum(m) for m in masks], np.uint64))
        assert got.shape == (len(checks), 8) and got.dtype == np.int64
        # the same unions grown from smaller ones (each without its last other), scanning only
        # the rows of the others added
        smaller = np.array([sum(m[:-1]) for m in masks], np.uint64)
        first = overlap_sums(wq, wrq, bits, rows, smaller)
        added = [marked_bits[j, len(c[4]) - 1] for j, c in enumerate(checks) if len(c[4])]
        scan = np.flatnonzero(bits & np.uint64(sum(1 << b for b in added))).astype(np.int64)
        grown = overlap_sums(wq, wrq, bits, rows, np.array([sum(m) for m in masks], np.uint64), smaller,
                             first[:, 6:], scan)
        np.testing.assert_array_equal(grown, got)
        for j, (key, key_cols, others, other_cols, lens) in enumerate(checks):
            want = overlap_sums_ref(np.ascontiguousarray(pids), wq, wrq, key, key_cols, others, other_cols, lens)
            np.testing.assert_array_equal(got[j, :6], want[:6])
            union = np.zeros(n, bool)
            for t in range(len(lens)):
                union |= np.all(pids[:, other_cols[t, :lens[t]]] == others[t, :lens[t]], axis=1)
            assert got[j, 6:].tolist() == [int(wq[union].sum()), int(wrq[union].sum())]
            np.testing.assert_array_equal(member_sums(wq, bits, rows[j], np.array(masks[j], np.uint64)), want[6:])
            assert rows[j].tolist() == np.flatnonzero(np.all(pids[:, key_cols] == key, axis=1)).tolist()


def test_explained_agrees_with_reference_on_random_calls() -> None:
    """Same answer on random keys and chosen sets, with one memo per evaluation shared by the
    calls as the cache does (more than 64 distinct others: the bits are reassigned)."""
    rng = np.random.default_rng(7)
    ring = RecentRecords(4096, 6)
    n_vals = 8
    cols = (np.arange(6 * n_vals) // n_vals).astype(np.int32)  # id = col * 8 + v, v > 0
    ids = rng.integers(1, n_vals, (4096, 6)) + np.arange(6) * n_vals
    ring.append(ids.astype(np.int32), rng.uniform(-0.4, 0.6, 4096), T0 + rng.uniform(0, 30, 4096),
                [f"e{i}" for i in range(4096)])
    singles = [int(c * n_vals + v) for c in range(6) for v in range(1, n_vals)]
    pairs = [(a << 32) | b for a in singles for b in singles if a < b and cols[a] != cols[b]]
    patterns = singles + pairs
    hits = 0
    for evaluation in range(4):
        memo_k: dict = {}
        memo_r: dict = {}
        memo_b: dict = {}
        checks: list = []
        now = T0 + 30 + evaluation
        for _ in range(60):
            key = int(rng.choice(patterns))
            others = [int(o) for o in rng.choice(patterns, int(rng.integers(1, 12)), replace=False)]
            gap = float(rng.choice([-1, 1]) * rng.uniform(0.001, 0.2))
            frac = float(rng.choice([0.25, 0.5]))
            got = ring.explained(key, others, gap, frac, cols, now, 14.4, memo_k)
            want = explained_ref(ring, key, others, gap, frac, cols, now, 14.4, memo_r)
            assert got == want
            hits += got >= 0
            checks.append((key, others, gap, frac))
        assert len(memo_k["bit_of"]) <= 64
        for lo in range(0, 60, 6):  # batches of 6 checks in one pass, on a fresh memo
            assert ring.explained_many(checks[lo:lo + 6], cols, now, 14.4, memo_b) == [
                explained_ref(ring, *c, cols, now, 14.4, memo_r) for c in checks[lo:lo + 6]]
    assert hits > 0  # the random calls reach the overlap argmax too


def _changes(records: list[ErrorRecord], use_kernels: bool, monkeypatch: pytest.MonkeyPatch,
             batch: int = 1000) -> tuple[list, Counter]:
    """Feed ``records`` to a fresh default cache; its changes and how ``explained`` answered."""
    monkeypatch.setattr(kernels, "USE_KERNELS", use_kernels)
    calls: Counter = Counter()
    original = RecentRecords.explained_many

    def counted(self, *args):  # type: ignore[no-untyped-def]
        out = original(self, *args)
        calls.update("explained by" if by >= 0 else "kept" for by in out)
        return out

    monkeypatch.setattr(RecentRecords, "explained_many", counted)
    cache, changes = SchemaCache(SchemaCacheConfig()), []
    for lo in range(0, len(records), batch):
        changes += cache.on_batch(records[lo:lo + batch])
    monkeypatch.undo()
    return changes, calls


def _assert_same(a: list, b: list) -> None:
    assert [(c.kind, c.schema.schema_id, c.schema.signature, c.schema.reason) for c in a] == \
        [(c.kind, c.schema.schema_id, c.schema.signature, c.schema.reason) for c in b]
    assert msgspec.json.encode(a) == msgspec.json.encode(b)  # every figure too: the sums are exact


def test_pipeline_stream_gives_the_same_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Error records made by the feedback path (simulator traffic, the main job's shift of
    ``segment=s1``), in event-time order, through the kernel and through the numpy path."""
    stats: dict = {}
    records = sorted((r for batch in error_stream(0, 6000, True, Settings(), stats=stats, drain=True)
                      for r in batch), key=lambda r: r.ts)
    fast, calls = _changes(records, True, monkeypatch)
    slow, calls_ref = _changes(records, False, monkeypatch)
    assert sum(c.kind == "promoted" for c in fast) >= 3 and calls["kept"] > 1000
    assert calls == calls_ref
    _assert_same(fast, slow)


def _overlap_stream(seed: int, n: int, t0: float, lift: float) -> list[ErrorRecord]:
    """``age_bucket=4 & device=1`` errs by ``lift``; 90% of its rows are ``segment=s1``, so
    ``segment=s1`` errs too, through them: the overlap check should explain it away."""
    rng = np.random.default_rng(seed)
    a, d, g = rng.integers(0, 5, n), rng.choice(3, n, p=[0.5, 0.3, 0.2]), rng.integers(0, 10, n)
    target = (a == 4) & (d == 1)
    seg = np.where(target & (rng.random(n) < 0.9), 1, rng.integers(0, 4, n))
    p = rng.uniform(0.05, 0.35, n)
    y = (rng.random(n) < np.clip(p + lift * target, 0.0, 1.0)).astype(int)
    return [ErrorRecord(error_id=f"e{seed}-{i}", user_id="u", item_id="i", ts=t0 + i / 1000.0, label=int(y[i]),
                        base_pred=float(p[i]), comp_pred=float(p[i]), model_version="v1",
                        features={"genre": f"g{g[i]}", "age_bucket": str(a[i]), "device": str(d[i]),
                                  "segment": f"s{seg[i]}"}) for i in range(n)]


def test_planted_overlap_gives_the_same_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    records = _overlap_stream(1, 15_000, T0, 0.0) + _overlap_stream(2, 25_000, T0 + 15, 0.35)
    fast, calls = _changes(records, True, monkeypatch)
    slow, calls_ref = _changes(records, False, monkeypatch)
    assert calls["explained by"] > 50 and calls == calls_ref
    assert ["age_bucket=4", "device=1"] in [c.schema.signature for c in fast if c.kind == "promoted"]
    _assert_same(fast, slow)


def test_welch_z_kernel_equals_numpy_bit_for_bit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Counts below the minimum, variances under the floor, empty groups: same bits."""
    rng = np.random.default_rng(3)
    n = 5000
    a = np.column_stack([rng.exponential(1.0, n) * (rng.random(n) < 0.9), rng.normal(0, 0.3, n),
                         rng.exponential(0.2, n)])
    b = np.column_stack([rng.exponential(5.0, n), rng.normal(0, 1.0, n), rng.exponential(1.0, n)])
    b[::7, 2] = 0.0  # variance below the floor
    for scale in (0.01, 1.0, 50.0):
        got = two_sample_z(a, b, scale, 1e-4)
        monkeypatch.setattr(kernels, "USE_KERNELS", False)
        want = two_sample_z(a, b, scale, 1e-4)
        monkeypatch.undo()
        for g, wv in zip(got, want):
            assert g.tobytes() == wv.tobytes()
    assert two_sample_z(a[:0], b[:0], 1.0, 1e-4)[0].shape == (0,)


def test_across_drops_exactly_parents_and_children() -> None:
    from reloop.state.schemas.kernels import pair_key, split_key
    from reloop.state.schemas.recent import _across

    singles = [1, 2, 3, 7]
    patterns = singles + [pair_key(a, b) for a in singles for b in singles if a < b]
    for key in patterns:
        mine = set(split_key(key))
        want = [o for o in patterns if not (set(split_key(o)) <= mine or mine <= set(split_key(o)))]
        assert _across(key, patterns) == want
