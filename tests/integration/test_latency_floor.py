"""The latency floor bench at a small size (``bench/latency_floor.py`` runs reloop run's size),
and the idle fetch wait reaching the consumers off the latency path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from reloop.ops.settings import Settings, SettingsError

ROOT = Path(__file__).resolve().parents[2]


def run_bench(script: str, args: list[str], out: Path, timeout_s: float) -> dict:
    """Run ``bench/<script>`` with ``args`` and ``--json out`` as a user would; its JSON."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / script), *args, "--json", str(out)],
                          env=env, capture_output=True, text=True, timeout=timeout_s)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


def test_latency_floor_bench_small(tmp_path: Path) -> None:
    """Driver traffic through a fresh broker answered by the echo worker, with the other
    consumers polling next to it: every live request is answered and every process's CPU is
    measured."""
    (row,) = run_bench("latency_floor.py", ["--events", "500", "--waits", "10", "--others", "on"],
                       tmp_path / "floor.json", 180)["variants"]
    assert row["fetch_wait_ms"] == 10 and row["others"] is True
    assert row["unanswered"] == 0 and row["answered"] == row["produced"]["requests"] == 400  # 20% warm-up not sent
    assert row["produced"]["interactions"] > 0 and row["produced"]["media"] > 0
    lat, hop = row["latency_ms"], row["request_hop_ms"]
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"]
    assert 0 <= hop["p50"] <= hop["p99"]
    assert set(row["cpu"]) == {"broker", "driver", "echo", "others"}
    assert all(v > 0 for v in row["cpu"].values())
    assert sum(w["requests"] for w in row["latency_windows"]) == 400
    # what the broker stored: requests go out at once (about a batch each), clicks linger 50 ms
    stored = row["stored_batches"]
    req, clicks = stored["requests"], stored["interactions"]
    assert req["records"] == 400 and clicks["records"] == row["produced"]["interactions"]
    assert 0 < clicks["batches"] / clicks["records"] < req["batches"] / req["records"] <= 1


def test_idle_fetch_wait_reaches_the_hot_path(tmp_path: Path) -> None:
    from reloop.ops.worker import build_app

    s = Settings().with_overrides(kafka={"broker": "kafka://127.0.0.1:9", "idle_fetch_wait_ms": 250},
                                  worker={"data_dir": str(tmp_path)})
    _, hot = build_app(s)
    assert hot.idle_fetch_wait_ms == 250
    assert Settings().kafka.idle_fetch_wait_ms == 100
    with pytest.raises((SettingsError, ValueError), match="idle_fetch_wait_ms"):
        Settings().with_overrides(kafka={"idle_fetch_wait_ms": -1})


def test_broker_fetch_cost_bench_small(tmp_path: Path) -> None:
    """The bare-broker fetch cost bench at a tiny size: one row per step, and the broker holds
    the batches the bench says it stored (one per send, timed round trips included)."""
    res = run_bench("broker_fetch_cost.py", ["--up-to", "60", "--step", "30", "--probes", "5"],
                    tmp_path / "cost.json", 120)
    assert [r["stored_batches"] for r in res["rows"]] == [35, 70]
    assert res["rows"][-1]["broker_counts"] == {"batches": 70, "records": 70}  # one batch per send
    assert all(r["round_trip_ms_p50"] > 0 and r["broker_cpu_ms_per_trip"] >= 0 for r in res["rows"])
    assert res["broker_cpu_us_per_trip_per_stored_batch"] is not None
