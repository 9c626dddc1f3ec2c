"""State that moves with its partition, through the embedded broker: a consumer group whose
membership changes mid-stream gives the outputs and state of one uninterrupted worker.

Each test runs the same log (simulator requests with 20 candidates, clicks, media, a flush per
partition) through a worker that is never disturbed (A) and through a group (B) whose
membership changes while it is busy (``ops.rebalance``); B's error records must have A's ids
and labels, and B's state rebuilt from its ``changelog`` topic must equal A's final state.
``bench/rebalance.py`` runs seeded sequences of three workers joining, leaving, lost and
restarting.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from models.registry import ModelRegistry
from ops.rebalance import Step, run_group_trial
from ops.simulator import SimConfig
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


async def test_one_of_two_workers_lost_for_good(kafka_settings, small_model, tmp_path):
    a, b = _settings(kafka_settings, tmp_path, small_model)
    result = await run_group_trial(a, b, 21, tmp_path, group_env(), sim_config=SimConfig(seed=5, n_users=300, n_items=200),
                                   initial=2, script=[Step("kill", 1, 0.5)], model=small_model, requests=300,
                                   identical_copies=False)  # the lost worker's last batch may differ in comp_pred
    _check(result)


async def test_group_grows_from_one_to_two(kafka_settings, small_model, tmp_path):
    a, b = _settings(kafka_settings, tmp_path, small_model)
    result = await run_group_trial(a, b, 22, tmp_path, group_env(), sim_config=SimConfig(seed=6, n_users=300, n_items=200),
                                   initial=1, script=[Step("add", 1, 0.5)], model=small_model, requests=300,
                                   identical_copies=True)
    _check(result)


def _events(path: Path, event: str, since: float) -> list[dict]:
    import msgspec

    out = []
    for line in path.read_text(errors="replace").splitlines():
        if f'"{event}"' in line:
            rec = msgspec.json.decode(line)
            if rec["ts"] >= since:
                out.append(rec)
    return out


@pytest.mark.xfail(strict=False, reason=(
    "measured on the embedded broker (Tansu), 2026-12-07: a static member that rejoins waits until its old "
    "session expires and the group then rebalances; with the worker's Faust app group also rejoining, a "
    "restart on the loaded 2-core machine took 110 s (past the 60 s session: its partitions moved and were "
    "restored), and the final SIGTERM of a static member hung past 30 s in 2 of 3 runs (exit -9). Partitions "
    "stayed put in the one run where the restart fit in the session. Not a failure of the changelog: "
    "outputs and state matched the uninterrupted worker in both runs that finished (the third timed out "
    "waiting for the restarted worker)."))
async def test_rolling_restart_with_static_membership_moves_nothing(kafka_settings, small_model, tmp_path):
    """Each worker restarts (SIGTERM, start again on its volume) under its own
    ``kafka.group_instance_id`` within the session timeout: the group does not rebalance, so the
    other worker keeps its partitions untouched and nothing is restored from the changelog."""
    a, b = _settings(kafka_settings, tmp_path, small_model)
    b = b.with_overrides(kafka={"session_timeout_s": 60.0})  # the trial waits for rejoins accordingly
    env = {**group_env(), "RELOOP_KAFKA__SESSION_TIMEOUT_S": "60", "RELOOP_KAFKA__REBALANCE_TIMEOUT_S": "20"}
    result = await run_group_trial(a, b, 23, tmp_path, env, sim_config=SimConfig(seed=7, n_users=300, n_items=200),
                                   initial=2, script=[Step("roll", 0, 0.4), Step("roll", 1, 0.4)],
                                   model=small_model, requests=240, identical_copies=True,
                                   member_env=lambda i: {"RELOOP_KAFKA__GROUP_INSTANCE_ID": f"reloop-worker-{i}"})
    _check(result, moved=False)
    first_roll = result.details["step_times"][0]
    logs = [tmp_path / f"b{i}.log" for i in (0, 1)]
    before = [_events(p, "inputs_assigned", 0.0) for p in logs]
    before = [[e for e in ev if e["ts"] < first_roll][-1]["partitions"] for ev in before]
    assert before[0] and before[1] and not set(before[0]) & set(before[1])
    for i, p in enumerate(logs):
        after = _events(p, "inputs_assigned", first_roll)
        # every assignment after the first restart gives each worker its own partitions back
        # (the embedded broker still rebalances when a static member rejoins: docs/guarantees.md)
        assert after and all(e["partitions"] == before[i] for e in after), (i, after)
        assert not _events(p, "changelog_restored", first_roll)
        assert len(_events(p, "changelog_local_kept", first_roll)) >= 2
