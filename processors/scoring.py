"""ScoringCore: rank candidates with the slow model, corrected by the compensation hook.

Batch-first: all candidates of all requests in a batch are encoded, scored by onnxruntime and
compensated in one call each; the batch is then split back per request and ranked. Pure and
synchronous: no Kafka, no clocks (event time comes from the requests).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from models.features import FeatureEncoder
from models.scorer import OnnxScorer
from processors.compensation import Compensation, NoCompensation
from processors.media import MediaCore
from processors.pending import Pending
from streams.events import Recommendation, RecommendationRequest, ScoredItem


class ScoringCore:
    """Scores recommendation requests; returns recommendations and pending predictions.

    Args:
        scorer: the current ONNX model (swap with :meth:`swap_model` between batches).
        compensation: correction applied to base scores (identity by default).
        media: the user's media memory, whose features are merged into each candidate's
            (used by the model when it was trained with them).
    """

    def __init__(self, scorer: OnnxScorer, compensation: Compensation | None = None,
                 media: MediaCore | None = None) -> None:
        self.compensation: Compensation = compensation or NoCompensation()
        self.media = media
        self.scorer = scorer
        self.encoder = FeatureEncoder(scorer.spec)

    @property
    def model_version(self) -> str:
        return self.scorer.version

    def swap_model(self, scorer: OnnxScorer) -> None:
        """Serve ``scorer`` from the next batch on and tell the compensation."""
        self.scorer = scorer
        self.encoder = FeatureEncoder(scorer.spec)
        self.compensation.on_model_change(scorer)

    def score_rows(self, rows: Sequence[tuple[str, str, dict]], now: float):
        """Score flat (user_id, item_id, features) rows.

        Returns (base (n,) float64, compensated :class:`Compensated`, hidden (n, H) float32).
        """
        tokens, dense = self.encoder.encode(rows)
        base, hidden = self.scorer.score(tokens, dense)
        return base, self.compensation.compensate(base, hidden, now), hidden

    def score(self, requests: Sequence[RecommendationRequest]) -> tuple[list[Recommendation], list[Pending]]:
        """Rank each request's candidates by compensated score (ties: base score, then order).

        Returns one recommendation per request, in input order, and one pending prediction
        per scored candidate.
        """
        if not requests:
            return [], []
        rows: list[tuple[str, str, dict]] = []
        bounds = [0]
        for r in requests:
            for c in r.candidates:
                rows.append((r.user_id, c.item_id, {**r.features, **c.features}))
            bounds.append(len(rows))
        if self.media is not None:
            rows = self.media.merge_into_rows(requests, rows)
        now = max(r.ts for r in requests)
        base, comp, _ = self.score_rows(rows, now)
        scores, evidence, codes = comp
        base_l, score_l, ev_l, codes_l = base.tolist(), scores.tolist(), evidence.tolist(), codes.tolist()
        version = self.scorer.version
        recs: list[Recommendation] = []
        pending: list[Pending] = []
        for j, r in enumerate(requests):
            lo, hi = bounds[j], bounds[j + 1]
            order = (np.lexsort((np.arange(hi - lo), -base[lo:hi], -scores[lo:hi])) + lo).tolist()
            items = [ScoredItem(item_id=rows[i][1], base_score=base_l[i], score=score_l[i], evidence=ev_l[i])
                     for i in order]
            recs.append(Recommendation(request_id=r.request_id, user_id=r.user_id, ts=r.ts,
                                       model_version=version, items=items))
            pending.extend(Pending(r.request_id, rows[i][1], r.user_id, r.ts, base_l[i], score_l[i],
                                   version, tuple(codes_l[i]), rows[i][2]) for i in range(lo, hi))
        return recs, pending
