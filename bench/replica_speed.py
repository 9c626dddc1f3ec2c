"""Speed of the replicas every worker keeps, per CPU-second:

- ``--path errors`` (the schema cache): error records through ``ErrorsReplica.apply_batch``
  (JSON decode, duplicate filter, reorder buffer, schema cache; no error memory), fed as
  polls of ``--poll`` records spread over 4 partitions keyed by user;
- ``--path memory`` (the error memory): memory rows through ``ErrorsReplica.apply_memory``
  (binary batch decode, batch-id filter, the default 64 x 2**16 sketch's write), the same
  simulated records with the codes of a fitted model, one ``memory`` record per scored batch
  of ``--batch`` records (each worker poll of 5,000 inputs closes ~that many windows).

    PYTHONPATH=. .venv/bin/python bench/replica_speed.py [--path memory,errors] [--requests 6000]
        [--poll 5000] [--batch 2000] [--trials 3]

Runs against the tree it is started from, so the same script compares two commits (e.g. a
``git worktree`` of the previous one): ``cd ../old && python /path/to/bench/replica_speed.py``.
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import sys
import time

sys.path.insert(0, os.getcwd())

from aiokafka.partitioner import DefaultPartitioner  # noqa: E402

from reloop.ops.simulator import SimConfig, Simulator  # noqa: E402
from reloop.processors.compensation import NoCompensation  # noqa: E402
from reloop.processors.replica import ErrorsReplica  # noqa: E402
from reloop.processors.schemas import SchemaCore  # noqa: E402
from reloop.processors.telemetry import WorkerTelemetry  # noqa: E402
from reloop.state.schemas.cache import SchemaCacheConfig  # noqa: E402
from reloop.streams.codec import encode  # noqa: E402
from reloop.streams.validation import Limits  # noqa: E402
from tests.processors.test_schema_core import _oracle_records  # noqa: E402

TopicPart = collections.namedtuple("TopicPart", "topic partition")
Message = collections.namedtuple("Message", "offset value")
PARTITIONS = list(range(4))


def partition_logs(records: list) -> dict[int, list[bytes]]:
    """Wire bytes of ``records`` per ``errors`` partition, keyed by user as the worker's producer does."""
    partitioner = DefaultPartitioner()
    logs: dict[int, list[bytes]] = collections.defaultdict(list)
    for r in records:
        logs[partitioner(r.user_id.encode(), PARTITIONS, PARTITIONS)].append(encode(r))
    return logs


def poll(logs: dict[int, list[bytes]], pos: dict[int, int], limits: dict[int, int]) -> dict:
    """One poll: each partition's records from ``pos[p]`` up to ``limits[p]``, as aiokafka's
    ``getmany`` shapes them (TopicPartition -> messages); advances ``pos``."""
    batch = {}
    for p in PARTITIONS:
        take = logs[p][pos[p]:limits[p]]
        if take:
            batch[TopicPart("errors", p)] = [Message(pos[p] + j, v) for j, v in enumerate(take)]
            pos[p] += len(take)
    return batch


def with_model_codes(records: list) -> tuple[list, object, object]:
    """``records`` re-scored by a small model fitted on the simulator (its version and its
    error-memory codes at the default sketch size), and (settings, fitted model)."""
    import msgspec

    from reloop.ops.replay import fit_initial_model
    from reloop.ops.serving import make_compensation
    from reloop.ops.settings import Settings
    from reloop.streams.events import Interaction, pack_codes
    from tests.conftest import SMALL

    s = Settings().with_overrides(**SMALL)
    warm = [e for e in Simulator(SimConfig(seed=5, shift_at=None)).labelled_log(300) if isinstance(e, Interaction)]
    fitted = fit_initial_model(warm, s, version="v1")
    comp = make_compensation(s, fitted.scorer)
    out = []
    for lo in range(0, len(records), 5000):
        part = records[lo:lo + 5000]
        p, hidden = fitted.scorer.score(*comp.encoder.encode([(r.user_id, r.item_id, r.features) for r in part]))
        codes = comp.memory.codes(hidden)
        out += [msgspec.structs.replace(r, base_pred=float(pj), comp_pred=float(pj), model_version=fitted.version,
                                        codes=pack_codes(c)) for r, pj, c in zip(part, p.tolist(), codes)]
    return out, s, fitted


def memory_trials(records: list, batch: int, trials: int) -> list[float]:
    """Memory rows per CPU-second of ``ErrorsReplica.apply_memory`` (fresh replica per trial)."""
    from reloop.ops.serving import make_compensation
    from reloop.processors.error_memory import memory_batches

    records, s, fitted = with_model_codes(records)
    tables = s.error_memory.tables
    logs: dict[int, list[bytes]] = collections.defaultdict(list)  # one producer per user partition
    partitioner = DefaultPartitioner()
    per_part: dict[int, list] = collections.defaultdict(list)
    for r in records:
        per_part[partitioner(r.user_id.encode(), PARTITIONS, PARTITIONS)].append(r)
    for p, recs in per_part.items():
        for lo in range(0, len(recs), batch // len(PARTITIONS)):
            logs[p] += memory_batches(recs[lo:lo + batch // len(PARTITIONS)], tables, s.error_memory.write_sample)
    size = sum(len(v) for b in logs.values() for v in b)
    print(f"{len(records):,} rows in {sum(map(len, logs.values()))} memory records, "
          f"{size / len(records):.0f} bytes per row", flush=True)
    rates = []
    for _ in range(trials):
        replica = ErrorsReplica(make_compensation(s, fitted.scorer), None, Limits(), WorkerTelemetry())
        # resident, as in a running worker: the first touch of a fresh 100 MB sketch page-faults
        # for ~0.25 s, which is start-up cost, not replication cost
        replica.compensation.memory._buckets[...] = 0.0  # type: ignore[attr-defined]
        pos, cpu = dict.fromkeys(PARTITIONS, 0), 0.0
        while any(pos[p] < len(logs[p]) for p in PARTITIONS):
            polled = poll(logs, pos, {p: pos[p] + 1 for p in PARTITIONS})
            t0 = time.process_time()
            replica.apply_memory(polled)
            cpu += time.process_time() - t0
        assert replica.memory_rows == len(records)
        rates.append(len(records) / cpu)
        print(f"{len(records):,} memory rows: {rates[-1]:,.0f} per CPU-second", flush=True)
    return rates


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--path", default="memory,errors", help="memory (error memory), errors (schema cache)")
    ap.add_argument("--requests", type=int, default=6000, help="simulated requests (x 20 candidates)")
    ap.add_argument("--poll", type=int, default=5000, help="errors: records per poll (over 4 partitions)")
    ap.add_argument("--batch", type=int, default=2000, help="memory: rows per scored batch (over 4 partitions)")
    ap.add_argument("--trials", type=int, default=3)
    a = ap.parse_args()
    records = _oracle_records(Simulator(SimConfig(seed=4, shift_at=None)), a.requests)
    if "memory" in a.path:
        rates = memory_trials(records, a.batch, a.trials)
        print(f"median {statistics.median(rates):,.0f} memory rows per CPU-second")
    if "errors" not in a.path:
        return
    logs = partition_logs(records)
    rates = []
    for _ in range(a.trials):
        replica = ErrorsReplica(NoCompensation(), SchemaCore(SchemaCacheConfig()), Limits(), WorkerTelemetry())
        pos, cpu = dict.fromkeys(PARTITIONS, 0), 0.0
        while any(pos[p] < len(logs[p]) for p in PARTITIONS):
            batch = poll(logs, pos, {p: pos[p] + a.poll // len(PARTITIONS) for p in PARTITIONS})
            t0 = time.process_time()
            replica.apply_batch(batch)
            cpu += time.process_time() - t0
        rates.append(len(records) / cpu)
        print(f"{len(records):,} records: {rates[-1]:,.0f} per CPU-second", flush=True)
    print(f"median {statistics.median(rates):,.0f} error records per CPU-second")


if __name__ == "__main__":
    main()
