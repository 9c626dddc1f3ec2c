"""ScoringCore: rank candidates with the slow model, corrected by the compensation hook.

Batch-first: all candidates of all requests in a batch are encoded, scored by onnxruntime and
compensated in one call each; the batch is then split back per request and ranked. Pure and
synchronous: no Kafka, no clocks (event time comes from the requests).

With an error-schema cache (``schemas``), every candidate is matched against the active
schemata in one column-wise pass per batch (:class:`reloop.state.schemas.match.SchemaMatcher`): the
ids of the schemata it matches go into ``ScoredItem.schemas``, and when its error-memory
evidence is cold (``evidence < cold_evidence``) and ``bias_when_cold`` is on, the schemata's
shrunk logit shift is added to its compensated score (``sigmoid(logit(score) + beta)``).
The pending prediction keeps the compensated score the ranking used.
"""

from __future__ import annotations

import time
from functools import partial
from itertools import repeat
from typing import Sequence

import msgspec
import numpy as np

from reloop.models.features import FeatureEncoder
from reloop.models.scorer import OnnxScorer
from reloop.processors.compensation import Compensation, NoCompensation
from reloop.processors.media import MediaCore
from reloop.processors.pending import Pending
from reloop.processors.schemas import SchemaCore
from reloop.state.schemas.match import logit, sigmoid
from reloop.streams.events import CODE_DTYPE, Recommendation, RecommendationRequest, ScoredItem


class ScoringCore:
    """Scores recommendation requests; returns recommendations and pending predictions.

    Args:
        scorer: the current ONNX model (swap with :meth:`swap_model` between batches).
        compensation: correction applied to base scores (identity by default).
        media: the user's media memory, whose features are merged into each candidate's
            (used by the model when it was trained with them).
        schemas: the error-schema cache (read only here): matching schema ids on every
            item, and the schema-level bias on cold candidates (see the module docstring).
    """

    def __init__(self, scorer: OnnxScorer, compensation: Compensation | None = None,
                 media: MediaCore | None = None, *, schemas: SchemaCore | None = None) -> None:
        self.compensation: Compensation = compensation or NoCompensation()
        self.media = media
        self.schemas = schemas
        self.scorer = scorer
        self.encoder = FeatureEncoder(scorer.spec)
        #: seconds spent since the shell last reset it: ``model`` (features + onnxruntime),
        #: ``compensation`` (error memory + schemata); read by the shell's stage histograms
        self.timings: dict[str, float] = {"model": 0.0, "compensation": 0.0}
        self._kept = KeptFeatures()

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
        t0 = time.perf_counter()
        tokens, dense = self.encoder.encode(rows)
        base, hidden = self.scorer.score(tokens, dense)
        t1 = time.perf_counter()
        comp = self.compensation.compensate(base, hidden, now)
        self.timings["model"] += t1 - t0
        self.timings["compensation"] += time.perf_counter() - t1
        return base, comp, hidden

    def apply_schemas(self, rows: Sequence[tuple[str, str, dict]], version: str, scores: np.ndarray,
                      evidence: np.ndarray, codes: np.ndarray) -> tuple[list[list[str]], np.ndarray]:
        """Match rows against the active schemata; bias the cold ones' scores.

        Args:
            rows: (user_id, item_id, features) per candidate; version: serving model version.
            scores, evidence: (n,) float64 compensated scores and error-memory evidence.
            codes: (n, K) int32 error-memory codes (``code[k]`` predicates).

        Returns:
            (schema ids per row, (n,) float64 scores, biased where cold; ``scores`` itself
            when nothing matched or the bias is off).
        """
        n = len(rows)
        if self.schemas is None:
            return [[] for _ in range(n)], scores
        cache = self.schemas.cache
        matcher = cache.matcher
        if not len(matcher):
            return [[] for _ in range(n)], scores
        matched, shift = matcher.match_rows([r[2] for r in rows], version, codes)
        cfg = cache.config
        if cfg.bias_when_cold:
            cold = (evidence < cfg.cold_evidence) & (shift != 0.0)
            if cold.any():
                scores = scores.copy()
                scores[cold] = sigmoid(logit(scores[cold]) + shift[cold])
        return matched, scores

    def score(self, requests: Sequence[RecommendationRequest]) -> tuple[list[Recommendation], list[Pending]]:
        """Rank each request's candidates by compensated score (ties: base score, then order).

        Returns one recommendation per request, in input order, and one pending prediction
        per scored candidate.
        """
        if not requests:
            return [], []
        requests = [unique_candidates(r) for r in requests]
        # one row per candidate, flattened in request order, with its request's id and time
        rows: list[tuple[str, str, dict]] = []
        rids: list[str] = []
        times: list[float] = []
        bounds = [0]
        add_row, add_rid, add_ts = rows.append, rids.append, times.append
        for r in requests:
            user, rf, rid, ts = r.user_id, r.features, r.request_id, r.ts
            for c in r.candidates:
                cf = c.features
                add_row((user, c.item_id, {**rf, **cf} if cf else dict(rf)))
                add_rid(rid)
                add_ts(ts)
            bounds.append(len(rows))
        if self.media is not None:  # the dicts were made above: merged into in place
            self.media.merge_into_rows(requests, rows, in_place=True)
        now = max(r.ts for r in requests)
        spec = self.scorer.spec
        keep = (spec.max_tokens - 2, spec.dense_names)
        base, comp, _ = self.score_rows(rows, now)
        scores, evidence, codes = comp
        version = self.scorer.version
        t0 = time.perf_counter()
        matched, scores = self.apply_schemas(rows, version, scores, evidence, codes)
        self.timings["compensation"] += time.perf_counter() - t0
        base_l, score_l = base.tolist(), scores.tolist()
        items_l = [row[1] for row in rows]
        users_l = [row[0] for row in rows]
        # every candidate's ScoredItem and Pending, built column-wise over the whole batch
        scored = [ScoredItem(item_id=i, base_score=b, score=s, evidence=e, schemas=m)
                  for i, b, s, e, m in zip(items_l, base_l, score_l, evidence.tolist(), matched)]
        pending = list(map(_new_pending, zip(rids, items_l, users_l, times, base_l, score_l, repeat(version),
                                             packed_rows(codes), self._kept.rows([row[2] for row in rows], keep))))
        recs: list[Recommendation] = []
        add_rec = recs.append
        for j, r in enumerate(requests):
            lo, hi = bounds[j], bounds[j + 1]
            # ranked: compensated score, then base score, then order (one candidate: no sort)
            items = scored[lo:hi] if hi - lo == 1 else [
                scored[i] for i in (np.lexsort((np.arange(hi - lo), -base[lo:hi], -scores[lo:hi])) + lo).tolist()]
            add_rec(Recommendation(request_id=r.request_id, user_id=r.user_id, ts=r.ts, model_version=version,
                                   items=items))
        return recs, pending


#: ``Pending`` from a 9-tuple of its fields, without a call per field (``tuple.__new__``).
_new_pending = partial(tuple.__new__, Pending)


def unique_candidates(r: RecommendationRequest) -> RecommendationRequest:
    """``r`` with repeated candidate item ids collapsed (the first one kept), so 1,000 copies
    of one item are scored and ranked once (docs/guarantees.md); ``r`` itself if none repeat.

    >>> from reloop.streams.events import Candidate
    >>> r = RecommendationRequest(request_id="r", user_id="u", ts=1.0,
    ...     candidates=[Candidate(item_id="a"), Candidate(item_id="b"), Candidate(item_id="a")])
    >>> [c.item_id for c in unique_candidates(r).candidates]
    ['a', 'b']
    """
    cands = r.candidates
    if len(cands) < 2:
        return r
    seen: set[str] = set()
    out = [c for c in cands if not (c.item_id in seen or seen.add(c.item_id))]  # type: ignore[func-returns-value]
    return msgspec.structs.replace(r, candidates=out) if len(out) < len(cands) else r


def model_features(features: dict, keep: tuple[int, tuple[str, ...]]) -> dict:
    """The features a pending prediction (and so its error record) keeps: those the model
    reads (:mod:`reloop.models.features`: the first ``n_categorical`` categorical names in ascending
    order, and the dense names). The trainer joins no more than that, and a record's size is
    bounded by the model's spec, not by what a producer sent.

    Args:
        keep: ``(n_categorical, dense_names)``, i.e. ``(max_tokens - 2, spec.dense_names)``.

    >>> model_features({"c": "x", "a": "y", "b": "z", "d": 1.0, "e": 2.0}, (2, ("d",)))
    {'a': 'y', 'b': 'z', 'd': 1.0}
    """
    n_cat, dense = keep
    if len(features) <= n_cat:
        return features
    cats = sorted(k for k, v in features.items() if isinstance(v, str))[:n_cat]
    out = {k: features[k] for k in cats}
    for d in dense:
        v = features.get(d)
        if v is not None and not isinstance(v, str):
            out[d] = v
    return out


class KeptFeatures:
    """:func:`model_features` of many rows, with the choice of names memoised per row shape.

    Which names a row keeps depends only on its names, their order and which values are
    strings, so the choice is computed once per (names, value types) and reused: per row
    that is two tuples and a dict lookup instead of a sort (the rows of one source share a
    shape). Bounded: the memo is cleared past ``max_shapes`` shapes.

    >>> k = KeptFeatures()
    >>> rows = [{"c": "x", "a": "y", "b": "z", "d": 1.0}, {"c": "u", "a": "v", "b": "w", "d": 2.0}]
    >>> k.rows(rows, (2, ("d",))) == [model_features(r, (2, ("d",))) for r in rows]
    True
    >>> k.rows([{"c": 1.0, "a": "y", "b": "z", "d": "s"}], (2, ("d",)))  # other types, other choice
    [{'a': 'y', 'b': 'z'}]
    """

    def __init__(self, max_shapes: int = 4096) -> None:
        self.max_shapes = max_shapes
        self._names: dict[tuple, tuple[str, ...]] = {}  # (keep, names, types) -> names kept, in order

    def rows(self, rows: Sequence[dict], keep: tuple[int, tuple[str, ...]]) -> list[dict]:
        """``[model_features(f, keep) for f in rows]``, the same dicts (same order of names)."""
        n_cat = keep[0]
        memo = self._names
        out: list[dict] = []
        add = out.append
        for f in rows:
            if len(f) <= n_cat:
                add(f)
                continue
            shape = (keep, tuple(f), tuple(map(type, f.values())))
            names = memo.get(shape)
            if names is None:
                if len(memo) >= self.max_shapes:
                    memo.clear()
                names = memo[shape] = tuple(model_features(f, keep))
            add({k: f[k] for k in names})
        return out


def packed_rows(codes: np.ndarray) -> list[bytes]:
    """``(n, K)`` codes -> n wire-form rows (:func:`reloop.streams.events.pack_codes` of each row).

    >>> from reloop.streams.events import pack_codes
    >>> packed_rows(np.array([[1, 2], [3, 4]], dtype=np.int32))[1] == pack_codes([3, 4])
    True
    """
    n = codes.shape[0]
    width = 4 * (codes.shape[1] if codes.ndim == 2 else 0)
    buf = np.ascontiguousarray(codes, dtype=CODE_DTYPE).tobytes() if width else b""
    return [buf[i * width:(i + 1) * width] for i in range(n)]
