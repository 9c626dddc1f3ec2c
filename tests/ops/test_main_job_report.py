"""``reloop run`` end to end, as ``make run`` starts it but small: the real CLI with its
embedded broker and worker; the report it prints and writes covers every live request and
counts what the embedded broker stored on the latency path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tests.ops.test_main_job_signals import SMALL_ENV

pytestmark = [pytest.mark.broker, pytest.mark.slow]


def test_a_small_run_reports_every_request_and_the_brokers_stored_batches(tmp_path: Path) -> None:
    report_path = tmp_path / "run.json"
    env = {**os.environ, **SMALL_ENV, "PYTHONUNBUFFERED": "1", "COLUMNS": "240"}  # no wrapped table rows
    proc = subprocess.run([sys.executable, "-m", "reloop.ops.cli", "run", "--events", "1500", "--no-trainer",
                           "--web-port", "0", "--data-dir", str(tmp_path / "var"), "--report", str(report_path)],
                          env=env, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    report = json.loads(report_path.read_text())
    live = report["produced"]["requests"]
    assert live == 1200 and report["recommendations"] == live and report["unanswered"] == 0  # 20% warm-up
    assert sum(w["requests"] for w in report["latency_windows"]) == live
    stored = report["broker_stored"]
    assert set(stored) == {"requests", "recommendations", "interactions", "media"}
    assert stored["requests"]["records"] == live and stored["recommendations"]["records"] == live
    assert stored["interactions"]["records"] == report["produced"]["interactions"]
    assert all(0 < v["batches"] <= v["records"] for v in stored.values())
    [row] = [ln for ln in proc.stdout.splitlines() if "embedded broker: batches stored" in ln]
    assert f"requests {stored['requests']['batches']:,} ({live:,})" in row
