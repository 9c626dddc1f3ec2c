"""Speed of the ``errors`` replica with the schema cache: error records per CPU-second through
``ErrorsReplica.apply_batch`` (decode, duplicate filter, reorder buffer, schema cache; no
error memory), fed as polls of ``--poll`` records spread over 4 partitions keyed by user.

    PYTHONPATH=. .venv/bin/python bench/replica_speed.py [--requests 6000] [--poll 5000] [--trials 3]

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

from ops.simulator import SimConfig, Simulator  # noqa: E402
from processors.compensation import NoCompensation  # noqa: E402
from processors.replica import ErrorsReplica  # noqa: E402
from processors.schemas import SchemaCore  # noqa: E402
from processors.telemetry import WorkerTelemetry  # noqa: E402
from state.schema_cache import SchemaCacheConfig  # noqa: E402
from streams.codec import encode  # noqa: E402
from streams.validation import Limits  # noqa: E402
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=6000, help="simulated requests (x 20 candidates)")
    ap.add_argument("--poll", type=int, default=5000, help="records per poll (over 4 partitions)")
    ap.add_argument("--trials", type=int, default=3)
    a = ap.parse_args()
    records = _oracle_records(Simulator(SimConfig(seed=4, shift_at=None)), a.requests)
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
