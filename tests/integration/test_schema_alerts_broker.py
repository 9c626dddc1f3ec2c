"""Schema alerts through the broker on error records made by the feedback path (issue 13).

The records are the pipeline's own: the simulator's live requests and clicks (1-20 s after
their request), joined by ``FeedbackTasks`` with a 30 s attribution window (unclicked
impressions become negatives when it closes), each record at its prediction's event time,
scored with the simulator's pre-shift click probabilities (calibrated before the shift;
``bench/_schema_pipeline.py``). They go to ``errors`` keyed by user (4 partitions) and a
``reloop worker`` subprocess distils them through its reorder buffer and schema cache:

* a stationary stream (no shift, no fault): no schema is ever promoted, no alert published;
* then (one worker, to keep the test short: 120 event seconds after the first stream's end,
  with fresh error ids) the same stream with the main job's shift (``segment=s1``'s genre affinities flip at 60% of
  the requests): alerts, every one naming ``segment=s1`` (alone or with a genre), in the
  direction of the truth (the sign of the true minus the predicted probability on the
  alert's slice after the shift), none before the shift.

The old clock (a positive at its click time, a negative at its window's end) made the cache
alert on this stationary stream: ``bench/error_schemas.py --mode pipeline --event-time label``.
"""

from __future__ import annotations

import math
from pathlib import Path

import msgspec
import pytest
from aiokafka import AIOKafkaConsumer

from bench._schema_pipeline import SHIFT_PREDICATE, error_stream, truth_direction
from reloop.models.registry import ModelRegistry
from reloop.ops.kafka import client_kwargs, create_topics, topic_name
from reloop.ops.webclient import wait_ready
from reloop.processors.schemas import SchemaAlert
from reloop.streams.codec import decode_event
from tests.conftest import WorkerProcess
from tests.integration.helpers import consume_until, produce
from tests.integration.test_schema_restart import _until_snapshot_includes

pytestmark = [pytest.mark.broker, pytest.mark.slow]

SEED, N_REQUESTS, GAP_S = 7, 2000, 120.0  # 50 requests/s x 20 candidates: 40 s of event time, shift at 24 s
ENV = {"RELOOP_WORKER__REPLICA_SNAPSHOT_EVERY_S": "0.5", "RELOOP_WORKER__SNAPSHOT_EVERY_S": "0.5",
       "RELOOP_ERROR_MEMORY__TABLES": "8", "RELOOP_ERROR_MEMORY__BITS": "8"}


def _records(settings, shift: bool):
    stats: dict = {}
    recs = [r for batch in error_stream(SEED, N_REQUESTS, shift, settings, stats=stats, drain=True) for r in batch]
    return recs, stats


def _streams():
    """The stationary stream, then the shifted one (same seed, same draws) moved ``GAP_S`` past
    its end with fresh error ids: one worker reads both, one after the other. Returns the
    records and the shifted stream's (shift time, truth) in the moved clock."""
    from reloop.ops.settings import Settings
    from tests.conftest import SMALL

    s = Settings().with_overrides(**SMALL)
    clean, _ = _records(s, False)
    shifted, stats = _records(s, True)
    offset = max(r.ts for r in clean) + GAP_S - min(r.ts for r in shifted)
    moved = [msgspec.structs.replace(r, ts=r.ts + offset, label_ts=r.label_ts + offset, error_id="b" + r.error_id)
             for r in shifted]
    truth = {"b" + k: v for k, v in stats["truth"].items()}
    return clean, moved, stats["shift_ts"] + offset, truth


async def _read_all(settings, topic: str) -> list[bytes]:
    """Every message of ``topic`` up to its end offsets now."""
    c = AIOKafkaConsumer(topic_name(settings.kafka, topic), **client_kwargs(settings.kafka), group_id=None,
                         auto_offset_reset="earliest", enable_auto_commit=False)
    await c.start()
    try:
        parts = c.assignment()
        ends = await c.end_offsets(list(parts))
        got: list[bytes] = []
        while [tp for tp in parts if await c.position(tp) < ends[tp]]:
            for msgs in (await c.getmany(timeout_ms=200)).values():
                got += [m.value for m in msgs]
        return got
    finally:
        await c.stop()


async def test_stationary_stream_no_alert_then_shift_alerts_name_segment_s1(kafka_settings, small_model, tmp_path):
    clean, shifted, shift_ts, truth = _streams()
    assert len(clean) > 30_000 and 0.1 < sum(r.label for r in clean) / len(clean) < 0.3
    s = kafka_settings
    await create_topics(s.kafka)
    ModelRegistry(Path(s.worker.data_dir) / "models").register(small_model)
    w = WorkerProcess(s, tmp_path / "w.log", ENV)
    try:
        await wait_ready(w.port, 120.0, w.proc)
        # 1. the stationary stream: nothing is ever promoted, nothing published
        await produce(s, "errors", clean)
        core, held = await _until_snapshot_includes(s.worker.data_dir, len(clean))
        assert core.records_in + held == len(clean)
        assert core.records_in > 0.95 * len(clean)
        assert core.schemas(include_resolved=True) == [], [x.signature for x in core.schemas(True)]
        assert await _read_all(s, "alerts") == []
        # 2. the same stream with the shift (after a gap: the clean history has decayed)
        await produce(s, "errors", shifted)
        core, held = await _until_snapshot_includes(s.worker.data_dir, len(clean) + len(shifted))
        promoted = {x.schema_id for x in core.schemas(include_resolved=True)}
        published = await consume_until(s, "alerts", lambda m: promoted <= {
            a.schema_id for a in (decode_event(x.value, SchemaAlert) for x in m) if a.kind == "new"}, timeout_s=60)
    finally:
        assert w.stop() == 0, w.log_tail()
    new = [a for a in (decode_event(m.value, SchemaAlert) for m in published) if a.kind == "new"]
    assert promoted and new
    res = {"records": shifted, "truth": truth, "shift_ts": shift_ts}
    for a in new:
        assert SHIFT_PREDICATE in a.signature and len(a.signature) <= 2, a.description
        assert all(p == SHIFT_PREDICATE or p.startswith("genre=") for p in a.signature), a.description
        assert a.ts >= shift_ts, (a.ts - shift_ts, a.description)
        direction, gap = truth_direction(res, a.signature, a.ts)
        assert a.direction == direction and not math.isclose(gap, 0.0), (a.description, gap)
