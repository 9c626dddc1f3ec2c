"""Media memory through the broker: kept per user, served as features, survives a restart."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from reloop.models.registry import ModelRegistry
from reloop.ops.kafka import create_topics
from reloop.ops.simulator import SimConfig, Simulator
from reloop.ops.webclient import get_json, wait_ready
from reloop.streams.events import MediaEvent
from tests.conftest import WorkerProcess
from tests.integration.helpers import poll_until, produce

pytestmark = [pytest.mark.broker, pytest.mark.slow]


async def test_media_memory_survives_restart(kafka_settings, small_model, tmp_path):
    s = kafka_settings
    await create_topics(s.kafka)
    ModelRegistry(Path(s.worker.data_dir) / "models").register(small_model)
    media = [e for e in Simulator(SimConfig(seed=4, n_users=5, n_items=50, media_per_request=6)).events(100)
             if isinstance(e, MediaEvent)]
    user = media[0].user_id
    n_user = sum(e.user_id == user for e in media)
    w1 = WorkerProcess(s, tmp_path / "w1.log")
    try:
        await wait_ready(w1.port, 120.0, w1.proc)
        await produce(s, "media", media)
        before = await poll_until(lambda: get_json(w1.port, f"/memory/{user}"),
                                  lambda d: (d.get("stats") or {}).get("frames_seen", 0) >= n_user, what="media ingested")
    finally:
        assert w1.stop() == 0, w1.log_tail()
    assert before["known"] and before["stats"]["frames_seen"] == n_user, before
    w2 = WorkerProcess(s, tmp_path / "w2.log")
    try:
        await wait_ready(w2.port, 120.0, w2.proc)
        after = await get_json(w2.port, f"/memory/{user}")
    finally:
        assert w2.stop() == 0, w2.log_tail()
    assert after == before
    shown = subprocess.run([sys.executable, "-m", "reloop.ops.cli", "memory", "show", user, "--data-dir",
                            s.worker.data_dir], capture_output=True, text=True, check=True)
    assert json.loads(shown.stdout)["stats"]["frames_seen"] == n_user
