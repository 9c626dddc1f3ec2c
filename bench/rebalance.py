"""Rebalance trials: three workers in one group join, leave, are lost and restart while traffic
flows; each trial is compared with one uninterrupted worker on the same log.

    python bench/rebalance.py --trials 10 --json reports/rebalance.json [--requests 300] [--steps 4]
    python bench/rebalance.py --trials 0 --restore-sizes 1000,10000,50000   # restore time only

Each trial (``reloop.testing.rebalance.run_group_trial``) draws a seeded membership script over up to three
workers (``reloop.testing.rebalance.random_script``: a worker added, stopped with SIGTERM, lost for good
with SIGKILL, or SIGKILLed and restarted on its volume, one step per chunk of the log, at a
seeded fraction of the chunk answered) and checks: every request answered, the same error ids
with the same labels, base predictions and codes as the uninterrupted worker, and the group's
state rebuilt from its ``changelog`` equal to the uninterrupted worker's final state. Copies of
outputs are counted (a worker lost mid-batch may leave one whose compensated score differs).
Also reports every restore of a moved partition: records and bytes read, and the time from
its assignment to the state being rebuilt (the partition's first record is processed right
after). Prints one line per trial and the pass count.

``--restore-sizes``: the restore time of one partition against its state size, through the
broker: a changelog partition holding N pending requests of 20 candidates (written as a worker
writes it, one batch of 40 requests at a time), read from the beginning to the end and rebuilt
(``reloop.processors.hot_restore.changelog_tail``/``changelog_read``, ``reloop.processors.changelog.restore``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reloop.models.registry import ModelRegistry  # noqa: E402
from reloop.ops.broker import EmbeddedBroker  # noqa: E402
from reloop.testing.rebalance import random_script, run_group_trial  # noqa: E402
from reloop.ops.replay import fit_initial_model  # noqa: E402
from reloop.ops.settings import Settings  # noqa: E402
from reloop.ops.simulator import SimConfig, Simulator  # noqa: E402
from reloop.streams.events import Interaction  # noqa: E402

from bench.chaos import OVERRIDES  # noqa: E402 - the chaos trials' small model and windows
from bench.chaos import report_trial  # noqa: E402
from bench.chaos import worker_env as chaos_worker_env  # noqa: E402


def worker_env() -> dict[str, str]:
    """The chaos trials' worker environment, with input checkpoints every 0.5 s."""
    env = chaos_worker_env()
    env.pop("RELOOP_WORKER__REPLICA_SNAPSHOT_EVERY_S", None)
    return {**env, "RELOOP_WORKER__SNAPSHOT_EVERY_S": "0.5"}


def main(args: argparse.Namespace) -> dict:
    sim_config = SimConfig(seed=3, n_users=300, n_items=200)
    base = Settings().with_overrides(**OVERRIDES)
    warm = [e for e in Simulator(sim_config).labelled_log(200) if isinstance(e, Interaction)]
    model = fit_initial_model(warm, base, version="v1")
    broker = EmbeddedBroker()
    broker.start()
    try:
        trials = asyncio.run(run_trials(args, broker, base, model, sim_config))
        curve = asyncio.run(restore_curve(broker, args.restore_sizes)) if args.restore_sizes else []
    finally:
        broker.stop()
    restores = [r for t in trials for r in t.get("details", {}).get("restores", [])]
    out = {"command": " ".join(sys.argv), "trials": len(trials), "passed": sum(t["passed"] for t in trials),
           "requests_per_trial": args.requests, "steps_per_trial": args.steps, "results": trials,
           "restore_curve": curve,
           "restores": [{k: r.get(k) for k in ("partition", "records", "bytes", "pending", "seconds")}
                        for r in restores]}
    print(f"passed {out['passed']}/{out['trials']} trials")
    for r in sorted(out["restores"], key=lambda r: r["bytes"] or 0):
        print(f"restore: partition {r['partition']}, {r['records']} records, {r['bytes']} bytes, "
              f"{r['pending']} pending predictions, {r['seconds']} s")
    for row in curve:
        print(f"restore of {row['pending_requests']} pending requests ({row['records']} records, "
              f"{row['mbytes']} MB): {row['seconds']} s (read {row['read_s']} s, rebuild {row['rebuild_s']} s)")
    return out


async def restore_curve(broker: EmbeddedBroker, sizes: list[int]) -> list[dict]:
    """Restore time of one changelog partition against its size (module doc)."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

    from reloop.ops.kafka import create_topics, topic_name
    from reloop.processors.changelog import changed_records, restore
    from reloop.processors.hot_restore import changelog_read, changelog_tail
    from reloop.processors.metrics import OnlineMetrics
    from reloop.processors.pending import Pending
    from reloop.processors.tasks import FeedbackTasks

    out = []
    for n in sizes:
        s = Settings().with_overrides(kafka={"broker": broker.url, "topic_prefix": f"curve{n}."})
        await create_topics(s.kafka)
        topic = topic_name(s.kafka, "changelog")
        tasks = FeedbackTasks(1e9, 10_000_000, OnlineMetrics())
        tasks.enable_tracking()
        prod = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", max_batch_size=1 << 20,
                                max_request_size=8 << 20, linger_ms=5)
        await prod.start()
        futs = []
        for b0 in range(0, n, 40):
            pend = [Pending(f"r{i}", f"item{k}", f"u{i}", float(i), 0.1, 0.1, "v1", bytes(64), {})
                    for i in range(b0, min(n, b0 + 40)) for k in range(20)]
            tasks.apply(0, pend, [], {"requests": float(b0)})
            for key, value in changed_records(tasks, 0, {"requests": b0 + 40}, "bench"):
                futs.append(await prod.send(topic, value, key=key, partition=0))
        await asyncio.gather(*futs)
        await prod.stop()
        c = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=None, enable_auto_commit=False,
                             auto_offset_reset="earliest", max_partition_fetch_bytes=8 << 20)
        await c.start()
        t0 = time.perf_counter()
        tp = TopicPartition(topic, 0)
        end, _ = await changelog_tail(c, tp)
        records = await changelog_read(c, tp, end)
        t1 = time.perf_counter()
        r = restore(0, records, 1e9, 10_000_000)
        t2 = time.perf_counter()
        await c.stop()
        assert len(r.core.pending) == 20 * n
        out.append({"pending_requests": n, "pending_predictions": 20 * n, "records": r.records,
                    "mbytes": round(r.nbytes / 1e6, 2), "read_s": round(t1 - t0, 3),
                    "rebuild_s": round(t2 - t1, 3), "seconds": round(t2 - t0, 3)})
    return out


async def run_trials(args: argparse.Namespace, broker: EmbeddedBroker, base: Settings, model: Any,
                     sim_config: SimConfig) -> list[dict]:
    trials: list[dict] = []
    for t in range(args.trials):
        seed = args.seed + t
        initial, script = random_script(seed, args.steps, max_workers=3)
        with tempfile.TemporaryDirectory(prefix="reloop-rebalance-") as tmp:
            root = Path(tmp)
            a, b = (base.with_overrides(kafka={"broker": broker.url, "topic_prefix": f"r{seed}{w}.",
                                               "group_id": f"rebalance-{seed}-{w}"},
                                        worker={"data_dir": str(root / w)}) for w in "ab")
            ModelRegistry(Path(a.worker.data_dir) / "models").register(model)
            t0 = time.monotonic()
            try:
                r = await run_group_trial(a, b, seed, root, worker_env(), sim_config=sim_config, initial=initial,
                                          script=script, model=model, requests=args.requests,
                                          identical_copies=False)
                row = {"seed": seed, "passed": r.passed, "checks": r.checks, "details": r.details}
            except Exception as exc:  # a hung or crashed trial is a failed trial, reported
                row = {"seed": seed, "passed": False, "error": f"{type(exc).__name__}: {exc}",
                       "details": {"script": [(s.action, s.worker) for s in script], "initial": initial}}
            row["seconds"] = round(time.monotonic() - t0, 1)
            report_trial(f"trial {t + 1}/{args.trials} seed {seed} start {initial} "
                         f"{[(s.action, s.worker) for s in script]}", row)
            trials.append(row)
    return trials


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--seed", type=int, default=200)
    ap.add_argument("--restore-sizes", type=lambda v: [int(x) for x in v.split(",") if x], default=[],
                    help="pending requests per restored partition, comma-separated")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    result = main(args)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    sys.exit(0 if result["passed"] == result["trials"] else 1)
