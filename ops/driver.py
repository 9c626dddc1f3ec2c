"""The main job's traffic driver (split from :mod:`reloop.ops.main_job`): it produces the simulator's
live traffic at a fixed offered load, reads the recommendations back (latency, which model
version answered each request, at which event time), and reads the schema cache's alerts.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable

import msgspec
import numpy as np
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from reloop.ops.kafka import client_kwargs, make_producer, topic_name
from reloop.ops.settings import KafkaSettings, Settings
from reloop.ops.simulator import Simulator
from reloop.processors.schemas import SchemaAlert, SchemaUpdate
from reloop.streams.codec import InvalidEvent, decode_event, encode
from reloop.streams.events import Interaction, MediaEvent, Recommendation, RecommendationRequest

#: The driver's fetch wait, ms. The embedded broker holds a fetch for its full
#: ``fetch_max_wait_ms`` when there is nothing new; aiokafka's default (500 ms) added up to
#: half a second to the measured latency.
FETCH_WAIT_MS = 10

#: Linger of the driver's feedback producer (interactions, media), ms: a click or media logger
#: batches what it sends. Every produced batch stays one stored object on the embedded broker,
#: and each fetch that returns data lists all of its partition's objects
#: (``bench/broker_fetch_cost.py``), so at 2 ms (one batch per click, ~60 per partition per s)
#: the broker slowed every consumer as a run went on (the latency floor's p50 went from 11 to
#: 307 ms over a default run; 10 to 195 ms at 50 ms).
FEEDBACK_LINGER_MS = 50


async def collect_latencies(consumer: AIOKafkaConsumer, sent_at: dict[str, float], sending_done: asyncio.Event,
                            request_id_of: Callable[[bytes], str], latencies: list[float], *,
                            poll_ms: int = 100, drain_s: float = 60.0, sent: list[float] | None = None) -> None:
    """Read recommendations concurrently with a sender; append receive - send seconds.

    ``sent_at`` maps request id -> ``time.perf_counter()`` at send (the sender fills it; answered
    ids are popped, so what is left at the end is unanswered). Returns once ``sending_done`` is
    set and every sent request was answered, or ``drain_s`` after ``sending_done``.
    ``request_id_of`` decodes a recommendation's value to its request id (and may count it).
    ``sent``, if given, gets each answered request's send time, parallel to ``latencies``.
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
                    if sent is not None:
                        sent.append(t)
        if sending_done.is_set():
            deadline = deadline or time.monotonic() + drain_s
            if not sent_at or time.monotonic() > deadline:
                return


def recommendations_consumer(ks: KafkaSettings, fetch_wait_ms: int = FETCH_WAIT_MS) -> AIOKafkaConsumer:
    """A group-less consumer of ``recommendations`` from its end, with a short fetch wait (ms)."""
    return AIOKafkaConsumer(topic_name(ks, "recommendations"), **client_kwargs(ks), group_id=None,
                            auto_offset_reset="latest", enable_auto_commit=False, fetch_max_wait_ms=fetch_wait_ms)


def traffic_producers(ks: KafkaSettings, feedback_linger_ms: int = FEEDBACK_LINGER_MS
                      ) -> tuple[AIOKafkaProducer, AIOKafkaProducer]:
    """The producers live traffic is sent with (not started): requests at once (``linger_ms=0``)
    on a connection of their own, and clicks and media on a second one that lingers
    ``feedback_linger_ms``. The producer keeps one request in flight per broker, so on a shared
    one a request waited behind the feedback sent before it (a serving front end and a feedback
    logger would not share one); the linger keeps the embedded broker's stored batches down."""
    return make_producer(ks, linger_ms=0), make_producer(ks, linger_ms=feedback_linger_ms)


async def drive(settings: Settings, sim: Simulator, n_requests: int, n_warm: int, offered_rps: float,
                duration_s: float | None = None, fetch_wait_ms: int = FETCH_WAIT_MS,
                feedback_linger_ms: int = FEEDBACK_LINGER_MS) -> dict[str, Any]:
    """Produce the live part of the simulator's traffic and collect the recommendations.

    ``fetch_wait_ms``: the recommendations reader's fetch wait (``bench/latency_floor.py``
    varies it). ``feedback_linger_ms``: linger of the interactions and media producer (requests
    go out at once, on a producer of their own).

    Returns counts, latency percentiles (ms), and ``answered``: one ``[event_ts, version]``
    per answered request (the request's event time, unix s, and the model version that
    scored it), in answer order.
    """
    ks = settings.kafka
    names = {t: topic_name(ks, t) for t in ("requests", "interactions", "media")}
    ask, producer = traffic_producers(ks, feedback_linger_ms)
    await producer.start()
    await ask.start()
    consumer = recommendations_consumer(ks, fetch_wait_ms)
    await consumer.start()
    await consumer.seek_to_end()
    sent_at: dict[str, float] = {}
    event_ts: dict[str, float] = {}
    answered: list[tuple[float, str]] = []
    latencies: list[float] = []
    counts = {"requests": 0, "interactions": 0, "media": 0}
    warm_cut: float | None = None
    live: set[str] = set()  # request ids sent; feedback on warm-up requests is not replayed
    stop_at = time.monotonic() + duration_s if duration_s else None
    sending_done = asyncio.Event()

    def on_record(value: bytes) -> str:
        rec = decode_event(value, Recommendation)
        ts = event_ts.pop(rec.request_id, None)
        if ts is not None:
            answered.append((ts, rec.model_version))
        return rec.request_id

    sent: list[float] = []
    collector = asyncio.create_task(collect_latencies(consumer, sent_at, sending_done, on_record, latencies,
                                                      sent=sent))
    try:
        t0, t0_unix = time.perf_counter(), time.time()
        interval = 1.0 / offered_rps
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
                event_ts[ev.request_id] = ev.ts
                live.add(ev.request_id)
                await ask.send(names["requests"], encode(ev), key=ev.user_id.encode())
                counts["requests"] += 1
            elif warm_cut is not None and (isinstance(ev, MediaEvent) or ev.request_id in live):
                topic = "media" if isinstance(ev, MediaEvent) else "interactions"
                assert isinstance(ev, (MediaEvent, Interaction))
                await producer.send(names[topic], encode(ev), key=ev.user_id.encode())
                counts[topic] += 1
        await asyncio.gather(producer.flush(), ask.flush())
        t_sent = time.perf_counter()
        sending_done.set()
        await collector
    finally:
        collector.cancel()
        await consumer.stop()
        await producer.stop()
        await ask.stop()
    elapsed = time.perf_counter() - t0
    lat = np.array(latencies) * 1000.0
    pct = {f"p{q}": float(np.percentile(lat, q)) if len(lat) else None for q in (50, 90, 99)}
    versions: dict[str, int] = {}
    for _, v in answered:
        versions[v] = versions.get(v, 0) + 1
    return {
        "produced": counts, "recommendations": len(latencies), "unanswered": len(sent_at),
        "send_seconds": t_sent - t0, "elapsed_seconds": elapsed, "offered_rps": offered_rps,
        "answered_rps": len(latencies) / elapsed if elapsed else None, "latency_ms": pct,
        "versions": versions, "live_from_ts": warm_cut, "answered": answered, "send_started_unix": t0_unix,
        "latency_windows": latency_windows(np.array(sent) - t0, lat),
    }


def latency_windows(sent_s: np.ndarray, latency_ms: np.ndarray, width_s: float = 10.0) -> list[dict[str, Any]]:
    """Latency percentiles per ``width_s`` seconds of sending: ``sent_s`` (n,) send times, s from
    the start; ``latency_ms`` (n,) their latencies. One row per window with answers:
    ``from_s``, ``to_s``, ``requests``, ``p50``, ``p99`` (ms).

    >>> [(r["from_s"], r["requests"], r["p50"]) for r in latency_windows(np.array([0.5, 1.5, 12.0]),
    ...                                                                  np.array([10.0, 30.0, 5.0]))]
    [(0.0, 2, 20.0), (10.0, 1, 5.0)]
    """
    if not len(sent_s):
        return []
    idx = np.floor(sent_s / width_s).astype(np.int64)
    rows = []
    for w in np.unique(idx).tolist():
        lat = latency_ms[idx == w]
        rows.append({"from_s": w * width_s, "to_s": (w + 1) * width_s, "requests": int(lat.size),
                     "p50": float(np.percentile(lat, 50)), "p99": float(np.percentile(lat, 99))})
    return rows


async def read_alerts(ks: KafkaSettings, timeout_s: float = 10.0) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every message on ``alerts`` and ``schemas`` so far (up to their high watermarks), as dicts
    (:class:`~reloop.processors.schemas.SchemaAlert`, :class:`~reloop.processors.schemas.SchemaUpdate`);
    alerts deduplicated by ``alert_id``, both sorted by event time."""
    out: dict[str, list[dict[str, Any]]] = {}
    for name, kind in (("alerts", SchemaAlert), ("schemas", SchemaUpdate)):
        topic = topic_name(ks, name)
        consumer = AIOKafkaConsumer(**client_kwargs(ks), group_id=None, enable_auto_commit=False,
                                    fetch_max_wait_ms=FETCH_WAIT_MS)
        await consumer.start()
        rows: dict[str, dict[str, Any]] = {}
        try:
            parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
            if not parts:
                await consumer._client.force_metadata_update()  # noqa: SLF001
                parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
            consumer.assign(parts)
            await consumer.seek_to_beginning(*parts)
            ends = await consumer.end_offsets(parts)
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                positions = [await consumer.position(tp) for tp in parts]
                if all(pos >= ends[tp] for pos, tp in zip(positions, parts)):
                    break
                for msgs in (await consumer.getmany(timeout_ms=200)).values():
                    for m in msgs:
                        try:
                            msg = decode_event(m.value or b"", kind)
                        except InvalidEvent:
                            continue
                        d = msgspec.to_builtins(msg)
                        rows[d["alert_id"] if name == "alerts" else f"{d['schema_id']}:{d['ts']}:{d['change']}"] = d
        finally:
            await consumer.stop()
        out[name] = sorted(rows.values(), key=lambda r: r["ts"])
    return out["alerts"], out["schemas"]


async def errors_end_offsets(ks: KafkaSettings) -> dict[int, int]:
    """``{partition: high watermark}`` of the ``errors`` topic now."""
    topic = topic_name(ks, "errors")
    consumer = AIOKafkaConsumer(**client_kwargs(ks), group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        if not parts:
            await consumer._client.force_metadata_update()  # noqa: SLF001
            parts = consumer.partitions_for_topic(topic) or set()
        ends = await consumer.end_offsets([TopicPartition(topic, p) for p in sorted(parts)])
    finally:
        await consumer.stop()
    return {tp.partition: off for tp, off in ends.items()}


async def wait_replica_caught_up(ks: KafkaSettings, applied: Callable[[], Any], timeout_s: float = 30.0) -> bool:
    """Wait until the worker's errors replica (``await applied()`` -> ``{partition: next offset}``,
    from its ``/status``) has applied every error record written so far, so the alerts it raises
    from them are on ``alerts`` before the report reads them. False after ``timeout_s``."""
    ends = await errors_end_offsets(ks)
    deadline = time.monotonic() + timeout_s
    while True:
        done = await applied()
        if all(int(done.get(str(p), done.get(p, 0))) >= end for p, end in ends.items()):
            return True
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.25)

