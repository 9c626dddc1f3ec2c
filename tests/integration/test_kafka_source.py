"""The Kafka replay source against the embedded broker: every input record of the range, merged
by event time across topics and partitions, ending at the end captured at start."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt

import pytest
from aiokafka.partitioner import DefaultPartitioner

from reloop.ops.kafka import create_topics
from reloop.ops.kafka_source import KafkaRange, kafka_events, open_source
from reloop.ops.replay_cli import add_source_args
from reloop.ops.simulator import SimConfig, Simulator
from reloop.streams.codec import encode
from reloop.streams.events import Interaction, MediaEvent, RecommendationRequest
from reloop.streams.topics import USER_PARTITIONS
from tests.integration.helpers import produce

pytestmark = pytest.mark.broker

TOPIC_OF = {RecommendationRequest: "requests", Interaction: "interactions", MediaEvent: "media"}


def _traffic(n_requests: int = 150) -> list:
    sim = Simulator(SimConfig(seed=5, n_users=40, n_items=60, media_weight=0.0))
    return list(sim.events(n_requests))


async def _produce_all(settings, events, extra_bad: bool = False) -> None:
    by_topic: dict[str, list] = {}
    for ev in events:
        by_topic.setdefault(TOPIC_OF[type(ev)], []).append(ev)
    for topic, evs in by_topic.items():
        await produce(settings, topic, evs)
    if extra_bad:  # not JSON, and a request on the interactions topic: both dead, neither fatal
        req = next(e for e in events if isinstance(e, RecommendationRequest))
        await produce(settings, "interactions", [b"{not json", encode(req)], keys=[b"u1", b"u1"])


def _key(ev) -> tuple:
    return ev.ts, encode(ev)


def test_kafka_source_reads_the_range_in_event_time_order(kafka_settings) -> None:
    events = _traffic()
    assert {type(e) for e in events} == {RecommendationRequest, Interaction, MediaEvent}  # all three topics
    asyncio.run(create_topics(kafka_settings.kafka))
    asyncio.run(_produce_all(kafka_settings, events, extra_bad=True))

    stream = kafka_events(kafka_settings, KafkaRange(idle_timeout_s=120.0))
    first = next(stream)  # the range is fixed now
    late = [Interaction(user_id="late", item_id="x", ts=events[-1].ts + 1, label=1)]
    asyncio.run(produce(kafka_settings, "interactions", late))
    got = [first, *stream]

    ts = [e.ts for e in got]
    assert ts == sorted(ts)
    assert sorted(got, key=_key) == sorted(events, key=_key)
    assert not any(e.user_id == "late" for e in got)  # produced after the start: not in the range
    st = stream.stats
    assert st.invalid == 2
    assert st.events == len(got) and st.lines == len(got) + st.invalid
    assert st.bytes_read == st.bytes_total == st.lines
    reasons = [reason for _, _, reason in st.examples]
    assert any("DecodeError" in r for r in reasons) and any("request" in r for r in reasons)
    assert all(src.startswith(f"{kafka_settings.kafka.topic_prefix}interactions[") for src, _, _ in st.examples)


def test_kafka_source_time_and_offset_ranges(kafka_settings) -> None:
    events = _traffic(120)
    asyncio.run(create_topics(kafka_settings.kafka))
    asyncio.run(_produce_all(kafka_settings, events))
    ts = sorted(e.ts for e in events)
    since, until = ts[len(ts) // 4], ts[3 * len(ts) // 4]
    got = list(kafka_events(kafka_settings, KafkaRange(since=since, until=until, idle_timeout_s=120.0)))
    assert sorted(got, key=_key) == sorted((e for e in events if since <= e.ts < until), key=_key)

    # the same range through the CLI glue, ISO times, the broker and prefix from the flags
    ap = argparse.ArgumentParser()
    ap.add_argument("path", nargs="?")
    add_source_args(ap)
    iso = [dt.datetime.fromtimestamp(t, dt.timezone.utc).isoformat() for t in (since, until)]
    args = ap.parse_args(["--broker", kafka_settings.kafka.broker, "--topic-prefix", kafka_settings.kafka.topic_prefix,
                          "--since", iso[0], "--until", iso[1], "--quiet"])
    via_cli = list(open_source(args, kafka_settings.with_overrides(kafka={"topic_prefix": "elsewhere.",
                                                                                 "broker": "kafka://127.0.0.1:9"})))
    assert via_cli == got

    only = list(kafka_events(kafka_settings, KafkaRange(topics=("requests",), start_offset=2, end_offset=5,
                                                          idle_timeout_s=120.0)))
    requests = [e for e in events if isinstance(e, RecommendationRequest)]
    per_part: dict[int, int] = {}
    for e in requests:  # the producer's partitioner, as helpers.produce keys by user_id
        p = DefaultPartitioner()(e.user_id.encode(), list(range(USER_PARTITIONS)), list(range(USER_PARTITIONS)))
        per_part[p] = per_part.get(p, 0) + 1
    assert len(only) == sum(min(3, max(0, n - 2)) for n in per_part.values()) > 0
    assert all(isinstance(e, RecommendationRequest) for e in only)
    assert set(encode(e) for e in only) <= set(encode(e) for e in requests)
    assert [e.ts for e in only] == sorted(e.ts for e in only)
