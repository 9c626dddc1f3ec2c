"""``reloop run``: the whole loop on one machine, end to end, through a real broker.

1. start the embedded broker (or use ``--broker``) and create the catalog's topics;
2. train the initial model on the simulator's warm-up traffic, register and announce it;
3. start a worker process (``reloop worker``) and the trainer (``reloop train``), and wait
   until the worker is ready;
4. drive the rest of the simulator's traffic (requests, clicks, media) through Kafka at a
   fixed offered load, reading the recommendations back to measure latency and to see which
   model version answered; after the shift (60% of the traffic) the trainer retrains (drift
   alarm, or its event-time schedule as a backstop) and the worker hot-swaps the new version;
5. print a report (latency, versions per window, alerts, quality before and after the swap,
   media memory, events/s, and on the embedded broker the batches it stored on the latency
   path) and write it as JSON (:mod:`reloop.ops.report`).

Ctrl-C (SIGINT, to the driver alone or to its whole process group) or SIGTERM stops the
traffic, then the worker and the trainer (their final snapshots written), then the broker,
and exits with 128 + the signal number (130 for Ctrl-C). Children run in their own process
groups, so a terminal's Ctrl-C reaches only this process, which stops them in that order.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reloop.ops.broker import EmbeddedBroker, free_port, stored_batches
from reloop.ops.driver import collect_latencies, drive, read_alerts, wait_replica_caught_up  # noqa: F401 - collect_latencies: bench/throughput.py
from reloop.ops.kafka import create_topics, make_producer, topic_name
from reloop.ops.logging_setup import JsonFormatter
from reloop.ops.replay import fit_initial_model, write_report
from reloop.ops.report import print_run_report, run_summary
from reloop.ops.settings import Settings
from reloop.ops.simulator import SimConfig, Simulator
from reloop.ops.webclient import get_json, get_text, wait_ready
from reloop.ops.children import in_daemon_thread, reloop_cmd, spawn_child, stop_children
from reloop.models.registry import ModelRegistry
from reloop.processors.media import MediaCore, annotate_log
from reloop.processors.trainer import TrainerConfig
from reloop.streams.codec import encode
from reloop.streams.events import Interaction

log = logging.getLogger("reloop.main_job")

#: The trainer's CPU priority (``nice``). 0: at 10 on a loaded 2-core machine the trainer fell
#: so far behind the ``errors`` topic that its post-shift retrain began 10 s before the traffic
#: ended and was abandoned (measured); serving latency pays for the retrain instead.
TRAINER_NICENESS = 0

#: The latency path's topics, whose batches the report counts on the embedded broker: each of
#: its fetches lists every batch stored in the partition, so latency grows with them.
STORED_TOPICS = ("requests", "recommendations", "interactions", "media")

#: Seconds the children get to stop after Ctrl-C before they are killed (the broker goes after).
STOP_CHILDREN_S = 7.0


@dataclass
class MainJobOptions:
    """Bounds of a run: ``events`` requests (default 20000, 20% warm-up), or ``duration_s``
    seconds of live traffic; ``forever`` keeps serving afterwards; ``trainer`` off runs
    without the trainer (v1 serves throughout)."""

    events: int | None = None
    duration_s: float | None = None
    forever: bool = False
    report_path: str = "reports/run.json"
    seed: int = 7
    offered_rps: float = 150.0
    warmup: float = 0.2
    trainer: bool = True


#: What a run leaves in the data directory (besides reports).
RUN_STATE = ("models", "snapshots", "faust", "window", "worker.log", "trainer.log", "broker.log", "run.log")


def set_aside_previous_run(data_dir: Path) -> Path | None:
    """Move a previous run's state out of ``data_dir`` into ``data_dir/previous-run``
    (replacing the one kept before); returns that directory, or None if there was nothing.

    An embedded-broker run starts from nothing: the topics die with the broker, so a previous
    run's model registry, snapshots, journal and training window (offsets into those topics)
    cannot be resumed.

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


#: The main job's trainer settings, used for every ``[trainer]`` field still at its default.
#: A default run labels ~260k predictions, ~100k of them after the shift, and those arrive in
#: the last ~35 s of traffic (a label waits for its 60 s attribution window, 20 s of wall time
#: at the default rates): no count schedule (the default, every 20k samples, would retrain every
#: ~7 s), a small window so a retrain takes seconds on a loaded machine, and a drift retrain
#: once half of the window is past the alarm.
RUN_TRAINER = {"window_max_samples": 10_000, "retrain_every_samples": 0, "min_samples_between": 10_000,
               "drift_settle_samples": 5_000}

#: Event-time seconds after the shift at which the backstop schedule retrains (the window of
#: 10k samples then spans ~10 s of event time, all after the shift).
RETRAIN_AFTER_SHIFT_S = 15.0


def run_settings(settings: Settings, sim: Simulator, n_requests: int, n_warm: int) -> Settings:
    """``settings`` with the main job's trainer choices (:data:`RUN_TRAINER`) for fields left at
    their defaults, plus an event-time schedule as the backstop of the drift detector: one
    scheduled retrain :data:`RETRAIN_AFTER_SHIFT_S` event-seconds after the shift
    (``retrain_every_s`` counted from the first labelled prediction), none before it. In the
    runs measured the drift detector did not alarm within the run; the schedule did the work."""
    defaults, current = TrainerConfig(), settings.trainer
    over: dict[str, Any] = {k: v for k, v in RUN_TRAINER.items() if getattr(current, k) == getattr(defaults, k)}
    shift = sim.shift_ts(n_requests)
    if shift is not None and current.retrain_every_s == defaults.retrain_every_s:
        over["retrain_every_s"] = round(shift - sim._request_ts(n_warm) + RETRAIN_AFTER_SHIFT_S, 3)  # noqa: SLF001
    return settings.with_overrides(trainer=over) if over else settings


def _route_logs(data_dir: Path) -> list[logging.Handler]:
    """Console: ReLoop's own records only, at the level asked for (``--log-level``, default
    WARNING); ``<data_dir>/run.log``: every record at INFO and above, libraries included.
    Returns the handlers to restore afterwards."""
    root = logging.getLogger()
    before = list(root.handlers)
    console_level = root.level
    for h in before:
        h.setLevel(max(h.level, console_level))
        h.addFilter(lambda r: r.name.startswith("reloop"))
    file_handler = logging.FileHandler(data_dir / "run.log")
    file_handler.setFormatter(JsonFormatter())
    file_handler.setLevel(logging.INFO)
    root.addHandler(file_handler)
    root.setLevel(min(console_level, logging.INFO))
    for noisy in ("aiokafka", "kafka", "faust", "mode", "numba", "torch"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return before


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@dataclass
class _Run:
    """What a run has started, so a stop (normal, error or Ctrl-C) can stop it in order."""

    broker: EmbeddedBroker | None = None
    children: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    async def shutdown(self, timeout_s: float = STOP_CHILDREN_S) -> dict[str, int | None]:
        """Worker and trainer first (SIGTERM; they write their final snapshots while the broker
        still answers; SIGKILL after ``timeout_s``), then the broker. Returns the children's
        exit codes."""
        codes = await stop_children(self.children, timeout_s) if self.children else {}
        if self.broker is not None:
            self.broker.stop(timeout_s=2.0)
        return codes


async def run_main_job(settings: Settings, opts: MainJobOptions) -> int:
    """Run the main job; returns the process exit code. Interrupted (SIGINT/SIGTERM), it stops
    everything, prints a one-line note and ends the process with ``os._exit(128 + signal)``."""
    loop = asyncio.get_running_loop()
    run = _Run()
    job = asyncio.create_task(_job(settings, opts, run))
    caught: list[int] = []

    t_signal = 0.0

    def on_signal(sig: int) -> None:
        nonlocal t_signal
        if not caught:
            caught.append(sig)
            t_signal = time.monotonic()
            job.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        code = await job
    except asyncio.CancelledError:
        if not caught:
            raise
        code = 128 + caught[0]
    finally:
        # Ctrl-C has a 10 s budget; a run that ended by itself gives its children longer
        codes = await run.shutdown(STOP_CHILDREN_S if caught else STOP_CHILDREN_S * 4)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    if caught:
        stopped = ", ".join(f"{k} (exit {v})" for k, v in codes.items()) or "nothing started yet"
        print(f"[reloop] interrupted by {signal.Signals(caught[0]).name}: stopped {stopped}"
              f"{' and the broker' if run.broker else ''} in {time.monotonic() - t_signal:.1f} s", flush=True)
        # Everything is stopped and written; skip the interpreter's teardown of torch & co
        # (seconds, measured), so Ctrl-C ends the run within 10 s.
        logging.shutdown()
        sys.stderr.flush()
        os._exit(code)
    return code


async def _job(settings: Settings, opts: MainJobOptions, run: _Run) -> int:
    n_requests = opts.events or 20000
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
    web_port = settings.worker.web_port or free_port()
    if not _port_free(web_port):
        print(f"error: port {web_port} (worker.web_port) is in use; pass --web-port N, or --web-port 0 for any "
              "free port", file=sys.stderr, flush=True)
        return 2
    saved_handlers = _route_logs(data)
    try:
        return await _loop(settings, opts, run, data, web_port, n_requests)
    finally:
        root = logging.getLogger()
        for h in root.handlers:
            if h not in saved_handlers:
                h.close()
        root.handlers[:] = saved_handlers


async def _loop(settings: Settings, opts: MainJobOptions, run: _Run, data: Path, web_port: int,
                n_requests: int) -> int:
    if settings.kafka.broker == "embedded":
        run.broker = EmbeddedBroker(log_path=str(data / "broker.log"), own_process_group=True)
        await run.broker.astart()
        settings = settings.with_overrides(kafka={"broker": run.broker.url})
    settings = settings.with_overrides(worker={"web_port": web_port})
    await create_topics(settings.kafka)
    # media history raises click odds (media_weight) so the media memory has something to find
    sim = Simulator(SimConfig(seed=opts.seed, media_dim=settings.limits.media_dim, media_weight=1.5))
    n_warm = int(n_requests * opts.warmup)
    settings = run_settings(settings, sim, n_requests, n_warm)
    print(f"[reloop] broker {settings.kafka.broker}; training the initial model on {n_warm} warm-up requests",
          flush=True)
    warm_log = list(sim.labelled_log(n_warm))
    warm = (annotate_log(MediaCore(settings.media), warm_log) if settings.worker.media_features
            else [e for e in warm_log if isinstance(e, Interaction)])
    fitted = await in_daemon_thread(lambda: fit_initial_model(warm, settings, version="v1"))
    registry = ModelRegistry(data / "models")
    registry.register(fitted, window=(warm[0].ts, warm[-1].ts))
    producer = make_producer(settings.kafka)
    await producer.start()
    try:
        await producer.send_and_wait(topic_name(settings.kafka, "models"), encode(registry.announcement("v1")),
                                     key=b"current")
    finally:
        await producer.stop()
    worker = spawn_child(reloop_cmd("worker", settings, "--web-port", str(web_port)), data / "worker.log", settings)
    run.children["worker"] = worker
    if opts.trainer:
        run.children["trainer"] = spawn_child(reloop_cmd("train", settings, "--no-progress"),
                                              data / "trainer.log", settings, niceness=TRAINER_NICENESS)
    print(f"[reloop] worker pid {worker.pid}{' and trainer pid ' + str(run.children['trainer'].pid) if opts.trainer else ''}"
          f"; status page http://127.0.0.1:{web_port}/ (logs in {data})", flush=True)
    await wait_ready(web_port, timeout_s=120.0, proc=worker)
    result = await while_alive(worker, drive(settings, sim, n_requests, n_warm, opts.offered_rps, opts.duration_s))
    if result is None:
        print(f"[reloop] the worker died (exit code {worker.returncode}) while traffic was running; "
              f"see {data / 'worker.log'}", flush=True)
        return 1

    async def applied() -> Any:
        return (await get_json(web_port, "/status")).get("errors_applied") or {}

    result["replica_caught_up"] = await wait_replica_caught_up(settings.kafka, applied)
    status = await get_json(web_port, "/status")
    metrics_text = await get_text(web_port, "/metrics")
    alerts, updates = await read_alerts(settings.kafka)
    if run.broker is not None:  # what the embedded broker's fetches list (docs/operations.md, Latency)
        stored = await stored_batches(run.broker.bootstrap, [topic_name(settings.kafka, t) for t in STORED_TOPICS])
        result["broker_stored"] = {t: stored[topic_name(settings.kafka, t)] for t in STORED_TOPICS}
    shift_ts = sim.shift_ts(n_requests)
    report = {**result, "worker": status, "model_holdout": fitted.metrics, "shift_ts": shift_ts,
              "requests_total": n_requests, "warmup_requests": n_warm,
              "attribution_window_s": settings.worker.attribution_window_s,
              "trainer": {"enabled": opts.trainer, **{k: getattr(settings.trainer, k) for k in
                          ("window_max_samples", "retrain_every_samples", "retrain_every_s", "drift_detector",
                           "drift_settle_samples", "min_samples_between")}},
              "models": [_version_row(registry, v) for v in registry.versions()]}
    report.update(run_summary(report, alerts, updates, metrics_text))
    write_report(report, opts.report_path)
    print_run_report(report)
    print(f"[reloop] JSON report: {opts.report_path}", flush=True)
    if opts.forever:
        print(f"[reloop] serving until Ctrl-C; status page http://127.0.0.1:{web_port}/", flush=True)
        while worker.poll() is None:
            await asyncio.sleep(0.5)
        print(f"[reloop] the worker exited with code {worker.returncode}; see {data / 'worker.log'}", flush=True)
        return 1
    return 0


async def while_alive(proc: Any, work: Any, poll_s: float = 0.5) -> Any:
    """Await ``work`` unless ``proc`` exits first: then cancel it and return None."""
    task = asyncio.ensure_future(work)
    while not task.done():
        if proc.poll() is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            return None
        await asyncio.wait({task}, timeout=poll_s)
    return task.result()


def _version_row(registry: ModelRegistry, version: str) -> dict[str, Any]:
    info = registry.info(version)
    m = info.metrics
    return {"version": version, "parent": info.parent_version, "trigger": m.get("trigger", "initial"),
            "created_ts": info.created_ts, "holdout_auc": m.get("check_candidate_auc", m.get("holdout_auc")),
            "serving_auc_on_holdout": m.get("check_serving_auc")}
