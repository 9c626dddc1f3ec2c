"""State that moves with its partition, through the embedded broker: a consumer group whose
membership changes mid-stream gives the outputs and state of one uninterrupted worker.

Each test runs the same log (simulator requests with 20 candidates, clicks, media, a flush per
partition) through a worker that is never disturbed (A) and through a group (B) whose
membership changes while it is busy (``reloop.testing.rebalance``); B's error records must have A's ids
and labels, and B's state rebuilt from its ``changelog`` topic must equal A's final state.
``bench/rebalance.py`` runs seeded sequences of three workers joining, leaving, lost and
restarting.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from reloop.models.registry import ModelRegistry
from reloop.testing.rebalance import Step, run_group_trial
from reloop.ops.simulator import SimConfig
from tests.conftest import SMALL

pytestmark = [pytest.mark.broker, pytest.mark.slow]


def group_env() -> dict[str, str]:
    small = {f"RELOOP_{sec.upper()}__{k.upper()}": str(v) for sec, kv in SMALL.items() for k, v in kv.items()}
    # a 3 s attribution window (the log spans ~6 s of event time): windows close mid-stream, so
    # moved partitions carry pending requests, resolved ids and orphans at once
    return {**small, "RELOOP_WORKER__SNAPSHOT_EVERY_S": "0.5", "RELOOP_KAFKA__FETCH_MAX_RECORDS": "40",
            "RELOOP_WORKER__ATTRIBUTION_WINDOW_S": "3"}


def _settings(kafka_settings, tmp_path: Path, small_model):
    a = kafka_settings.with_overrides(worker={"data_dir": str(tmp_path / "a")})
    ModelRegistry(Path(a.worker.data_dir) / "models").register(small_model)
    b = kafka_settings.with_overrides(kafka={"topic_prefix": kafka_settings.kafka.topic_prefix + "b.",
                                             "group_id": kafka_settings.kafka.group_id + "-b"})
    return a, b


def _check(result, *, moved: bool = True) -> None:
    failed = [k for k, ok in result.checks.items() if not ok]
    assert not failed, f"failed checks {failed}; details {result.details}"
    if moved:  # some partition really moved and was rebuilt from the changelog
        assert any(r["records"] > 0 for r in result.details["restores"]), result.details["restores"]
    # the media memories are compared (the log has media events for the users the group moves)
    assert "same_media_from_changelog" in result.checks and result.details["media_users"][0] > 0
    print("changelog sizes", result.details["changelog_sizes"], "restores",
          [(r["partition"], r["records"], r["bytes"], r.get("media_users")) for r in result.details["restores"]])


async def test_one_of_two_workers_lost_for_good(kafka_settings, small_model, tmp_path):
    """Worker 1 is SIGKILLed and never comes back: the survivor restores its partitions (pending
    predictions and the moved users' media memories) from the changelog; its media memory for
    every user it holds, and the changelog's, equal the uninterrupted worker's (write path)."""
    a, b = _settings(kafka_settings, tmp_path, small_model)
    result = await run_group_trial(a, b, 21, tmp_path, group_env(), sim_config=SimConfig(seed=5, n_users=300, n_items=200),
                                   initial=2, script=[Step("kill", 1, 0.5)], model=small_model, requests=300,
                                   identical_copies=False)  # the lost worker's last batch may differ in comp_pred
    _check(result)
    assert result.checks["media_of_b0_equals_reference"]
    assert sum(r.get("media_users", 0) for r in result.details["restores"]) > 0  # moved users had media


async def test_group_grows_from_one_to_two(kafka_settings, small_model, tmp_path):
    a, b = _settings(kafka_settings, tmp_path, small_model)
    result = await run_group_trial(a, b, 22, tmp_path, group_env(), sim_config=SimConfig(seed=6, n_users=300, n_items=200),
                                   initial=1, script=[Step("add", 1, 0.5)], model=small_model, requests=300,
                                   identical_copies=True)
    _check(result)


# A rolling restart with static membership (``kafka.group_instance_id``) is not tested here: on
# the embedded broker (Tansu) a static member that rejoins waits out its old session and the
# group then rebalances, so "nothing moves" cannot hold (measured 2026-12-07: a restart took
# 110 s on the loaded machine, past a 60 s session; docs/operations.md, "Scale-out"). Outputs
# and state still matched the uninterrupted worker. On a real Kafka cluster the setting keeps
# partitions in place across restarts within the session timeout.
