"""Throughput of the worker's prequential path next to raw aiokafka consumption, same run.

    python bench/throughput.py --json reports/throughput.json [--events 40000] [--raw-trials 3]

Both read the same pre-filled ``requests`` + ``interactions`` topics of the embedded broker:

- **raw**: one aiokafka consumer, ``getmany`` + msgspec decode of every record, nothing else;
  the ceiling for any consumer of these topics on this machine (median of ``--raw-trials``);
- **worker**: one ``reloop worker`` process (real CLI, Faust app, hot-path batch consumer),
  scoring each one-candidate request (onnxruntime + error memory), joining its interaction,
  producing recommendations and error records, applying the records to its error memory,
  committing offsets. Timed from its first labelled prediction to its last (so the consumer
  group join, ~3 s on the embedded broker, is excluded), read from ``/status``.

The ratio worker/raw is the figure to quote (the machine is shared and noisy).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiokafka import AIOKafkaConsumer, TopicPartition  # noqa: E402

from models.registry import ModelRegistry  # noqa: E402
from ops.broker import EmbeddedBroker  # noqa: E402
from ops.kafka import client_kwargs, create_topics, make_producer, topic_name  # noqa: E402
from ops.replay import fit_initial_model  # noqa: E402
from ops.settings import Settings  # noqa: E402
from ops.simulator import SimConfig, Simulator  # noqa: E402
from ops.webclient import get_json, wait_ready  # noqa: E402
from processors.prequential import as_feedback, as_request  # noqa: E402
from streams.codec import decode_event, encode  # noqa: E402
from streams.events import Interaction  # noqa: E402


async def fill_topics(settings: Settings, log: list[Interaction], first_seq: int) -> int:
    """Produce one-candidate requests and their interactions (interleaved in log order)."""
    p = make_producer(settings.kafka)
    await p.start()
    n = 0
    try:
        futs = []
        for j, it in enumerate(log):
            key = it.user_id.encode()
            futs.append(await p.send(topic_name(settings.kafka, "requests"), encode(as_request(it, first_seq + j)), key=key))
            futs.append(await p.send(topic_name(settings.kafka, "interactions"), encode(as_feedback(it, first_seq + j)), key=key))
            n += 2
        await asyncio.gather(*futs)
    finally:
        await p.stop()
    return n


async def raw_consume(settings: Settings, expected: int) -> float:
    """Seconds for one aiokafka consumer to read and decode ``expected`` records."""
    c = AIOKafkaConsumer(**client_kwargs(settings.kafka), group_id=None, enable_auto_commit=False,
                         max_partition_fetch_bytes=8 << 20, fetch_max_bytes=32 << 20)
    await c.start()
    tps = []
    for t in ("requests", "interactions"):
        name = topic_name(settings.kafka, t)
        parts = c.partitions_for_topic(name)
        if not parts:
            await c._client.force_metadata_update()  # noqa: SLF001
            parts = c.partitions_for_topic(name)
        tps += [TopicPartition(name, p) for p in sorted(parts)]
    c.assign(tps)
    await c.seek_to_beginning(*tps)
    n = 0
    t0 = time.perf_counter()
    while n < expected:
        batch = await c.getmany(timeout_ms=500, max_records=5000)
        for msgs in batch.values():
            for m in msgs:
                decode_event(m.value)
            n += sum(len(m) for m in batch.values())
    dt = time.perf_counter() - t0
    await c.stop()
    return dt


async def worker_run(settings: Settings, n_labelled: int, tmp: Path) -> dict:
    from tests.conftest import WorkerProcess  # the same subprocess wrapper the tests use

    w = WorkerProcess(settings, tmp / "worker.log")
    try:
        await wait_ready(w.port, timeout_s=120.0, proc=w.proc)
        t_first = t_last = None
        first_count = 0
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            st = await get_json(w.port, "/status")
            n = st["summary"]["labelled"]
            now = time.perf_counter()
            if t_first is None and n > 0:
                t_first, first_count = now, n
            if n >= n_labelled:
                t_last = now
                break
            await asyncio.sleep(0.2)
        if t_last is None or t_first is None:
            raise RuntimeError(f"worker labelled only {n} of {n_labelled}")
        return {"seconds": t_last - t_first, "labelled_timed": n_labelled - first_count, "status": st}
    finally:
        w.stop()


async def main(args: argparse.Namespace) -> dict:
    from tests.conftest import SMALL

    tmp = Path(tempfile.mkdtemp(prefix="reloop-bench-"))
    broker = await EmbeddedBroker().astart()
    try:
        settings = Settings().with_overrides(**{**SMALL, "worker": {**SMALL["worker"], "data_dir": str(tmp)}},
                                             kafka={"broker": broker.url, "topic_prefix": "bench."})
        await create_topics(settings.kafka)
        sim = Simulator(SimConfig(seed=5))
        n_req = (args.events * 2) // 20 + 1
        log = [e for e in sim.labelled_log(n_req) if isinstance(e, Interaction)]
        warm, live = log[:4000], log[4000:4000 + args.events]
        fitted = fit_initial_model(warm, settings)
        ModelRegistry(tmp / "models").register(fitted)
        records = await fill_topics(settings, live, len(warm))
        raw = [await raw_consume(settings, records) for _ in range(args.raw_trials)]
        raw_s = statistics.median(raw)
        wk = await worker_run(settings, len(live), tmp)
        worker_eps = 2 * wk["labelled_timed"] / wk["seconds"]
        raw_eps = records / raw_s
        return {
            "events": records, "raw_trials_s": raw, "raw_events_per_s": raw_eps,
            "worker_events_per_s": worker_eps, "worker_over_raw": worker_eps / raw_eps,
            "worker_seconds": wk["seconds"], "path": "one-candidate request + its interaction -> "
            "recommendation + error record -> error memory", "compensation": settings.worker.compensation,
        }
    finally:
        broker.stop()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", help="write results here")
    ap.add_argument("--events", type=int, default=40000, help="logged interactions (x2 records)")
    ap.add_argument("--raw-trials", type=int, default=3)
    a = ap.parse_args()
    out = asyncio.run(main(a))
    print(f"records {out['events']}: raw aiokafka {out['raw_events_per_s']:,.0f} ev/s (median of "
          f"{len(out['raw_trials_s'])}), worker {out['worker_events_per_s']:,.0f} ev/s, "
          f"ratio {out['worker_over_raw']:.3f}")
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(out, indent=2))
