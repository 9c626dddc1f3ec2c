"""Media-memory kernels: segmentation rules, and every numba kernel against its numpy reference."""

from __future__ import annotations

import numpy as np
import pytest

from reloop.state.media.kernels import (compress_clip, media_features, merge_vectors, most_similar_pair, segment_stream,
                                  topk_cosine)
from reloop.state.media.reference import (compress_clip_ref, media_features_ref, merge_vectors_ref, most_similar_pair_ref,
                                segment_stream_ref, topk_cosine_ref, unit_rows)

D = 8


def basis(i: int, d: int = D) -> list[float]:
    v = [0.0] * d
    v[i] = 1.0
    return v


# ---------------------------------------------------------------------------- segmentation


def test_segment_novelty_length_and_minimum() -> None:
    # 5 x e0 | 2 x e1 then e2 (too short to close on novelty) ... | 20 x e3 -> length cut at 16
    vecs = [basis(0)] * 5 + [basis(1)] * 2 + [basis(2)] * 2 + [basis(3)] * 20
    frames = unit_rows(np.array(vecs))
    cuts = segment_stream(frames, 0, 3, 16, 0.9)
    ends = cuts[:, 0].tolist()
    # novelty before 5; clip e1,e1,e2,e2 closes before 9 (novelty 2->3 with >= 3 frames);
    # the e3 run closes after 16 frames (9 + 16 = 25); 4 frames stay open
    assert ends == [5, 9, 25]
    assert cuts[:, 1].tolist() == [5, 9, 24]
    np.testing.assert_array_equal(cuts, segment_stream_ref(frames, 0, 3, 16, 0.9))


def test_segment_minimum_three_frames_on_constant_novelty() -> None:
    vecs = [basis(i % 2) for i in range(10)]  # every consecutive cosine is 0
    ends = segment_stream(unit_rows(np.array(vecs)), 0, 3, 16, 0.9)[:, 0].tolist()
    assert ends == [3, 6, 9]


def test_segment_threshold_is_inclusive() -> None:
    a = np.array([1.0, 0.0])
    b = np.array([0.9, np.sqrt(1 - 0.81)])  # cos(a, b) == 0.9 up to rounding
    frames = unit_rows(np.array([a, a, a, b]))
    cos = float(frames[2].astype(np.float64) @ frames[3])
    cuts = segment_stream(frames, 0, 3, 16, cos)
    assert cuts[:, 0].tolist() == [3]


# ---------------------------------------------------------------------------- kernels


@pytest.mark.parametrize("seed", range(5))
def test_kernels_agree_with_references(seed: int) -> None:
    rng = np.random.default_rng(seed)
    # segmentation on a stream with runs (so both rules fire)
    centres = unit_rows(rng.normal(size=(6, 16)))
    frames = unit_rows(centres[np.repeat(rng.integers(0, 6, 30), rng.integers(1, 9, 30))]
                       + 0.1 * rng.normal(size=(1, 16)))
    frames = unit_rows(frames + 0.05 * rng.normal(size=frames.shape))
    for open_len in (0, 2):
        np.testing.assert_array_equal(segment_stream(frames, open_len, 3, 16, 0.9),
                                      segment_stream_ref(frames, open_len, 3, 16, 0.9))
    # compression (including clips shorter than the slot count), with and without the key-only rule
    kept = set()
    for m, s in ((7, 2), (16, 3), (1, 2), (3, 4), (5, 2)):
        clip = frames[:m]
        for min_cos in (2.0, 0.95, 0.5, -1.0):
            got, want = compress_clip(clip, s, 4, min_cos), compress_clip_ref(clip, s, 4, min_cos)
            assert got[2] == want[2] in (0, s)
            kept.add(got[2] > 0)
            for g, w in zip(got[:2], want[:2]):
                np.testing.assert_allclose(g, w, atol=1e-6)
    assert kept == {True, False}
    # merge of two rows: every combination of slots in use, both branches (side by side, matched)
    ka, kb = unit_rows(rng.normal(size=(2, 16)))
    sa, sb = unit_rows(rng.normal(size=(3, 16))), unit_rows(rng.normal(size=(3, 16)))
    for na in range(4):
        for nb in range(4):
            for min_cos in (2.0, 0.3):
                za, zb = sa.copy(), sb.copy()
                za[na:], zb[nb:] = 0.0, 0.0
                got = merge_vectors(ka, za, na, 3.0, kb, zb, nb, 5.0, min_cos)
                want = merge_vectors_ref(ka, za, na, 3.0, kb, zb, nb, 5.0, min_cos)
                assert got[2] == want[2]
                for g, w in zip(got[:2], want[:2]):
                    np.testing.assert_allclose(g, w, atol=1e-6)
    # merge search
    keys = unit_rows(rng.normal(size=(32, 16)))
    eligible = rng.random(32) < 0.7
    a, b, c = most_similar_pair(keys, eligible)
    ra, rb, rc = most_similar_pair_ref(keys, eligible)
    assert (a, b) == (ra, rb) and c == pytest.approx(rc, abs=1e-12)
    assert most_similar_pair(keys, np.zeros(32, bool))[:2] == most_similar_pair_ref(keys, np.zeros(32, bool))[:2]
    # retrieval top-k + softmax, including fewer keys than k
    queries = unit_rows(rng.normal(size=(20, 16)))
    for m in (0, 3, 32):
        got = topk_cosine(queries, keys[:m], 4, 0.1)
        want = topk_cosine_ref(queries, keys[:m], 4, 0.1)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_allclose(got[1], want[1], atol=1e-12)
        np.testing.assert_allclose(got[2], want[2], atol=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_serving_features_kernel_agrees_with_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    C, S, F, d = 12, 2, 16, 16
    keys = unit_rows(rng.normal(size=(C, d)))
    slots = unit_rows(rng.normal(size=(C * S, d))).reshape(C, S, d)
    n_slots = rng.integers(0, S + 1, C).astype(np.int32)  # rows with the key alone, with 1 or 2 slots
    slots[np.arange(S)[None, :] >= n_slots[:, None]] = 0.0
    live = rng.random(C) < [0.0, 0.7, 1.0, 0.5][seed]
    write_seq = rng.permutation(C).astype(np.int64)
    last_ts = rng.uniform(0, 100, C)
    counts = rng.integers(1, 50, C)
    open_len = np.array([[0, 0], [3, 0], [2, 5], [0, 1]][seed], dtype=np.int64)
    open_frames = unit_rows(rng.normal(size=(2 * F, d))).reshape(2, F, d)
    open_ts = np.sort(rng.uniform(0, 100, (2, F)), axis=1)
    q = rng.normal(size=(9, d)).astype(np.float32)
    q[4] = 0.0  # unknown content
    args = (q, keys, slots, n_slots, live, write_seq, 3, last_ts, counts, open_frames, open_len, open_ts, 4, 0.1,
            120.0, 50.0)
    got, got_hits = media_features(*args)
    want, want_hits = media_features_ref(*args)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)
    np.testing.assert_array_equal(got_hits, want_hits)
    assert not got[4].any() and (got_hits[4] == -1).all()


def test_compress_clip_two_groups_gives_two_slots() -> None:
    frames = unit_rows(np.array([basis(0)] * 4 + [basis(1)] * 4))
    key, slots, n = compress_clip(frames, 2)
    assert n == 2
    np.testing.assert_allclose(key, unit_rows(np.array([basis(0)]) + np.array([basis(1)]))[0], atol=1e-6)
    np.testing.assert_allclose(sorted(map(tuple, slots.round(6))), [tuple(basis(1)), tuple(basis(0))])
