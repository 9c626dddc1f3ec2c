"""Replay's routing shell: the prequential pair's bytes are exactly what encoding the events
gives, and the fused router cuts the same batches as route_events + cut_batches."""

from __future__ import annotations

import itertools
import logging

import pytest

from reloop.ops.replay_engine import _Router, cut_batches, route_batches, route_events
from reloop.ops.simulator import SimConfig, Simulator
from reloop.processors.outputs import KeyPartitioner
from reloop.processors.prequential import as_feedback, as_request
from reloop.streams.codec import encode
from reloop.streams.events import Interaction, MediaEvent, RecommendationRequest


def _reference(events: list, partitions: int, seq0: int) -> list[list[tuple[str, int, bytes]]]:
    """The routing as written before the fast path: events built, then encoded."""
    parts, part, seq, out = list(range(partitions)), KeyPartitioner(), seq0, []
    for ev in events:
        if isinstance(ev, RecommendationRequest):
            logical = "requests"
        elif isinstance(ev, MediaEvent):
            logical = "media"
        elif isinstance(ev, Interaction):
            if ev.request_id is None:
                p = part.partition(ev.user_id.encode(), parts)
                out.append([("requests", p, encode(as_request(ev, seq))),
                            ("interactions", p, encode(as_feedback(ev, seq)))])
                seq += 1
                continue
            logical = "interactions"
        else:
            continue
        out.append([(logical, part.partition(ev.user_id.encode(), parts), encode(ev))])
    return out


def _odd_interactions() -> list[Interaction]:
    """Ids and features that stress the byte splicing: quotes, escapes, unicode, a feature
    named request_id, no features, values of every kind."""
    return [
        Interaction(user_id='u"request_id":null', item_id="i\\1", ts=1.5, label=1,
                    features={"request_id": "x", "f": 0.1}),
        Interaction(user_id="ü ☃", item_id="i2", ts=2.0, label=0, kind="click", value=3.25),
        Interaction(user_id="u3", item_id='"request_id":null', ts=1e9 + 0.123456789, label=0,
                    features={"a": 1e-300, "b": -0.0, "c": "s\n"}),
    ]


@pytest.mark.parametrize("partitions, seq0", [(4, 0), (3, 17)])
def test_pair_bytes_equal_encoded_events(partitions: int, seq0: int, caplog: pytest.LogCaptureFixture) -> None:
    sim = list(itertools.islice(Simulator(SimConfig(seed=3)).labelled_log(60), 600))
    recorded = list(itertools.islice(Simulator(SimConfig(seed=4)).events(20), 200))  # requests, clicks, media
    events = _odd_interactions() + sim + recorded
    with caplog.at_level(logging.WARNING, logger="reloop.replay"):
        got = [[(r.logical, r.partition, r.raw) for r in g] for g in route_events(events, partitions, seq0)]
    assert got == _reference(events, partitions, seq0)
    assert any(len(g) == 2 for g in got) and {g[0][0] for g in got} == {"requests", "interactions", "media"}
    assert "replay_pair_bytes_fallback" not in caplog.text  # the fast path made them


@pytest.mark.parametrize("size", [1, 7, 256])
def test_route_batches_equals_cut_of_routed(size: int) -> None:
    events = _odd_interactions() + list(itertools.islice(Simulator(SimConfig(seed=5)).labelled_log(40), 500))
    fused = [[(r.logical, r.partition, r.raw) for r in b] for b in route_batches(events, 4, 2, size)]
    cut = [[(r.logical, r.partition, r.raw) for r in b] for b in cut_batches(route_events(events, 4, 2), size)]
    assert fused == cut
    assert len(fused) == -(-len(events) // size)


def test_mismatch_falls_back_to_encoding_events(monkeypatch: pytest.MonkeyPatch,
                                                caplog: pytest.LogCaptureFixture) -> None:
    import reloop.ops.replay_engine as engine

    events = list(itertools.islice(Simulator(SimConfig(seed=6)).labelled_log(20), 100))
    monkeypatch.setattr(engine, "_REQ_VERSION", 99)  # the fast bytes now differ from encode(...)
    with caplog.at_level(logging.WARNING, logger="reloop.replay"):
        got = [[(r.logical, r.partition, r.raw) for r in g] for g in route_events(events, 4, 0)]
    assert got == _reference(events, 4, 0)
    assert "replay_pair_bytes_fallback" in caplog.text
    router = _Router(4, 0)
    assert router._fast  # noqa: SLF001 - a fresh router starts on the fast path
