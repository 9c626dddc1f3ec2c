"""The error-memory replica through the broker: snapshot + catch-up after a SIGKILL.

A worker applies every binary ``memory`` batch to its replica and snapshots it with the
``memory`` offsets it includes. Killed with SIGKILL mid-stream and restarted on the same data
dir, it restores the snapshot and replays only the rest of the topic; byte-identical copies of
a batch (a crashed producer's resend) are dropped. Its final state must equal a reference
replica that applied every error record exactly once (to float rounding: sums are accumulated
in a different order, so ``rtol=1e-9``; a record applied twice or lost would change a bucket
count by a whole record).
"""

from __future__ import annotations

import signal
from pathlib import Path

import numpy as np
import pytest

from reloop.models.registry import ModelRegistry
from reloop.ops.kafka import create_topics
from reloop.ops.serving import make_compensation
from reloop.ops.webclient import get_json, wait_ready
from reloop.processors.error_memory import memory_batches
from reloop.processors.prequential import as_feedback, as_request
from reloop.state.snapshots import read_npz
from reloop.streams.codec import decode_event
from reloop.streams.events import ErrorRecord, Interaction
from tests.conftest import WorkerProcess
from tests.integration.helpers import poll_until, produce

pytestmark = [pytest.mark.broker, pytest.mark.slow]


def applied(status: dict) -> int:
    return sum(status["memory_applied"].values())


def error_records(model, log_events) -> list[ErrorRecord]:
    """Real error records (with codes) of a logged stream, scored and joined in-process."""
    from reloop.ops.settings import Settings
    from reloop.processors.feedback import FeedbackCore
    from reloop.processors.metrics import OnlineMetrics
    from reloop.processors.pending import PendingStore
    from reloop.processors.scoring import ScoringCore

    comp = make_compensation(Settings(), model.scorer)
    scoring = ScoringCore(model.scorer, comp)
    feedback = FeedbackCore(PendingStore(30.0), OnlineMetrics())
    _, pending = scoring.score([as_request(it, i) for i, it in enumerate(log_events)])
    feedback.on_scored(pending)
    return feedback.on_batch([as_feedback(it, i) for i, it in enumerate(log_events)])


async def test_replica_survives_sigkill_without_loss_or_double_apply(kafka_settings, small_model, small_log,
                                                                     tmp_path):
    s = kafka_settings
    await create_topics(s.kafka)
    ModelRegistry(Path(s.worker.data_dir) / "models").register(small_model)
    env = {"RELOOP_WORKER__SNAPSHOT_EVERY_S": "0.2", "RELOOP_WORKER__REPLICA_SNAPSHOT_EVERY_S": "0.2"}
    records = error_records(small_model, [e for e in small_log if isinstance(e, Interaction)][5000:5600])
    tables = s.error_memory.tables
    batches = [raw for lo in range(0, len(records), 50) for raw in memory_batches(records[lo:lo + 50], tables)]
    assert len(batches) == 12
    # batch 3 twice in a row (a crashed producer's resend), all in partition 0 as one producer's
    first, second = batches[:6] + [batches[5]], batches[6:] + [batches[8]]
    snap = Path(s.worker.data_dir) / "snapshots" / "error_memory.npz"
    w1 = WorkerProcess(s, tmp_path / "w1.log", env)
    try:
        await wait_ready(w1.port, 120.0, w1.proc)
        await produce(s, "memory", first, partitions=[0] * len(first))
        await poll_until(lambda: get_json(w1.port, "/status"),
                         lambda st: applied(st) >= len(first) and snap.exists(),
                         what="first half applied and snapshotted")
        await produce(s, "memory", second, partitions=[0] * len(second))
    finally:
        w1.stop(signal.SIGKILL)  # during or right after the second half: no final snapshot
    w2 = WorkerProcess(s, tmp_path / "w2.log", env)
    try:
        await wait_ready(w2.port, 120.0, w2.proc)
        assert "snapshot_restored" in w2.log_text()
        st = await poll_until(lambda: get_json(w2.port, "/status"),
                              lambda st: applied(st) >= len(first) + len(second), what="catch-up")
        assert st["duplicates_skipped"] >= 1  # the copy after the snapshot (the first may be in it)
    finally:
        assert w2.stop() == 0, w2.log_tail()  # SIGTERM: the final snapshot holds the caught-up state
    final = read_npz(snap)
    assert int(final["memory_offsets"].sum()) == len(first) + len(second)
    reference = make_compensation(s, small_model.scorer)
    reference.apply_errors(records)
    for name in ("counts", "sum_y", "sum_p"):
        np.testing.assert_allclose(final[name], getattr(reference.memory, name), rtol=1e-9, atol=1e-9)
