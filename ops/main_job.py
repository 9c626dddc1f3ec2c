"""``reloop run``: the whole loop on one machine, end to end, through a real broker.

1. start the embedded broker (or use ``--broker``) and create the catalog's topics;
2. train the initial model on the simulator's warm-up traffic, register and announce it;
3. start a worker process (``reloop worker``) and wait until it is ready;
4. drive the rest of the simulator's traffic (requests, clicks, media) through Kafka at a
   fixed offered load, reading the recommendations back to measure latency;
5. print a report (throughput, latency percentiles, AUC / log loss base vs. compensated over
   time with the distribution shift marked) and write it as JSON.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from aiokafka import AIOKafkaConsumer

from ops.broker import EmbeddedBroker, free_port
from ops.kafka import client_kwargs, create_topics, make_producer, topic_name
from ops.replay import fit_initial_model, write_report
from ops.report import print_run_report
from ops.settings import Settings
from ops.simulator import SimConfig, Simulator
from ops.webclient import get_json, wait_ready
from models.registry import ModelRegistry
from processors.media import MediaCore, annotate_log
from streams.codec import decode_event, encode
from streams.events import Interaction, MediaEvent, Recommendation, RecommendationRequest


@dataclass
class MainJobOptions:
    """Bounds of a run: ``events`` requests (default 20000, 20% warm-up), or ``duration_s``
    seconds of live traffic; ``forever`` keeps serving afterwards."""

    events: int | None = None
    duration_s: float | None = None
    forever: bool = False
    report_path: str = "reports/run.json"
    seed: int = 7
    offered_rps: float = 150.0
    warmup: float = 0.2


def _worker_cmd(settings: Settings, broker_url: str, data_dir: str, web_port: int) -> list[str]:
    return [sys.executable, "-m", "ops.cli", "--log-level", "INFO", "worker", "--broker", broker_url,
            "--data-dir", data_dir, "--web-port", str(web_port)]


#: What a run leaves in the data directory (besides reports).
RUN_STATE = ("models", "snapshots", "faust", "worker.log", "broker.log")


def set_aside_previous_run(data_dir: Path) -> Path | None:
    """Move a previous run's state out of ``data_dir`` into ``data_dir/previous-run``
    (replacing the one kept before); returns that directory, or None if there was nothing.

    An embedded-broker run starts from nothing: the topics die with the broker, so a previous
    run's model registry, snapshots and journal (offsets into those topics) cannot be resumed.

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> (d / "snapshots").mkdir()
    >>> set_aside_previous_run(d).name, (d / "previous-run" / "snapshots").is_dir(), set_aside_previous_run(d)
    ('previous-run', True, None)
    """
    present = [name for name in RUN_STATE if (data_dir / name).exists()]
    if not present:
        return None
    kept = data_dir / "previous-run"
    shutil.rmtree(kept, ignore_errors=True)
    kept.mkdir(parents=True)
    for name in present:
        os.replace(data_dir / name, kept / name)
    return kept


async def run_main_job(settings: Settings, opts: MainJobOptions) -> int:
    """Run the main job; returns the process exit code."""
    n_requests = opts.events or 20000
    broker: EmbeddedBroker | None = None
    data = Path(settings.worker.data_dir)
    data.mkdir(parents=True, exist_ok=True)
    if settings.kafka.broker == "embedded":
        kept = set_aside_previous_run(data)
        if kept is not None:
            print(f"[reloop] the previous embedded run's state was moved to {kept} (its topics died with its "
                  "broker)", flush=True)
    elif (data / "models" / "v1").exists():
        print(f"error: {data} already holds the model registry of an earlier `reloop run`; give this run "
              "its own --data-dir (or remove that directory)", file=sys.stderr, flush=True)
        return 2
    if settings.kafka.broker == "embedded":
        broker = await EmbeddedBroker(log_path=str(Path(settings.worker.data_dir) / "broker.log")).astart()
        settings = settings.with_overrides(kafka={"broker": broker.url})
    data_dir = settings.worker.data_dir
    worker: subprocess.Popen[bytes] | None = None
    try:
        await create_topics(settings.kafka)
        # media history raises click odds (media_weight) so the media memory has something to find
        sim = Simulator(SimConfig(seed=opts.seed, media_dim=settings.limits.media_dim, media_weight=1.5))
        n_warm = int(n_requests * opts.warmup)
        print(f"[reloop] broker {settings.kafka.broker}; training the initial model on {n_warm} warm-up requests",
              flush=True)
        warm_log = list(sim.labelled_log(n_warm))
        warm = (annotate_log(MediaCore(settings.media), warm_log) if settings.worker.media_features
                else [e for e in warm_log if isinstance(e, Interaction)])
        fitted = fit_initial_model(warm, settings, version="v1")
        registry = ModelRegistry(Path(data_dir) / "models")
        registry.register(fitted, window=(warm[0].ts, warm[-1].ts))
        producer = make_producer(settings.kafka)
        await producer.start()
        await producer.send_and_wait(topic_name(settings.kafka, "models"),
                                     encode(registry.announcement("v1")), key=b"current")
        web_port = settings.worker.web_port or free_port()
        if web_port == 6066:
            web_port = free_port()
        log_path = Path(data_dir) / "worker.log"
        worker = subprocess.Popen(_worker_cmd(settings, settings.kafka.broker, data_dir, web_port),
                                  stdout=open(log_path, "ab"), stderr=subprocess.STDOUT,
                                  env={**os.environ, "PYTHONUNBUFFERED": "1"})
        print(f"[reloop] worker pid {worker.pid}, status on http://127.0.0.1:{web_port}/status", flush=True)
        await wait_ready(web_port, timeout_s=120.0, proc=worker)
        result = await drive(settings, sim, n_requests, n_warm, opts)
        status = await get_json(web_port, "/status")
        report = {**result, "worker": status, "model_holdout": fitted.metrics,
                  "shift_ts": sim.shift_ts(n_requests), "requests_total": n_requests, "warmup_requests": n_warm}
        write_report(report, opts.report_path)
        print_run_report(report)
        print(f"[reloop] JSON report: {opts.report_path}", flush=True)
        if opts.forever:
            print("[reloop] serving until Ctrl-C", flush=True)
            while worker.poll() is None:
                await asyncio.sleep(1.0)
        await producer.stop()
        return 0
    finally:
        if worker is not None and worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                worker.kill()
        if broker is not None:
            broker.stop()


async def collect_latencies(consumer: AIOKafkaConsumer, sent_at: dict[str, float], sending_done: asyncio.Event,
                            request_id_of: Callable[[bytes], str], latencies: list[float], *,
                            poll_ms: int = 100, drain_s: float = 60.0) -> None:
    """Read recommendations concurrently with a sender; append receive - send seconds.

    ``sent_at`` maps request id -> ``time.perf_counter()`` at send (the sender fills it; answered
    ids are popped, so what is left at the end is unanswered). Returns once ``sending_done`` is
    set and every sent request was answered, or ``drain_s`` after ``sending_done``.
    ``request_id_of`` decodes a recommendation's value to its request id (and may count it).
    """
    deadline: float | None = None
    while True:
        batch = await consumer.getmany(timeout_ms=poll_ms, max_records=10_000)
        now = time.perf_counter()
        for msgs in batch.values():
            for m in msgs:
                t = sent_at.pop(request_id_of(m.value), None)
                if t is not None:
                    latencies.append(now - t)
        if sending_done.is_set():
            deadline = deadline or time.monotonic() + drain_s
            if not sent_at or time.monotonic() > deadline:
                return


async def drive(settings: Settings, sim: Simulator, n_requests: int, n_warm: int,
                opts: MainJobOptions) -> dict[str, Any]:
    """Produce the live part of the simulator's traffic and collect the recommendations."""
    ks = settings.kafka
    names = {t: topic_name(ks, t) for t in ("requests", "interactions", "media", "recommendations", "dlq")}
    producer = make_producer(ks)
    await producer.start()
    consumer = AIOKafkaConsumer(names["recommendations"], **client_kwargs(ks), group_id=None,
                                auto_offset_reset="latest", enable_auto_commit=False)
    await consumer.start()
    await consumer.seek_to_end()
    sent_at: dict[str, float] = {}
    latencies: list[float] = []
    versions: dict[str, int] = {}
    counts = {"requests": 0, "interactions": 0, "media": 0}
    warm_cut: float | None = None
    live: set[str] = set()  # request ids sent; feedback on warm-up requests is not replayed
    stop_at = time.monotonic() + opts.duration_s if opts.duration_s else None

    sending_done = asyncio.Event()

    def on_record(value: bytes) -> str:
        rec = decode_event(value, Recommendation)
        versions[rec.model_version] = versions.get(rec.model_version, 0) + 1
        return rec.request_id

    collector = asyncio.create_task(collect_latencies(consumer, sent_at, sending_done, on_record, latencies))
    t0 = time.perf_counter()
    interval = 1.0 / opts.offered_rps
    seq = 0
    for ev in sim.events(n_requests):
        if isinstance(ev, RecommendationRequest):
            seq += 1
            if seq <= n_warm:
                continue
            if warm_cut is None:
                warm_cut = ev.ts
            if stop_at is not None and time.monotonic() > stop_at:
                break
            target = t0 + (seq - n_warm) * interval
            if (delay := target - time.perf_counter()) > 0:
                await asyncio.sleep(delay)  # pacing the offered load
            sent_at[ev.request_id] = time.perf_counter()
            live.add(ev.request_id)
            await producer.send(names["requests"], encode(ev), key=ev.user_id.encode())
            counts["requests"] += 1
        elif warm_cut is not None and (isinstance(ev, MediaEvent) or ev.request_id in live):
            topic = "media" if isinstance(ev, MediaEvent) else "interactions"
            await producer.send(names[topic], encode(ev), key=ev.user_id.encode())
            counts[topic] += 1
    await producer.flush()
    t_sent = time.perf_counter()
    sending_done.set()
    await collector
    elapsed = time.perf_counter() - t0
    await consumer.stop()
    await producer.stop()
    lat = np.array(latencies) * 1000.0
    pct = {f"p{q}": float(np.percentile(lat, q)) if len(lat) else None for q in (50, 90, 99)}
    return {
        "produced": counts, "recommendations": len(latencies), "unanswered": len(sent_at),
        "send_seconds": t_sent - t0, "elapsed_seconds": elapsed, "offered_rps": opts.offered_rps,
        "answered_rps": len(latencies) / elapsed if elapsed else None, "latency_ms": pct,
        "versions": versions, "live_from_ts": warm_cut,
    }
