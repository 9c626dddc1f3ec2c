"""`reloop run` on the embedded broker starts from a clean data directory every time."""

from __future__ import annotations

import asyncio

import pytest
from pathlib import Path

from reloop.ops.main_job import RUN_STATE, set_aside_previous_run


def test_a_second_run_sets_the_first_runs_state_aside_and_keeps_one_generation(tmp_path: Path) -> None:
    for name in RUN_STATE:
        target = tmp_path / name
        if "." in name:
            target.write_text("run 1")
        else:
            (target / "v1").mkdir(parents=True)
    (tmp_path / "reports.json").write_text("kept in place")
    kept = set_aside_previous_run(tmp_path)
    assert kept == tmp_path / "previous-run"
    assert all(not (tmp_path / name).exists() for name in RUN_STATE)
    assert (kept / "models" / "v1").is_dir() and (kept / "worker.log").read_text() == "run 1"
    assert (tmp_path / "reports.json").read_text() == "kept in place"
    (tmp_path / "worker.log").write_text("run 2")  # the second run's state
    set_aside_previous_run(tmp_path)
    assert (kept / "worker.log").read_text() == "run 2" and not (kept / "models").exists()


def test_children_load_the_parents_effective_settings() -> None:
    from reloop.ops.settings import Settings, load_settings
    from reloop.ops.children import settings_env

    parent = Settings().with_overrides(
        kafka={"broker": "kafka://127.0.0.1:9", "topic_prefix": 'a "quoted" prefix.'},
        trainer={"retrain_every_s": 123.5, "drift_detector": "none"},
        worker={"media_features": False, "web_port": 0})
    assert load_settings(env=settings_env(parent)) == parent
    assert settings_env(Settings()) == {}


def test_run_settings_keep_what_the_user_set_and_schedule_a_retrain_after_the_shift() -> None:
    from reloop.ops.main_job import RETRAIN_AFTER_SHIFT_S, RUN_TRAINER, run_settings
    from reloop.ops.settings import Settings
    from reloop.ops.simulator import SimConfig, Simulator

    sim = Simulator(SimConfig(seed=7))
    s = run_settings(Settings(), sim, 2000, 400)
    assert all(getattr(s.trainer, k) == v for k, v in RUN_TRAINER.items())
    first_live, shift = sim._request_ts(400), sim.shift_ts(2000)  # noqa: SLF001
    assert first_live + s.trainer.retrain_every_s == pytest.approx(shift + RETRAIN_AFTER_SHIFT_S, abs=1e-3)
    mine = Settings().with_overrides(trainer={"window_max_samples": 777, "retrain_every_s": 5.0})
    s = run_settings(mine, sim, 2000, 400)
    assert s.trainer.window_max_samples == 777 and s.trainer.retrain_every_s == 5.0
    assert s.trainer.retrain_every_samples == 0


def test_run_summary_splits_quality_at_the_shift_and_the_swap_and_joins_alert_rates() -> None:
    from reloop.ops.report import run_summary

    answered = [[float(t), "v1" if t < 70 else "v2"] for t in range(0, 100)]
    series = [{"ts": float(t), "auc_base": 0.7 if t < 50 else 0.6 if t < 70 else 0.65,
               "auc_compensated": 0.71, "logloss_base": 0.5, "logloss_compensated": 0.49} for t in range(0, 100, 10)]
    report = {"answered": answered, "shift_ts": 50.0, "live_from_ts": 0.0, "elapsed_seconds": 10.0,
              "attribution_window_s": 60.0,
              "worker": {"summary": {"labelled": 500}, "series": series,
                         "counters": {"events_in": {"requests": 100.0, "media": 30.0}, "events_out": {}}}}
    alerts = [{"alert_id": "s1:new:55", "schema_id": "s1", "ts": 55.0, "kind": "new",
               "signature": ["genre=drama", "segment=s1"], "direction": "over", "support": 300.0, "z": -5.0},
              {"alert_id": "s1:resolved:60", "schema_id": "s1", "ts": 60.0, "kind": "resolved",
               "signature": ["genre=drama", "segment=s1"], "direction": "over", "support": 310.0, "z": -1.0,
               "reason": "weak"}]
    updates = [{"schema_id": "s1", "ts": 55.0, "change": "promoted", "observed_rate": 0.05, "predicted_rate": 0.2}]
    metrics = 'reloop_memory_bytes{memory="media_memory"} 1234.0\n'
    out = run_summary(report, alerts, updates, metrics)
    assert "answered" not in report
    assert out["swaps"] == [{"version": "v2", "event_ts": 70.0, "after_shift_s": 20.0, "requests": 30}]
    phases = {p["phase"]: (p["windows"], p["auc_base"]) for p in out["quality_phases"]}
    assert phases == {"before shift": (5, 0.7), "after shift, before swap": (2, 0.6), "after swap": (3, 0.65)}
    row, resolved = out["alerts"]
    assert (row["after_shift_s"], row["signature"], row["observed_rate"], row["predicted_rate"], row["reason"]) == \
        (5.0, "genre=drama & segment=s1", 0.05, 0.2, "")
    assert (resolved["kind"], resolved["reason"], resolved["observed_rate"]) == ("resolved", "weak", None)
    assert out["media"] == {"media_events_in": 30.0, "media_memory_bytes": 1234.0}
    assert out["events_per_s"]["in"] == {"requests": 10.0, "media": 3.0}
    assert sum(sum(w["versions"].values()) for w in out["versions_per_window"]) == 100
    assert out["notes"] == []
    quiet = run_summary({"answered": [[0.0, "v1"], [20.0, "v1"]], "shift_ts": None, "live_from_ts": 0.0,
                         "elapsed_seconds": 1.0, "attribution_window_s": 60.0, "worker": {"summary": {}}}, [], [], "")
    assert len(quiet["notes"]) == 1 and "attribution window (60 s of event time)" in quiet["notes"][0]
    assert "20 s of event time" in quiet["notes"][0]


def test_a_busy_web_port_is_refused_not_replaced(tmp_path: Path, capsys) -> None:
    import asyncio
    import socket

    from reloop.ops.main_job import MainJobOptions, run_main_job
    from reloop.ops.settings import Settings

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        s = Settings().with_overrides(worker={"data_dir": str(tmp_path), "web_port": port})
        code = asyncio.run(run_main_job(s, MainJobOptions(events=100, report_path=str(tmp_path / "r.json"))))
    assert code == 2
    err = capsys.readouterr().err
    assert f"port {port} (worker.web_port) is in use" in err and "--web-port 0" in err
    assert not (tmp_path / "broker.log").exists()  # nothing was started


def test_run_summary_says_when_a_registered_version_served_nothing() -> None:
    from reloop.ops.report import run_summary

    report = {"answered": [[0.0, "v1"], [100.0, "v1"]], "shift_ts": 50.0, "live_from_ts": 0.0, "elapsed_seconds": 1.0,
              "attribution_window_s": 60.0, "worker": {"summary": {"labelled": 10}},
              "models": [{"version": "v1", "trigger": "initial"}, {"version": "v2", "trigger": "time"}]}
    notes = run_summary(report, [], [], "")["notes"]
    assert notes == ["v2 was registered (time) but answered no request before the traffic ended: the retrain "
                     "finished too late in the run"]


async def test_the_run_stops_driving_when_its_worker_dies() -> None:
    """``reloop run`` watches its worker while traffic runs: a worker that exits (here a real
    child process killed mid-run) cancels the driver at once, and the run exits non-zero."""
    import asyncio
    import signal
    import subprocess
    import sys

    from reloop.ops.main_job import while_alive

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    cancelled = asyncio.Event()

    async def endless_traffic() -> str:
        try:
            await asyncio.Event().wait()
        finally:
            cancelled.set()
        return "never"

    loop = asyncio.get_running_loop()
    loop.call_later(0.3, child.send_signal, signal.SIGKILL)
    assert await while_alive(child, endless_traffic(), poll_s=0.05) is None
    assert cancelled.is_set() and child.returncode == -signal.SIGKILL
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert await while_alive(alive, asyncio.sleep(0.01, result="done")) == "done"
    finally:
        alive.kill()
        alive.wait()


async def test_in_daemon_thread_hands_over_the_result_and_the_exception() -> None:
    """What the trainer's training thread returns or raises reaches the awaiting task."""
    from reloop.ops.children import in_daemon_thread

    assert await in_daemon_thread(lambda: 6 * 7) == 42

    def fails() -> None:
        raise ValueError("training diverged")

    with pytest.raises(ValueError, match="training diverged"):  # not a hang (the callback failing)
        await asyncio.wait_for(in_daemon_thread(fails), 60)


def test_the_report_prints_latency_per_window_with_the_retrain_marked() -> None:
    from rich.console import Console

    from reloop.ops.report import print_run_report

    report = {"send_started_unix": 1000.0, "latency_ms": {"p50": 12.0, "p90": 40.0, "p99": 900.0},
              "latency_windows": [{"from_s": 0.0, "to_s": 10.0, "requests": 1500, "p50": 11.0, "p99": 30.0},
                                  {"from_s": 10.0, "to_s": 20.0, "requests": 1480, "p50": 55.5, "p99": 2500.0}],
              "models": [{"version": "v1", "trigger": "initial", "created_ts": 990.0},
                         {"version": "v2", "trigger": "drift", "created_ts": 1013.5}]}
    console = Console(record=True, width=140)
    print_run_report(report, console)
    lines = console.export_text().splitlines()
    [first] = [ln for ln in lines if "0 .. 10 " in ln]
    [second] = [ln for ln in lines if "10 .. 20 " in ln]
    assert "v2 registered (drift)" in second and "registered" not in first  # v1 predates the traffic
    assert "2500.0" in second and "55.5" in second


def test_run_summary_names_the_embedded_brokers_stored_batches_when_latency_grows() -> None:
    from reloop.ops.report import run_summary

    report = {"answered": [[0.0, "v1"], [100.0, "v1"]], "shift_ts": None, "live_from_ts": 0.0, "elapsed_seconds": 1.0,
              "attribution_window_s": 60.0, "worker": {"summary": {"labelled": 10}},
              "latency_windows": [{"from_s": 0.0, "to_s": 10.0, "requests": 1500, "p50": 12.0, "p99": 40.0},
                                  {"from_s": 10.0, "to_s": 20.0, "requests": 1500, "p50": 95.0, "p99": 400.0}],
              "broker_stored": {"requests": {"batches": 3000, "records": 3000},
                                "recommendations": {"batches": 2100, "records": 3000}}}
    [note] = run_summary(report, [], [], "")["notes"]
    assert "12.0 ms in the first 10 s to 95.0 ms" in note and "3,000 batches of requests" in note
    assert "2,100 of recommendations" in note
    flat = {**report, "latency_windows": [dict(w, p50=12.0) for w in report["latency_windows"]]}
    assert run_summary(flat, [], [], "")["notes"] == []  # no growth: nothing to explain
    assert run_summary({**report, "broker_stored": None}, [], [], "")["notes"] == []  # a real cluster
