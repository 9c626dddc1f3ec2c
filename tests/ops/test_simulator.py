"""Tests of the deterministic traffic simulator (reloop.ops.simulator)."""

from __future__ import annotations

from collections import defaultdict, deque

import numpy as np
import pytest

from reloop.ops.simulator import SEGMENTS, SimConfig, Simulator, main, write_jsonl
from reloop.streams.codec import decode_event, encode
from reloop.streams.events import Interaction, MediaEvent, RecommendationRequest
from reloop.streams.validation import Limits


def _bytes(events) -> list[bytes]:
    return [encode(e) for e in events]


@pytest.fixture(scope="module")
def small() -> tuple[SimConfig, list, list]:
    cfg = SimConfig(seed=7, media_weight=1.0, media_per_request=1.0)
    sim = Simulator(cfg)
    return cfg, list(sim.events(1200)), list(sim.labelled_log(1200))


def test_deterministic_bytes_and_seed_sensitivity() -> None:
    cfg = SimConfig(seed=3, media_weight=0.5)
    a, b = Simulator(cfg), Simulator(cfg)
    assert _bytes(a.events(700)) == _bytes(b.events(700))
    assert _bytes(a.labelled_log(700)) == _bytes(b.labelled_log(700))
    other = Simulator(SimConfig(seed=4, media_weight=0.5))
    assert _bytes(other.events(700)) != _bytes(a.events(700))


def test_ts_non_decreasing(small) -> None:
    _, events, labelled = small
    for stream in (events, labelled):
        ts = np.array([e.ts for e in stream])
        assert ts.size > 0 and np.all(np.diff(ts) >= 0)


@pytest.mark.parametrize("media_dim", [32, 16])
def test_all_events_decode_and_validate(media_dim: int) -> None:
    cfg = SimConfig(seed=1, media_dim=media_dim, media_per_request=1.0)
    sim = Simulator(cfg)
    limits = Limits(media_dim=cfg.media_dim)
    n_media = 0
    for ev in [*sim.events(300), *sim.labelled_log(300)]:
        assert decode_event(encode(ev), None, limits) == ev
        if isinstance(ev, MediaEvent):
            n_media += 1
            assert len(ev.embedding) == media_dim
            assert abs(np.linalg.norm(ev.embedding) - 1.0) < 1e-4
    assert n_media > 0


def test_event_shapes_and_links(small) -> None:
    cfg, events, _ = small
    reqs = {e.request_id: e for e in events if isinstance(e, RecommendationRequest)}
    assert len(reqs) == 1200 and set(reqs) == {f"r{i}" for i in range(1200)}
    media = [e for e in events if isinstance(e, MediaEvent)]
    assert len({m.segment_id for m in media}) == len(media)
    assert {m.modality for m in media} == {"video", "audio"}
    clicks = [e for e in events if isinstance(e, Interaction)]
    assert clicks and all(c.kind == "click" and c.label == 1 for c in clicks)
    lo, hi = cfg.click_delay_s
    for c in clicks:
        req = reqs[c.request_id]
        assert c.user_id == req.user_id
        assert c.item_id in {x.item_id for x in req.candidates}
        assert lo - 1e-5 <= c.ts - req.ts <= hi + 1e-5
    for req in reqs.values():
        assert set(req.features) == {"age_bucket", "device", "segment"}
        assert len(req.candidates) == cfg.candidates_per_request
        assert len({c.item_id for c in req.candidates}) == cfg.candidates_per_request
        assert all(set(c.features) == {"genre", "popularity"} for c in req.candidates)
    ctr = len(clicks) / (1200 * cfg.candidates_per_request)
    assert 0.05 < ctr < 0.3


def test_labelled_log_agrees_with_events(small) -> None:
    cfg, events, labelled = small
    C = cfg.candidates_per_request
    clicked_live = {(int(e.request_id[1:]), e.item_id) for e in events
                    if isinstance(e, Interaction)}
    rows = [e for e in labelled if isinstance(e, Interaction)]
    assert len(rows) == 1200 * C
    assert all(r.request_id is None and r.kind == ("click" if r.label else "impression") for r in rows)
    clicked_log = {(k // C, r.item_id) for k, r in enumerate(rows) if r.label == 1}
    assert clicked_log == clicked_live
    reqs = [e for e in events if isinstance(e, RecommendationRequest)]
    for k, r in enumerate(rows[::C]):
        req = reqs[k]
        assert r.ts == req.ts and r.user_id == req.user_id
        assert r.features == {**req.features, **req.candidates[0].features}
    assert ([e for e in events if isinstance(e, MediaEvent)]
            == [e for e in labelled if isinstance(e, MediaEvent)])


def test_shift_ts_and_prefix_stability() -> None:
    sim = Simulator(SimConfig(seed=5))
    reqs = [e for e in sim.events(1000) if isinstance(e, RecommendationRequest)]
    assert sim.shift_ts(1000) == reqs[600].ts
    assert Simulator(SimConfig(seed=5, shift_at=None)).shift_ts(1000) is None
    no_shift = Simulator(SimConfig(seed=5, shift_at=None))
    short = [e for e in no_shift.events(300) if isinstance(e, RecommendationRequest)]
    long = [e for e in no_shift.events(900) if isinstance(e, RecommendationRequest)]
    assert _bytes(short) == _bytes(long[:300])


def test_abrupt_shift_on_segment() -> None:
    n = 20_000
    sim = Simulator(SimConfig(seed=11))
    t_shift = sim.shift_ts(n)
    assert t_shift is not None
    # (segment, genre, after_shift) -> [impressions, clicks]
    counts: dict[tuple[str, str, bool], list[int]] = defaultdict(lambda: [0, 0])
    for e in sim.labelled_log(n):
        if isinstance(e, Interaction):
            c = counts[(e.features["segment"], e.features["genre"], e.ts >= t_shift)]
            c[0] += 1
            c[1] += e.label

    def ctr(seg: str, after: bool, genres: set[str] | None = None) -> float:
        keys = [k for k in counts if k[0] == seg and k[2] == after and (genres is None or k[1] in genres)]
        return sum(counts[k][1] for k in keys) / sum(counts[k][0] for k in keys)

    pre_by_genre = {g: c[1] / c[0] for (s, g, a), c in counts.items() if s == "s1" and not a}
    favoured = set(sorted(pre_by_genre, key=pre_by_genre.get)[-3:])
    assert all(sim.genre_affinity("s1")[g] > 0.5 for g in favoured)  # the known model agrees
    before, after = ctr("s1", False, favoured), ctr("s1", True, favoured)
    assert after < 0.5 * before, (before, after)
    for seg in SEGMENTS:
        if seg != "s1":
            b, a = ctr(seg, False), ctr(seg, True)
            assert abs(a - b) < 0.15 * b, (seg, b, a)


def _replay_history(sim: Simulator, events: list, k: int) -> list[tuple[RecommendationRequest, list[str]]]:
    """Pair every request with its user's last ``k`` watched items, in stream order."""
    hist: dict[str, deque[str]] = defaultdict(lambda: deque(maxlen=k))
    out = []
    for e in events:
        if isinstance(e, MediaEvent):
            hist[e.user_id].append(e.item_id)
        elif isinstance(e, RecommendationRequest):
            out.append((e, list(hist[e.user_id])))
    return out


def _max_cos(sim: Simulator, req: RecommendationRequest, recent: list[str]) -> np.ndarray:
    if not recent:
        return np.full(len(req.candidates), np.nan)
    cand = np.stack([sim.item_content(c.item_id) for c in req.candidates]).astype(np.float64)
    seen = np.stack([sim.item_content(i) for i in recent]).astype(np.float64)
    return (cand @ seen.T).max(axis=1)


@pytest.fixture(scope="module")
def media_runs() -> dict[float, tuple[Simulator, list, np.ndarray, np.ndarray]]:
    """For media_weight 0 and 3: (sim, events, max-cos per row (nan = no history), clicked)."""
    runs = {}
    for mw in (0.0, 3.0):
        sim = Simulator(SimConfig(seed=21, shift_at=None, media_weight=mw, media_per_request=2.0))
        events = list(sim.events(6000))
        clicked = {(e.request_id, e.item_id) for e in events if isinstance(e, Interaction)}
        sims, ys = [], []
        for req, recent in _replay_history(sim, events, sim.config.media_history):
            sims.append(_max_cos(sim, req, recent))
            ys.append([(req.request_id, c.item_id) in clicked for c in req.candidates])
        runs[mw] = (sim, events, np.concatenate(sims), np.concatenate(ys).astype(bool))
    return runs


def test_media_history_raises_clicks_on_similar_items(media_runs) -> None:
    _, _, s0, y0 = media_runs[0.0]
    _, _, s3, y3 = media_runs[3.0]
    np.testing.assert_array_equal(np.isnan(s0), np.isnan(s3))  # same draws, same world
    none = np.isnan(s0)
    assert none.mean() < 0.5
    np.testing.assert_array_equal(y0[none], y3[none])  # no history: media term is 0
    pos = ~none & (s0 > 0)  # same uniforms: a positive media term can only add clicks
    assert np.all(y3[pos] >= y0[pos])
    high = ~none & (s0 >= 0.5)
    low = ~none & (s0 < 0.2)
    assert high.sum() > 2000 and low.sum() > 2000
    ctr0_high, ctr3_high = y0[high].mean(), y3[high].mean()
    assert ctr3_high > 1.5 * ctr0_high + 0.05, (ctr0_high, ctr3_high)
    lift0 = y0[high].mean() - y0[low].mean()
    lift3 = y3[high].mean() - y3[low].mean()
    assert lift3 > lift0 + 0.1, (lift0, lift3)


def test_true_ctr_is_calibrated(media_runs) -> None:
    sim, events, _, y = media_runs[3.0]
    p = np.concatenate([
        sim.true_ctr(req.user_id, [c.item_id for c in req.candidates], recent_items=recent)
        for req, recent in _replay_history(sim, events, sim.config.media_history)
    ])
    assert p.shape == y.shape
    edges = np.quantile(p, np.linspace(0, 1, 11))
    bins = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, 9)
    for b in range(10):
        m = bins == b
        pm, rate = p[m].mean(), y[m].mean()
        se = np.sqrt(pm * (1 - pm) / m.sum())
        assert abs(rate - pm) < 5 * se + 1e-3, (b, pm, rate)


def test_item_content_and_media_embeddings(small) -> None:
    cfg, events, _ = small
    sim = Simulator(cfg)
    v = sim.item_content("i3")
    assert v.shape == (cfg.media_dim,) and v.dtype == np.float32
    assert abs(float(np.linalg.norm(v)) - 1.0) < 1e-5
    for m in [e for e in events if isinstance(e, MediaEvent)][:200]:
        assert float(np.dot(m.embedding, sim.item_content(m.item_id))) > 0.9


def test_write_jsonl_and_cli(tmp_path, capsys) -> None:
    sim = Simulator(SimConfig(seed=2))
    path = tmp_path / "log.jsonl"
    n = write_jsonl(sim.events(200), path)
    lines = path.read_bytes().splitlines()
    assert n == len(lines) and lines == _bytes(sim.events(200))
    out = tmp_path / "cli.jsonl"
    assert main(["--requests", "200", "--out", str(out), "--labelled", "--seed", "2"]) == 0
    assert out.read_bytes().splitlines() == _bytes(sim.labelled_log(200))
    assert "wrote" in capsys.readouterr().out


@pytest.mark.parametrize("bad", [{"shift_segment": "s9"}, {"shift_at": 1.5}, {"base_ctr": 0.0},
                                 {"click_delay_s": (5.0, 1.0)}, {"candidates_per_request": 0}])
def test_config_validation(bad: dict) -> None:
    with pytest.raises(ValueError):
        SimConfig(**bad)
