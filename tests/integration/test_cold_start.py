"""From empty topics and an empty data dir to a worker serving, through the broker; and the
worker's web exposure (bound address, private endpoints, Faust internals).

1. topics are created, a worker starts on an empty registry (alive, not ready);
2. ``reloop train --from-log LOG`` (a subprocess: the real CLI) trains v1 from a recorded
   labelled log, registers it and announces it on ``models``;
3. the running worker loads v1 from the announcement, becomes ready and answers a request
   with a v1 recommendation.

The worker's listening socket is read from /proc/net/tcp{,6} for ``worker.web_bind`` =
127.0.0.1 (default) and 0.0.0.0; every request goes to 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from reloop.models.registry import ModelRegistry
from reloop.ops.cold_start import cold_start
from reloop.ops.kafka import create_topics
from reloop.ops.simulator import SimConfig, Simulator, write_jsonl
from reloop.ops.webclient import get_json, get_text, wait_ready
from reloop.streams.codec import decode_event
from reloop.streams.events import Recommendation, RecommendationRequest
from tests.conftest import SMALL
from tests.conftest import WorkerProcess as _SmallWorker
from tests.integration.helpers import consume_until, poll_until, produce

pytestmark = [pytest.mark.broker, pytest.mark.slow]

TOKEN = "test-token-123"


def listening_addresses(port: int) -> set[str]:
    """IP addresses with a TCP socket in LISTEN state on ``port`` (from /proc/net/tcp, tcp6)."""
    import ipaddress

    out: set[str] = set()
    for name, width in (("tcp", 8), ("tcp6", 32)):
        path = Path("/proc/net") / name
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            local, state = fields[1], fields[3]
            addr_hex, port_hex = local.split(":")
            if state != "0A" or int(port_hex, 16) != port:
                continue
            raw = bytes.fromhex(addr_hex)
            # the kernel prints each 32-bit word in host (little-endian) order
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            assert len(raw) * 2 == width
            out.add(str(ipaddress.ip_address(raw)))
    return out


async def status_of(port: int, path: str, headers: dict[str, str] | None = None) -> int:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as s:
        async with s.get(f"http://127.0.0.1:{port}{path}", headers=headers or {}) as r:
            await r.read()
            return r.status


def small_env(settings) -> dict[str, str]:
    env = {f"RELOOP_{sec.upper()}__{k.upper()}": str(v) for sec, kv in SMALL.items() for k, v in kv.items()}
    return {**os.environ, **env, "RELOOP_KAFKA__TOPIC_PREFIX": settings.kafka.topic_prefix,
            "RELOOP_KAFKA__GROUP_ID": settings.kafka.group_id}


class WorkerProcess(_SmallWorker):
    """The test worker; with ``web_port=0`` the real ``--web-port 0`` (port read from its output)."""

    def __init__(self, settings, log_path: Path, extra_env: dict[str, str] | None = None,
                 web_port: int | None = None) -> None:
        if web_port is None:
            super().__init__(settings, log_path, extra_env)
            return
        self.port, self.log_path = web_port, log_path
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "reloop.ops.cli", "--log-level", "INFO", "worker", "--broker", settings.kafka.broker,
             "--data-dir", settings.worker.data_dir, "--web-port", str(web_port)],
            stdout=open(log_path, "ab"), stderr=subprocess.STDOUT, env={**small_env(settings), **(extra_env or {})})


async def _printed_web_line(w: WorkerProcess) -> str | None:
    if w.proc.poll() is not None:
        raise AssertionError("worker exited:\n" + w.log_text()[-4000:])
    return next((ln for ln in w.log_text().splitlines() if ln.startswith("reloop worker: web on ")), None)


async def wait_alive(w: WorkerProcess) -> None:
    await poll_until(lambda: _health(w), lambda ok: ok, timeout_s=120.0, what="worker /health")


async def _health(w: WorkerProcess) -> bool:
    if w.proc.poll() is not None:
        raise AssertionError("worker exited:\n" + w.log_text()[-4000:])
    try:
        return (await get_json(w.port, "/health", timeout_s=2.0)).get("status") == "ok"
    except (aiohttp.ClientError, OSError, TimeoutError):
        return False


async def test_empty_cluster_to_serving_and_web_exposure(kafka_settings, tmp_path):
    s = kafka_settings
    await create_topics(s.kafka)
    assert ModelRegistry(Path(s.worker.data_dir) / "models").current() is None
    log = tmp_path / "recorded.jsonl"  # what `reloop simulate --labelled` writes
    write_jsonl(Simulator(SimConfig(seed=5, media_dim=s.limits.media_dim)).labelled_log(200), log)

    w = WorkerProcess(s, tmp_path / "w1.log", {"RELOOP_WORKER__WEB_TOKEN": TOKEN})
    try:
        await wait_alive(w)
        assert listening_addresses(w.port) == {"127.0.0.1"}
        assert await status_of(w.port, "/ready") == 503  # alive, no model yet

        boot = subprocess.run([sys.executable, "-m", "reloop.ops.cli", "train", "--from-log", str(log), "--broker",
                               s.kafka.broker, "--data-dir", s.worker.data_dir],
                              capture_output=True, text=True, env=small_env(s), timeout=600)
        assert boot.returncode == 0, boot.stderr[-3000:]
        assert "trained v1" in boot.stdout and "announced on" in boot.stdout, boot.stdout
        assert "Traceback" not in boot.stderr
        assert ModelRegistry(Path(s.worker.data_dir) / "models").current() == "v1"

        await wait_ready(w.port, timeout_s=120.0, proc=w.proc)  # loaded from the announcement
        sim = Simulator(SimConfig(seed=9, n_users=50, n_items=200))
        reqs = [e for e in sim.events(20) if isinstance(e, RecommendationRequest)][:3]
        await produce(s, "requests", reqs)
        msgs = await consume_until(s, "recommendations", lambda m: len(m) >= len(reqs), timeout_s=120.0)
        recs = [decode_event(m.value, Recommendation) for m in msgs]
        assert {r.request_id for r in recs} == {r.request_id for r in reqs}
        assert {r.model_version for r in recs} == {"v1"}

        # probes and metrics answer on loopback; private endpoints want the token; Faust's are off
        assert (await get_json(w.port, "/ready"))["model_version"] == "v1"
        assert "reloop_events_in" in await get_text(w.port, "/metrics")
        user = reqs[0].user_id
        assert await status_of(w.port, f"/memory/{user}") == 403
        assert await status_of(w.port, f"/memory/{user}", {"Authorization": "Bearer wrong-token"}) == 403
        assert await status_of(w.port, f"/memory/{user}", {"Authorization": f"Bearer {TOKEN}"}) == 200
        assert await status_of(w.port, "/state") == 403
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{w.port}/state",
                                   headers={"Authorization": f"Bearer {TOKEN}"}) as r:
                st = await r.json()
        assert len(st["error_memory_digest"]) == 64
        assert await status_of(w.port, "/router/") == 404
        assert await status_of(w.port, "/table/") == 404
    finally:
        assert w.stop() == 0, w.log_tail()

    # a second run of the bootstrap is a no-op (a retried Job), and announces the current version
    again = await asyncio.to_thread(cold_start, s, str(log))
    assert (again.version, again.trained, again.announced_on) == ("v1", False, f"{s.kafka.topic_prefix}models")

    # every interface (what infra/ sets), port 0: the worker prints the port it picked; still
    # answered on 127.0.0.1; Faust's internals when enabled
    w2 = WorkerProcess(s, tmp_path / "w2.log", {"RELOOP_WORKER__WEB_BIND": "0.0.0.0",
                                                "RELOOP_WORKER__WEB_FAUST_INTERNALS": "true"}, web_port=0)
    try:
        line = await poll_until(lambda: _printed_web_line(w2), lambda ln: ln is not None, timeout_s=120.0,
                                what="the worker's 'web on' line")
        w2.port = int(re.search(r"web on 0\.0\.0\.0:(\d+), status page http://127\.0\.0\.1:\1/", line).group(1))
        await wait_ready(w2.port, timeout_s=120.0, proc=w2.proc)
        assert listening_addresses(w2.port) == {"0.0.0.0"}
        assert (await get_json(w2.port, "/health"))["status"] == "ok"
        assert "reloop_" in await get_text(w2.port, "/metrics")
        assert await status_of(w2.port, "/router/") == 200
        assert await status_of(w2.port, f"/memory/{user}") == 200  # no token: loopback clients only
    finally:
        assert w2.stop() == 0, w2.log_tail()
