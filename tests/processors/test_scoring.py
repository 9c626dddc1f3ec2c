"""ScoringCore: batch-first scoring, ranking, identity compensation, pending records."""

from __future__ import annotations

import numpy as np

from reloop.ops.serving import make_compensation
from reloop.ops.settings import Settings
from reloop.processors.scoring import ScoringCore
from reloop.streams.events import Candidate, RecommendationRequest


def requests(n: int, k: int) -> list[RecommendationRequest]:
    return [RecommendationRequest(request_id=f"r{j}", user_id=f"u{j % 7}", ts=100.0 + j, features={"device": "tv"},
                                  candidates=[Candidate(item_id=f"i{(j * k + c) % 50}", features={"genre": f"g{c % 3}"})
                                              for c in range(k)]) for j in range(n)]


def test_scores_rank_and_identity_compensation(small_model) -> None:
    core = ScoringCore(small_model.scorer)
    recs, pend = core.score(requests(5, 8))
    assert [r.request_id for r in recs] == [f"r{j}" for j in range(5)]
    assert len(pend) == 40
    for rec in recs:
        scores = [i.score for i in rec.items]
        assert scores == sorted(scores, reverse=True)
        assert all(i.score == i.base_score and i.evidence == 0.0 for i in rec.items)
        assert rec.model_version == small_model.version


def test_batching_does_not_change_base_scores(small_model) -> None:
    core = ScoringCore(small_model.scorer)
    reqs = requests(6, 5)
    together, _ = core.score(reqs)
    alone = [core.score([r])[0][0] for r in reqs]
    a = np.array([[i.base_score for i in r.items] for r in together])
    b = np.array([[i.base_score for i in r.items] for r in alone])
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_error_memory_codes_travel_with_pending(small_model) -> None:
    s = Settings()
    core = ScoringCore(small_model.scorer, make_compensation(s, small_model.scorer))
    reqs = requests(2, 3)
    _, pend = core.score(reqs)
    rows = [(r.user_id, c.item_id, {**r.features, **c.features}) for r in reqs for c in r.candidates]
    _, comp, _ = core.score_rows(rows, max(r.ts for r in reqs))
    packed = np.array([np.frombuffer(p.codes, "<u4") for p in pend])
    assert packed.shape == (len(rows), s.error_memory.tables)
    np.testing.assert_array_equal(packed, comp.codes)  # the codes the compensation looked up


def test_lambda_zero_error_memory_is_the_identity(small_model) -> None:
    s = Settings().with_overrides(error_memory={"lam": 0.0})
    comp = make_compensation(s, small_model.scorer)
    core = ScoringCore(small_model.scorer, comp)
    _, pend = core.score(requests(4, 4))
    from reloop.processors.feedback import FeedbackCore
    from reloop.processors.metrics import OnlineMetrics
    from reloop.processors.pending import PendingStore
    fc = FeedbackCore(PendingStore(1.0), OnlineMetrics())
    fc.on_scored(pend)
    comp.apply_errors(fc.drain())
    recs, _ = core.score(requests(4, 4))
    assert all(i.score == i.base_score and i.evidence > 0 for r in recs for i in r.items)
