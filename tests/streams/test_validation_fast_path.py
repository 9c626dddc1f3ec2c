"""check_limits' fast path (interactions, requests, error records: only the clock) gives the
same answer as the full check for every kind, limit and clock, near the boundaries."""

from __future__ import annotations

import random

from reloop.streams.events import Candidate, ErrorRecord, Interaction, MediaEvent, RecommendationRequest
from reloop.streams.validation import Limits, _check_limits, check_limits

NOW = 1.7e9


def _events(rng: random.Random) -> list[object]:
    ts = NOW + rng.choice([-10.0, 0.0, 3599.0, 3600.0, 3600.5, 1e6])
    label_ts = rng.choice([None, ts - 1.0, ts + 0.75, NOW + 3600.25])
    n = rng.choice([1, 2, 5])
    return [
        Interaction(user_id="u", item_id="i", ts=ts, label=1),
        RecommendationRequest(request_id="r", user_id="u", ts=ts,
                              candidates=[Candidate(item_id=f"i{k}") for k in range(n)]),
        ErrorRecord(error_id="1:r:i", user_id="u", item_id="i", ts=ts, label=0, base_pred=0.5, comp_pred=0.5,
                    model_version="v", label_ts=label_ts),
        MediaEvent(user_id="u", ts=ts, modality="video", segment_id="s", embedding=[0.0] * rng.choice([2, 4])),
    ]


def test_fast_path_equals_the_full_check():
    rng = random.Random(7)
    seen = set()
    for _ in range(400):
        limits = Limits(max_candidates=rng.choice([1, 2, 10]), media_dim=rng.choice([2, 4]),
                        max_future_s=rng.choice([0.0, 3600.0]))
        for ev in _events(rng):
            got = check_limits(ev, limits, now=NOW)
            assert got == _check_limits(ev, limits, NOW), (ev, limits)
            seen.add((type(ev).__name__, got is None))
    # both outcomes were exercised for every kind
    assert {k for k, ok in seen if ok} == {k for k, ok in seen if not ok} == {
        "Interaction", "RecommendationRequest", "ErrorRecord", "MediaEvent"}


def test_non_finite_features_are_rejected_with_their_place():
    """The finiteness check (one pass over the values) still names the bad feature."""
    import pytest

    for bad in (float("inf"), float("-inf"), float("nan")):
        with pytest.raises(ValueError, match=r"features\['b'\] must be finite"):
            Interaction(user_id="u", item_id="i", ts=1.0, label=1, features={"a": "x", "b": bad})
        with pytest.raises(ValueError, match=r"^features\['b'\] must be finite"):
            RecommendationRequest(request_id="r", user_id="u", ts=1.0, features={"a": 1.0, "b": bad},
                                  candidates=[Candidate(item_id="i")])
        with pytest.raises(ValueError, match=r"candidates\['i2'\]\.features\['c'\] must be finite"):
            RecommendationRequest(request_id="r", user_id="u", ts=1.0, candidates=[
                Candidate(item_id="i1", features={"c": 1.0}), Candidate(item_id="i2", features={"c": bad})])
    ok = RecommendationRequest(request_id="r", user_id="u", ts=1.0, features={"a": 1e308, "s": "x"},
                               candidates=[Candidate(item_id="i", features={"c": -1e308})])
    assert ok.features["a"] == 1e308
