"""Schema distillation on one elected worker: two workers in one group, only the leader reads
``errors`` and distils; the other matches requests against what the leader publishes on
``schemas`` (its recommendations name the schema too)."""

from __future__ import annotations


import msgspec
import pytest

from reloop.ops.kafka import create_topics
from reloop.ops.simulator import FaultSpec, SimConfig, Simulator
from reloop.ops.webclient import get_json, wait_ready
from reloop.processors.schemas import SchemaUpdate
from reloop.streams.codec import decode_event
from reloop.streams.events import Candidate, Recommendation, RecommendationRequest
from reloop.streams.topics import USER_PARTITIONS
from tests.integration.helpers import named_workers, consume_until, log_events, poll_until, produce
from tests.processors.test_schema_core import _oracle_records

pytestmark = [pytest.mark.broker, pytest.mark.slow]


async def test_only_the_leader_distils_and_the_other_matches_its_schemata(kafka_settings, small_model, tmp_path):
    s = kafka_settings
    await create_topics(s.kafka)
    sim = Simulator(SimConfig(seed=4, shift_at=None, faults=(
        FaultSpec(kind="ctr_collapse", where={"genre": "comedy"}, start_frac=0.2, end_frac=1.0),)))  # active at the end
    records = _oracle_records(sim, 1500)
    workers = named_workers(s, small_model, tmp_path, ("a", "b"))
    try:
        for w in workers:
            await wait_ready(w.port, 180.0, w.proc)
        await produce(s, "errors", records)
        updates = [decode_event(m.value, SchemaUpdate) for m in await consume_until(
            s, "schemas", lambda m: any(b"genre=comedy" in x.value for x in m), timeout_s=180)]
        comedy = next(u for u in updates if "genre=comedy" in u.signature)
        states = [await get_json(w.port, "/status") for w in workers]
        readers = [sum(st["errors_applied"].values()) > 0 for st in states]
        assert readers.count(True) == 1, states  # one distils; the other never read ``errors``
        # and only the one that distils started a schema-cache child process
        assert [bool(log_events(w.log_text(), "schema_child_started")) for w in workers] == readers
        # the follower reads ``schemas`` asynchronously: wait until it matches against the
        # comedy schema (a request scored before that is rightly unmatched)
        follower = workers[readers.index(False)]
        await poll_until(lambda: get_json(follower.port, "/status"),
                         lambda st: comedy.schema_id in st["schemas_matched"], what="the follower has the schema")
        # requests on every partition (so on both workers), a comedy candidate each, at the time
        # the schema was active; every recommendation names it
        ts = comedy.last_seen
        reqs = [RecommendationRequest(request_id=f"q{u}", user_id=f"probe-{u}", ts=ts,
                                      candidates=[Candidate(item_id=f"c{u}", features={"genre": "comedy"})])
                for u in range(4 * USER_PARTITIONS)]
        await produce(s, "requests", reqs)
        recs = [decode_event(m.value, Recommendation) for m in await consume_until(
            s, "recommendations", lambda m: len({msgspec.json.decode(x.value)["request_id"] for x in m}) >= len(reqs),
            timeout_s=120)]
        await poll_until(lambda: get_json(workers[readers.index(False)].port, "/status"),
                         lambda st: sum(st["errors_applied"].values()) == 0, what="the follower read no errors")
    finally:
        for w in workers:
            assert w.stop() == 0, w.log_tail()
    assert all(w.proc.returncode == 0 for w in workers)
    matched = {r.request_id: r.items[0].schemas for r in recs}
    missing = [q for q, ids in matched.items() if not any(u.schema_id in ids for u in updates
                                                           if "genre=comedy" in u.signature)]
    assert not missing, (missing, matched)
