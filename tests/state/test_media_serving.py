"""The serving kernel (features, live rows and the usage touch in one call) against the
two-step form it replaced: :func:`media_features` on ``live`` rows, then the touch in numpy;
and the media memory's shared empty id rows through snapshots and changelog bytes."""

from __future__ import annotations

import gc

import numpy as np
import pytest

from reloop.state.media.config import ACTIVATED, ARCHIVED, EXPIRED, FREE, MERGED, MediaMemoryConfig
from reloop.state.media.kernels import media_features
from reloop.state.media.memory import MediaMemory
from reloop.state.media.reference import unit_rows
from reloop.state.media.retrieval import serve_features
from reloop.state.media.snapshot import user_from_bytes, user_to_bytes
from reloop.state.media.store import UserMediaMemory
from reloop.streams.events import MediaEvent


def _memory(seed: int, C: int = 12, S: int = 2, F: int = 16, d: int = 16) -> dict:
    rng = np.random.default_rng(seed)
    slots = unit_rows(rng.normal(size=(C * S, d))).reshape(C, S, d)
    n_slots = rng.integers(0, S + 1, C).astype(np.int32)
    slots[np.arange(S)[None, :] >= n_slots[:, None]] = 0.0
    return {
        "keys": unit_rows(rng.normal(size=(C, d))), "slots": slots, "n_slots": n_slots,
        "state": rng.choice([FREE, ACTIVATED, MERGED, ARCHIVED, EXPIRED], C).astype(np.int32),
        "write_seq": rng.permutation(C).astype(np.int64), "last_ts": rng.uniform(0, 100, C),
        "counts": rng.integers(1, 50, C), "open_frames": unit_rows(rng.normal(size=(2 * F, d))).reshape(2, F, d),
        "open_len": np.array([[0, 0], [3, 0], [2, 5], [0, 1]][seed % 4], dtype=np.int64),
        "open_ts": np.sort(rng.uniform(0, 100, (2, F)), axis=1),
        "usage": rng.integers(0, 5, C).astype(np.int64), "used_ts": rng.uniform(0, 130, C),
        "q": rng.normal(size=(9, d)).astype(np.float32),
    }


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("touch", [True, False])
def test_serve_features_equals_features_then_numpy_touch(seed: int, touch: bool) -> None:
    m = _memory(seed)
    m["q"][4] = 0.0  # unknown content
    ref = {k: v.copy() for k, v in m.items()}
    C, now = len(m["state"]), 120.0
    got = serve_features(m["q"], m["keys"], m["slots"], m["n_slots"], m["state"], m["write_seq"], 3, m["last_ts"],
                         m["counts"], m["open_frames"], m["open_len"], m["open_ts"], 4, 0.1, now, 50.0, m["usage"],
                         m["used_ts"], touch)
    live = (ref["state"] >= ACTIVATED) & (ref["state"] <= ARCHIVED)
    want, hits = media_features(ref["q"], ref["keys"], ref["slots"], ref["n_slots"], live, ref["write_seq"], 3,
                                ref["last_ts"], ref["counts"], ref["open_frames"], ref["open_len"], ref["open_ts"], 4,
                                0.1, now, 50.0)
    if touch:  # what MediaMemory.features did before the kernel took it over
        hit = hits[(hits >= 0) & (hits < C)]
        np.add.at(ref["usage"], hit, 1)
        np.maximum.at(ref["used_ts"], hit, now)
        ref["state"][hit[ref["state"][hit] == ARCHIVED]] = ACTIVATED
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, want.astype(np.float32))
    for name in ("usage", "used_ts", "state"):
        np.testing.assert_array_equal(m[name], ref[name])
    assert touch or (m["usage"] == ref["usage"]).all()


def _events(user: str, n: int, d: int) -> list[MediaEvent]:
    rng = np.random.default_rng(3)
    return [MediaEvent(user_id=user, ts=1.0 + i, modality="video", segment_id=f"s{i}", item_id=f"i{i % 3}",
                       embedding=rng.normal(size=d).tolist()) for i in range(n)]


def test_empty_rows_are_the_shared_tuple_through_snapshot_and_changelog_bytes() -> None:
    cfg = MediaMemoryConfig(dim=8, capacity_clips=6)
    fresh = UserMediaMemory(cfg)
    assert fresh.sources == [()] * 6 and fresh.items == [()] * 6
    assert not any(gc.is_tracked(row) for row in fresh.sources + fresh.items)
    memory = MediaMemory(cfg)
    memory.on_batch(_events("u", 12, 8))
    mem = memory.users["u"]
    written = [r for r in range(6) if mem.sources[r]]
    assert written and all(isinstance(mem.sources[r], list) for r in written)
    assert all(mem.sources[r] == () for r in range(6) if r not in written)
    for other in (MediaMemory.restore(memory.snapshot()).users["u"], user_from_bytes(user_to_bytes(mem), cfg)):
        assert other.sources == mem.sources and other.items == mem.items
        assert other.open_sources == mem.open_sources and all(isinstance(x, list) for x in other.open_sources)
        assert user_to_bytes(other) == user_to_bytes(mem)
