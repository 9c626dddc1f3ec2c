"""Error schemata through the broker: a planted fault in ``errors`` becomes a schema on the
compacted ``schemas`` topic and an alert on ``alerts`` naming the slice; ``reloop schemas``
lists it from the worker's snapshot."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from reloop.models.registry import ModelRegistry
from reloop.ops.kafka import create_topics
from reloop.ops.simulator import FaultSpec, SimConfig, Simulator
from reloop.ops.webclient import wait_ready
from reloop.processors.schemas import SchemaAlert, SchemaUpdate
from reloop.streams.codec import decode_event
from tests.conftest import WorkerProcess
from tests.integration.helpers import consume_until, produce
from tests.processors.test_schema_core import _oracle_records

pytestmark = [pytest.mark.broker, pytest.mark.slow]


async def test_planted_fault_becomes_schema_and_alert(kafka_settings, small_model, tmp_path):
    s = kafka_settings
    await create_topics(s.kafka)
    ModelRegistry(Path(s.worker.data_dir) / "models").register(small_model)
    sim = Simulator(SimConfig(seed=4, shift_at=None, faults=(
        FaultSpec(kind="ctr_collapse", where={"genre": "comedy"}, start_frac=0.2, end_frac=0.9),)))
    records = _oracle_records(sim, 1500)
    w = WorkerProcess(s, tmp_path / "w.log")
    try:
        await wait_ready(w.port, 120.0, w.proc)
        await produce(s, "errors", records)
        alerts = [decode_event(m.value, SchemaAlert)
                  for m in await consume_until(s, "alerts", lambda m: len(m) >= 1, timeout_s=120)]
        updates = [decode_event(m.value, SchemaUpdate)
                   for m in await consume_until(s, "schemas", lambda m: len(m) >= 1)]
    finally:
        assert w.stop() == 0, w.log_tail()
    assert "genre=comedy" in alerts[0].description, alerts[0].description
    assert any("genre=comedy" in u.signature for u in updates)
    shown = subprocess.run([sys.executable, "-m", "reloop.ops.cli", "schemas", "--data-dir", s.worker.data_dir],
                           capture_output=True, text=True, check=True)
    assert "genre=comedy" in shown.stdout
