"""Online/offline parity: one recorded log through a real worker on the embedded broker and
through offline replay gives the same outputs and the same state, bit for bit.

The guarantee (docs/replay.md): given the same batches, and each batch's error records applied
to the replica before the next batch is scored, the worker and replay produce byte-identical
recommendations (compensated scores included) and error records, and their error memory,
media memory and schema cache (with its reorder buffer) have equal digests. A worker's batches
depend on fetch timing and its replica catches up asynchronously, so the test makes both
deterministic: the log is cut into runs of one (topic, partition) (``cut_runs``), each produced
as ONE record batch (a fetch returns it whole), and the next run is produced only after the
worker committed the previous one and its replica applied every ``memory`` and ``errors``
record written so far. Offline replay steps through the same runs.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import msgspec
import numpy as np
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from reloop.models.registry import ModelRegistry
from reloop.ops.kafka import client_kwargs, create_topics, make_producer, topic_name
from reloop.ops.replay import ReplayEngine
from reloop.ops.replay_engine import Routed, arrays_digest, cut_runs, route_events
from reloop.ops.serving import compensation_factory
from reloop.ops.simulator import SimConfig, Simulator
from reloop.ops.webclient import get_json, wait_ready
from reloop.processors.outputs import KeyPartitioner
from reloop.processors.hot_restore import changelog_tail
from reloop.state.snapshots import read_npz
from reloop.streams.codec import decode_event, encode
from reloop.streams.events import ErrorRecord, Interaction, MediaEvent, Recommendation, RecommendationRequest
from tests.conftest import WorkerProcess
from tests.integration.helpers import consume_until

pytestmark = [pytest.mark.broker, pytest.mark.slow]


def recorded_log(partitions: int) -> list:
    """A small simulator log (requests, clicks, media) plus, per user partition (of
    ``partitions``), a request and a click an hour later, so every window of the log closes
    (error records for all)."""
    sim = Simulator(SimConfig(seed=21, n_users=24, n_items=120, requests_per_s=1.0, candidates_per_request=8))
    events = list(sim.events(45))
    last = max(e.ts for e in events)
    part, closers = KeyPartitioner(), {}
    for i in range(1000):
        u = f"closer-{i}"
        closers.setdefault(part.partition(u.encode(), list(range(partitions))), u)
    req = next(e for e in events if isinstance(e, RecommendationRequest))
    for p, u in sorted(closers.items()):
        r = msgspec.structs.replace(req, request_id=f"close-{p}", user_id=u, ts=last + 3600 + p)
        events += [r, Interaction(user_id=u, item_id=r.candidates[0].item_id, ts=r.ts, label=1, request_id=r.request_id)]
    return events


async def committed_through(settings, consumer: AIOKafkaConsumer, tp: TopicPartition, offset: int,
                            timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while (await consumer.committed(tp) or 0) < offset:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{tp} not committed through {offset}")
        await asyncio.sleep(0.01)


async def replica_caught_up(settings, port: int, ends: AIOKafkaConsumer, timeout_s: float = 60.0) -> None:
    """Wait until the worker's replica applied every ``memory`` and ``errors`` record written."""
    tps = {t: [TopicPartition(topic_name(settings.kafka, t), p) for p in range(settings.kafka.partitions)]
           for t in ("memory", "errors")}
    # the fetch high watermark, not ListOffsets: the embedded broker answers ListOffsets(latest)
    # with the last record batch's base offset + 1, short of the end when a batch holds several
    end = {tp: (await changelog_tail(ends, tp))[0] for v in tps.values() for tp in v}
    deadline = time.monotonic() + timeout_s
    while True:
        st = await get_json(port, "/status")
        done = all(int(st[f"{t}_applied"].get(str(tp.partition), 0)) >= end[tp]
                   for t in tps for tp in tps[t])
        if done:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"replica not caught up: {st['memory_applied']} {st['errors_applied']} vs {end}")
        await asyncio.sleep(0.01)


async def stream_through_worker(s, batches: list[list[Routed]], port: int) -> None:
    producer = make_producer(s.kafka)
    group = AIOKafkaConsumer(**client_kwargs(s.kafka), group_id=s.kafka.group_id, enable_auto_commit=False)
    # reads the ends of ``memory`` and ``errors`` after every run: the broker holds a fetch for
    # the whole wait (aiokafka's default 500 ms was most of this test's time)
    ends = AIOKafkaConsumer(**client_kwargs(s.kafka), group_id=None, fetch_max_wait_ms=10)
    await producer.start()
    await group.start()
    await ends.start()
    try:
        for batch in batches:
            topic, p = topic_name(s.kafka, batch[0].logical), batch[0].partition
            rb = producer.create_batch()
            for r in batch:
                assert rb.append(key=msgspec.json.decode(r.raw)["user_id"].encode(), value=r.raw, timestamp=None)
            rb.close()
            meta = await (await producer.send_batch(rb, topic, partition=p))
            await committed_through(s, group, TopicPartition(topic, p), meta.offset + len(batch))
            await replica_caught_up(s, port, ends)
    finally:
        await producer.stop()
        await group.stop()
        await ends.stop()


def file_digest(path: Path, like: dict[str, np.ndarray], prefix: str = "") -> str:
    """Digest of the arrays of a worker's snapshot file that the offline state has."""
    snap = read_npz(path)
    arrays = {k: snap[prefix + k] for k in like}
    return arrays_digest(arrays)


#: ``kafka.partitions`` of this test: not the default 4 (the worker reads the count from the
#: cluster, replay from the setting), and one where the log's users reach every ``errors``
#: partition (the reorder buffer holds everything while a partition it waits for is empty).
PARTITIONS = 6


async def test_replay_gives_the_worker_outputs_and_state(kafka_settings, small_model, tmp_path):
    partitions = PARTITIONS
    s = kafka_settings.with_overrides(kafka={"partitions": partitions})  # compensation, media, schemas on
    events = recorded_log(partitions)
    assert {type(e) for e in events} == {RecommendationRequest, Interaction, MediaEvent}
    batches = list(cut_runs(route_events(events, partitions), 64))
    assert {b[0].partition for b in batches} == set(range(partitions))

    await create_topics(s.kafka)
    registry = ModelRegistry(Path(s.worker.data_dir) / "models")
    registry.register(small_model)
    w = WorkerProcess(s, tmp_path / "worker.log")
    try:
        await wait_ready(w.port, timeout_s=120.0, proc=w.proc)
        await stream_through_worker(s, batches, w.port)
    finally:
        code = w.stop()
    assert code == 0, w.log_text()[-3000:]
    n_req = sum(isinstance(e, RecommendationRequest) for e in events)
    online_recs = [m.value for m in await consume_until(s, "recommendations", lambda m: len(m) >= n_req)]
    n_err = sum(len(e.candidates) for e in events  # the closers' own windows stay open
                if isinstance(e, RecommendationRequest) and not e.request_id.startswith("close-"))
    online_errs = [m.value for m in await consume_until(s, "errors", lambda m: len(m) >= n_err)]

    # offline: the same runs, the model opened as the worker opens it
    scorer = registry.load("v1").load_scorer(intra_op_num_threads=s.worker.ort_threads)
    res = ReplayEngine(s, compensation_factory(s)).run_stream(
        iter(()), small_model, batches=batches, keep_outputs=True, scorer=scorer)

    # the same recommendations, compensated scores included, byte for byte
    offline_recs = {r.request_id: encode(r) for r in res.recommendations}
    online = {decode_event(v, Recommendation).request_id: v for v in online_recs}
    assert len(online) == len(online_recs) == n_req and online == offline_recs
    comp = [i.score - i.base_score for v in online_recs for i in decode_event(v, Recommendation).items]
    assert max(map(abs, comp)) > 0, "compensation never moved a score: the test would not see it"
    # the same error records (all windows but the closers' closed)
    offline_errs = {e.error_id: encode(e) for e in res.errors}
    online_e = {decode_event(v, ErrorRecord).error_id: v for v in online_errs}
    assert len(online_e) == len(online_errs) == n_err and online_e == offline_errs
    # equal digests of the three memories (the worker's snapshots, written at stop)
    snaps = Path(s.worker.data_dir) / "snapshots"
    state = res.state.state_arrays()
    assert set(state) == {"error_memory", "media", "schema_cache"}
    assert file_digest(snaps / "error_memory.npz", state["error_memory"]) == arrays_digest(state["error_memory"])
    assert file_digest(snaps / "inputs.npz", state["media"], "media.") == arrays_digest(state["media"])
    assert file_digest(snaps / "schema_cache.npz", state["schema_cache"]) == arrays_digest(state["schema_cache"])
    assert sorted(read_npz(snaps / "schema_cache.npz")["reorder_partitions"].tolist()) == list(range(partitions))
    replica = res.state.replica  # every error record reached the schema cache or waits in its reorder buffer
    assert replica.schema_core.records_in + replica.reorder.held == n_err and replica.schema_core.records_in > 0
