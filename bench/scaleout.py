"""Scale-out (capacity part): what each worker costs, the capacity table, the write budget.

    PYTHONPATH=. .venv/bin/python bench/scaleout.py --json reports/scaleout.json
        [--parts capacity,quality] [--requests 1500] [--trials 3] [--data /work/shared/data/ml-100k]

- **capacity**: measured in this process on the worker's own cores and codecs, CPU seconds
  (``time.process_time``) of

  * the replica, per 1,000 memory rows of the cluster: ``ErrorsReplica.apply_memory`` of
    binary ``memory`` batches (decode, duplicate filter, the default 64 x 2**16 sketch's
    write), batches of one scored batch's rows (``--candidates`` x the requests of a poll);
  * the schema cache, per 1,000 ``errors`` records (JSON decode, reorder, distillation): paid
    by the one elected worker that distils (or by every worker where each one runs it);
  * a worker's own requests, per 1,000, with 20 and with 100 candidates: decode of the
    request and of its interactions, ``ScoringCore.score`` (onnxruntime, error-memory read,
    ranking), the feedback join (``FeedbackTasks``), the encoding of its recommendation, its
    error records and its memory batches (the I/O client's own CPU is in
    ``bench/throughput.py``'s figures, not here).

  From them, the capacity of ``N`` workers (one core each): a worker spends
  ``r * c_own + N * r * cand * w * c_row`` CPU seconds per second at ``r`` own requests/s
  (``cand`` candidates, every one becomes an error record, ``w`` the write rate), so
  ``r = 1 / (c_own + N * cand * w * c_row)`` and the cluster serves ``N * r``.
- **quality**: the write budget's effect on quality: ML-100K prequential AUC gain of the error
  memory over the slow model alone at write rates 100%, 30% and 10%
  (``error_memory.write_sample``; same protocol as ``bench/error_memory_quality.py``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

WORKERS = (1, 2, 4, 8, 16, 32, 64)


def quality(data: str, rates: list[float], retrain_every: int) -> dict[str, Any]:
    """AUC gain (points) of the sketch over the base model at each write rate, on ML-100K
    (retrained models shared between the runs, as in ``bench/error_memory_quality.py``)."""
    from reloop.ops.logs import read_movielens
    from reloop.ops.replay import ReplayEngine
    from reloop.ops.serving import compensation_factory
    from reloop.ops.settings import Settings

    loaded = read_movielens(data)
    s = Settings().with_overrides(replay={"retrain_every": retrain_every})
    cache: dict = {}
    t0 = time.perf_counter()
    base = ReplayEngine(s.with_overrides(worker={"compensation": "none"}), None).run(loaded, model_cache=cache).report
    print(f"  base AUC {base['auc_compensated']:.4f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    out: dict[str, Any] = {"base_auc": base["auc_compensated"], "base_logloss": base["logloss_compensated"]}
    for rate in rates:
        t0 = time.perf_counter()
        sr = s.with_overrides(error_memory={"write_sample": rate})
        rep = ReplayEngine(sr, compensation_factory(sr)).run(loaded, model_cache=cache).report
        out[f"{rate:g}"] = {"auc": rep["auc_compensated"],
                            "auc_gain_points": 100 * (rep["auc_compensated"] - base["auc_compensated"]),
                            "logloss_gain": base["logloss_compensated"] - rep["logloss_compensated"]}
        print(f"  write rate {rate:.0%}: AUC {rep['auc_compensated']:.4f} "
              f"({out[f'{rate:g}']['auc_gain_points']:+.2f} points, {time.perf_counter() - t0:.0f} s)", flush=True)
    return out


def _fitted(candidates: int):
    import msgspec  # noqa: F401

    from reloop.ops.replay import fit_initial_model
    from reloop.ops.settings import Settings
    from reloop.ops.simulator import SimConfig, Simulator
    from reloop.streams.events import Interaction
    from tests.conftest import SMALL

    s = Settings().with_overrides(**SMALL)
    warm = [e for e in Simulator(SimConfig(seed=5, shift_at=None)).labelled_log(300) if isinstance(e, Interaction)]
    return s, fit_initial_model(warm, s, version="v1")


def own_requests_cost(s: Any, fitted: Any, candidates: int, n_requests: int, poll_requests: int = 100
                      ) -> tuple[float, list[bytes]]:
    """CPU seconds per 1,000 own requests of ``candidates`` each (module docstring), and the
    memory batches they produced (wire bytes, for the replica measurement)."""
    from reloop.ops.serving import make_compensation
    from reloop.ops.simulator import SimConfig, Simulator
    from reloop.processors.error_memory import memory_batches
    from reloop.processors.scoring import ScoringCore
    from reloop.processors.tasks import FeedbackTasks
    from reloop.processors.metrics import OnlineMetrics
    from reloop.streams.codec import decode_event, encode
    from reloop.streams.events import Interaction, RecommendationRequest

    sim = Simulator(SimConfig(seed=7, shift_at=None, candidates_per_request=candidates))
    events = [e for e in sim.events(n_requests) if isinstance(e, (RecommendationRequest, Interaction))]
    raw = [(e.__class__, encode(e)) for e in events]
    comp = make_compensation(s, fitted.scorer)
    comp.memory._buckets[...] = 0.0  # resident, as in a running worker
    scoring = ScoringCore(fitted.scorer, comp)
    tasks = FeedbackTasks(s.worker.attribution_window_s, 1_000_000, OnlineMetrics())
    limits = s.limits
    em = s.error_memory
    batches: list[bytes] = []
    n_req, cpu = 0, 0.0
    # polls of ``poll_requests`` requests with the interactions logged among them
    starts = [i for i, (k, _) in enumerate(raw) if k is RecommendationRequest][::poll_requests] + [len(raw)]
    end = max(e.ts for e in events) + 10 * s.worker.attribution_window_s
    for lo, hi in zip(starts, starts[1:] + [None]):
        t0 = time.process_time()
        reqs, inter = [], []
        for kind, b in raw[lo:hi] if hi is not None else []:  # last: windows close (a later poll's time)
            ev = decode_event(b, kind, limits)
            (reqs if kind is RecommendationRequest else inter).append(ev)
        recs, pending = scoring.score(reqs)
        times = tasks.stream_times(0, [r.ts for r in reqs] if hi is not None else [end],
                                   [e.ts for e in inter] if hi is not None else [end])
        errors = tasks.apply(0, pending, inter, times)
        out = [encode(r) for r in recs] + [encode(e) for e in errors]
        mem = memory_batches(errors, em.tables, em.write_sample)
        cpu += time.process_time() - t0
        del out
        batches += mem
        n_req += len(reqs)
    return 1000 * cpu / n_req, batches


def replica_cost(s: Any, fitted: Any, batches: list[bytes], trials: int) -> tuple[float, float]:
    """(CPU seconds per 1,000 memory rows, median rows per CPU-second) of ``apply_memory``."""
    import collections

    from reloop.ops.serving import make_compensation
    from reloop.processors.replica import ErrorsReplica
    from reloop.processors.telemetry import WorkerTelemetry
    from reloop.streams.validation import Limits

    TP = collections.namedtuple("TP", "topic partition")
    Msg = collections.namedtuple("Msg", "offset value")
    rates = []
    for _ in range(trials):
        r = ErrorsReplica(make_compensation(s, fitted.scorer), None, Limits(), WorkerTelemetry())
        r.compensation.memory._buckets[...] = 0.0  # type: ignore[attr-defined]
        cpu = 0.0
        for i, b in enumerate(batches):
            t0 = time.process_time()
            r.apply_memory({TP("memory", 0): [Msg(i, b)]})
            cpu += time.process_time() - t0
        rates.append(r.memory_rows / cpu)
    med = statistics.median(rates)
    return 1000 / med, med


def schema_cost(n_requests: int) -> float:
    """CPU seconds per 1,000 ``errors`` records through the schema-cache replica."""
    from replica_speed import PARTITIONS, partition_logs, poll

    from reloop.ops.simulator import SimConfig, Simulator
    from reloop.processors.compensation import NoCompensation
    from reloop.processors.replica import ErrorsReplica
    from reloop.processors.schemas import SchemaCore
    from reloop.processors.telemetry import WorkerTelemetry
    from reloop.state.schemas.cache import SchemaCacheConfig
    from reloop.streams.validation import Limits
    from tests.processors.test_schema_core import _oracle_records

    records = _oracle_records(Simulator(SimConfig(seed=4, shift_at=None)), n_requests)
    logs = partition_logs(records)
    r = ErrorsReplica(NoCompensation(), SchemaCore(SchemaCacheConfig()), Limits(), WorkerTelemetry())
    pos, cpu = dict.fromkeys(PARTITIONS, 0), 0.0
    while any(pos[p] < len(logs[p]) for p in PARTITIONS):
        batch = poll(logs, pos, {p: pos[p] + 1250 for p in PARTITIONS})
        t0 = time.process_time()
        r.apply_batch(batch)
        cpu += time.process_time() - t0
    return 1000 * cpu / len(records)


def capacity_table(own: dict[int, float], row_cost: float, schema_cost_s: float, write_rates: list[float]
                   ) -> list[dict[str, Any]]:
    """Cluster requests/s for ``WORKERS`` workers (module docstring), per candidates and write rate;
    the elected worker also distils the schema cache (``schema_cost_s`` per 1,000 records)."""
    rows = []
    for n in WORKERS:
        row: dict[str, Any] = {"workers": n}
        for cand, c_own in own.items():
            for w in write_rates:
                per_worker = 1.0 / (c_own / 1000 + n * cand * w * row_cost / 1000)
                row[f"rps_{cand}c_w{w:g}"] = n * per_worker
                row[f"replica_share_{cand}c_w{w:g}"] = n * per_worker * cand * w * row_cost / 1000
        rows.append(row)
    return rows


def capacity(n_requests: int, trials: int, write_rates: list[float]) -> dict[str, Any]:
    s, fitted = _fitted(20)
    own: dict[int, float] = {}
    batches: list[bytes] = []
    for cand in (20, 100):
        costs = []
        for _ in range(trials):
            c, b = own_requests_cost(s, fitted, cand, n_requests // (cand // 20))
            costs.append(c)
        own[cand] = statistics.median(costs)
        if cand == 20:
            batches = b
        print(f"own requests, {cand} candidates: {own[cand]:.3f} CPU-s per 1,000", flush=True)
    row_cost, rows_per_s = replica_cost(s, fitted, batches, trials)
    print(f"replica: {row_cost * 1000:.3f} CPU-ms per 1,000 memory rows ({rows_per_s:,.0f} rows per CPU-second, "
          f"{np.mean([len(b) for b in batches]):.0f} bytes per batch record)", flush=True)
    sc = schema_cost(max(1000, n_requests // 2))
    print(f"schema cache: {sc:.3f} CPU-s per 1,000 errors records (the elected worker)", flush=True)
    table = capacity_table(own, row_cost, sc, write_rates)
    # the one distilling worker reads every error record of the cluster: past this many
    # requests/s (its whole core) the schema cache falls behind, whatever the cluster size
    schema_limit = {cand: 1000 / (sc * cand) for cand in own}
    print("schema cache keeps up to " + ", ".join(f"{r:,.0f} req/s at {c} candidates" for c, r in schema_limit.items()),
          flush=True)
    return {"own_cpu_s_per_1000_requests": own, "replica_cpu_s_per_1000_rows": row_cost,
            "replica_rows_per_cpu_s": rows_per_s, "schema_cache_cpu_s_per_1000_errors": sc,
            "schema_cache_limit_requests_per_s": schema_limit,
            "memory_batches": len(batches), "table": table}


def print_table(cap: dict[str, Any], write_rates: list[float]) -> None:
    cols = [(c, w) for c in (20, 100) for w in write_rates]
    print("| workers | " + " | ".join(f"req/s, {c} cand., write {w:.0%}" for c, w in cols) + " |")
    print("|---:|" + "---:|" * len(cols))
    for row in cap["table"]:
        print(f"| {row['workers']} | " + " | ".join(
            f"{row[f'rps_{c}c_w{w:g}']:,.0f} ({row[f'replica_share_{c}c_w{w:g}']:.0%} replica)" for c, w in cols) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="capacity,quality")
    ap.add_argument("--requests", type=int, default=1500, help="capacity: simulated requests at 20 candidates")
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--write-rates", default="1,0.3,0.1")
    ap.add_argument("--data", default="/work/shared/data/ml-100k")
    ap.add_argument("--retrain-every", type=int, default=20000)
    ap.add_argument("--json")
    a = ap.parse_args()
    rates = [float(x) for x in a.write_rates.split(",")]
    out: dict[str, Any] = {}
    if "capacity" in a.parts:
        out["capacity"] = capacity(a.requests, a.trials, rates)
        print_table(out["capacity"], rates)
    if "quality" in a.parts:
        out["write_budget_quality"] = q = quality(a.data, rates, a.retrain_every)
        print("| write rate | AUC | AUC gain (points) |\n|---:|---:|---:|")
        for r in rates:
            print(f"| {r:.0%} | {q[f'{r:g}']['auc']:.4f} | {q[f'{r:g}']['auc_gain_points']:+.2f} |")
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
