"""Media memory: clips through the memory, bounded long-term store, retrieval, persistence (kernels:
test_media_kernels.py)."""

from __future__ import annotations

import json

import msgspec
import numpy as np
import pytest

from reloop.state.media.reference import unit_rows
from reloop.state.media.memory import (ACTIVATED, ARCHIVED, EXPIRED, FEATURE_NAMES, MERGED, ItemContent, MediaMemory,
                                MediaMemoryConfig, UserMediaMemory)
from reloop.streams.events import MediaEvent

D = 8


def basis(i: int, d: int = D) -> list[float]:
    v = [0.0] * d
    v[i] = 1.0
    return v


def ev(user: str, ts: float, emb: list[float], seg: str, item: str | None = None,
       modality: str = "video") -> MediaEvent:
    return MediaEvent(user_id=user, ts=ts, modality=modality, segment_id=seg, embedding=emb, item_id=item)


def stream(vectors: list[list[float]], user: str = "u1", t0: float = 100.0, modality: str = "video",
           items: list[str | None] | None = None) -> list[MediaEvent]:
    items = items or [None] * len(vectors)
    return [ev(user, t0 + i, v, f"{user}-{modality}-{i}", items[i], modality) for i, v in enumerate(vectors)]


def random_events(n: int, users: int, seed: int, d: int = D, runs: bool = True) -> list[MediaEvent]:
    """Random stream: each user watches items in runs of near-identical frames (both modalities)."""
    rng = np.random.default_rng(seed)
    centres = unit_rows(rng.normal(size=(50, d)))
    out = []
    current = rng.integers(0, 50, users)
    for i in range(n):
        u = int(rng.integers(0, users))
        if not runs or rng.random() < 0.25:
            current[u] = rng.integers(0, 50)
        vec = centres[current[u]] + 0.05 * rng.normal(size=d)
        out.append(ev(f"u{u}", 1000.0 + i * 0.5, vec.astype(float).tolist(), f"s{i}", f"i{current[u]}",
                      "audio" if rng.random() < 0.3 else "video"))
    return out


def snapshot_diff(a: dict, b: dict) -> list[str]:
    """Names of the entries where two snapshots differ (empty when equal)."""
    if a.keys() != b.keys():
        return sorted(set(a) ^ set(b))
    diff = []
    for k in a:
        x, y = a[k], b[k]
        if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
            if not (np.asarray(x).dtype == np.asarray(y).dtype and np.array_equal(x, y)):
                diff.append(k)
        elif x != y:
            diff.append(k)
    return diff


def small(**kw) -> MediaMemoryConfig:
    return MediaMemoryConfig(dim=D, **kw)


# ---------------------------------------------------------------------------- segmentation through the memory


def test_clips_through_memory_match_the_rule_and_batch_cuts() -> None:
    vecs = [basis(0)] * 5 + [basis(1)] * 3 + [basis(2)] * 17 + [basis(4)] * 2
    one = MediaMemory(small())
    one.on_batch(stream(vecs))
    many = MediaMemory(small())
    for e in stream(vecs):
        many.on_batch([e])
    mem = one.users["u1"]
    live = np.flatnonzero(mem.live())
    assert sorted(mem.counts[live].tolist()) == [3, 5, 16]
    assert mem.open_len.tolist() == [3, 0]  # e2's 17th frame + 2 x e4 (too short to close on novelty)
    assert snapshot_diff(one.snapshot(), many.snapshot()) == []


# ---------------------------------------------------------------------------- long-term store


@pytest.mark.parametrize("rule", ["merge", "titans"])
def test_capacity_and_bytes_stay_bounded(rule: str) -> None:
    cfg = small(capacity_clips=8, flash_clips=2, update_rule=rule)
    memory = MediaMemory(cfg)
    events = random_events(3000, users=3, seed=1)
    sizes = []
    for lo in range(0, len(events), 100):
        memory.on_batch(events[lo:lo + 100])
        for mem in memory.users.values():
            assert mem.live().sum() <= cfg.capacity_clips
            assert mem.open_len.max() < cfg.max_clip_frames
        sizes.append(max(memory.nbytes_user(u) for u in memory.users))
    mem = memory.users["u0"]
    frames = mem.frames_seen - mem.open_len.sum()
    assert mem.counts[mem.live()].sum() == frames  # every closed frame is accounted for
    bound = UserMediaMemory.nbytes_bound(cfg, id_chars=max(len(e.segment_id) for e in events))
    assert max(sizes) <= bound
    assert sizes[-1] <= 1.25 * sizes[len(sizes) // 3]  # ~flat: only id lengths still vary
    arrays = [sum(getattr(m, n).nbytes for n in UserMediaMemory.ARRAYS) for m in memory.users.values()]
    assert len(set(arrays)) == 1  # fixed-size arrays whatever the history length


def test_merge_keeps_counts_provenance_and_marks_state() -> None:
    cfg = small(capacity_clips=4, flash_clips=1)
    memory = MediaMemory(cfg)
    near = (np.array(basis(0)) + 0.1 * np.array(basis(1))).tolist()
    # clips: A (e0 x3), B (e2 x3), A' (near e0 x4), C (e3 x3), D (e5 x3) -> the 5th write merges A and A'
    vecs = [basis(0)] * 3 + [basis(2)] * 3 + [near] * 4 + [basis(3)] * 3 + [basis(5)] * 3 + [basis(6)]
    items = ["a"] * 3 + ["b"] * 3 + ["a2"] * 4 + ["c"] * 3 + ["d"] * 3 + ["e"]
    memory.on_batch(stream(vecs, items=items))
    mem = memory.users["u1"]
    assert mem.merges == 1 and mem.live().sum() == 4
    row = int(np.flatnonzero(mem.state == MERGED)[0])
    assert mem.counts[row] == 7 and mem.version[row] == 2  # max(1, 1) + 1
    assert mem.items[row] == ["a", "a2"]
    assert mem.sources[row] == [f"u1-video-{i}" for i in (0, 1, 2, 6, 7, 8, 9)][-cfg.provenance_cap:]
    assert mem.first_ts[row] == 100.0 and mem.last_ts[row] == 109.0
    described = memory.describe("u1")
    assert sum(c["frames"] for c in described["clips"]) == 16  # 17 frames, 1 still open
    assert {c["state"] for c in described["clips"]} == {"activated", "merged"}
    json.dumps(described, allow_nan=False)  # ready for `reloop memory show USER`


def test_flash_rows_are_never_merged() -> None:
    cfg = small(capacity_clips=4, flash_clips=2)
    memory = MediaMemory(cfg)
    # the two most recent clips are near-identical but flash: the older pair merges instead
    vecs = [basis(0)] * 3 + [basis(1)] * 3 + [basis(2)] * 3 + [basis(3)] * 3 + [basis(3)] * 3 + [basis(4)]
    vecs[12:15] = [(np.array(basis(3)) * 0.8 + 0.6 * np.array(basis(7))).tolist()] * 3
    memory.on_batch(stream(vecs))
    mem = memory.users["u1"]
    flash = np.flatnonzero(mem.flash(mem.live()))
    assert sorted(mem.counts[flash].tolist()) == [3, 3] and (mem.state[flash] == ACTIVATED).all()


def test_titans_absorbs_familiar_clips_with_surprise_scaled_step() -> None:
    cfg = small(update_rule="titans", titans_momentum=0.0, titans_lr=1.0)
    memory = MediaMemory(cfg)
    near = (np.array(basis(0)) + 0.05 * np.array(basis(1))).tolist()
    memory.on_batch(stream([basis(0)] * 3 + [basis(2)] * 3 + [near] * 3 + [basis(4)]))
    mem = memory.users["u1"]
    assert mem.absorbed == 1 and mem.live().sum() == 2
    row = int(np.argmax(mem.counts))
    assert mem.counts[row] == 6 and mem.state[row] == MERGED
    surprise = 1.0 - float(unit_rows(np.array([near]))[0] @ np.array(basis(0), np.float32))
    expected = unit_rows(np.array([(1 - surprise) * np.array(basis(0)) + surprise * unit_rows(np.array([near]))[0]]))
    np.testing.assert_allclose(mem.keys[row], expected[0], atol=1e-6)


def test_lifecycle_archives_then_expires_by_event_time() -> None:
    cfg = small(archive_after_s=100.0, expire_after_s=1000.0, retrieval_top_k=1)
    memory = MediaMemory(cfg)
    memory.on_batch(stream([basis(0)] * 3 + [basis(1)] * 3 + [basis(2)], t0=0.0))
    mem = memory.users["u1"]
    memory.sweep(200.0)
    assert (mem.state[mem.state > 0] == ARCHIVED).sum() == 2
    out = memory.features("u1", np.array([basis(0)], np.float32), now=250.0)  # retrieval re-activates
    assert out[0, 0] == pytest.approx(1.0)
    assert (mem.state == ACTIVATED).sum() == 1 and (mem.state == ARCHIVED).sum() == 1
    assert memory.sweep(2000.0) == 1  # everything expired: the user is dropped
    assert "u1" not in memory.users
    memory2 = MediaMemory(cfg)
    memory2.on_batch(stream([basis(0)] * 3 + [basis(1)] * 3, t0=0.0))
    # at t=5000 the e0 row expires; the stale open e1 clip closes (novelty), is written and
    # expires at the end of the batch; the e2 clip reuses the expired row
    memory2.on_batch(stream([basis(2)] * 3 + [basis(3)], t0=5000.0))
    mem2 = memory2.users["u1"]
    assert mem2.expired == 2 and (mem2.state == EXPIRED).sum() == 0 and mem2.live().sum() == 1
    assert mem2.counts[mem2.live()].tolist() == [3] and mem2.open_len.tolist() == [1, 0]


def test_slots_only_where_the_key_does_not_cover_the_clip() -> None:
    memory = MediaMemory(small())
    # one item per clip: the key alone represents it (no slot stored)
    memory.on_batch(stream([basis(2)] * 3 + [basis(3)] * 3, items=["a"] * 3 + ["b"] * 3))
    mem = memory.users["u1"]
    assert mem.n_slots[mem.live()].tolist() == [0] and not mem.slots.any()
    assert mem.stored_vectors() == 1 + 3  # one key-only row, three open frames
    # a clip spanning three directions (novelty never cuts it, length does at 16): key + 2 slots
    spread = MediaMemory(small(novelty_cos=-1.0))
    mixed = [basis(0)] * 4 + [(0.6 * np.array(basis(0)) + 0.8 * np.array(basis(1))).tolist()] * 4 + [basis(4)] * 8
    spread.on_batch(stream(mixed))
    smem = spread.users["u1"]
    assert smem.live().sum() == 1 and smem.n_slots[smem.live()].tolist() == [2]
    assert smem.stored_vectors() == 3 and smem.open_len.sum() == 0
    # above 1, every row keeps its slots (the format-1 behaviour)
    always = MediaMemory(small(slot_min_cos=2.0))
    always.on_batch(stream([basis(2)] * 3 + [basis(3)] * 3))
    amem = always.users["u1"]
    assert amem.n_slots[amem.live()].tolist() == [2] and amem.stored_vectors() == 3 + 3


def test_merge_keeps_distinct_parts_as_slots_and_close_parts_as_one_key() -> None:
    cfg = small(capacity_clips=4, flash_clips=1)
    memory = MediaMemory(cfg)
    near = (np.array(basis(0)) + 0.1 * np.array(basis(1))).tolist()
    # A (e0) and A' (near e0) merge first: close parts -> key alone; later the far pair merges with slots
    vecs = [basis(0)] * 3 + [basis(2)] * 3 + [near] * 3 + [basis(3)] * 3 + [basis(5)] * 3 + [basis(6)]
    memory.on_batch(stream(vecs))
    mem = memory.users["u1"]
    merged = int(np.flatnonzero(mem.state == MERGED)[0])
    assert mem.merges == 1 and mem.n_slots[merged] == 0
    far = MediaMemory(cfg)
    far.on_batch(stream([basis(0)] * 3 + [basis(2)] * 3 + [basis(4)] * 3 + [basis(3)] * 3 + [basis(5)] * 3
                        + [basis(6)]))
    fmem = far.users["u1"]
    row = int(np.flatnonzero(fmem.state == MERGED)[0])
    assert fmem.n_slots[row] == 2  # two orthogonal clips: their keys kept side by side
    parts = {tuple(np.flatnonzero(v > 0.5)) for v in fmem.slots[row]}
    assert len(parts) == 2 and fmem.counts[row] == 6
    out = far.features("u1", unit_rows(np.array([basis(0), basis(2)])), now=200.0, touch=False)
    assert np.allclose(out[:, FEATURE_NAMES.index("media_slot_max_cos")], 1.0, atol=1e-6)


# ---------------------------------------------------------------------------- features and retrieval


def test_features_zero_for_unknown_users_and_items() -> None:
    memory = MediaMemory(small())
    out = memory.features("nobody", np.ones((3, D), np.float32), now=0.0)
    assert out.shape == (3, len(FEATURE_NAMES)) and not out.any()
    memory.on_batch(stream([basis(0)] * 4, items=["x"] * 4))
    out = memory.features_for_items("u1", ["x", "unknown"], now=104.0)
    assert out[0, FEATURE_NAMES.index("media_known")] == 1.0
    assert out[0, FEATURE_NAMES.index("media_max_cos")] == pytest.approx(1.0)
    assert not out[1].any()
    assert not memory.features_for_items("nobody", ["x"], now=0.0).any()


def test_retrieval_picks_the_planted_clip() -> None:
    rng = np.random.default_rng(7)
    memory = MediaMemory(small(capacity_clips=16))
    noise = [ev("u1", float(i), rng.normal(size=D).tolist(), f"n{i}", f"noise{i}") for i in range(200)]
    planted_dir = unit_rows(rng.normal(size=(1, D)))[0]
    planted = [ev("u1", 50.5 + i * 0.01, (planted_dir + 0.01 * rng.normal(size=D)).tolist(), f"p{i}", "planted")
               for i in range(4)]
    events = noise[:51] + planted + noise[51:]
    memory.on_batch(events)
    mem = memory.users["u1"]
    query = (planted_dir + 0.05 * rng.normal(size=D)).astype(np.float32)[None, :]
    assert memory.retrieve_items("u1", query, k=1) == [["planted"]]
    before = mem.usage.copy()
    out = memory.features("u1", query, now=300.0)
    assert out[0, 0] > 0.95 and out[0, 0] > out[0, 1] - 1e-6
    planted_row = next(r for r in range(16) if mem.items[r] == ["planted"])
    assert mem.usage[planted_row] == before[planted_row] + 1
    assert mem.used_ts[planted_row] == 300.0


def test_recency_and_flash_features() -> None:
    memory = MediaMemory(small(recency_scale_s=100.0))
    memory.on_batch(stream([basis(0)] * 3 + [basis(1)] * 3 + [basis(2)], t0=0.0))
    out = memory.features("u1", np.array([basis(0), basis(2)], np.float32), now=102.0)
    rec = FEATURE_NAMES.index("media_recency")
    assert out[0, rec] == pytest.approx(np.exp(-1.0), rel=1e-5)  # clip e0 last written at ts 2
    assert out[1, rec] == pytest.approx(np.exp(-0.96), rel=1e-5)  # open frame e2 at ts 6
    assert out[1, FEATURE_NAMES.index("media_flash_max_cos")] == pytest.approx(1.0)
    assert out[0, FEATURE_NAMES.index("media_log_count")] == pytest.approx(np.log1p(3))


def test_item_content_does_not_depend_on_the_order_across_users() -> None:
    # item x is watched by u1 (later, ts 20) and u2 (earlier, ts 10): the later frame's content wins
    # whichever user's partition is processed first (cross-partition order varies between runs)
    late = ev("u1", 20.0, basis(0), "s-late", "x")
    early = ev("u2", 10.0, basis(1), "s-early", "x")
    tie_a, tie_b = ev("u3", 30.0, basis(2), "s-a", "y"), ev("u4", 30.0, basis(3), "s-b", "y")
    one, two = MediaMemory(small()), MediaMemory(small())
    one.on_batch([late, tie_a])
    one.on_batch([early, tie_b])
    two.on_batch([tie_b, early])
    two.on_batch([tie_a, late])
    for memory in (one, two):
        emb, known = memory.items.lookup(["x", "y"])
        assert known.all()
        np.testing.assert_array_equal(emb, np.array([basis(0), basis(3)], np.float32))  # ts, then segment id
    snap = two.snapshot()
    assert MediaMemory.restore(snap).items.stamps == two.items.stamps == {"x": (20.0, "s-late"), "y": (30.0, "s-b")}
    with pytest.raises(ValueError):
        MediaMemory.restore({k: v for k, v in snap.items() if k != "item_ts"})


def test_item_content_is_a_bounded_lru() -> None:
    table = ItemContent(dim=2, capacity=3)
    table.update(["a", "b", "c"], np.eye(3, 2, dtype=np.float32))
    table.lookup(["a"])  # a becomes most recent
    table.update(["d"], np.ones((1, 2), np.float32))  # evicts b
    emb, known = table.lookup(["a", "b", "c", "d"])
    assert known.tolist() == [True, False, True, True] and len(table) == 3
    np.testing.assert_array_equal(emb[3], [1.0, 1.0])


# ---------------------------------------------------------------------------- persistence


@pytest.mark.parametrize("rule", ["merge", "titans"])
def test_snapshot_restore_round_trip_and_resume(rule: str) -> None:
    cfg = small(capacity_clips=6, flash_clips=2, update_rule=rule)
    events = random_events(1200, users=4, seed=3)
    full = MediaMemory(cfg)
    full.on_batch(events)
    half = MediaMemory(cfg)
    half.on_batch(events[:700])
    restored = MediaMemory.restore(half.snapshot())
    assert snapshot_diff(restored.snapshot(), half.snapshot()) == []
    restored.on_batch(events[700:])
    assert snapshot_diff(restored.snapshot(), full.snapshot()) == []
    assert snapshot_diff(MediaMemory.restore(MediaMemory(cfg).snapshot()).snapshot(), MediaMemory(cfg).snapshot()) == []


@pytest.mark.parametrize("rule", ["merge", "titans"])
def test_format_1_snapshot_is_read_and_continues_as_written(rule: str) -> None:
    cfg = small(capacity_clips=6, flash_clips=2, update_rule=rule, slot_min_cos=2.0)  # format 1: slots always
    events = random_events(900, users=3, seed=4)
    full = MediaMemory(cfg)
    full.on_batch(events)
    half = MediaMemory(cfg)
    half.on_batch(events[:500])
    old = {k: v for k, v in half.snapshot().items() if k not in ("n_slots", "item_ts", "item_segments")}
    fields = json.loads(str(old["config"][()]))
    del fields["slot_min_cos"]
    old["format"], old["config"] = np.array(1), np.array(json.dumps(fields))
    restored = MediaMemory.restore(old)
    assert restored.config == cfg
    restored.on_batch(events[500:])
    # everything equal; item stamps of format 1 are unknown ((-inf, "")) until an item is seen again
    assert sorted(snapshot_diff(restored.snapshot(), full.snapshot())) == ["item_segments", "item_ts"]
    assert (restored.snapshot()["item_ts"] == -np.inf).any()
    with pytest.raises(ValueError):
        MediaMemory.restore({**old, "format": np.array(3)})


def test_snapshot_is_plain_arrays_that_survive_npz_without_pickle(tmp_path) -> None:
    memory = MediaMemory(small(capacity_clips=6, flash_clips=2))
    memory.on_batch(random_events(400, users=3, seed=2) + stream([basis(0)] * 2, user="u9"))  # None item ids
    snap = memory.snapshot()
    assert all(isinstance(v, np.ndarray) and v.dtype != object for v in snap.values())
    np.savez(tmp_path / "media.npz", **snap)
    with np.load(tmp_path / "media.npz", allow_pickle=False) as npz:
        loaded = {name: npz[name] for name in npz.files}
    restored = MediaMemory.restore(loaded)
    assert snapshot_diff(restored.snapshot(), snap) == []
    assert restored.users["u9"].open_items[0] == [None, None]
    with pytest.raises(ValueError):
        MediaMemory.restore({k: v for k, v in snap.items() if k != "keys"})


@pytest.mark.parametrize("rule", ["merge", "titans"])
def test_batch_cuts_do_not_change_the_state(rule: str) -> None:
    cfg = small(capacity_clips=6, flash_clips=2, update_rule=rule, archive_after_s=30.0, expire_after_s=120.0)
    events = random_events(600, users=3, seed=5)
    one = MediaMemory(cfg)
    one.on_batch(events)
    cut = MediaMemory(cfg)
    rng = np.random.default_rng(0)
    lo = 0
    while lo < len(events):
        hi = lo + int(rng.integers(1, 40))
        cut.on_batch(events[lo:hi])
        lo = hi
    assert snapshot_diff(one.snapshot(), cut.snapshot()) == []


def test_wrong_dimension_is_dropped_not_raised() -> None:
    memory = MediaMemory(small())
    assert memory.on_batch([ev("u1", 0.0, [1.0, 2.0], "bad")] + stream([basis(0)])) == 1
    assert memory.rejected == 1


def test_config_validation() -> None:
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"dim": 4, "capacity": 3}, MediaMemoryConfig)  # unknown field
    with pytest.raises(ValueError):
        MediaMemoryConfig(dim=4, capacity_clips=4, flash_clips=3)
    with pytest.raises(ValueError):
        MediaMemoryConfig(dim=4, min_clip_frames=5, max_clip_frames=4)
