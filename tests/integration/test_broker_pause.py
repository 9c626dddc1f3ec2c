"""The broker frozen (SIGSTOP) for longer than the group session timeout, mid-stream, then resumed.

A dedicated embedded broker (the session one must not be paused). Requests and their
feedback are sent before, during and after a ~9 s pause (session timeout 6 s, so the
worker's group membership lapses and it must rejoin). Afterwards every request has a
recommendation, every candidate has an error record with the right label (at-least-once:
duplicates allowed, each identical), the worker never exits, and it stops cleanly.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import msgspec
import pytest

from reloop.models.registry import ModelRegistry
from reloop.ops.broker import EmbeddedBroker
from reloop.ops.kafka import create_topics
from reloop.ops.simulator import SimConfig, Simulator
from reloop.ops.webclient import get_json, wait_ready
from reloop.streams.codec import decode_event
from reloop.streams.events import ErrorRecord, Interaction, Recommendation, RecommendationRequest, error_id_for
from tests.conftest import WorkerProcess
from tests.integration.helpers import consume_until, produce

pytestmark = [pytest.mark.broker, pytest.mark.slow]

#: How long the broker stays frozen (seconds): longer than kafka.session_timeout_s (6 s).
PAUSE_S = 9.0


async def close_all_windows(s, requests: list[RecommendationRequest], seed: int) -> list[RecommendationRequest]:
    """Move event time an hour past ``requests`` for each of their users (so on every partition
    they live on, whatever the partitioner) with a request + click each: every attribution
    window of ``requests`` closes and its labels resolve. Returns the late requests."""
    after = requests[-1].ts + 3600
    template = next(e for e in Simulator(SimConfig(seed=seed, n_users=300, n_items=200, start_ts=after)).events(1)
                    if isinstance(e, RecommendationRequest))
    users = sorted({r.user_id for r in requests})
    late = [msgspec.structs.replace(template, user_id=u, request_id=f"late-{u}") for u in users]
    await produce(s, "requests", late)
    await produce(s, "interactions", [Interaction(user_id=r.user_id, item_id=r.candidates[0].item_id, ts=r.ts,
                                                  label=1, request_id=r.request_id) for r in late])
    return late


def _phase(events: list, lo: int, hi: int) -> tuple[list[RecommendationRequest], list[Interaction]]:
    reqs = [e for e in events if isinstance(e, RecommendationRequest)][lo:hi]
    ids = {r.request_id for r in reqs}
    return reqs, [e for e in events if isinstance(e, Interaction) and e.request_id in ids]


async def _hold_paused(broker: EmbeddedBroker, w: WorkerProcess) -> int:
    """Keep the broker frozen for PAUSE_S (the fault's duration), checking meanwhile that the
    worker process stays up and its web server answers; returns the /health answers seen."""
    answers = 0
    deadline = time.monotonic() + PAUSE_S
    broker.pause()
    try:
        while time.monotonic() < deadline:
            assert broker.paused, "the broker is not stopped"
            assert w.proc.poll() is None, f"worker exited during the pause:\n{w.log_text()[-4000:]}"
            try:
                if (await get_json(w.port, "/health", timeout_s=1.0)).get("status") == "ok":
                    answers += 1
            except (aiohttp.ClientError, asyncio.TimeoutError):
                pass
            await asyncio.sleep(0.5)
    finally:
        broker.resume()
    assert not broker.paused
    return answers


async def test_worker_resumes_after_broker_pause_without_loss(settings, small_model, tmp_path: Path) -> None:
    broker = await EmbeddedBroker(log_path=str(tmp_path / "broker.log")).astart()
    s = settings.with_overrides(kafka={"broker": broker.url, "topic_prefix": "pause.", "group_id": "g-pause"})
    w: WorkerProcess | None = None
    try:
        await create_topics(s.kafka)
        ModelRegistry(Path(s.worker.data_dir) / "models").register(small_model)
        w = WorkerProcess(s, tmp_path / "worker.log")
        try:
            await wait_ready(w.port, timeout_s=120.0, proc=w.proc)
        except Exception as exc:
            raise AssertionError(f"worker not ready: {exc}\n{w.log_text()[-4000:]}") from None
        sim = Simulator(SimConfig(seed=41, n_users=300, n_items=200))
        events = list(sim.events(90))
        before, during, after = _phase(events, 0, 30), _phase(events, 30, 60), _phase(events, 60, 90)

        await produce(s, "requests", before[0])
        await consume_until(s, "recommendations", lambda m: len(m) >= len(before[0]), timeout_s=60)
        await produce(s, "interactions", before[1])

        # sent while the broker is frozen: the producer's requests wait in the socket
        sending = asyncio.create_task(produce(s, "requests", during[0]))
        health_answers = await _hold_paused(broker, w)
        assert health_answers >= 3, "the worker's web server stopped answering while the broker was paused"
        await asyncio.wait_for(sending, 60)
        await produce(s, "interactions", during[1])

        await produce(s, "requests", after[0])
        await produce(s, "interactions", after[1])
        scored = before[0] + during[0] + after[0]
        late = await close_all_windows(s, scored, seed=42)
        want_recs = {r.request_id for r in scored + late}
        msgs = await consume_until(
            s, "recommendations",
            lambda m: {decode_event(x.value, Recommendation).request_id for x in m} >= want_recs, timeout_s=120)
        recs: dict[str, Recommendation] = {}
        for r in (decode_event(x.value, Recommendation) for x in msgs):
            assert recs.setdefault(r.request_id, r) == r, f"duplicate {r.request_id} differs"
        assert set(recs) == want_recs

        clicked = {error_id_for(c.request_id, c.item_id) for c in before[1] + during[1] + after[1] if c.label == 1}
        want_errs = {error_id_for(r.request_id, c.item_id) for r in scored for c in r.candidates}
        msgs = await consume_until(
            s, "errors", lambda m: {decode_event(x.value, ErrorRecord).error_id for x in m} >= want_errs,
            timeout_s=120)
        labels: dict[str, int] = {}
        for e in (decode_event(x.value, ErrorRecord) for x in msgs):
            assert labels.setdefault(e.error_id, e.label) == e.label, f"duplicate {e.error_id} differs"
        assert want_errs <= set(labels)
        assert {i for i in want_errs if labels[i] == 1} == clicked
        status = await get_json(w.port, "/status")
        assert status["summary"]["labelled"] >= len(want_errs)
        assert w.proc.poll() is None, "worker exited after the pause"
    finally:
        code = w.stop() if w is not None else 0
        broker.stop()
    assert code == 0, w.log_text()[-4000:] if w is not None else ""
