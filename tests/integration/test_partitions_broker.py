"""A group with more workers than partitions, through the embedded broker.

Topics created with ``kafka.partitions = 1``: of two workers, one owns every input partition
and serves; the other gets none, says so at warning level (the deployment has more workers
than partitions), and is still ready: a standby that keeps the error-memory replica.
"""

from __future__ import annotations


import pytest

from reloop.ops.kafka import create_topics
from reloop.ops.simulator import SimConfig, Simulator
from reloop.ops.webclient import get_json, wait_ready
from reloop.streams.events import RecommendationRequest
from tests.conftest import WorkerProcess
from tests.integration.helpers import named_workers, consume_until, log_events, poll_until, produce

pytestmark = [pytest.mark.broker, pytest.mark.slow]


async def test_a_worker_beyond_the_partition_count_serves_nothing_and_says_why(kafka_settings, small_model, tmp_path):
    s = kafka_settings.with_overrides(kafka={"partitions": 1})
    await create_topics(s.kafka)
    workers = named_workers(s, small_model, tmp_path, ("a", "b"))
    try:
        for w in workers:
            await wait_ready(w.port, 180.0, w.proc)  # both ready: the idle one as a standby

        def assigned(w: WorkerProcess) -> list[dict]:
            return log_events(w.log_text(), "inputs_assigned")

        async def both() -> list[list[dict]]:
            return [assigned(w) for w in workers]

        # both joined the group's last generation: one holds the partition, the other nothing
        await poll_until(both,
                         lambda a: all(a) and sorted(bool(x[-1]["partitions"]) for x in a) == [False, True],
                         timeout_s=60.0, what="one worker with the partition, one without")
        idle = next(w for w in workers if not assigned(w)[-1]["partitions"])
        busy = next(w for w in workers if w is not idle)
        warned = log_events(idle.log_text(), "inputs_none_assigned")
        assert warned and warned[-1]["requests_partitions"] == 1, idle.log_text()[-2000:]
        assert not log_events(busy.log_text(), "inputs_none_assigned")

        requests = [e for e in Simulator(SimConfig(seed=9, n_users=50, n_items=80)).events(20)
                    if isinstance(e, RecommendationRequest)]
        await produce(s, "requests", requests)
        recs = await consume_until(s, "recommendations", lambda m: len(m) >= len(requests))
        assert len(recs) == len(requests)
        assert (await get_json(idle.port, "/ready"))["ready"] is True  # still ready: a standby
    finally:
        codes = [w.stop() for w in workers]
    assert codes == [0, 0], [w.log_text()[-2000:] for w in workers]
