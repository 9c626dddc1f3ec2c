"""``reloop worker`` with the broker absent at start: retry with backoff, then give up or proceed.

Real processes only: the worker CLI, and (for the late-broker case) an embedded broker
started on the port the worker was already pointed at.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import msgspec

import pytest

from reloop.models.registry import ModelRegistry
from reloop.ops.broker import EmbeddedBroker, free_port
from reloop.ops.kafka import create_topics
from reloop.ops.simulator import SimConfig, Simulator
from reloop.ops.webclient import wait_ready
from reloop.ops.worker import BrokerUnreachable, wait_for_broker
from reloop.streams.codec import decode_event
from reloop.streams.events import Recommendation, RecommendationRequest
from reloop.streams.topics import TOPICS
from tests.conftest import WorkerProcess
from tests.integration.helpers import consume_until, produce, log_events

pytestmark = [pytest.mark.broker, pytest.mark.slow]


_events = log_events


async def _wait_for_log(w: WorkerProcess, event: str, timeout_s: float) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = _events(w.log_text(), event)
        if found:
            return found[0]
        assert w.proc.poll() is None, f"worker exited ({w.proc.returncode}) before logging {event}:\n{w.log_text()}"
        await asyncio.sleep(0.1)
    raise AssertionError(f"no {event} log within {timeout_s}s:\n{w.log_text()[-3000:]}")


async def test_probe_gives_up_after_one_attempt_with_zero_give_up(settings) -> None:
    ks = settings.with_overrides(kafka={"broker": f"kafka://127.0.0.1:{free_port()}",
                                        "connect_give_up_s": 0.0}).kafka
    t0 = time.monotonic()
    with pytest.raises(BrokerUnreachable, match=r"unreachable after 0 s and 1 attempt\(s\); giving up"):
        await wait_for_broker(ks)
    assert time.monotonic() - t0 < 5.5  # one attempt, bounded by 5 s


async def test_probe_waits_for_the_catalog_topics(kafka_settings) -> None:
    ks = kafka_settings.with_overrides(kafka={"connect_give_up_s": 0.6, "connect_backoff_initial_s": 0.1}).kafka
    missing = r"has not got the catalog's topics .*requests.*reloop topics create"
    with pytest.raises(BrokerUnreachable, match=missing):
        await wait_for_broker(ks)
    await create_topics(ks)
    assert await wait_for_broker(ks) == 1


async def test_topics_are_created_with_kafka_partitions_and_must_be_copartitioned(kafka_settings) -> None:
    """``kafka.partitions`` sizes the user-partitioned topics; a cluster whose co-partitioned
    topics disagree (one made by hand with another count) is refused at once, not retried
    until ``connect_give_up_s``."""
    from aiokafka.admin import AIOKafkaAdminClient

    from reloop.ops.kafka import client_kwargs, partition_counts, topic_name
    from reloop.streams.topics import CATALOG

    async def counts_are(ks, user_partitions: int) -> bool:
        """Every catalog topic of ``ks`` exists with its expected partition count."""
        admin = AIOKafkaAdminClient(**client_kwargs(ks))
        await admin.start()
        try:
            counts = await partition_counts(admin, [topic_name(ks, t.name) for t in CATALOG])
        finally:
            await admin.close()
        return counts == {topic_name(ks, t.name): t.count(user_partitions) for t in CATALOG}

    ks = kafka_settings.with_overrides(kafka={"partitions": 6}).kafka
    await create_topics(ks)
    assert await counts_are(ks, 6)
    assert {t.name for t in CATALOG if t.user_partitioned} == {
        "requests", "recommendations", "interactions", "media", "errors", "memory", "changelog"}
    assert await wait_for_broker(ks) == 1

    # the CLI: ``reloop topics create --partitions N`` (a third prefix)
    cli = kafka_settings.with_overrides(kafka={"topic_prefix": "c" + ks.topic_prefix}).kafka
    out = subprocess.run([sys.executable, "-m", "reloop.ops.cli", "topics", "create", "--broker", cli.broker,
                          "--partitions", "3"], env={**os.environ, "RELOOP_KAFKA__TOPIC_PREFIX": cli.topic_prefix},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "user-partitioned ones with 3 partitions" in out.stdout, out.stderr[-2000:]
    assert await counts_are(cli, 3)

    # another deployment: its interactions topic made beforehand with 3 partitions
    other = kafka_settings.with_overrides(kafka={"topic_prefix": "x" + ks.topic_prefix, "partitions": 6,
                                                 "connect_give_up_s": 30.0}).kafka
    await create_topics(msgspec.structs.replace(other, partitions=3), (TOPICS["interactions"],))
    await create_topics(other)  # the rest with 6; interactions exists and keeps its 3
    t0 = time.monotonic()
    with pytest.raises(BrokerUnreachable, match=r"must have equal partition counts .*interactions: 3, .*requests: 6"):
        await wait_for_broker(other)
    assert time.monotonic() - t0 < 10.0  # at once, not after 30 s of retries


async def test_worker_gives_up_when_no_broker_answers(settings, tmp_path: Path) -> None:
    port = free_port()  # nothing listens here
    s = settings.with_overrides(kafka={"broker": f"kafka://127.0.0.1:{port}", "group_id": "g-absent"})
    w = WorkerProcess(s, tmp_path / "worker.log", {"RELOOP_KAFKA__CONNECT_GIVE_UP_S": "3",
                                                   "RELOOP_KAFKA__CONNECT_BACKOFF_MAX_S": "1"})
    t0 = time.monotonic()
    try:
        # interpreter + torch/faust imports take a few seconds on 2 busy cores; give-up is 3 s
        code = await asyncio.to_thread(w.proc.wait, 90)
    finally:
        w.stop()
    elapsed = time.monotonic() - t0
    text = w.log_text()
    assert code == 1, text[-3000:]
    attempts = _events(text, "broker_unreachable")
    assert len(attempts) >= 3, text[-3000:]
    assert [a["attempt"] for a in attempts] == list(range(1, len(attempts) + 1))
    assert all(a["bootstrap"] == f"127.0.0.1:{port}" and a["next_delay_s"] <= 1.2 for a in attempts)
    assert attempts[1]["next_delay_s"] > attempts[0]["next_delay_s"]  # 0.5 s x jitter > 0.25 s x jitter
    give_up = _events(text, "broker_give_up")
    assert len(give_up) == 1 and "giving up" in give_up[0]["reason"]
    last = text.strip().splitlines()[-1]  # the one-line message on stderr
    assert last.startswith(f"reloop worker: broker 127.0.0.1:{port} unreachable after 3 s"), last
    assert "Traceback" not in text
    assert elapsed < 60, f"took {elapsed:.1f}s to give up after 3 s"
    first_ts = attempts[0]["ts"]
    assert 2.5 <= _events(text, "broker_give_up")[0]["ts"] - first_ts <= 6.0  # honours the give-up time


async def test_worker_waits_for_a_late_broker_then_serves(settings, small_model, tmp_path: Path) -> None:
    port = free_port()
    s = settings.with_overrides(kafka={"broker": f"kafka://127.0.0.1:{port}", "topic_prefix": "late.",
                                       "group_id": "g-late"})
    ModelRegistry(Path(s.worker.data_dir) / "models").register(small_model)
    w = WorkerProcess(s, tmp_path / "worker.log", {"RELOOP_KAFKA__CONNECT_GIVE_UP_S": "120",
                                                   "RELOOP_KAFKA__CONNECT_BACKOFF_MAX_S": "1"})
    broker = EmbeddedBroker(port=port)
    try:
        first = await _wait_for_log(w, "broker_unreachable", timeout_s=90)
        assert first["attempt"] == 1
        await broker.astart()
        # the broker answers but has no topics yet: the worker keeps waiting (topics_missing)
        await _wait_for_log(w, "topics_missing", timeout_s=30)
        assert not _events(w.log_text(), "broker_reachable")
        await create_topics(s.kafka)
        try:
            await wait_ready(w.port, timeout_s=120.0, proc=w.proc)
        except Exception as exc:
            raise AssertionError(f"worker did not become ready: {exc}\n{w.log_text()[-4000:]}") from None
        reachable = _events(w.log_text(), "broker_reachable")
        assert len(reachable) == 1 and reachable[0]["attempts"] >= 3
        sim = Simulator(SimConfig(seed=21, n_users=50, n_items=200))
        requests = [e for e in sim.events(10) if isinstance(e, RecommendationRequest)]
        await produce(s, "requests", requests)
        msgs = await consume_until(s, "recommendations", lambda m: len(m) >= len(requests))
        recs = {r.request_id: r for r in (decode_event(m.value, Recommendation) for m in msgs)}
        assert set(recs) == {r.request_id for r in requests}
        assert all(r.model_version == "v1" for r in recs.values())
        assert w.proc.poll() is None
    finally:
        code = w.stop()
        broker.stop()
    assert code == 0, w.log_text()[-3000:]
