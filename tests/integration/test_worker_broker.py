"""The worker process against the embedded broker: the whole spine, for real.

One worker serves three scenarios in turn (a worker start costs a consumer-group join):
requests in -> recommendations out; interactions in -> error records + metrics; malformed
events on every input topic -> dead letters while valid events flow. Online/offline parity
(outputs and state, compensation on) is tests/integration/test_replay_parity.py.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path

import msgspec
import pytest

from reloop.models.registry import ModelRegistry
from reloop.ops.kafka import create_topics
from reloop.ops.simulator import SimConfig, Simulator
from reloop.ops.webclient import get_json, get_text, wait_ready
from reloop.streams.codec import decode_event
from reloop.streams.events import (DeadLetter, ErrorRecord, Interaction, MediaEvent, Recommendation,
                            RecommendationRequest, error_id_for)
from reloop.streams.topics import USER_PARTITIONS
from tests.conftest import WorkerProcess
from tests.integration.helpers import consume_until, poll_until, produce

pytestmark = [pytest.mark.broker, pytest.mark.slow]


async def start_worker(settings, model, tmp_path: Path) -> WorkerProcess:
    await create_topics(settings.kafka)
    ModelRegistry(Path(settings.worker.data_dir) / "models").register(model)
    w = WorkerProcess(settings, tmp_path / "worker.log")
    try:
        await wait_ready(w.port, timeout_s=120.0, proc=w.proc)
    except Exception:
        w.stop()
        raise AssertionError("worker did not become ready:\n" + w.log_text()[-4000:])
    return w


def _recs(msgs) -> dict[str, Recommendation]:
    return {r.request_id: r for r in (decode_event(m.value, Recommendation) for m in msgs)}


async def test_worker_scores_joins_and_dead_letters(kafka_settings, small_model, tmp_path):
    s = kafka_settings
    w = await start_worker(s, small_model, tmp_path)
    try:
        # 1. requests in -> recommendations out, ranked, naming the model
        sim = Simulator(SimConfig(seed=11, n_users=300, n_items=200))
        events = list(sim.events(60))
        requests = [e for e in events if isinstance(e, RecommendationRequest)]
        clicks = [e for e in events if isinstance(e, Interaction)]
        await produce(s, "requests", requests)
        recs = _recs(await consume_until(s, "recommendations", lambda m: len(m) >= len(requests)))
        assert set(recs) == {r.request_id for r in requests}
        for req in requests:
            rec = recs[req.request_id]
            assert rec.model_version == "v1"
            assert sorted(i.item_id for i in rec.items) == sorted(c.item_id for c in req.candidates)
            scores = [i.score for i in rec.items]
            assert scores == sorted(scores, reverse=True)
            assert all(0.0 <= i.base_score <= 1.0 for i in rec.items)

        # 2. interactions in; a request and a click far in the future on every partition close
        # every window (windows close on their partition's stream time: the slower of its
        # requests and interactions), so each candidate resolves: clicked -> label 1, the rest
        # -> label 0 (error records + metrics)
        assert clicks, "the simulator produced no clicks for 60 requests"
        await produce(s, "interactions", clicks)
        late = Simulator(SimConfig(seed=12, n_users=300, n_items=200, start_ts=requests[-1].ts + 3600))
        last = next(e for e in late.events(1) if isinstance(e, RecommendationRequest))
        parts = list(range(USER_PARTITIONS))
        lates = [msgspec.structs.replace(last, request_id=f"late-{p}") for p in parts]  # sim ids restart per run
        await produce(s, "requests", lates, partitions=parts)
        await produce(s, "interactions", [Interaction(user_id=r.user_id, item_id=r.candidates[0].item_id,
                                                      ts=r.ts, label=1, request_id=r.request_id) for r in lates],
                      partitions=parts)
        n_candidates = sum(len(r.candidates) for r in requests)
        errs = await consume_until(s, "errors", lambda m: len(m) >= n_candidates)
        records = [decode_event(m.value, ErrorRecord) for m in errs]
        clicked = {error_id_for(c.request_id, c.item_id) for c in clicks}
        assert len(records) == n_candidates
        assert {r.error_id for r in records if r.label == 1} == clicked
        assert all(r.n_codes == s.error_memory.tables for r in records)
        status = await poll_until(lambda: get_json(w.port, "/status"),
                                  lambda st: st["summary"]["labelled"] >= n_candidates, what="metrics")
        assert status["summary"]["labelled"] == n_candidates
        assert status["summary"]["positives"] == len(clicked)
        assert 0.0 <= status["summary"]["auc_base"] <= 1.0
        prom = await get_text(w.port, "/metrics")
        sizes = {m: float(v) for m, v in re.findall(r'reloop_memory_bytes\{memory="(\w+)"\} (\S+)', prom)}
        assert sizes["error_memory"] > 1e6 and sizes["schema_cache"] > 0 and "media_memory" in sizes, sizes
        lags = re.findall(r'reloop_consumer_lag\{topic="(\w+)"\} (\S+)', prom)
        assert {t for t, _ in lags} >= {"requests", "interactions"} and all(float(v) >= 0 for _, v in lags)
        pending = float(re.search(r"^reloop_pending_predictions (\S+)", prom, re.M).group(1))
        assert pending == sum(len(r.candidates) for r in lates)  # only the late requests' windows are open
        # pending predictions are counted in the memory gauge: a few hundred bytes each at least
        assert sizes["pending"] >= 200 * pending, sizes
        # the schema cache's ticks and their CPU time (the records span an hour of event time)
        prom = await poll_until(lambda: get_text(w.port, "/metrics"),
                                lambda text: float(re.search(r"^reloop_schema_ticks (\S+)", text, re.M).group(1)) > 0,
                                what="schema ticks")
        assert float(re.search(r"^reloop_schema_tick_seconds (\S+)", prom, re.M).group(1)) > 0.0
        # every stage of the input batches is timed (issue 14: latency measured per stage)
        stages = {m: float(v) for m, v in re.findall(r'reloop_stage_seconds_count\{stage="(\w+)"\} (\S+)', prom)}
        stages.pop("checkpoint", None)  # per input checkpoint (every worker.snapshot_every_s): only if the run is long
        assert {s: n > 0 for s, n in stages.items()} == dict.fromkeys(
            ["fetch", "queueing", "decode", "model", "compensation", "cores", "journal", "produce", "commit"], True), stages

        # 3. malformed events on every input topic -> dlq with reason and offset; valid ones flow
        good = Simulator(SimConfig(seed=13, n_users=300, n_items=200, start_ts=last.ts + 10))
        good_events = list(good.events(5))
        good_reqs = [msgspec.structs.replace(e, request_id=f"good-{e.request_id}")
                     for e in good_events if isinstance(e, RecommendationRequest)]
        good_media = [e for e in good_events if isinstance(e, MediaEvent)]
        bad_by_topic = {
            "requests": [b"{not json", b'{"type":"request","request_id":"x","user_id":"u","ts":"yesterday",'
                         b'"candidates":[{"item_id":"i"}]}', b'{"type":"request","user_id":"u","ts":1}',
                         b'{"type":"request","request_id":"x","user_id":"u","ts":1,"candidates":[{"item_id":"i",'
                         b'"features":{"x":1e999}}]}', b"x" * 300_000],
            "interactions": [b"\xff\xfe", b'{"type":"interaction","user_id":"u","item_id":"i","ts":1,"label":7}',
                             b'{"type":"interaction","user_id":"u","item_id":"i","ts":1,"label":1,"value":NaN}'],
            "media": [b'{"type":"media","user_id":"u","ts":1,"modality":"video","segment_id":"s","embedding":[1,2]}',
                      b'{"type":"media","user_id":"u","ts":1,"modality":"smell","segment_id":"s","embedding":[0]}',
                      b'{"type":"media","schema_version":99,"user_id":"u","ts":1,"modality":"audio",'
                      b'"segment_id":"s","embedding":[0]}'],
        }
        for topic, bad in bad_by_topic.items():
            mixed = [*bad[: len(bad) // 2], *(good_reqs if topic == "requests" else good_media if topic == "media"
                                               else []), *bad[len(bad) // 2:]]
            await produce(s, topic, mixed, keys=[b"u"] * len(mixed))
        n_bad = sum(len(b) for b in bad_by_topic.values())
        letters = [decode_event(m.value, DeadLetter)
                   for m in await consume_until(s, "dlq", lambda m: len(m) >= n_bad)]
        assert len(letters) == n_bad
        by_topic: dict[str, set[bytes]] = {}
        for dl in letters:
            assert dl.error and dl.offset >= 0 and dl.partition >= 0
            by_topic.setdefault(dl.source_topic.split(".")[-1], set()).add(base64.b64decode(dl.original))
        assert by_topic == {t: set(b) for t, b in bad_by_topic.items()}
        recs = _recs(await consume_until(s, "recommendations",
                                         lambda m: {r.request_id for r in _recs(m).values()} >=
                                         {r.request_id for r in good_reqs}))
        assert {r.request_id for r in good_reqs} <= set(recs)
        assert w.proc.poll() is None, "worker died on bad input"
    finally:
        code = w.stop()
    assert code == 0, w.log_text()[-3000:]
