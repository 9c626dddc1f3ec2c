"""What one fetch costs on the embedded broker as a partition's stored batches grow.

    python bench/broker_fetch_cost.py --json reports/broker_fetch_cost.json [--up-to 20000] [--step 2500]

Tansu 0.6's memory storage keeps every produced record batch as one object and answers a
fetch that has data to return by listing all of the partition's objects (no offset index, no
retention: DeleteRecords is unimplemented), so the cost of a consumer keeping up with a
partition grows with everything ever produced to it. On a real Kafka cluster a fetch is a
lookup in the segment's offset index.

On a fresh embedded broker (no ReLoop code in the path) with one single-partition topic, this
stores batches of one record each (what a producer with ``linger_ms=0`` writes, as a serving
front end does) and, at every ``--step`` batches stored, times ``--probes`` round trips of the
serving path's shape: produce one record, then fetch it with a consumer at the tail
(``fetch_max_wait_ms=10``). It reports the median round trip (ms) and the broker's CPU per
round trip (ms) against the stored batch count.

:func:`reloop.ops.broker.stored_batches` counts the batches stored per topic
(``bench/latency_floor.py`` and ``reloop run``'s report use it to relate a run's figures to
what it wrote).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition  # noqa: E402
from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # noqa: E402

from bench.latency_floor import cpu_seconds  # noqa: E402
from reloop.ops.broker import EmbeddedBroker, stored_batches  # noqa: E402


async def measure(up_to: int, step: int, probes: int) -> list[dict[str, Any]]:
    broker = EmbeddedBroker()
    await broker.astart()
    boot = broker.bootstrap
    rows: list[dict[str, Any]] = []
    try:
        admin = AIOKafkaAdminClient(bootstrap_servers=boot)
        await admin.start()
        await admin.create_topics([NewTopic("probe", 1, 1)])
        await admin.close()
        producer = AIOKafkaProducer(bootstrap_servers=boot, acks="all", linger_ms=0)
        await producer.start()
        consumer = AIOKafkaConsumer(bootstrap_servers=boot, group_id=None, fetch_max_wait_ms=10,
                                    auto_offset_reset="latest", enable_auto_commit=False)
        await consumer.start()
        tp = TopicPartition("probe", 0)
        consumer.assign([tp])
        await consumer.seek_to_end(tp)
        payload = b"x" * 200
        stored = 0
        assert broker.proc is not None
        while stored < up_to:
            for _ in range(step):  # one batch per send: linger 0, each send awaited
                await (await producer.send("probe", payload, partition=0))
            stored += step
            await consumer.seek_to_end(tp)
            trips: list[float] = []
            cpu0 = cpu_seconds(broker.proc.pid)
            for _ in range(probes):
                t0 = time.perf_counter()
                await (await producer.send("probe", payload, partition=0))
                got = 0
                while not got:
                    got = sum(len(v) for v in (await consumer.getmany(tp, timeout_ms=5000)).values())
                trips.append((time.perf_counter() - t0) * 1000.0)
            stored += probes
            cpu_ms = (cpu_seconds(broker.proc.pid) - cpu0) * 1000.0 / probes
            row = {"stored_batches": stored, "round_trip_ms_p50": round(float(np.median(trips)), 2),
                   "broker_cpu_ms_per_trip": round(cpu_ms, 2)}
            rows.append(row)
            print(f"{stored:7d} batches stored: produce+fetch p50 {row['round_trip_ms_p50']:7.2f} ms, "
                  f"broker CPU {cpu_ms:6.2f} ms per round trip", flush=True)
        await producer.stop()
        await consumer.stop()
        # the premise: one awaited send at linger 0 is one stored batch (as the broker counts them)
        rows[-1]["broker_counts"] = (await stored_batches(boot))["probe"]
    finally:
        broker.stop()
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", help="write results here")
    ap.add_argument("--up-to", type=int, default=20000, help="stored batches to reach")
    ap.add_argument("--step", type=int, default=2500, help="batches stored between measurements")
    ap.add_argument("--probes", type=int, default=40, help="round trips timed per measurement")
    args = ap.parse_args(argv)
    rows = asyncio.run(measure(args.up_to, args.step, args.probes))
    # linear part: up to 15,000 stored batches (past ~17,000 this broker's cost jumps by 10-100x)
    lin = [r for r in rows if r["stored_batches"] <= 15_000]
    slope_us = (float(np.polyfit([r["stored_batches"] for r in lin], [r["broker_cpu_ms_per_trip"] for r in lin], 1)[0])
                * 1000.0 if len(lin) >= 2 else None)
    out = {"command": " ".join(sys.argv), "rows": rows, "broker_cpu_us_per_trip_per_stored_batch": slope_us}
    if slope_us is not None:
        print(f"up to 15,000 stored batches, the broker's CPU per round trip grows {slope_us:.2f} us "
              "per stored batch")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
