"""The worker's live status page: self-contained, and rendering real data in headless Chromium.

The browser test runs a real worker against the session broker, feeds labelled traffic until
``/status`` has at least two metrics windows, then loads ``/`` in Debian's ``chromium``
(headless, ``--dump-dom``) and checks the charts drew those points and the header names the
model version. ``make test`` installs chromium when it is missing (Makefile ``chromium``).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from reloop.models.registry import ModelRegistry
from reloop.ops.kafka import create_topics
from reloop.ops.simulator import SimConfig, Simulator
from reloop.ops.status_page import SVG_NS, status_page
from reloop.ops.webclient import get_json, wait_ready
from reloop.streams.events import Interaction, RecommendationRequest
from tests.conftest import WorkerProcess
from tests.integration.test_broker_pause import close_all_windows
from tests.integration.helpers import consume_until, poll_until, produce

CHROMIUM = "/usr/bin/chromium"
_SVG = re.compile(r'<svg\b[^>]*\bid="(chart-[a-z]+)"[^>]*>', re.S)


def _attr(tag: str, name: str) -> str | None:
    m = re.search(rf'\b{name}="([^"]*)"', tag)
    return m.group(1) if m else None


def test_page_is_self_contained() -> None:
    page = status_page().decode("utf-8")
    assert page.startswith("<!DOCTYPE html>") and "</html>" in page
    # the only URL is the SVG namespace identifier (never fetched)
    assert re.findall(r"\w+://[^\s\"'<>)]*", page) == [SVG_NS]
    assert not re.search(r"<(link|img|iframe|object|embed)\b", page, re.I)
    assert not re.search(r"<script\b[^>]*\bsrc=", page, re.I)
    assert not re.search(r"@import|url\(|//cdn|\bimport\s*\(", page)
    assert "innerHTML" not in page  # data from Kafka is written as text, never parsed as HTML
    fetches = re.findall(r"fetch\(([^,)]*)", page)
    assert fetches == ['"/status"']  # same origin, one endpoint
    charts = _SVG.findall(page)
    assert charts == ["chart-auc", "chart-logloss"]
    assert all(_attr(t, "data-points") == "0" for t in re.findall(r"<svg\b[^>]*>", page))


def _chromium_dump(url: str, profile: Path, budget_ms: int = 8000) -> str:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", "--disable-extensions", "--mute-audio",
           f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}", "--dump-dom", url]
    done = subprocess.run(cmd, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-3000:]
    return done.stdout.decode("utf-8", errors="replace")


@pytest.mark.broker
@pytest.mark.slow
async def test_status_page_renders_live_metrics_in_chromium(kafka_settings, small_model, tmp_path: Path) -> None:
    assert shutil.which(CHROMIUM), f"{CHROMIUM} missing: run `make test` (installs Debian's chromium) " \
                                   "or `apt-get install -y --no-install-recommends chromium`"
    s = kafka_settings.with_overrides(worker={"metrics_window": 20})
    await create_topics(s.kafka)
    ModelRegistry(Path(s.worker.data_dir) / "models").register(small_model)
    w = WorkerProcess(s, tmp_path / "worker.log", {"RELOOP_WORKER__METRICS_WINDOW": "20"})
    try:
        try:
            await wait_ready(w.port, timeout_s=120.0, proc=w.proc)
        except Exception as exc:
            raise AssertionError(f"worker not ready: {exc}\n{w.log_text()[-4000:]}") from None
        sim = Simulator(SimConfig(seed=31, n_users=300, n_items=200))
        events = list(sim.events(30))
        requests = [e for e in events if isinstance(e, RecommendationRequest)]
        await produce(s, "requests", requests)
        await consume_until(s, "recommendations", lambda m: len(m) >= len(requests))
        await produce(s, "interactions", [e for e in events if isinstance(e, Interaction)])
        await close_all_windows(s, requests, seed=32)  # labels resolve: metrics windows fill
        status = await poll_until(lambda: get_json(w.port, "/status"), lambda st: len(st["series"]) >= 2,
                                  timeout_s=90, what="two metrics windows")
        n_points = len(status["series"])
        assert status["model_version"] == "v1"
        assert status["counters"]["events_in"]["requests"] >= len(requests)

        # "/" is ours, not Faust's placeholder index ({"status": "OK"})
        dom = _chromium_dump(f"http://127.0.0.1:{w.port}/", tmp_path / "chromium-profile")
        charts = {m.group(1): m.group(0) for m in _SVG.finditer(dom)}
        assert set(charts) == {"chart-auc", "chart-logloss"}, dom[:2000]
        for name, tag in charts.items():
            drawn = int(_attr(tag, "data-points") or -1)
            assert drawn >= max(2, n_points), f"{name} drew {drawn} points, /status had {n_points}:\n{dom[:3000]}"
        assert re.search(r'id="model-version"[^>]*>v1<', dom), dom[:2000]
        assert dom.count('class="line base"') == 2 and dom.count('class="line compensated"') == 2
        labelled = re.search(r'id="labelled"[^>]*>([\d,]+)<', dom)
        assert labelled and int(labelled.group(1).replace(",", "")) >= 2 * 20
        assert 'class="ok"' in dom  # the last poll succeeded

        ui = _chromium_dump(f"http://127.0.0.1:{w.port}/ui", tmp_path / "chromium-profile-ui", budget_ms=4000)
        assert int(_attr(_SVG.search(ui).group(0), "data-points") or -1) >= 2
        assert w.proc.poll() is None
    finally:
        code = w.stop()
    assert code == 0, w.log_text()[-3000:]
