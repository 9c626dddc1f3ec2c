"""MediaCore: batch-first media ingestion and request features aligned to candidates."""

from __future__ import annotations

import numpy as np
import pytest

from reloop.ops.simulator import SimConfig, Simulator
from reloop.processors.media import FEATURE_NAMES, MediaCore, annotate_log
from reloop.state.media.memory import MediaMemoryConfig
from reloop.streams.events import Candidate, Interaction, MediaEvent, RecommendationRequest

D = 8


def media(user: str, ts: float, vec: list[float], seg: str, item: str | None = None) -> MediaEvent:
    return MediaEvent(user_id=user, ts=ts, modality="video", segment_id=seg, embedding=vec, item_id=item)


def request(rid: str, user: str, ts: float, items: list[str]) -> RecommendationRequest:
    return RecommendationRequest(request_id=rid, user_id=user, ts=ts,
                                 candidates=[Candidate(item_id=i, features={"genre": "g"}) for i in items])


def onehot(i: int) -> list[float]:
    v = [0.0] * D
    v[i] = 1.0
    return v


@pytest.fixture
def core() -> MediaCore:
    c = MediaCore(MediaMemoryConfig(dim=D))
    # u1 watched item a (4 frames) then item b (3 frames); item c is only known from u2
    c.on_batch([media("u1", float(t), onehot(0), f"s{t}", "a") for t in range(4)]
               + [media("u1", 4.0 + t, onehot(1), f"s{4 + t}", "b") for t in range(3)]
               + [media("u2", 1.0, onehot(2), "x", "c")])
    return c


def test_features_align_with_flattened_candidates(core: MediaCore) -> None:
    reqs = [request("r1", "u1", 10.0, ["a", "c", "zzz"]), request("r2", "nobody", 10.0, ["a"]),
            request("r3", "u1", 11.0, ["b"])]
    out = core.features_for_requests(reqs)
    assert out.shape == (5, len(FEATURE_NAMES)) and out.dtype == np.float32
    known = FEATURE_NAMES.index("media_known")
    assert out[:, known].tolist() == [1.0, 1.0, 0.0, 0.0, 1.0]
    assert out[0, 0] == pytest.approx(1.0)  # a was watched
    assert out[1, 0] == pytest.approx(0.0)  # c is orthogonal to u1's history
    assert not out[2].any() and not out[3].any()  # unknown item, unknown user
    assert out[4, FEATURE_NAMES.index("media_flash_max_cos")] == pytest.approx(1.0)  # b is still open
    assert core.features_for_requests([]).shape == (0, len(FEATURE_NAMES))


def test_merge_into_rows_adds_named_dense_features(core: MediaCore) -> None:
    reqs = [request("r1", "u1", 10.0, ["a", "b"])]
    rows = [(r.user_id, c.item_id, {**r.features, **c.features}) for r in reqs for c in r.candidates]
    merged = core.merge_into_rows(reqs, rows)
    assert [m[:2] for m in merged] == [("u1", "a"), ("u1", "b")]
    for _, _, feats in merged:
        assert feats["genre"] == "g" and set(FEATURE_NAMES) <= set(feats)
        assert all(isinstance(feats[n], float) for n in FEATURE_NAMES)
    with pytest.raises(ValueError):
        core.merge_into_rows(reqs, rows[:1])


def test_snapshot_restore_keeps_features(core: MediaCore) -> None:
    reqs = [request("r1", "u1", 10.0, ["a", "b", "c"])]
    restored = MediaCore.restore(core.snapshot())
    np.testing.assert_array_equal(restored.features_for_requests(reqs), core.features_for_requests(reqs))
    assert restored.events_seen == core.events_seen == 8


def test_restore_then_more_events_equals_uninterrupted() -> None:
    sim = Simulator(SimConfig(seed=3, n_users=20, n_items=80, media_weight=1.0, media_per_request=4.0,
                              shift_at=None))
    media = [e for e in sim.labelled_log(400) if isinstance(e, MediaEvent)]
    cfg = MediaMemoryConfig(dim=sim.config.media_dim, capacity_clips=6, flash_clips=2, min_clip_frames=1)
    whole, first = MediaCore(cfg), MediaCore(cfg)
    whole.on_batch(media)
    cut = len(media) // 2
    first.on_batch(media[:cut])
    resumed = MediaCore.restore({k: np.array(v) for k, v in first.snapshot().items()})
    resumed.on_batch(media[cut:])
    a, b = whole.snapshot(), resumed.snapshot()
    assert a.keys() == b.keys()
    assert all(a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]) for k in a)
    assert whole.memory.users and any(m.merges for m in whole.memory.users.values())  # the store did fill


def test_annotate_log_sees_exactly_the_media_before_each_interaction() -> None:
    core = MediaCore(MediaMemoryConfig(dim=D))
    it = lambda ts, item: Interaction(user_id="u1", item_id=item, ts=ts, label=1,  # noqa: E731
                                      features={"device": "tv"})
    events = [it(0.5, "a"), media("u1", 1.0, onehot(0), "m0", "a"), it(1.5, "a"), it(1.5, "b"),
              media("u1", 2.0, onehot(1), "m1", "b"), it(2.5, "b"), media("u1", 3.0, onehot(2), "m2", "c")]
    out = annotate_log(core, events)
    assert [o.ts for o in out] == [0.5, 1.5, 1.5, 2.5] and all(o.features["device"] == "tv" for o in out)
    known = [o.features["media_known"] for o in out]
    assert known == [0.0, 1.0, 0.0, 1.0]  # b's content is only known from m1 on
    assert out[1].features["media_max_cos"] == pytest.approx(1.0)
    assert out[3].features["media_flash_max_cos"] == pytest.approx(1.0)
    assert core.events_seen == 3  # the trailing media event is applied too


def test_media_features_separate_clicks_on_the_simulator() -> None:
    """With a strong media effect, clicked candidates resemble the user's media history more."""
    sim = Simulator(SimConfig(seed=5, n_users=60, n_items=150, media_weight=4.0, media_per_request=3.0,
                              shift_at=None))
    core = MediaCore(MediaMemoryConfig(dim=sim.config.media_dim))
    annotated = annotate_log(core, list(sim.labelled_log(300)))
    assert len(annotated) == 300 * sim.config.candidates_per_request
    labels = np.array([a.label for a in annotated])
    flash = np.array([a.features["media_flash_max_cos"] for a in annotated])
    known = np.array([a.features["media_known"] for a in annotated]) > 0
    assert known.mean() > 0.5
    assert flash[known & (labels == 1)].mean() > flash[known & (labels == 0)].mean() + 0.03
