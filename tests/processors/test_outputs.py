"""Batched producing through the broker: same partitions and per-partition order as ``send``."""

from __future__ import annotations

import random

import pytest

from reloop.ops.kafka import create_topics, make_producer, topic_name
from reloop.testing.chaos import read_topic
from reloop.processors.outputs import KeyPartitioner, produce_batched

pytestmark = [pytest.mark.broker]


async def test_batched_outputs_land_where_send_puts_them_in_order(kafka_settings):
    s = kafka_settings
    await create_topics(s.kafka)
    rng = random.Random(7)
    keys = [f"u{rng.randrange(50)}".encode() for _ in range(600)]
    values = [f"{i}:".encode() + b"x" * (2_000_000 if i == 300 else rng.randrange(10, 2000)) for i in range(600)]
    recs, errs = topic_name(s.kafka, "recommendations"), topic_name(s.kafka, "errors")
    producer = make_producer(s.kafka, max_request_size=8 << 20)
    await producer.start()
    try:
        await produce_batched(producer, [(recs, k, v) for k, v in zip(keys, values)], KeyPartitioner())
        futs = [await producer.send(errs, v, key=k) for k, v in zip(keys, values)]  # the reference path
        for f in futs:
            await f
    finally:
        await producer.stop()
    batched, plain = await read_topic(s, "recommendations"), await read_topic(s, "errors")
    assert len(batched) == len(plain) == 600
    where = {m.value: m.partition for m in plain}
    assert all(where[m.value] == m.partition for m in batched)  # same partition as send
    for p in {m.partition for m in batched}:  # same order within each partition
        assert [m.value for m in batched if m.partition == p] == [m.value for m in plain if m.partition == p]
