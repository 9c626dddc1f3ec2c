"""Detection delay the reorder buffer adds: one faulty error stream through ErrorsReplica (4
partitions by user, polls of --poll records with one partition --skew records ahead) vs the
same records straight into SchemaCore in event-time order.

    PYTHONPATH=. .venv/bin/python bench/reorder_delay.py [--skew 2000] [--lateness 0]
"""
from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from aiokafka.partitioner import DefaultPartitioner
from ops.simulator import FaultSpec, SimConfig, Simulator
from processors.compensation import NoCompensation
from processors.replica import ErrorsReplica
from processors.schemas import SchemaCore
from processors.telemetry import WorkerTelemetry
from state.schema_cache import SchemaCacheConfig
from streams.codec import encode
from streams.validation import Limits
from tests.processors.test_schema_core import _oracle_records  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--requests", type=int, default=3000); ap.add_argument("--poll", type=int, default=500)
ap.add_argument("--skew", type=int, default=2000); ap.add_argument("--lateness", type=float, default=0.0)
a = ap.parse_args()
TP = collections.namedtuple("TP", "topic partition"); Msg = collections.namedtuple("Msg", "offset value")
sim = Simulator(SimConfig(seed=4, shift_at=None, faults=(FaultSpec(kind="ctr_collapse", where={"genre": "comedy"},
                                                                   start_frac=0.2, end_frac=0.6),)))
recs = _oracle_records(sim, a.requests)
fault = sim.faults(a.requests)[0]
cfg = SchemaCacheConfig(half_life_s=5.0, reorder_lateness_s=a.lateness)
core = SchemaCore(cfg)
direct = None
for i in range(0, len(recs), a.poll):
    _, al = core.on_batch(recs[i:i + a.poll])
    if al and direct is None:
        direct = (i + a.poll, al[0].ts)
parts = list(range(4)); part = DefaultPartitioner()
logs = collections.defaultdict(list)
for r in recs:
    logs[part(r.user_id.encode(), parts, parts)].append(encode(r))
rep = ErrorsReplica(NoCompensation(), SchemaCore(cfg), Limits(), WorkerTelemetry())
pos, seen, got, wall = dict.fromkeys(parts, 0), 0, None, 0.0
while any(pos[p] < len(logs[p]) for p in parts):
    batch = {}
    for p in parts:  # partition 0 runs --skew records ahead of the others
        lim = (pos[p] + a.poll // 4) if p else max(pos[p] + a.poll // 4, min(pos[q] for q in parts[1:]) + a.skew)
        take = logs[p][pos[p]:lim]
        if take:
            batch[TP("errors", p)] = [Msg(pos[p] + j, v) for j, v in enumerate(take)]
            pos[p] += len(take); seen += len(take)
    t0 = time.process_time(); rep.apply_batch(batch); wall += time.process_time() - t0
    alerts = [m for t, m in rep.outbox if t == "alerts"]
    if alerts and got is None:
        newest = max(rep.reorder.watermarks.values())
        got = (seen, alerts[0].ts, newest)
print(f"fault starts at ts {fault['start_ts'] - recs[0].ts:.2f} s (stream {recs[-1].ts - recs[0].ts:.1f} s, {len(recs)} records)")
print(f"direct SchemaCore (ts order): alert at ts +{direct[1] - recs[0].ts:.2f} s, after {direct[0]} records fed")
print(f"through ErrorsReplica (lateness {a.lateness}, skew {a.skew}): alert at ts +{got[1] - recs[0].ts:.2f} s, "
      f"after {got[0]} records arrived; newest event time arrived then: +{got[2] - recs[0].ts:.2f} s "
      f"(= {got[2] - got[1]:.2f} s after the alert's tick)")
print(f"replica CPU {wall:.2f} s for {len(recs)} records ({len(recs) / wall:,.0f}/s incl. decode); clamped {rep.reorder.clamped}")
