"""The model lifecycle through the embedded broker.

1. A real worker process serves v1 under continuous requests; a corrupt v2 is announced on
   ``models`` and refused (v1 keeps serving), then v3 is announced and swapped in: every
   request is answered exactly once, nothing is dead-lettered, each recommendation's scores
   come from the version it names, and the version switches exactly once per partition.
2. The trainer consumes v1's error records of a drifted stream from ``errors``, detects the
   drift, retrains, passes the gates, registers v2 and announces it; its window and offsets
   are durable; a second trainer on the same registry is refused.
"""

from __future__ import annotations

import asyncio
import copy
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
import torch
from aiokafka import AIOKafkaConsumer, TopicPartition

from reloop.models.export import export_onnx
from reloop.models.features import FeatureEncoder
from reloop.models.fit import FittedModel
from reloop.models.registry import ModelRegistry
from reloop.models.scorer import OnnxScorer
from reloop.ops.kafka import client_kwargs, create_topics, make_producer, topic_name
from reloop.ops.models_cli import run as models_cli
from reloop.ops.settings import Settings
from reloop.ops.simulator import SimConfig, Simulator
from reloop.ops.retrain import open_window
from reloop.ops.trainer import Trainer
from reloop.ops.webclient import get_json, wait_ready
from reloop.processors.trainer import TrainerConfig
from reloop.streams.codec import decode_event, encode
from reloop.streams.events import ModelAnnouncement, Recommendation, RecommendationRequest
from reloop.streams.topics import TOPICS
from tests.conftest import WorkerProcess
from tests.integration.helpers import consume_until, produce
from tests.processors.test_trainer import drift_world

pytestmark = [pytest.mark.broker, pytest.mark.slow]


def shifted_copy(fitted: FittedModel, version: str, bias: float) -> FittedModel:
    """``fitted`` with its output bias moved by ``bias`` (scores differ from the original's)."""
    model = copy.deepcopy(fitted.model)
    with torch.no_grad():
        model.output.bias += bias
    onnx = export_onnx(model, exporter="torchscript")
    return FittedModel(version, model.spec, model, onnx, OnnxScorer(onnx, version=version, spec=model.spec), {})


async def wait_for(cond: Any, timeout_s: float, what: str) -> None:
    """Poll ``cond()`` (sync) until true; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.05)


async def announce(settings: Settings, registry: ModelRegistry, version: str) -> None:
    await produce(settings, "models", [registry.announcement(version)], keys=[b"current"])


async def end_offsets(settings: Settings, topic: str) -> dict[int, int]:
    c = AIOKafkaConsumer(**client_kwargs(settings.kafka), group_id=None)
    await c.start()
    try:
        name = topic_name(settings.kafka, topic)
        parts = c.partitions_for_topic(name)
        if not parts:
            await c._client.force_metadata_update()  # noqa: SLF001
            parts = c.partitions_for_topic(name) or set()
        ends = await c.end_offsets([TopicPartition(name, p) for p in parts])
        return {tp.partition: off for tp, off in ends.items()}
    finally:
        await c.stop()


async def test_hot_swap_under_continuous_requests_refuses_a_corrupt_version(kafka_settings, small_model, tmp_path):
    s = kafka_settings
    await create_topics(s.kafka)
    registry = ModelRegistry(Path(s.worker.data_dir) / "models")
    registry.register(small_model)
    registry.register(shifted_copy(small_model, "v2", 0.3), parent="v1", make_current=False)
    onnx_v2 = registry.path("v2") / "model.onnx"
    onnx_v2.write_bytes(onnx_v2.read_bytes()[:-100])  # truncated on disk after registration
    v3 = shifted_copy(small_model, "v3", 0.7)
    registry.register(v3, parent="v1", make_current=False)
    scorers = {"v1": small_model.scorer, "v3": v3.scorer}

    worker = WorkerProcess(s, tmp_path / "worker.log")
    sent: dict[str, RecommendationRequest] = {}
    got: list[tuple[int, int, Recommendation]] = []  # (partition, offset, recommendation)
    stop_sending = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []
    try:
        await wait_ready(worker.port, timeout_s=120.0, proc=worker.proc)

        async def send_requests() -> None:
            producer = make_producer(s.kafka)
            await producer.start()
            sim = Simulator(SimConfig(seed=21, n_users=300, n_items=200))
            try:
                for ev in sim.events(100_000):
                    if stop_sending.is_set():
                        break
                    if isinstance(ev, RecommendationRequest):
                        sent[ev.request_id] = ev
                        await producer.send(topic_name(s.kafka, "requests"), encode(ev), key=ev.user_id.encode())
                        await asyncio.sleep(0.008)  # ~100 requests/s offered load
                await producer.flush()
            finally:
                await producer.stop()

        async def read_recommendations() -> None:
            c = AIOKafkaConsumer(topic_name(s.kafka, "recommendations"), **client_kwargs(s.kafka), group_id=None,
                                 auto_offset_reset="earliest", enable_auto_commit=False)
            await c.start()
            try:
                while True:
                    for tp, msgs in (await c.getmany(timeout_ms=100)).items():
                        got.extend((tp.partition, m.offset, decode_event(m.value, Recommendation)) for m in msgs)
            finally:
                await c.stop()

        sender = asyncio.create_task(send_requests())
        reader = asyncio.create_task(read_recommendations())
        tasks += [sender, reader]
        await wait_for(lambda: len(got) >= 100, 60, "100 recommendations from v1")
        await announce(s, registry, "v2")
        await wait_for(lambda: "model_refused" in worker.log_text(), 60, "the worker to refuse the corrupt v2")
        n_refused = len(got)
        await wait_for(lambda: len(got) >= n_refused + 100, 60, "recommendations after the refusal")
        await announce(s, registry, "v3")
        await wait_for(lambda: sum(r.model_version == "v3" for _, _, r in got) >= 150, 60, "150 recommendations by v3")
        stop_sending.set()
        await sender
        await wait_for(lambda: len(got) >= len(sent), 60, "an answer to every request")
        status = await get_json(worker.port, "/status")
        metrics = (await asyncio.wait_for(_metrics(worker.port), 10)).splitlines()
    finally:
        stop_sending.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        code = worker.stop()
    log_text = worker.log_text()
    assert code == 0, log_text[-3000:]

    answered = [r.request_id for _, _, r in got]
    assert len(answered) == len(set(answered)) == len(sent), "every request answered exactly once"
    assert set(answered) == set(sent)
    assert sum((await end_offsets(s, "dlq")).values()) == 0, "no request was dead-lettered"
    assert {r.model_version for _, _, r in got} == {"v1", "v3"}, "the corrupt v2 never served"
    assert status["model_version"] == "v3"
    assert "reloop_model_swaps_total 1.0" in metrics
    assert log_text.count("model_refused") == 1 and log_text.count("model_swapped") == 1

    by_partition: dict[int, list[Recommendation]] = {}
    for partition, _, rec in sorted(got, key=lambda x: (x[0], x[1])):
        by_partition.setdefault(partition, []).append(rec)
    checked = 0
    for recs in by_partition.values():
        versions = [r.model_version for r in recs]
        switches = sum(a != b for a, b in zip(versions, versions[1:]))
        assert switches == 1 and versions[0] == "v1" and versions[-1] == "v3", versions
        cut = versions.index("v3")
        for rec in recs[max(0, cut - 15): cut + 15]:  # around the swap: scored by the version named
            req = sent[rec.request_id]
            rows = [(req.user_id, c.item_id, {**req.features, **c.features}) for c in req.candidates]
            scorer = scorers[rec.model_version]
            probs, _ = scorer.score(*FeatureEncoder(scorer.spec).encode(rows))
            expect = dict(zip((c.item_id for c in req.candidates), probs.tolist()))
            assert all(abs(i.base_score - expect[i.item_id]) < 1e-6 for i in rec.items), rec.model_version
            checked += 1
    assert len(by_partition) == TOPICS["recommendations"].partitions and checked >= 100


async def _metrics(port: int) -> str:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{port}/metrics") as resp:
            return await resp.text()


async def test_trainer_retrains_on_drift_registers_and_announces(kafka_settings, monkeypatch):
    world = drift_world()
    s = kafka_settings.with_overrides(train=msgspec.to_builtins(world.settings.train))
    await create_topics(s.kafka)
    registry = ModelRegistry(Path(s.worker.data_dir) / "models")
    registry.register(world.v1)
    await produce(s, "errors", world.shifted)
    config = TrainerConfig(group_id=f"{s.kafka.group_id}-trainer", retrain_every_samples=0, min_samples=1000,
                           min_samples_between=500, drift_settle_samples=1000, holdout_fraction=0.2)
    trainer = Trainer(s, config)
    stop = asyncio.Event()
    task = asyncio.create_task(trainer.run(stop))
    try:
        await wait_for(lambda: trainer.core is not None or task.done(), 30, "the trainer to start")
        env = {**os.environ, "RELOOP_KAFKA__TOPIC_PREFIX": s.kafka.topic_prefix}
        second = subprocess.run([sys.executable, "-m", "reloop.ops.models_cli", "train", "--broker", s.kafka.broker,
                                 "--data-dir", s.worker.data_dir, "--no-progress"],
                                capture_output=True, text=True, timeout=60, env=env)
        assert second.returncode == 3, second.stderr
        assert "only one trainer may run" in second.stderr
        msgs = await consume_until(s, "models", lambda m: any(
            decode_event(x.value, ModelAnnouncement).version == "v2" for x in m), timeout_s=90)
        await wait_for(lambda: trainer.records_in >= len(world.shifted), 30, "every error record consumed")
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    announced = [decode_event(m.value, ModelAnnouncement) for m in msgs]
    assert [a.version for a in announced] == ["v1", "v2"], "CURRENT re-announced at start, then the new version"
    assert [(o.trigger, o.accepted) for o in trainer.outcomes] == [("drift", True)]
    assert registry.current() == "v2"
    info = registry.info("v2", verify=True)
    assert info.parent_version == "v1" and info.metrics["trigger"] == "drift"
    assert announced[-1].sha256 == info.onnx_sha256
    assert info.metrics["check_candidate_logloss"] < info.metrics["check_serving_logloss"]
    # durable: the window holds every sample; every record's offset is committed
    window = open_window(s, config)
    assert len(window) == len(world.shifted)
    window.close()
    committed = await _committed(s, config.group_id, partitions=range(TOPICS["errors"].partitions))
    assert sum(committed.values()) == len(world.shifted), committed  # offsets start at 0 per partition

    # an operator rolls the retrain back: CURRENT -> the parent, announced for the workers
    monkeypatch.setenv("RELOOP_KAFKA__TOPIC_PREFIX", s.kafka.topic_prefix)
    assert await asyncio.to_thread(models_cli, ["models", "rollback", "--broker", s.kafka.broker,
                                                "--data-dir", s.worker.data_dir]) == 0
    assert registry.current() == "v1"
    msgs = await consume_until(s, "models", lambda m: len(m) >= 3)
    assert decode_event(msgs[-1].value, ModelAnnouncement).version == "v1"


async def _committed(s: Settings, group: str, partitions: Any) -> dict[int, int]:
    c = AIOKafkaConsumer(**client_kwargs(s.kafka), group_id=group, enable_auto_commit=False)
    await c.start()
    try:
        name = topic_name(s.kafka, "errors")
        return {p: (await c.committed(TopicPartition(name, p))) or 0 for p in partitions}
    finally:
        await c.stop()
