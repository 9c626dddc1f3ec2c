"""ScoringCore with the error-schema cache: schema ids on items, schema bias on cold candidates."""

from __future__ import annotations

import msgspec
import numpy as np
import pytest

from reloop.ops.serving import make_compensation
from reloop.ops.settings import Settings
from reloop.processors.schemas import SchemaCore
from reloop.processors.scoring import ScoringCore
from reloop.state.schemas.cache import SchemaCache, SchemaCacheConfig
from reloop.state.schemas.match import SchemaMatcher, logit, sigmoid
from reloop.streams.events import Candidate, RecommendationRequest
from tests.state.test_schema_cache import T0, _feed, _stream


def _requests(n: int, k: int, ts: float) -> list[RecommendationRequest]:
    return [RecommendationRequest(request_id=f"r{j}", user_id=f"u{j % 7}", ts=ts + j, features={"device": "tv"},
                                  candidates=[Candidate(item_id=f"i{(j * k + c) % 50}", features={"genre": f"g{c % 5}"})
                                              for c in range(k)]) for j in range(n)]


@pytest.fixture(scope="module")
def g3_cache() -> SchemaCache:
    """A cache with an active schema ``genre=g3`` (over-predicted by ~0.15)."""
    cache = SchemaCache()
    _feed(cache, _stream(1, 20_000, T0) + _stream(2, 20_000, T0 + 20, fault={"genre": "g3"}, lift=-0.15,
                                                    start_id=20_000))
    assert [s.signature for s in cache.schemas()] == [["genre=g3"]]
    return cache


def _core_with(cache: SchemaCache, **config) -> SchemaCore:
    """A SchemaCore around a copy of ``cache`` with some config fields replaced."""
    snap = cache.snapshot()
    cfg = msgspec.structs.replace(cache.config, **config)
    snap["config"] = np.array(msgspec.json.encode(cfg).decode())
    return SchemaCore(cache=SchemaCache.restore(snap))


def test_items_carry_schema_ids_and_cold_items_are_biased(small_model, g3_cache) -> None:
    sid = g3_cache.schemas()[0].schema_id
    plain = ScoringCore(small_model.scorer)
    core = ScoringCore(small_model.scorer, schemas=_core_with(g3_cache))
    reqs = _requests(4, 10, T0 + 40)
    before, _ = plain.score(reqs)
    after, pending = core.score(reqs)
    shift = float(g3_cache.matcher.logit_shift[0])
    assert shift < -0.3  # over-prediction -> the odds go down
    by_item = {(r.request_id, i.item_id): i for r in before for i in r.items}
    n_hit = 0
    for rec in after:
        scores = [i.score for i in rec.items]
        assert scores == sorted(scores, reverse=True)
        for item in rec.items:
            old = by_item[(rec.request_id, item.item_id)]
            assert item.base_score == old.base_score and item.evidence == 0.0
            if item.schemas:
                n_hit += 1
                assert item.schemas == [sid]
                assert item.score == pytest.approx(float(sigmoid(logit(np.array([old.score])) + shift)[0]), rel=1e-9)
                assert item.score < old.score
            else:
                assert item.score == old.score
    assert n_hit == 4 * 2  # candidates c = 3, 8 of each request have genre g3
    assert {round(p.comp_pred, 12) for p in pending} == {round(i.score, 12) for r in after for i in r.items}


def test_bias_off_keeps_scores_but_still_tags(small_model, g3_cache) -> None:
    reqs = _requests(3, 10, T0 + 40)
    plain, _ = ScoringCore(small_model.scorer).score(reqs)
    off, _ = ScoringCore(small_model.scorer, schemas=_core_with(g3_cache, bias_when_cold=False)).score(reqs)
    assert [[i.score for i in r.items] for r in off] == [[i.score for i in r.items] for r in plain]
    assert sum(bool(i.schemas) for r in off for i in r.items) == 6


def test_only_cold_candidates_are_biased(small_model, g3_cache) -> None:
    s = Settings()
    comp = make_compensation(s, small_model.scorer)
    reqs = _requests(6, 10, T0 + 40)
    # warm the error memory on some of the same candidates
    from reloop.processors.feedback import FeedbackCore
    from reloop.processors.metrics import OnlineMetrics
    from reloop.processors.pending import PendingStore
    _, pend = ScoringCore(small_model.scorer, comp).score(reqs[:3])
    fc = FeedbackCore(PendingStore(1.0), OnlineMetrics())
    fc.on_scored(pend)
    comp.apply_errors(fc.drain())
    bare, _ = ScoringCore(small_model.scorer, comp).score(reqs)
    evidence = np.array([i.evidence for r in bare for i in r.items])
    cut = float(np.median(evidence[evidence > 0]))
    biased, _ = ScoringCore(small_model.scorer, comp, schemas=_core_with(g3_cache, cold_evidence=cut)).score(reqs)
    old = {(r.request_id, i.item_id): i.score for r in bare for i in r.items}
    changed = [(i.evidence < cut, i.score != old[(r.request_id, i.item_id)]) for r in biased for i in r.items
               if i.schemas]
    assert changed and all(cold == moved for cold, moved in changed)
    assert any(cold for cold, _ in changed) and not all(cold for cold, _ in changed)


def test_vectorised_matching_equals_per_row_match(g3_cache) -> None:
    rng = np.random.default_rng(0)
    rows = [{"genre": f"g{rng.integers(0, 6)}", "device": ["tv", "web"][rng.integers(0, 2)],
             "age_bucket": ["18-24", "55+"][rng.integers(0, 2)], "popularity": 0.3} for _ in range(300)]
    rows += [{"popularity": 0.1}, {"genre": 3.0}]  # missing and non-string values never match
    for version in ("v1", "v2"):
        ids, shift = g3_cache.matcher.match_rows(rows, version)
        assert ids == [[s.schema_id for s in g3_cache.match(r, version)] for r in rows]
        assert np.count_nonzero(shift) == sum(bool(i) for i in ids)


def test_more_specific_schema_wins_in_the_bias(g3_cache) -> None:
    base = g3_cache.schemas()[0]
    pair = msgspec.structs.replace(base, schema_id="p", signature=["device=tv", "genre=g3"], calibration_gap=-0.3,
                                   support=1e9)
    single_dev = msgspec.structs.replace(base, schema_id="d", signature=["device=tv"], calibration_gap=0.1,
                                         support=1e9)
    m = SchemaMatcher([pair, base, single_dev], bias_prior=0.0, max_logit_bias=10.0)
    ids, shift = m.match_rows([{"genre": "g3", "device": "tv"}, {"genre": "g3", "device": "web"},
                               {"genre": "g1", "device": "tv"}], "v1")
    assert ids == [["p", base.schema_id, "d"], [base.schema_id], ["d"]]
    q = base.predicted_rate
    expect_pair = logit(np.array([q - 0.3])) - logit(np.array([q]))  # contains both singles: only it counts
    np.testing.assert_allclose(shift, [expect_pair[0], m.logit_shift[1], m.logit_shift[2]])
    assert m.prob_bias({"genre": "g3", "device": "tv"}, "v1") == pytest.approx(-0.3)


def test_config_rejects_negative_cold_evidence() -> None:
    with pytest.raises(ValueError, match="cold_evidence"):
        SchemaCacheConfig(cold_evidence=-1.0)
    with pytest.raises(ValueError, match="max_logit_bias"):
        SchemaCacheConfig(max_logit_bias=0.0)
