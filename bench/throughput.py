"""Throughput of one worker's feedback and scoring paths next to raw aiokafka and a plain
Faust agent reading the same topics in the same run, plus end-to-end latency at a fixed load.

    python bench/throughput.py --json reports/throughput.json [--trials 3] [--events 40000]
        [--requests 1500] [--candidates 100] [--rate 100] [--latency-candidates 20] [--duration 20]

Per trial, on fresh topics of the embedded broker (unique prefix per path and trial):

- **feedback path**: ``--events`` logged interactions, each as a one-candidate request plus
  its interaction (2 records), pre-filled into ``requests`` + ``interactions``. One
  ``reloop worker`` process scores each request, joins its interaction, produces the
  recommendation, the error record (JSON, ``errors``) and the binary error-memory batch
  (``memory``), reads ``memory`` back into its error memory and ``errors`` into its schema
  cache. Timed from its first labelled prediction until all error records are applied
  (``/status``: ``summary.labelled``, memory rows and ``errors_applied``), so the group
  join (~3 s on this broker) is excluded; events/s = records (requests + interactions) after
  the pairs already labelled at the first poll (conservative: some of their error records are
  applied inside the timed span).
- **scoring path**: ``--requests`` requests with ``--candidates`` candidates pre-filled into
  ``requests``; the worker scores (onnxruntime, error memory, media features), ranks and
  produces one recommendation each. Timed from the first recommendation read back to the
  last (a concurrent consumer counts them, without decoding).
- **raw**: one aiokafka consumer (manual assignment, ``getmany``) + msgspec decode and
  validation (``decode_event`` with the deployment limits, as the worker does) of every record of the same
  topics; the ceiling for any consumer on this machine.
- **floor**: the feedback path's Kafka I/O alone (``bench/feedback_floor.py``): read both
  inputs, write a recommendation and an error record per pair, read the error records back,
  with decoding/encoding but no processing, in this process; the ceiling for this path on
  aiokafka in one process (``worker / floor`` is what the processing costs); and the same
  without reading the error records back (the I/O of a design where a worker applied its own
  error records locally); and the current design's I/O without the schema cache: error records
  still written as JSON, memory batches written too and read back instead of the JSON.
- **worker without the schema cache** (``worker.schema_cache = false``): the same run by a
  worker that reads no JSON back (what every worker but the distilling one would do).
- **faust**: a minimal ``faust.App`` (memory store, 6 s session/rebalance timeouts as the
  worker's) in its own process (``bench/faust_take.py``), one agent per topic doing ``async
  for batch in stream.take(5000, within=0.5)`` + the same decode of every value.
- **latency**: a third worker, on empty topics, gets ``--rate`` requests/s with
  ``--latency-candidates`` candidates for ``--duration`` s (the later part of the same
  simulated traffic; no interactions, so attribution windows close as event time advances,
  as they would in steady state); latency = time from send until a concurrent consumer reads
  the recommendation back (as ``reloop run`` measures it).

Faust is timed from the arrival of its first value to its last decode; raw from its first
fetch (it joins no group; a pre-filled topic may fit in one of its batches). The figures are
medians over ``--trials``; quote the ratios (the 2-core machine is shared). Every rate is
also given per CPU-second of the consuming process (user + system time of the worker or the
Faust process, of this process for raw; the broker's excluded): steadier than wall-clock
events/s when other jobs compete for the cores. The latency reader polls with
``fetch_max_wait_ms=10`` so that it does not add a fetch wait of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, AsyncIterator

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import msgspec  # noqa: E402
import numpy as np  # noqa: E402
from aiokafka import AIOKafkaConsumer, TopicPartition  # noqa: E402

from bench.feedback_floor import io_floor  # noqa: E402
from bench.latency_floor import cpu_seconds  # noqa: E402
from reloop.ops.driver import traffic_producers  # noqa: E402
from reloop.ops.main_job import collect_latencies  # noqa: E402
from reloop.ops.kafka import client_kwargs, create_topics, make_producer, topic_name  # noqa: E402
from reloop.ops.settings import Settings  # noqa: E402
from reloop.streams.codec import decode_event, encode  # noqa: E402
from reloop.streams.events import Interaction, MediaEvent, RecommendationRequest  # noqa: E402

KINDS: dict[str, type] = {"requests": RecommendationRequest, "interactions": Interaction}
TAKE = 5000  # records per getmany of the raw baseline (the worker's fetch_max_records)


class _RequestId(msgspec.Struct):
    request_id: str


_rid_decoder = msgspec.json.Decoder(_RequestId)


# ---------------------------------------------------------------------------- plumbing

async def produce(settings: Settings, records: list[tuple[str, bytes, bytes]]) -> None:
    """Produce ``(logical topic, value, key)`` records and wait for all acks."""
    p = make_producer(settings.kafka)
    await p.start()
    try:
        futs = [await p.send(topic_name(settings.kafka, t), v, key=k) for t, v, k in records]
        await asyncio.gather(*futs)
    finally:
        await p.stop()


async def assigned_consumer(settings: Settings, topics: list[str], **kw: Any) -> AIOKafkaConsumer:
    """A group-less consumer manually assigned every partition of the logical ``topics``."""
    c = AIOKafkaConsumer(**client_kwargs(settings.kafka), group_id=None, enable_auto_commit=False,
                         max_partition_fetch_bytes=8 << 20, fetch_max_bytes=32 << 20, **kw)
    await c.start()
    tps = []
    for t in topics:
        name = topic_name(settings.kafka, t)
        if not c.partitions_for_topic(name):
            await c._client.force_metadata_update()  # noqa: SLF001
        tps += [TopicPartition(name, p) for p in sorted(c.partitions_for_topic(name) or {0})]
    c.assign(tps)
    return c


def rate(n_total: int, n_first: int, seconds: float) -> float:
    """Records/s after the first batch (``n_first`` records at t=0, the rest in ``seconds``)."""
    return (n_total - n_first) / seconds if seconds > 0 else float("nan")


# ---------------------------------------------------------------------------- baselines

async def raw_consume(settings: Settings, topics: list[str], expected: int) -> tuple[float, float]:
    """(records/s, records per CPU-second) of one aiokafka consumer reading and decoding
    ``expected`` records."""
    c = await assigned_consumer(settings, topics)
    await c.seek_to_beginning()
    kinds = {topic_name(settings.kafka, t): KINDS[t] for t in topics}
    limits = settings.limits
    n = 0
    t0, c0 = time.perf_counter(), time.process_time()  # from the first fetch (no group join here)
    try:
        while n < expected:
            batch = await c.getmany(timeout_ms=500, max_records=TAKE)
            for tp, msgs in batch.items():
                kind = kinds[tp.topic]
                for m in msgs:
                    decode_event(m.value, kind, limits)
                n += len(msgs)
        return n / (time.perf_counter() - t0), n / (time.process_time() - c0)
    finally:
        await c.stop()


async def faust_consume(settings: Settings, topics: list[str], expected: int, tmp: Path,
                        tag: str) -> tuple[float, float]:
    """(records/s, records per CPU-second) of the Faust baseline (a child process) over ``topics``."""
    out = tmp / f"faust-{tag}.json"
    spec = ",".join(f"{topic_name(settings.kafka, t)}={t}" for t in topics)
    cmd = [sys.executable, str(Path(__file__).with_name("faust_take.py")), "--topics", spec,
           "--broker", settings.kafka.broker, "--expect", str(expected), "--out", str(out), "--group", f"faust-{tag}"]
    proc = subprocess.Popen(cmd, stdout=open(tmp / f"faust-{tag}.log", "ab"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 600
        while not out.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"Faust baseline failed (see {tmp / f'faust-{tag}.log'})")
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.05)  # the file is written in one call; let it land
        res = json.loads(out.read_text())
        return float(res["events_per_s"]), float(res["events_per_cpu_s"])
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ---------------------------------------------------------------------------- the worker

@contextlib.asynccontextmanager
async def running_worker(settings: Settings, fitted: Any, tmp: Path) -> AsyncIterator[Any]:
    """A ``reloop worker`` process serving ``fitted`` on ``settings``' topics, once ready."""
    from reloop.models.registry import ModelRegistry
    from reloop.ops.webclient import wait_ready
    from tests.conftest import WorkerProcess  # the subprocess wrapper the tests use

    ModelRegistry(Path(settings.worker.data_dir) / "models").register(fitted)
    env = {} if settings.worker.schema_cache else {"RELOOP_WORKER__SCHEMA_CACHE": "false"}
    w = WorkerProcess(settings, tmp / f"worker-{settings.kafka.group_id}.log", env)
    try:
        await wait_ready(w.port, timeout_s=120.0, proc=w.proc)
        yield w
    finally:
        w.stop()


async def feedback_run(settings: Settings, fitted: Any, n: int, tmp: Path) -> tuple[float, float]:
    """(records/s, records per CPU-second) of the worker (requests + interactions) until all n
    error records are applied to its memory (``memory`` rows) and, when it runs the schema
    cache, read back from ``errors``."""
    from reloop.ops.webclient import get_json

    async with running_worker(settings, fitted, tmp) as w:
        t_first, c_first, first, done = None, 0.0, 0, 0
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            st = await get_json(w.port, "/status")
            now = time.perf_counter()
            rows = st["counters"]["events_in"].get("memory", 0)
            done = min(rows, sum(st["errors_applied"].values())) if settings.worker.schema_cache else rows
            if t_first is None and st["summary"]["labelled"] > 0:  # the pairs labelled so far
                t_first, c_first, first = now, cpu_seconds(w.proc.pid), st["summary"]["labelled"]
            if done >= n:
                return (rate(2 * n, 2 * first, now - t_first),  # type: ignore[operator]
                        rate(2 * n, 2 * first, cpu_seconds(w.proc.pid) - c_first))
            await asyncio.sleep(0.05)
        raise RuntimeError(f"worker applied only {done} of {n} error records")


async def scoring_run(settings: Settings, fitted: Any, n: int, tmp: Path) -> tuple[float, float]:
    """(requests/s, requests per CPU-second) of the worker over a pre-filled backlog of n requests."""
    c = await assigned_consumer(settings, ["recommendations"], fetch_max_wait_ms=10)
    await c.seek_to_beginning()
    try:
        async with running_worker(settings, fitted, tmp) as w:
            got, got_first, t_first, c_first = 0, 0, None, 0.0
            deadline = time.monotonic() + 600
            while got < n and time.monotonic() < deadline:
                batch = await c.getmany(timeout_ms=100, max_records=10_000)
                got += sum(len(m) for m in batch.values())
                if t_first is None and got:
                    t_first, c_first, got_first = time.perf_counter(), cpu_seconds(w.proc.pid), got
            if got < n:
                raise RuntimeError(f"worker answered only {got} of {n} requests")
            return (rate(got, got_first, time.perf_counter() - t_first),  # type: ignore[operator]
                    rate(got, got_first, cpu_seconds(w.proc.pid) - c_first))
    finally:
        await c.stop()


async def latency_run(settings: Settings, fitted: Any, live: list[RecommendationRequest], rps: float,
                      tmp: Path, feedback: list[Any] | None = None) -> dict[str, Any]:
    """Latency of a fresh worker (no backlog) offered ``live`` at ``rps`` requests/s, with the
    simulator's clicks and media events for them (``feedback``) sent alongside (mixed load);
    adds the worker's per-stage seconds (``reloop_stage_seconds``) over the run."""
    from reloop.ops.webclient import get_text

    c = await assigned_consumer(settings, ["recommendations"], fetch_max_wait_ms=10)
    await c.seek_to_beginning()  # fresh topics: nothing before our requests
    try:
        async with running_worker(settings, fitted, tmp) as w:
            res: dict[str, Any] = dict(await latency(settings, c, live, rps, feedback or []))
            res["stages"] = stage_breakdown(await get_text(w.port, "/metrics"))
            return res
    finally:
        await c.stop()


def stage_breakdown(prom: str) -> dict[str, dict[str, float]]:
    """Per stage of ``reloop_stage_seconds``: batches, mean ms and an upper bound of the p99
    (the histogram bucket it falls in), from a Prometheus text scrape."""
    import re

    counts = {m: float(v) for m, v in re.findall(r'reloop_stage_seconds_count\{stage="(\w+)"\} (\S+)', prom)}
    sums = {m: float(v) for m, v in re.findall(r'reloop_stage_seconds_sum\{stage="(\w+)"\} (\S+)', prom)}
    buckets: dict[str, list[tuple[float, float]]] = {}
    for le, m, v in re.findall(r'reloop_stage_seconds_bucket\{le="([^"]+)",stage="(\w+)"\} (\S+)', prom):
        buckets.setdefault(m, []).append((float(le), float(v)))
    out = {}
    for m, n in counts.items():
        if not n:
            continue
        p99 = next((le for le, v in sorted(buckets.get(m, [])) if v >= 0.99 * n), float("inf"))
        # above the largest bucket (2.5 s) the bound is unknown: None keeps the JSON valid
        out[m] = {"batches": n, "mean_ms": 1000 * sums[m] / n, "p99_ms_at_most": 1000 * p99 if p99 < 1e9 else None}
    return out


async def latency(settings: Settings, c: AIOKafkaConsumer, live: list[RecommendationRequest],
                  rps: float, feedback: list[Any] = ()) -> dict[str, float]:
    """Send ``live`` at ``rps`` while ``c`` reads the recommendations; send-to-read latency.

    The clock starts once a warm-up request is answered: ``/ready`` turns true before the
    worker's consumer group has its partitions (~3 s on this broker)."""
    # as reloop run's driver sends: requests at once, clicks and media batched by a logger
    p, fb = traffic_producers(settings.kafka)
    await p.start()
    await fb.start()
    topic = topic_name(settings.kafka, "requests")
    deadline = time.monotonic() + 60.0
    for k in itertools.count():
        if time.monotonic() > deadline:
            raise RuntimeError("the worker answered no warm-up request within 60 s")
        warm = msgspec.structs.replace(live[0], request_id=f"warmup-{k}")
        await p.send_and_wait(topic, encode(warm), key=warm.user_id.encode())
        if any((await c.getmany(timeout_ms=500)).values()):
            break
    sent_at: dict[str, float] = {}
    sent: dict[str, float] = {}  # every request sent (sent_at loses the answered ones)
    lat: list[float] = []
    sending_done = asyncio.Event()

    got: list[tuple[str, float]] = []  # (request id, read back at), for the latency over time

    def request_id(v: bytes) -> str:
        rid = _rid_decoder.decode(v).request_id
        got.append((rid, time.perf_counter()))
        return rid

    collector = asyncio.create_task(collect_latencies(c, sent_at, sending_done, request_id, lat, poll_ms=50))
    t0 = time.perf_counter()
    others = sorted(feedback, key=lambda e: e.ts)  # clicks and media, sent once their time has come
    j = 0
    for i, r in enumerate(live):
        if (delay := t0 + i / rps - time.perf_counter()) > 0:
            await asyncio.sleep(delay)  # pacing the offered load
        sent_at[r.request_id] = sent[r.request_id] = time.perf_counter()
        await p.send(topic, encode(r), key=r.user_id.encode())
        while j < len(others) and others[j].ts <= r.ts:
            e = others[j]
            await fb.send(topic_name(settings.kafka, "media" if isinstance(e, MediaEvent) else "interactions"),
                          encode(e), key=e.user_id.encode())
            j += 1
    await asyncio.gather(p.flush(), fb.flush())
    sending_done.set()
    await collector
    await p.stop()
    await fb.stop()
    ms = np.array(lat) * 1000.0
    return {"latency_p50_ms": float(np.percentile(ms, 50)), "latency_p99_ms": float(np.percentile(ms, 99)),
            "answered": len(lat), "unanswered": len(sent_at), "windows": latency_windows(sent, got, t0)}


def latency_windows(sent: dict[str, float], got: list[tuple[str, float]], t0: float,
                    window_s: float = 5.0) -> list[dict[str, float]]:
    """Latency per ``window_s`` of send time (from ``t0``): requests, p50 and p99 ms; shows
    whether a tail is a start-up transient or steady."""
    by: dict[int, list[float]] = {}
    for rid, t in got:
        if rid in sent and sent[rid] >= t0:
            by.setdefault(int((sent[rid] - t0) // window_s), []).append(1000.0 * (t - sent[rid]))
    return [{"from_s": k * window_s, "requests": len(v), "p50_ms": float(np.percentile(v, 50)),
             "p99_ms": float(np.percentile(v, 99))} for k, v in sorted(by.items())]


# ---------------------------------------------------------------------------- the run

def trial_settings(base: Settings, tmp: Path, tag: str) -> Settings:
    """``base`` on fresh topics (prefix), a fresh group and data dir for one path of one trial."""
    d = tmp / tag
    d.mkdir(parents=True, exist_ok=True)
    pid = os.getpid()
    return base.with_overrides(kafka={"topic_prefix": f"b{pid}{tag}.", "group_id": f"bench-{pid}-{tag}"},
                               worker={"data_dir": str(d)})


async def main(args: argparse.Namespace) -> dict[str, Any]:
    from reloop.ops.broker import EmbeddedBroker
    from reloop.ops.replay import fit_initial_model
    from reloop.ops.simulator import SimConfig, Simulator
    from reloop.processors.prequential import as_feedback, as_request
    from tests.conftest import SMALL

    tmp = Path(tempfile.mkdtemp(prefix="reloop-bench-"))
    broker = await EmbeddedBroker().astart()
    try:
        base = Settings().with_overrides(**{**SMALL, "worker": {**SMALL["worker"], "data_dir": str(tmp)}},
                                         kafka={"broker": broker.url})
        log = [e for e in Simulator(SimConfig(seed=5)).labelled_log((args.events + 4000) // 20 + 1)
               if isinstance(e, Interaction)]
        warm, live = log[:4000], log[4000:4000 + args.events]
        fitted = fit_initial_model(warm, base)
        fb_records = []
        for j, it in enumerate(live):
            key = it.user_id.encode()
            fb_records += [("requests", encode(as_request(it, len(warm) + j)), key),
                           ("interactions", encode(as_feedback(it, len(warm) + j)), key)]
        n_lat = int(args.rate * args.duration)
        sim = Simulator(SimConfig(seed=5, candidates_per_request=args.candidates))
        sim_events = list(sim.events(args.requests + n_lat))
        reqs = [e for e in sim_events if isinstance(e, RecommendationRequest)]
        sc_records = [("requests", encode(r), r.user_id.encode()) for r in reqs[:args.requests]]
        lat_reqs = [msgspec.structs.replace(r, candidates=r.candidates[:args.latency_candidates])
                    for r in reqs[args.requests:]]
        lat_items = {(r.request_id, c.item_id) for r in lat_reqs for c in r.candidates}
        lat_feedback = ([e for e in sim_events if (isinstance(e, Interaction) and (e.request_id, e.item_id) in lat_items)
                         or (isinstance(e, MediaEvent) and e.ts >= lat_reqs[0].ts)]
                        if args.mixed else [])
        sizes = {"feedback": statistics.mean(len(v) for _, v, _ in fb_records),
                 "scoring": statistics.mean(len(v) for _, v, _ in sc_records)}
        trials: list[dict[str, float]] = []
        stages: list[dict[str, dict[str, float]]] = []  # per trial: the latency worker's stage times
        windows: list[list[dict[str, float]]] = []  # per trial: latency per 5 s of sending
        paths = set(args.paths.split(","))
        for t in range(args.trials):
            res: dict[str, float] = {}
            if "feedback" in paths:
                fb = trial_settings(base, tmp, f"t{t}f")
                await create_topics(fb.kafka)
                await produce(fb, fb_records)
                n = len(fb_records)
                res["raw_feedback"], res["raw_feedback_cpu"] = await raw_consume(fb, ["requests", "interactions"], n)
                fl = trial_settings(base, tmp, f"t{t}o")  # the floor's own output topics
                await create_topics(fl.kafka)
                res["floor_feedback"], res["floor_feedback_cpu"] = await io_floor(
                    fb, fl, len(live), base.error_memory.tables, assigned_consumer)
                fl2 = trial_settings(base, tmp, f"t{t}p")
                await create_topics(fl2.kafka)
                res["floor_noreadback_feedback"], res["floor_noreadback_feedback_cpu"] = await io_floor(
                    fb, fl2, len(live), base.error_memory.tables, assigned_consumer, read_back=False)
                res["faust_feedback"], res["faust_feedback_cpu"] = await faust_consume(
                    fb, ["requests", "interactions"], n, tmp, f"t{t}f")
                fl3 = trial_settings(base, tmp, f"t{t}m")
                await create_topics(fl3.kafka)
                res["floor_memory_feedback"], res["floor_memory_feedback_cpu"] = await io_floor(
                    fb, fl3, len(live), base.error_memory.tables, assigned_consumer, read_back="memory")
                res["worker_feedback"], res["worker_feedback_cpu"] = await feedback_run(fb, fitted, len(live), tmp)
                # a worker that does not distil the schema cache: it reads no JSON back
                fb2 = trial_settings(base, tmp, f"t{t}g").with_overrides(worker={"schema_cache": False})
                await create_topics(fb2.kafka)
                await produce(fb2, fb_records)
                res["worker_nojson_feedback"], res["worker_nojson_feedback_cpu"] = await feedback_run(
                    fb2, fitted, len(live), tmp)
            if "scoring" in paths:
                sc = trial_settings(base, tmp, f"t{t}s")
                await create_topics(sc.kafka)
                await produce(sc, sc_records)
                n = len(sc_records)
                res["raw_scoring"], res["raw_scoring_cpu"] = await raw_consume(sc, ["requests"], n)
                res["faust_scoring"], res["faust_scoring_cpu"] = await faust_consume(sc, ["requests"], n, tmp, f"t{t}s")
                res["worker_scoring"], res["worker_scoring_cpu"] = await scoring_run(sc, fitted, n, tmp)
            if "latency" in paths:
                la = trial_settings(base, tmp, f"t{t}l")
                await create_topics(la.kafka)
                lat = await latency_run(la, fitted, lat_reqs, args.rate, tmp, lat_feedback)
                res.update(latency_p50_ms=lat["latency_p50_ms"], latency_p99_ms=lat["latency_p99_ms"],
                           latency_unanswered=lat["unanswered"])
                stages.append(lat["stages"])
                windows.append(lat["windows"])
            trials.append(res)
            print(f"[trial {t + 1}/{args.trials}] " + ", ".join(f"{k} {v:,.1f}" for k, v in res.items()), flush=True)
        med = {k: statistics.median(tr[k] for tr in trials) for k in trials[0]}
        shutil.rmtree(tmp, ignore_errors=True)  # ~100 MB of snapshots per worker; kept on failure
        return {
            "config": {**vars(args), "record_bytes_mean": sizes, "fetch_max_records": base.kafka.fetch_max_records,
                       "compensation": base.worker.compensation, "media_features": base.worker.media_features,
                       "schema_cache": base.worker.schema_cache, "cpus": os.cpu_count()},
            "paths": {
                "feedback": "one-candidate request + its interaction (2 records) -> recommendation + error "
                            "record -> errors replica -> error memory + schema cache",
                "scoring": f"request with {args.candidates} candidates -> recommendation",
                "latency": f"{args.rate:g} req/s x {args.latency_candidates} candidates for {args.duration:g} s"
                           f"{' with their clicks and media' if args.mixed else ''}, send -> recommendation read back",
            },
            "median": med, "trials": trials, "latency_stages": stages, "latency_windows": windows,
            "ratios": {f"{p}{c}": {"worker_over_raw": med[f"worker_{p}{c}"] / med[f"raw_{p}{c}"],
                                   "worker_over_faust": med[f"worker_{p}{c}"] / med[f"faust_{p}{c}"],
                                   "faust_over_raw": med[f"faust_{p}{c}"] / med[f"raw_{p}{c}"],
                                   **({"floor_over_raw": med[f"floor_{p}{c}"] / med[f"raw_{p}{c}"],
                                       "worker_over_floor": med[f"worker_{p}{c}"] / med[f"floor_{p}{c}"]}
                                      if f"floor_{p}{c}" in med else {})}
                       for p in ("feedback", "scoring") if p in paths for c in ("", "_cpu")},
        }
    finally:
        broker.stop()


def print_table(out: dict[str, Any]) -> None:
    """The figures as a table (medians over trials)."""
    med, rat, cfg = out["median"], out["ratios"], out["config"]
    print(f"\nmedians of {cfg['trials']} trial(s); events = records read from the input topics; "
          "per CPU-s = events per CPU-second of the consuming process (broker excluded):")
    print(f"{'path':<18}{'worker':>10}{'raw aiokafka':>14}{'Faust take':>12}{'worker/raw':>12}"
          f"{'worker/Faust':>14}{'Faust/raw':>11}")
    for p in ("feedback", "scoring"):
        for c, unit in (("", "ev/s"), ("_cpu", "ev/CPU-s")):
            k = f"{p}{c}"
            if k in rat:
                print(f"{p + ' ' + unit:<18}{med[f'worker_{k}']:>10,.0f}{med[f'raw_{k}']:>14,.0f}"
                      f"{med[f'faust_{k}']:>12,.0f}{rat[k]['worker_over_raw']:>12.3f}"
                      f"{rat[k]['worker_over_faust']:>14.2f}{rat[k]['faust_over_raw']:>11.3f}")
    for c, unit in (("", "ev/s"), ("_cpu", "ev/CPU-s")):
        r = rat.get(f"feedback{c}", {})
        if "floor_over_raw" in r:
            print(f"feedback I/O floor {unit}: {med[f'floor_feedback{c}']:,.0f} = {r['floor_over_raw']:.3f} of raw; "
                  f"worker = {r['worker_over_floor']:.3f} of the floor; without reading errors back "
                  f"{med[f'floor_noreadback_feedback{c}'] / med[f'raw_feedback{c}']:.3f} of raw")
            if f"floor_memory_feedback{c}" in med:
                print(f"  reading binary memory batches back instead of JSON: floor "
                      f"{med[f'floor_memory_feedback{c}'] / med[f'raw_feedback{c}']:.3f} of raw; worker without the "
                      f"schema cache (no JSON read back) {med[f'worker_nojson_feedback{c}']:,.0f} = "
                      f"{med[f'worker_nojson_feedback{c}'] / med[f'raw_feedback{c}']:.3f} of raw")
    if "worker_scoring" in med:
        print(f"scoring path: {med['worker_scoring'] * cfg['candidates']:,.0f} candidates/s "
              f"({cfg['candidates']} per request)")
    if "latency_p50_ms" in med:
        print(f"end-to-end latency at {out['paths']['latency']}: p50 {med['latency_p50_ms']:.1f} ms, "
              f"p99 {med['latency_p99_ms']:.1f} ms")
        for t, ws in enumerate(out.get("latency_windows", [])):
            print(f"  latency per 5 s of sending, trial {t + 1} (p50/p99 ms): " + ", ".join(
                f"{w['from_s']:g}s {w['p50_ms']:.0f}/{w['p99_ms']:.0f}" for w in ws))
        for t, st in enumerate(out.get("latency_stages", [])):
            print(f"  worker stages, trial {t + 1} (mean ms / p99 at most ms per input batch): " + ", ".join(
                f"{k} {v['mean_ms']:.2f}/{v['p99_ms_at_most'] or '>2500'}" for k, v in st.items()))

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", help="write results here")
    ap.add_argument("--trials", type=int, default=3, help="medians over this many trials")
    ap.add_argument("--events", type=int, default=40000, help="feedback path: logged interactions (x2 records)")
    ap.add_argument("--requests", type=int, default=1500, help="scoring path: pre-filled requests (>= 1000: the first batch is not timed)")
    ap.add_argument("--candidates", type=int, default=100, help="scoring path: candidates per request")
    ap.add_argument("--rate", type=float, default=100.0, help="latency: offered requests/s")
    ap.add_argument("--latency-candidates", type=int, default=20, help="latency: candidates per request")
    ap.add_argument("--duration", type=float, default=20.0, help="latency: seconds of offered load")
    ap.add_argument("--mixed", action=argparse.BooleanOptionalAction, default=True,
                    help="latency: send the requests' clicks and media alongside them (feedback flowing)")
    ap.add_argument("--paths", default="feedback,scoring,latency",
                    help="comma-separated subset of feedback,scoring,latency to run")
    a = ap.parse_args()
    for name in ("trials", "events", "requests", "candidates", "latency_candidates"):
        if getattr(a, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1")
    if a.rate <= 0 or a.duration <= 0:
        ap.error("--rate and --duration must be > 0")
    if not a.paths or not set(a.paths.split(",")) <= {"feedback", "scoring", "latency"}:
        ap.error("--paths takes a comma-separated subset of feedback,scoring,latency")
    result = asyncio.run(main(a))
    print_table(result)
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(result, indent=2))

