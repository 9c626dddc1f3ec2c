"""A ``reloop worker`` given SIGTERM exits within ``kafka.connect_give_up_s``, even when its
broker is gone (Faust's orderly stop waits on the broker forever then), and with its final
snapshots written and exit code 0 when the broker is there.

Real processes only: the worker CLI against its own embedded broker (killed in one case).
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import pytest

from reloop.models.registry import ModelRegistry
from reloop.ops.broker import EmbeddedBroker
from reloop.ops.kafka import create_topics
from reloop.ops.webclient import wait_ready
from tests.conftest import WorkerProcess
from tests.integration.helpers import log_events

pytestmark = [pytest.mark.broker, pytest.mark.slow]


_events = log_events


async def _wait_exit(w: WorkerProcess, timeout_s: float) -> int | None:
    deadline = time.monotonic() + timeout_s
    while w.proc.poll() is None and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return w.proc.poll()


async def _ready_worker(settings, small_model, tmp_path: Path, broker: EmbeddedBroker,
                        give_up_s: float) -> WorkerProcess:
    s = settings.with_overrides(kafka={"broker": broker.url, "group_id": "g-sigterm"})
    await create_topics(s.kafka)
    ModelRegistry(Path(s.worker.data_dir) / "models").register(small_model)
    w = WorkerProcess(s, tmp_path / "worker.log", {"RELOOP_KAFKA__CONNECT_GIVE_UP_S": str(give_up_s)})
    try:
        await wait_ready(w.port, timeout_s=120.0, proc=w.proc)
    except Exception as exc:
        w.stop(signal.SIGKILL)
        raise AssertionError(f"worker not ready: {exc}\n{w.log_text()[-3000:]}") from None
    return w


async def test_sigterm_with_the_broker_gone_exits_within_give_up(settings, small_model, tmp_path: Path) -> None:
    give_up_s = 6.0
    broker = EmbeddedBroker()
    await broker.astart()
    w = await _ready_worker(settings, small_model, tmp_path, broker, give_up_s)
    try:
        broker.stop()  # the broker is gone for good
        t0 = time.monotonic()
        w.proc.send_signal(signal.SIGTERM)
        code = await _wait_exit(w, give_up_s + 30)  # generous: a failure shows how long it took
        elapsed = time.monotonic() - t0
    finally:
        w.stop(signal.SIGKILL)
        broker.stop()
    text = w.log_text()
    assert code is not None, f"worker still alive {elapsed:.1f}s after SIGTERM:\n{text[-3000:]}"
    assert elapsed <= give_up_s, f"exited after {elapsed:.1f}s, more than connect_give_up_s={give_up_s}"
    started = _events(text, "shutdown_started")
    assert len(started) == 1 and started[0]["signal"] == "SIGTERM", text[-3000:]
    # either Faust's orderly stop finished (0), or the bounded stop forced the exit (1)
    assert code == 0 or (code == 1 and _events(text, "shutdown_forced")), (code, text[-3000:])


async def test_sigterm_with_the_broker_up_exits_quickly_with_final_snapshots(settings, small_model,
                                                                            tmp_path: Path) -> None:
    broker = EmbeddedBroker()
    await broker.astart()
    w = await _ready_worker(settings, small_model, tmp_path, broker, 60.0)
    snaps = Path(settings.worker.data_dir) / "snapshots"
    try:
        t0 = time.time()
        w.proc.send_signal(signal.SIGTERM)
        code = await _wait_exit(w, 60)
    finally:
        w.stop(signal.SIGKILL)
        broker.stop()
    text = w.log_text()
    assert code == 0, text[-3000:]
    assert _events(text, "worker_exit") and not _events(text, "shutdown_forced"), text[-3000:]
    for name in ("error_memory.npz", "inputs.npz"):
        assert (snaps / name).stat().st_mtime >= t0 - 1.0, f"{name} not written at stop"

