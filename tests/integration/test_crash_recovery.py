"""Crash recovery through the embedded broker: SIGKILL at seeded points changes nothing.

The same log (simulator requests with 20 candidates, clicks, media, and a flush per
partition) goes through a worker that is never killed (A) and one that is SIGKILLed three
times while busy (B, restarted on the same data dir each time). ``reloop.testing.chaos.compare`` then
checks: every request answered, duplicated outputs byte-identical, the same error ids with the
same labels / base predictions / codes, the media memory bit-identical, the same pending
predictions and labelled counts, the error memory equal to rtol 1e-9 (sums accumulate in a
different order), and the schema cache fed every record exactly once.
``bench/chaos.py --trials 20`` runs more seeds.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from reloop.models.registry import ModelRegistry
from reloop.testing.chaos import run_trial
from reloop.ops.simulator import SimConfig
from tests.conftest import SMALL

pytestmark = [pytest.mark.broker, pytest.mark.slow]


def worker_env() -> dict[str, str]:
    small = {f"RELOOP_{sec.upper()}__{k.upper()}": str(v) for sec, kv in SMALL.items() for k, v in kv.items()}
    # a 3 s attribution window (the log spans ~6 s of event time) closes windows mid-stream, so
    # kills also land while error records are being produced and re-sent
    return {**small, "RELOOP_WORKER__SNAPSHOT_EVERY_S": "0.3", "RELOOP_WORKER__REPLICA_SNAPSHOT_EVERY_S": "0.3",
            "RELOOP_KAFKA__FETCH_MAX_RECORDS": "40",
            "RELOOP_WORKER__ATTRIBUTION_WINDOW_S": "3",
            "RELOOP_WORKER__SCHEMA_CACHE": "true"}


@pytest.mark.parametrize("seed", [11])
async def test_sigkill_at_three_seeded_points_matches_uninterrupted_run(kafka_settings, small_model, tmp_path, seed):
    a = kafka_settings.with_overrides(worker={"data_dir": str(tmp_path / "a")})
    b = kafka_settings.with_overrides(kafka={"topic_prefix": kafka_settings.kafka.topic_prefix + "b.",
                                             "group_id": kafka_settings.kafka.group_id + "-b"},
                                      worker={"data_dir": str(tmp_path / "b")})
    for s in (a, b):
        ModelRegistry(Path(s.worker.data_dir) / "models").register(small_model)
    result = await run_trial(a, b, seed, tmp_path, worker_env(),
                             sim_config=SimConfig(seed=3, n_users=300, n_items=200), requests=300, kills=3)
    failed = [k for k, ok in result.checks.items() if not ok]
    assert not failed, f"failed checks {failed}; details {result.details}"
    assert result.details["recovered_logs"] >= 1  # the last restart recovered from its checkpoint
    assert len(result.checks) >= 10
