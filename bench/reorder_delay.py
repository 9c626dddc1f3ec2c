"""Detection delay the reorder buffer adds: one faulty error stream through ``ErrorsReplica``
(4 partitions by user, polls of ``--poll`` records with partition 0 ``--skew`` records ahead)
vs. the same records straight into ``SchemaCore`` in event-time order.

    PYTHONPATH=. .venv/bin/python bench/reorder_delay.py [--skew 2000] [--lateness 0]

Prints when the alert fires (event time, records fed / arrived) on both paths and the
replica's CPU throughput, decode included.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reloop.ops.simulator import FaultSpec, SimConfig, Simulator  # noqa: E402
from reloop.processors.compensation import NoCompensation  # noqa: E402
from reloop.processors.replica import ErrorsReplica  # noqa: E402
from reloop.processors.schemas import SchemaCore  # noqa: E402
from reloop.processors.telemetry import WorkerTelemetry  # noqa: E402
from reloop.state.schemas.cache import SchemaCacheConfig  # noqa: E402
from reloop.streams.validation import Limits  # noqa: E402
from tests.processors.test_schema_core import _oracle_records  # noqa: E402

from bench.replica_speed import PARTITIONS, partition_logs, poll  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=3000, help="simulated requests (x 20 candidates)")
    ap.add_argument("--poll", type=int, default=500, help="records per poll (over 4 partitions)")
    ap.add_argument("--skew", type=int, default=2000, help="records partition 0 runs ahead of the others")
    ap.add_argument("--lateness", type=float, default=0.0, help="schemas.reorder_lateness_s")
    a = ap.parse_args()

    sim = Simulator(SimConfig(seed=4, shift_at=None, faults=(
        FaultSpec(kind="ctr_collapse", where={"genre": "comedy"}, start_frac=0.2, end_frac=0.6),)))
    records = _oracle_records(sim, a.requests)
    fault = sim.faults(a.requests)[0]
    cfg = SchemaCacheConfig(half_life_s=5.0, reorder_lateness_s=a.lateness)

    core, direct = SchemaCore(cfg), None
    for i in range(0, len(records), a.poll):
        _, alerts = core.on_batch(records[i:i + a.poll])
        if alerts and direct is None:
            direct = (i + a.poll, alerts[0].ts)

    logs = partition_logs(records)
    replica = ErrorsReplica(NoCompensation(), SchemaCore(cfg), Limits(), WorkerTelemetry())
    assert replica.reorder is not None
    pos, seen, got, cpu = dict.fromkeys(PARTITIONS, 0), 0, None, 0.0
    per_part = a.poll // len(PARTITIONS)
    while any(pos[p] < len(logs[p]) for p in PARTITIONS):
        # partition 0 runs --skew records ahead of the others
        ahead = min(pos[q] for q in PARTITIONS[1:]) + a.skew
        batch = poll(logs, pos, {p: max(pos[p] + per_part, ahead) if p == 0 else pos[p] + per_part
                                 for p in PARTITIONS})
        seen += sum(len(m) for m in batch.values())
        t0 = time.process_time()
        replica.apply_batch(batch)
        cpu += time.process_time() - t0
        alerts = [m for t, m in replica.outbox if t == "alerts"]
        if alerts and got is None:
            got = (seen, alerts[0].ts, max(replica.reorder.watermarks.values()))
    if direct is None or got is None:
        raise SystemExit("no alert fired; nothing to compare")
    t0 = records[0].ts
    print(f"fault starts at ts +{fault['start_ts'] - t0:.2f} s (stream {records[-1].ts - t0:.1f} s, "
          f"{len(records)} records)")
    print(f"direct SchemaCore (ts order): alert at ts +{direct[1] - t0:.2f} s, after {direct[0]} records fed")
    print(f"through ErrorsReplica (lateness {a.lateness}, skew {a.skew}): alert at ts +{got[1] - t0:.2f} s, "
          f"after {got[0]} records arrived; newest event time arrived then: +{got[2] - t0:.2f} s "
          f"(= {got[2] - got[1]:.2f} s after the alert's tick)")
    print(f"replica CPU {cpu:.2f} s for {len(records)} records ({len(records) / cpu:,.0f}/s incl. decode); "
          f"clamped {replica.reorder.clamped}")


if __name__ == "__main__":
    main()
