"""The latency floor of this machine under ``reloop run``'s traffic: the same driver, the same
broker, but a worker that does nothing but answer.

    python bench/latency_floor.py --json reports/latency_floor.json [--events 20000] [--rate 150]
        [--waits 10,5,1] [--others off,on] [--others-wait 10] [--echo-inputs requests,all,split]

Per variant, on a fresh embedded broker with the catalog's topics:

- **driver** (this process): :func:`reloop.ops.driver.drive`, the code ``reloop run`` drives
  its worker with: the simulator's live traffic (requests x 20 candidates, clicks, media) at
  ``--rate`` requests/s after ``--warmup`` of the ``--events`` requests, latency = send ->
  the recommendation read back by its ``recommendations`` reader;
- **echo worker** (its own process, ``--echo``): one aiokafka consumer of ``requests`` (all
  partitions, manual assignment; ``--echo-inputs all`` also reads ``interactions`` and
  ``media`` in the same consumer, as the real worker's input consumer does, ``split`` on a
  second consumer of their own, polled concurrently) that decodes each
  request and at once produces a recommendation naming its candidates with score 0.5 (no
  scoring, no state), on a producer with ``linger_ms=0`` as the worker's answers producer;
- **other consumers** (``--others on``, their own process, ``--other-consumers``): the idle or
  low-rate consumers a real deployment keeps next to the latency path, with no traffic of
  their own here: the worker's replica consumer (every ``memory`` and ``errors`` partition)
  and its changelog consumer (one ``changelog`` partition) at ``--others-wait`` ms, the
  trainer's ``errors`` group consumer at aiokafka's default 500 ms, and Faust's consumer of
  ``models`` (its hard-coded 1500 ms).

The echo worker's and the driver's fetch waits are the variant's wait (``--waits``).
``request_hop_ms``: the first of the two hops, from the driver's send (the request record's
create time) to the echo worker's fetch returning it, as the echo worker measured it; the
rest of a latency is the echo itself and the answer's hop back. CPU is
user + system seconds per wall second (1.0 = one core) over the driven span, of the broker,
the driver (this process), the echo worker and the other consumers; ``load_before`` is the
1-minute load average when the variant started (the machine is shared: quote it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from reloop.ops.broker import EmbeddedBroker, stored_batches
from reloop.ops.driver import drive
from reloop.ops.kafka import client_kwargs, create_topics, topic_name
from reloop.ops.settings import Settings
from reloop.ops.simulator import SimConfig, Simulator
from reloop.streams.codec import decode_event, encode
from reloop.streams.events import Recommendation, RecommendationRequest, ScoredItem


def _stat(pid: int | str) -> list[str]:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()  # fields from the state (3rd) on


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far: its threads, its children that
    ended (waited for), and its children still running (a worker's schema-cache child)."""
    fields = _stat(pid)
    ticks = sum(int(x) for x in fields[11:15])  # utime, stime, cutime, cstime
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                child = _stat(entry)
            except OSError:  # ended meanwhile
                continue
            if int(child[1]) == pid:
                ticks += int(child[11]) + int(child[12])
    return ticks / os.sysconf("SC_CLK_TCK")


async def _assigned(ks: Any, logical: list[str], wait_ms: int, **kw: Any) -> AIOKafkaConsumer:
    """A group-less consumer assigned every partition of ``logical`` topics, at their ends."""
    c = AIOKafkaConsumer(**client_kwargs(ks), group_id=None, enable_auto_commit=False,
                         fetch_max_wait_ms=wait_ms, **kw)
    await c.start()
    parts: list[TopicPartition] = []
    for name in logical:
        topic = topic_name(ks, name)
        found = c.partitions_for_topic(topic)
        if not found:
            await c._client.force_metadata_update()  # noqa: SLF001
            found = c.partitions_for_topic(topic) or {0}
        parts += [TopicPartition(topic, p) for p in sorted(found)]
    c.assign(parts)
    await c.seek_to_end(*parts)
    return c


async def echo_worker(broker: str, wait_ms: int, inputs: str) -> None:
    """Answer every request at once with its candidates in order, score 0.5 (runs until killed)."""
    ks = Settings().with_overrides(kafka={"broker": broker}).kafka
    logical = ["requests"] + (["interactions", "media"] if inputs == "all" else [])
    consumer = await _assigned(ks, logical, wait_ms, max_partition_fetch_bytes=8 << 20)
    feedback = None  # "split": interactions and media on a consumer of their own, read and dropped
    if inputs == "split":
        feedback = await _assigned(ks, ["interactions", "media"], wait_ms, max_partition_fetch_bytes=8 << 20)
    producer = AIOKafkaProducer(**client_kwargs(ks), acks="all", linger_ms=0, max_batch_size=1 << 20)
    await producer.start()
    requests, recs = topic_name(ks, "requests"), topic_name(ks, "recommendations")
    hop: list[float] = []  # ms from the driver's send (the record's create time) to this fetch
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", flush=True)

    async def drain() -> None:
        assert feedback is not None
        while not stop.is_set():
            await feedback.getmany(timeout_ms=100, max_records=5000)

    drained = asyncio.ensure_future(drain()) if feedback is not None else None
    while not stop.is_set():
        batch = await consumer.getmany(timeout_ms=100, max_records=5000)
        now_ms = time.time() * 1000.0
        for tp, msgs in batch.items():
            if tp.topic != requests:
                continue
            for m in msgs:
                hop.append(now_ms - m.timestamp)
                req = decode_event(m.value, RecommendationRequest)
                rec = Recommendation(request_id=req.request_id, user_id=req.user_id, ts=req.ts, model_version="echo",
                                     items=[ScoredItem(item_id=c.item_id, base_score=0.5, score=0.5)
                                            for c in req.candidates])
                await producer.send(recs, encode(rec), key=m.key)
    if drained is not None:
        await drained
        await feedback.stop()  # type: ignore[union-attr]
    await consumer.stop()
    await producer.stop()
    pct = {f"p{q}": round(float(np.percentile(hop, q)), 2) if hop else None for q in (50, 90, 99)}
    print(json.dumps(pct), flush=True)


async def other_consumers(broker: str, wait_ms: int) -> None:
    """The consumers a deployment keeps off the latency path, polling (runs until killed)."""
    ks = Settings().with_overrides(kafka={"broker": broker}).kafka
    replica = await _assigned(ks, ["memory", "errors"], wait_ms)
    changelog = await _assigned(ks, ["changelog"], wait_ms)
    changelog.assign(sorted(changelog.assignment(), key=lambda tp: tp.partition)[-1:])  # a restore's last read
    trainer = AIOKafkaConsumer(topic_name(ks, "errors"), **client_kwargs(ks), group_id="latfloor-trainer",
                               enable_auto_commit=False, auto_offset_reset="latest")  # 500 ms: aiokafka's default
    faust = AIOKafkaConsumer(topic_name(ks, "models"), **client_kwargs(ks), group_id="latfloor-faust",
                             enable_auto_commit=False, auto_offset_reset="latest", fetch_max_wait_ms=1500)
    for c in (trainer, faust):
        await c.start()
    print("ready", flush=True)

    async def poll(c: AIOKafkaConsumer) -> None:
        while True:
            await c.getmany(timeout_ms=100)

    await asyncio.gather(*(poll(c) for c in (replica, changelog, trainer, faust)))


def _spawn(flag: str, broker: str, wait_ms: int, extra: list[str]) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, __file__, flag, broker, "--wait", str(wait_ms), *extra],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()  # blocks until the child is assigned and positioned
    if line.strip() != "ready":
        proc.kill()
        raise RuntimeError(f"{flag} child did not start (exit {proc.wait()})")
    return proc


async def variant(args: argparse.Namespace, wait_ms: int, others: bool, echo_inputs: str) -> dict[str, Any]:
    """One run: fresh broker, echo worker (+ other consumers), the driver's traffic."""
    load_before = os.getloadavg()[0]
    broker = EmbeddedBroker()
    await broker.astart()
    children: list[subprocess.Popen[str]] = []
    try:
        settings = Settings().with_overrides(kafka={"broker": broker.url})
        await create_topics(settings.kafka)
        children.append(_spawn("--echo", broker.url, wait_ms, ["--echo-inputs", echo_inputs]))
        if others:
            children.append(_spawn("--other-consumers", broker.url, args.others_wait, []))
        sim = Simulator(SimConfig(seed=args.seed, media_dim=settings.limits.media_dim, media_weight=1.5))
        n_warm = int(args.events * args.warmup)
        pids = {"broker": broker.proc.pid, "echo": children[0].pid}
        if others:
            pids["others"] = children[1].pid
        c0 = {k: cpu_seconds(p) for k, p in pids.items()}
        me0, t0 = time.process_time(), time.perf_counter()
        res = await drive(settings, sim, args.events, n_warm, args.rate, fetch_wait_ms=wait_ms)
        wall = time.perf_counter() - t0
        cpu = {k: round((cpu_seconds(p) - c0[k]) / wall, 3) for k, p in pids.items()}
        cpu["driver"] = round((time.process_time() - me0) / wall, 3)
        children[0].terminate()  # the echo worker prints its request-hop percentiles and exits
        out_text, _ = children[0].communicate(timeout=30)
        request_hop = json.loads(out_text.strip().splitlines()[-1])
        stored = await stored_batches(broker.bootstrap)  # what the broker's fetches list (broker_fetch_cost.py)
    finally:
        for c in children:
            if c.poll() is None:
                c.kill()
                c.wait()
        broker.stop()
    out = {"fetch_wait_ms": wait_ms, "others": others, "others_wait_ms": args.others_wait if others else None,
           "echo_inputs": echo_inputs, "load_before": round(load_before, 2),
           "latency_ms": {k: round(v, 2) if v is not None else None for k, v in res["latency_ms"].items()},
           "answered": res["recommendations"], "unanswered": res["unanswered"], "produced": res["produced"],
           "answered_rps": round(res["answered_rps"] or 0.0, 1), "request_hop_ms": request_hop, "cpu": cpu,
           "latency_windows": res["latency_windows"], "stored_batches": stored}
    lat = out["latency_ms"]
    print(f"echo {echo_inputs:<8} wait {wait_ms:>3} ms, others {'on ' if others else 'off'}: p50/p90/p99 = {lat['p50']} / {lat['p90']} / "
          f"{lat['p99']} ms (request hop p50/p99 {request_hop['p50']} / {request_hop['p99']}); "
          f"cpu broker {cpu['broker']:.2f} driver {cpu['driver']:.2f} echo {cpu['echo']:.2f}"
          + (f" others {cpu['others']:.2f}" if others else "") + f" (load before {load_before:.2f})", flush=True)
    print("  p50 per 10 s of sending: " + " ".join(f"{w['p50']:.0f}" for w in res["latency_windows"]) + " ms; "
          "batches stored: " + ", ".join(f"{t} {stored[t]['batches']}" for t in ("requests", "interactions", "media",
                                                                               "recommendations")), flush=True)
    return out


async def main(args: argparse.Namespace) -> dict[str, Any]:
    rows = []
    for _ in range(args.trials):
        for others in [o == "on" for o in args.others.split(",")]:
            for wait in [int(w) for w in args.waits.split(",")]:
                for echo_inputs in args.echo_inputs.split(","):
                    rows.append(await variant(args, wait, others, echo_inputs))
    return {"command": " ".join(sys.argv), "events": args.events, "warmup": args.warmup, "rate": args.rate,
            "variants": rows}


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", help="write results here")
    ap.add_argument("--events", type=int, default=20000, help="requests in the simulated traffic (reloop run's default)")
    ap.add_argument("--warmup", type=float, default=0.2, help="fraction of the requests not sent (reloop run's warm-up)")
    ap.add_argument("--rate", type=float, default=150.0, help="offered requests/s")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--waits", default="10,5,1", help="fetch waits (ms) of the echo worker and the driver's reader")
    ap.add_argument("--others", default="off,on", help="run without / with the other consumers")
    ap.add_argument("--others-wait", type=int, default=10, help="fetch wait (ms) of the replica and changelog consumers")
    ap.add_argument("--echo-inputs", default="requests",
                    help="comma list of: requests (the echo worker reads requests only), all (also "
                         "interactions and media, in the same consumer), split (interactions and media on "
                         "a second consumer of their own)")
    ap.add_argument("--trials", type=int, default=1)
    ap.add_argument("--echo", metavar="BROKER", help=argparse.SUPPRESS)
    ap.add_argument("--other-consumers", metavar="BROKER", help=argparse.SUPPRESS)
    ap.add_argument("--wait", type=int, default=10, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


if __name__ == "__main__":
    a = parse()
    if a.echo:
        asyncio.run(echo_worker(a.echo, a.wait, a.echo_inputs))
    elif a.other_consumers:
        asyncio.run(other_consumers(a.other_consumers, a.wait))
    else:
        result = asyncio.run(main(a))
        if a.json:
            Path(a.json).parent.mkdir(parents=True, exist_ok=True)
            Path(a.json).write_text(json.dumps(result, indent=2))
