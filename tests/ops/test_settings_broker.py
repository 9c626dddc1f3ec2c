"""Settings sources and the embedded broker's lifecycle."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import time

import pytest

from reloop.ops.broker import EmbeddedBroker, bootstrap_servers, wait_for_metadata
from reloop.ops.settings import load_settings


def test_settings_layering(tmp_path) -> None:
    cfg = tmp_path / "reloop.toml"
    cfg.write_text(textwrap.dedent("""
        [kafka]
        broker = "kafka://file:9092"
        [error_memory]
        tables = 32
    """))
    s = load_settings(cfg, env={"RELOOP_ERROR_MEMORY__TABLES": "96", "RELOOP_WORKER__WEB_PORT": "7000"})
    assert (s.kafka.broker, s.error_memory.tables, s.worker.web_port) == ("kafka://file:9092", 96, 7000)


def test_settings_reject_wrong_types_and_unknown_fields(tmp_path) -> None:
    with pytest.raises(ValueError, match="web_port"):
        load_settings(env={"RELOOP_WORKER__WEB_PORT": "many"})
    with pytest.raises(ValueError, match="no_such"):
        load_settings(env={"RELOOP_KAFKA__NO_SUCH": "1"})


def test_bootstrap_parsing() -> None:
    assert bootstrap_servers("kafka://a:1,b:2") == "a:1,b:2"
    with pytest.raises(ValueError):
        bootstrap_servers("kafka://nohostport")


async def test_embedded_broker_answers_and_stops() -> None:
    b = await EmbeddedBroker().astart()
    try:
        await wait_for_metadata(b.bootstrap, 5.0)
    finally:
        b.stop()
    with pytest.raises(TimeoutError):
        await wait_for_metadata(b.bootstrap, 1.0)


def test_broker_dies_with_its_parent(tmp_path) -> None:
    """A parent killed with SIGKILL takes its broker with it (PR_SET_PDEATHSIG)."""
    code = ("import sys, time; from reloop.ops.broker import EmbeddedBroker; b = EmbeddedBroker().start(); "
            "print(b.proc.pid, b.port, flush=True); time.sleep(60)")
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    pid, port = map(int, parent.stdout.readline().split())
    parent.kill()
    parent.wait()
    for _ in range(200):  # poll for the condition, up to 10 s
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        with open(f"/proc/{pid}/stat") as fh:
            if fh.read().split()[2] == "Z":  # zombie: dead, waiting to be reaped by init
                break
        time.sleep(0.05)
    else:
        pytest.fail(f"broker pid {pid} outlived its parent")
