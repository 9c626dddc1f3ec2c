"""A starting trainer announces ``CURRENT`` only when ``models`` does not already end with it
(issue 14: the re-announcement made a worker loading v1 swap v1 for v1)."""

from __future__ import annotations

from pathlib import Path

import msgspec

from reloop.models.registry import ModelRegistry
from reloop.ops.kafka import create_topics, make_producer
from reloop.ops.trainer import Trainer
from reloop.streams.codec import decode_event
from reloop.streams.events import ModelAnnouncement
from tests.integration.helpers import consume_until, produce


async def test_start_announcement_skipped_when_models_already_ends_with_current(kafka_settings, small_model):
    s = kafka_settings
    await create_topics(s.kafka)
    ModelRegistry(Path(s.worker.data_dir) / "models").register(small_model)
    trainer = Trainer(s)
    assert await trainer._last_announcement() is None  # empty topic
    producer = make_producer(s.kafka)
    await producer.start()
    try:
        await trainer._announce(producer, "v1", unless_last=True)  # empty topic: announced
        last = await trainer._last_announcement()
        assert last is not None and last.version == "v1"
        await trainer._announce(producer, "v1", unless_last=True)  # already last: skipped
        other = msgspec.structs.replace(last, version="v0", sha256="0" * 64)
        await produce(s, "models", [other], keys=[b"current"])
        await trainer._announce(producer, "v1", unless_last=True)  # last names another: announced
        await trainer._announce(producer, "v1")  # a retrain's announcement is never skipped
    finally:
        await producer.stop()
    msgs = await consume_until(s, "models", lambda m: len(m) >= 4, timeout_s=60)
    versions = [decode_event(m.value, ModelAnnouncement).version for m in msgs]
    assert versions == ["v1", "v0", "v1", "v1"], versions
