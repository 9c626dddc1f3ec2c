"""The error-schema cache survives a SIGKILL through the broker and resumes where it left off.

A real worker reads a planted fault (``genre=comedy`` stops converting) from ``errors``,
promotes the schema, publishes it and snapshots the cache with the ``errors`` offsets it
includes; it is killed with SIGKILL; a new worker on the same data dir restores the cache,
skips the records it already includes, reads the rest of the stream (the fault has ended)
and resolves the *same* schema (same id, same promotion time) -- every record counted once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from reloop.models.registry import ModelRegistry
from reloop.ops.kafka import create_topics
from reloop.ops.simulator import FaultSpec, SimConfig, Simulator
from reloop.ops.webclient import wait_ready
from reloop.processors.schemas import SchemaAlert, SchemaCore
from reloop.state.snapshots import read_npz
from reloop.streams.codec import decode_event
from tests.conftest import WorkerProcess
from tests.integration.helpers import consume_until, log_events, poll_until, produce
from tests.processors.test_schema_core import _oracle_records

pytestmark = [pytest.mark.broker, pytest.mark.slow]

N_REQUESTS = 3000  # x 20 candidates, 50 requests/s: 60 s of event time
ENV = {"RELOOP_WORKER__SNAPSHOT_EVERY_S": "0.5", "RELOOP_WORKER__REPLICA_SNAPSHOT_EVERY_S": "0.5",
       "RELOOP_SCHEMAS__HALF_LIFE_S": "5.0",
       "RELOOP_ERROR_MEMORY__TABLES": "8", "RELOOP_ERROR_MEMORY__BITS": "8"}


def _snapshot(data_dir: str) -> tuple[SchemaCore, int, int] | None:
    """The worker's schema-cache snapshot: (core, errors records its offsets include, records
    held in its reorder buffer), once the error-memory snapshot beside it is at the same
    offsets (the worker restores the two together only then; otherwise it rebuilds both from
    the log)."""
    snaps = Path(data_dir) / "snapshots"
    try:
        cache, sketch = read_npz(snaps / "schema_cache.npz"), read_npz(snaps / "error_memory.npz")
    except (OSError, ValueError):
        return None  # not written yet
    offsets = [dict(zip(s["errors_partitions"].tolist(), s["errors_offsets"].tolist())) for s in (cache, sketch)]
    if offsets[0] != offsets[1]:
        return None
    return SchemaCore.restore(cache), sum(offsets[0].values()), len(cache["reorder_keys"])


async def _until_snapshot_includes(data_dir: str, n: int) -> tuple[SchemaCore, int]:
    async def fetch():
        return _snapshot(data_dir)

    got = await poll_until(fetch, lambda s: s is not None and s[1] >= n, timeout_s=120.0,
                           what=f"a schema-cache snapshot that includes {n} errors records")
    return got[0], got[2]


async def _feed(s, records: list, done_before: int) -> tuple[SchemaCore, int]:
    """Produce ``records`` to ``errors`` at once (a whole stream reaches the worker one
    partition ahead of the others; the reorder buffer in front of the cache puts it back in
    event-time order). Returns the cache snapshot that includes them all and the number of
    records its reorder buffer holds (the newest: not yet behind every partition)."""
    await produce(s, "errors", records)
    return await _until_snapshot_includes(s.worker.data_dir, done_before + len(records))


async def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie counts as ended: its parent, SIGKILLed, cannot reap it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return False


async def test_schema_cache_survives_sigkill_and_resumes(kafka_settings, small_model, tmp_path):
    s = kafka_settings
    await create_topics(s.kafka)
    ModelRegistry(Path(s.worker.data_dir) / "models").register(small_model)
    sim = Simulator(SimConfig(seed=4, shift_at=None, faults=(
        FaultSpec(kind="ctr_collapse", where={"genre": "comedy"}, start_frac=0.1, end_frac=0.4),)))
    records = _oracle_records(sim, N_REQUESTS)
    fault_end = sim.faults(N_REQUESTS)[0]["end_ts"]
    cut = next(i for i, r in enumerate(records) if r.ts >= fault_end)
    first, rest = records[:cut], records[cut:]

    w1 = WorkerProcess(s, tmp_path / "w1.log", ENV)
    try:
        await wait_ready(w1.port, 120.0, w1.proc)
        before, held_before = await _feed(s, first, 0)
        alerts = [decode_event(m.value, SchemaAlert) for m in await consume_until(
            s, "alerts", lambda m: len(m) >= 1, timeout_s=120)]
    finally:
        assert w1.stop(signal.SIGKILL) == -signal.SIGKILL
    # the schema cache ran in a child process (worker.schema_in_child): it ends with its worker
    child = log_events(w1.log_text(), "schema_child_started")[0]["pid"]
    await poll_until(lambda: _alive(child), lambda alive: not alive, what="the schema-cache child ending")
    new = alerts[0]
    assert new.kind == "new" and new.signature == ["genre=comedy"], new.description
    # held: the newest requests, not yet behind every partition (20 records per request)
    assert before.records_in + held_before == len(first) and 0 < held_before <= 20 * 20
    active = {x.schema_id: x for x in before.schemas()}
    assert new.schema_id in active and active[new.schema_id].first_seen == new.since

    w2 = WorkerProcess(s, tmp_path / "w2.log", ENV)
    try:
        await wait_ready(w2.port, 120.0, w2.proc)
        after, held_after = await _feed(s, rest, len(first))
        resolved = [decode_event(m.value, SchemaAlert) for m in await consume_until(
            s, "alerts", lambda m: any(decode_event(x.value, SchemaAlert).kind == "resolved" for x in m),
            timeout_s=120)]
    finally:
        assert w2.stop() == 0, w2.log_tail()
    assert "schema_snapshot_restored" in w2.log_text()
    # resumed after the snapshot (and its held records): nothing twice, nothing lost
    assert after.records_in + held_after == len(records)
    gone = [a for a in resolved if a.kind == "resolved"]
    assert [a.schema_id for a in gone] == [new.schema_id]
    assert gone[0].since == new.since and gone[0].ts >= fault_end  # the restored schema, not a new one
    assert [a.kind for a in resolved].count("new") == 1  # the restart promoted nothing again
    shown = subprocess.run([sys.executable, "-m", "reloop.ops.cli", "schemas", "--all", "--json", "--data-dir",
                            s.worker.data_dir], capture_output=True, text=True, check=True)
    listed = {row["schema_id"]: row for row in json.loads(shown.stdout)}
    assert listed[new.schema_id]["state"] == "resolved" and listed[new.schema_id]["first_seen"] == new.since


async def test_a_lost_schema_cache_child_stops_the_worker_and_a_restart_resumes(kafka_settings, small_model,
                                                                                tmp_path):
    """The elected worker's schema-cache child SIGKILLed: the worker does not dead-letter the
    error records it could not apply, it exits with an error; restarted, it reaches the state of
    a worker that never stopped (every record in the cache or its reorder buffer, once)."""
    s = kafka_settings
    await create_topics(s.kafka)
    ModelRegistry(Path(s.worker.data_dir) / "models").register(small_model)
    records = _oracle_records(Simulator(SimConfig(seed=5, shift_at=None)), 400)
    w1 = WorkerProcess(s, tmp_path / "w1.log", ENV)
    try:
        await wait_ready(w1.port, 120.0, w1.proc)
        await poll_until(lambda: _async(log_events(w1.log_text(), "schema_child_started")), bool,
                         what="the elected worker's schema-cache child")
        child = log_events(w1.log_text(), "schema_child_started")[0]["pid"]
        os.kill(child, signal.SIGKILL)
        await produce(s, "errors", records)
        await poll_until(lambda: _async(w1.proc.poll()), lambda code: code is not None, timeout_s=120.0,
                         what="the worker stopping after its child was lost")
    finally:
        if w1.proc.poll() is None:
            w1.stop(signal.SIGKILL)
    assert w1.proc.returncode not in (0, None), w1.log_tail()
    text = w1.log_text()
    assert "SchemaChildGone" in text and "error_record_failed" not in text, w1.log_tail()
    w2 = WorkerProcess(s, tmp_path / "w2.log", ENV)
    try:
        await wait_ready(w2.port, 120.0, w2.proc)
        core, held = await _until_snapshot_includes(s.worker.data_dir, len(records))
    finally:
        assert w2.stop() == 0, w2.log_tail()
    assert core.records_in + held == len(records)


async def _async(value):  # type: ignore[no-untyped-def]
    return value
