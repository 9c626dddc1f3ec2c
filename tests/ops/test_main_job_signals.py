"""Ctrl-C stops ``reloop run``: driver, worker (and its schema-cache child), trainer and broker
within 10 s, final snapshots written, exit code 130, a one-line note, no process left behind
(no zombie broker).

Real processes: ``python -m reloop.ops.cli run`` in its own session (so the test can signal its
whole process group as a terminal does), with its embedded broker, worker and trainer.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests.integration.helpers import log_events

pytestmark = [pytest.mark.broker, pytest.mark.slow]

SMALL_ENV = {"RELOOP_FEATURES__N_BUCKETS": "16384", "RELOOP_TRAIN__EPOCHS": "1",
             "RELOOP_ERROR_MEMORY__TABLES": "8",
             "RELOOP_ERROR_MEMORY__BITS": "12", "RELOOP_WORKER__METRICS_WINDOW": "200"}


def _wait_for(cond, timeout_s: float, what: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert proc.poll() is None, f"reloop run exited ({proc.returncode}) before {what}"
        assert time.monotonic() < deadline, f"no {what} within {timeout_s}s"
        time.sleep(0.1)


def _log_events(path: Path, name: str) -> list[dict]:
    return log_events(path.read_text(errors="replace"), name) if path.exists() else []


def _gone(pid: int) -> bool:
    """True if ``pid`` no longer exists (a zombie still exists: it counts as not gone)."""
    return not Path(f"/proc/{pid}").exists()  # alive, or a zombie nobody reaped, is still there


@pytest.mark.parametrize("target", ["group", "driver"])
def test_ctrl_c_stops_everything_within_10_s(tmp_path: Path, target: str) -> None:
    data = tmp_path / "var"
    out_path = tmp_path / "out.txt"
    env = {**os.environ, **SMALL_ENV, "PYTHONUNBUFFERED": "1"}
    with open(out_path, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "reloop.ops.cli", "run", "--events", "4000", "--web-port", "0",
                                 "--data-dir", str(data), "--report", str(tmp_path / "run.json")],
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True)
    try:
        # interrupt during the traffic: the worker has its partitions and has scored a batch
        _wait_for(lambda: _log_events(data / "worker.log", "inputs_assigned"), 240, "worker ready", proc)
        _wait_for(lambda: (data / "snapshots" / "inputs.npz").exists() or
                  _log_events(data / "worker.log", "model_swapped"), 60, "traffic", proc)
        _wait_for(lambda: _log_events(data / "worker.log", "schema_child_started"), 60, "distilling", proc)
        text = out_path.read_text()
        pids = {"broker": _log_events(data / "run.log", "broker_starting")[0]["pid"]}
        line = next(ln for ln in text.splitlines() if "worker pid" in ln)
        words = line.replace(";", " ").split()
        pids["worker"] = int(words[words.index("worker") + 2])
        pids["trainer"] = int(words[words.index("trainer") + 2])
        pids["schema-cache child"] = _log_events(data / "worker.log", "schema_child_started")[0]["pid"]
        t0 = time.time()
        if target == "group":
            os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
        else:
            proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(60)  # generous; the 10 s requirement is asserted below
        except subprocess.TimeoutExpired:
            code = None
        elapsed = time.time() - t0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    text = out_path.read_text()
    assert code == 130, f"exit code {code} after {elapsed:.1f}s:\n{text[-3000:]}"
    assert elapsed <= 10.0, f"stopped in {elapsed:.1f}s:\n{text[-3000:]}"
    notes = [ln for ln in text.splitlines() if ln.startswith("[reloop] interrupted by SIGINT")]
    assert len(notes) == 1 and "worker (exit 0)" in notes[0] and "trainer (exit 0)" in notes[0], text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    # a healthy start: no log line on the console (library noise and warnings go to run.log)
    assert not [ln for ln in text.splitlines() if ln.startswith("{")], text[-3000:]
    for name, pid in pids.items():
        assert _gone(pid), f"{name} (pid {pid}) still there after the run exited"
    for name in ("error_memory.npz", "inputs.npz", "schema_cache.npz"):
        assert (data / "snapshots" / name).stat().st_mtime >= t0 - 1.0, f"final {name} not written"
    assert _log_events(data / "worker.log", "worker_exit")[0]["code"] == 0
    assert _log_events(data / "trainer.log", "trainer_stopped")
