"""The prequential (score-then-learn) view of a labelled log, shared by replay and the driver.

An interaction from a log that has no request becomes a one-candidate request (scored first)
followed by the same interaction carrying that request's id (learned from second). Replay
runs this in-process; the Kafka driver produces the same pairs to ``requests`` and
``interactions``, which is what makes online/offline parity checkable.
"""

from __future__ import annotations

import msgspec

from reloop.streams.events import Candidate, Interaction, RecommendationRequest


def request_id_for(seq: int) -> str:
    """Request id of the ``seq``-th logged interaction (0-based, in log order)."""
    return f"log-{seq}"


def as_request(it: Interaction, seq: int) -> RecommendationRequest:
    """A one-candidate request for logged interaction ``it`` (all features on the candidate)."""
    return RecommendationRequest(request_id=request_id_for(seq), user_id=it.user_id, ts=it.ts,
                                 candidates=[Candidate(item_id=it.item_id, features=it.features)])


def as_feedback(it: Interaction, seq: int) -> Interaction:
    """``it`` linked to its one-candidate request."""
    return msgspec.structs.replace(it, request_id=request_id_for(seq))
