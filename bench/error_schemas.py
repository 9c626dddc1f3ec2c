"""Error-schema cache on the simulator with injected faults: detection, localisation, noise.

Per seed:

1. simulate ``--warmup-requests + --requests`` requests (prequential labelled log, no
   segment shift) with four faults in the evaluated part, whose slices are drawn per seed:
   ``ctr_collapse`` on ``genre=G`` (CTR x 0.05), ``label_shift`` on ``age_bucket=A`` (logit
   +2), ``broken_feature`` on ``device=D`` (candidates lose their ``genre``), and
   ``label_shift`` on the pair ``age_bucket=A2 & device=D2`` (logit +2); each lasts
   ``--fault-frac`` of the evaluated requests, with clean gaps between them;
2. train the slow model on the warm-up part (``reloop.ops.replay.fit_initial_model``);
3. score the rest prequentially in 1-second chunks (``ScoringCore.score_rows``; codes of an
   error memory's first tables from the hidden vectors) and build ``ErrorRecord``s;
4. feed them to ``SchemaCore`` and collect its alerts; the same model scores the same seed's
   log without faults (control run) to count false alerts.

Reported per fault: affected events (records in the slice since the fault start) until the
first ``new`` alert whose signature shares a predicate with the slice (target < 1,000); top-1
localisation: the active schema with the largest impact among those promoted since the
fault start, taken when the fault ends, has exactly the injected signature (target >= 90%
over seeds); seconds from the fault end until every schema promoted during it is resolved.
Overall: false alerts per 100k clean events in the control runs (target < 1), alerts during
fault runs that overlap no fault window (+ ``--grace-s``), cache bytes, and error records
per second through ``SchemaCore.on_batch`` (one core; target >= 50k/s), by wall clock and by
process CPU time (the wall figure drops on a shared, loaded machine).

``--bias`` measures the schema-level bias instead: prequential AUC / log loss of the slow
model (``base``), the error-memory compensation (``compensated``, default sketch, half-life
``--em-half-life``), compensation plus the schema bias on candidates whose evidence is below
``--cold-evidence`` (``compensated+schema``), and the bias alone (``base+schema``), on the
same stream and model; overall, on the first ``--bias-first`` affected events of each fault,
on each fault's slice and on each fault's whole window; plus the added cost per
100-candidate request.

``--mode pipeline`` (or ``both``, next to the above) takes the error records from the real
feedback path instead (:mod:`bench._schema_pipeline`): the simulator's live requests and
clicks, joined by ``FeedbackTasks`` with attribution windows, through the worker's reorder
buffer into ``SchemaCore``, scored with the simulator's pre-shift (calibrated) probabilities.
Per seed ``7 + k`` it runs a clean stream and the main job's stream (``reloop run``'s shift of
``segment=s1``), and reports false alerts per 100k records (clean; main job before its shift),
and for the shift: events of ``segment=s1`` to the first alert naming it, top-1 signature 60 s
after the shift, directions against the truth, stray alerts. ``--event-time label`` feeds the
old clock (schema version 1) for comparison.

Usage::

    PYTHONPATH=. .venv/bin/python bench/error_schemas.py --json reports/error_schemas.json --seeds 5
    PYTHONPATH=. .venv/bin/python bench/error_schemas.py --mode pipeline --json reports/error_schemas_pipeline.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from bench import _schema_pipeline
from reloop.ops.replay import fit_initial_model
from reloop.ops.settings import Settings
from reloop.ops.simulator import AGE_BUCKETS, DEVICES, GENRES, FaultSpec, SimConfig, Simulator
from reloop.models.metrics import auc, logloss
from reloop.processors.error_memory import ErrorMemoryCompensation
from reloop.processors.schemas import SchemaAlert, SchemaCore
from reloop.processors.scoring import ScoringCore
from reloop.state.error_memory.memory import ErrorMemory, ErrorMemoryConfig
from reloop.state.schemas.cache import SchemaCacheConfig
from reloop.streams.events import ErrorRecord, Interaction


def make_faults(seed: int, warm_frac: float, fault_frac: float) -> tuple[FaultSpec, ...]:
    """Four faults with per-seed slices, spread evenly over the evaluated part of the run."""
    rng = np.random.default_rng(1000 + seed)
    genre = str(rng.choice(GENRES))
    ages = [str(a) for a in rng.choice(AGE_BUCKETS, 2, replace=False)]
    devices = [str(rng.choice(("tv", "web"))), str(rng.choice(DEVICES))]  # a minority device breaks
    kinds = [("ctr_collapse", {"genre": genre}, 0.95), ("label_shift", {"age_bucket": ages[0]}, 2.0),
             ("broken_feature", {"device": devices[0]}, 0.0),
             ("label_shift", {"age_bucket": ages[1], "device": devices[1]}, 2.0)]
    span = 1.0 - warm_frac
    out = []
    for j, (kind, where, magnitude) in enumerate(kinds):
        start = warm_frac + span * (0.06 + j * 0.235)
        out.append(FaultSpec(kind=kind, where=where, start_frac=start, end_frac=start + span * fault_frac,
                             magnitude=magnitude))
    return tuple(out)


def error_stream(scoring: ScoringCore, memory: ErrorMemory, rows: list[Interaction], chunk_s: float,
                 code_tables: int):
    """Yield lists of ErrorRecords, one per ``chunk_s`` seconds of event time (scored first)."""
    ts = np.fromiter((r.ts for r in rows), np.float64, len(rows))
    edges = np.searchsorted(ts, np.arange(ts[0], ts[-1] + chunk_s, chunk_s), side="left").tolist() + [len(rows)]
    version = scoring.model_version
    for lo, hi in zip(edges[:-1], edges[1:]):
        if hi <= lo:
            continue
        batch = rows[lo:hi]
        base, _, hidden = scoring.score_rows([(r.user_id, r.item_id, r.features) for r in batch], float(ts[hi - 1]))
        codes = memory.codes(hidden)[:, :code_tables].tolist()
        yield [ErrorRecord(error_id=f"log-{lo + j}", user_id=r.user_id, item_id=r.item_id, ts=r.ts, label=r.label,
                           base_pred=float(b), comp_pred=float(b), model_version=version, codes=c,
                           features=r.features)
               for j, (r, b, c) in enumerate(zip(batch, base.tolist(), codes))]


def run_core(stream, cache_config: SchemaCacheConfig, cut_times: list[float]):
    """Feed the stream to a SchemaCore; returns alerts, rankings at ``cut_times``, timings."""
    core = SchemaCore(cache_config)
    alerts: list[SchemaAlert] = []
    rankings: dict[float, list[dict[str, Any]]] = {}
    cuts = sorted(cut_times)
    spent, cpu, n, batches, peak_bytes = 0.0, 0.0, 0, 0, 0
    for records in stream:
        # split at cut times so the ranking is read exactly when a fault ends
        ts = np.fromiter((r.ts for r in records), np.float64, len(records))
        parts, lo = [], 0
        for c in cuts:
            k = int(np.searchsorted(ts, c, side="left"))
            if k < len(records) and c not in rankings:
                parts.append((records[lo:k], c))
                lo = k
        parts.append((records[lo:], None))
        for part, cut in parts:
            if part:
                t0, c0 = time.perf_counter(), time.process_time()
                _, new_alerts = core.on_batch(part)
                spent += time.perf_counter() - t0
                cpu += time.process_time() - c0
                n += len(part)
                alerts += new_alerts
            if cut is not None:
                rankings[cut] = [{"signature": s.signature, "z": s.z, "impact": s.impact, "first_seen": s.first_seen}
                                 for s in core.schemas()]
        batches += 1
        if batches % 30 == 0:
            peak_bytes = max(peak_bytes, core.cache.nbytes)
    peak_bytes = max(peak_bytes, core.cache.nbytes)
    return core, alerts, rankings, {"records": n, "seconds_in_core": spent, "cpu_seconds_in_core": cpu,
                                    "nbytes": peak_bytes}


def _matches(features: dict, where: dict[str, str]) -> bool:
    return all(features.get(k) == v for k, v in where.items())


def prepare(seed: int, args: argparse.Namespace):
    """The seed's faulty log, its ground truth, and the slow model fitted on its warm-up part."""
    n_total = args.warmup_requests + args.requests
    warm_frac = args.warmup_requests / n_total
    faults = make_faults(seed, warm_frac, args.fault_frac)
    sim = Simulator(SimConfig(seed=seed, shift_at=None, faults=faults))
    truth = sim.faults(n_total)
    log = [e for e in sim.labelled_log(n_total) if isinstance(e, Interaction)]
    n_warm = args.warmup_requests * sim.config.candidates_per_request
    settings = Settings().with_overrides(train={"epochs": args.epochs})
    t0 = time.perf_counter()
    fitted = fit_initial_model(log[:n_warm], settings, version="v1")
    return sim, truth, log, n_warm, fitted, time.perf_counter() - t0


def evaluate_seed(seed: int, args: argparse.Namespace) -> dict[str, Any]:
    n_total = args.warmup_requests + args.requests
    sim, truth, log, n_warm, fitted, fit_s = prepare(seed, args)
    scoring = ScoringCore(fitted.scorer)
    memory = ErrorMemory(fitted.scorer.hidden_dim, ErrorMemoryConfig(tables=8, bits=8))
    cache_config = SchemaCacheConfig(**({"half_life_s": args.half_life} if args.half_life else {}))
    rows = log[n_warm:]
    ends = [f["end_ts"] for f in truth if f["end_ts"] is not None]
    core, alerts, rankings, perf = run_core(error_stream(scoring, memory, rows, 1.0, cache_config.code_tables),
                                            cache_config, ends)
    last_ts = rows[-1].ts
    per_fault = []
    attributed: set[str] = set()
    for f in truth:
        start, end = f["start_ts"], f["end_ts"] if f["end_ts"] is not None else last_ts
        slice_preds = set(f["signature"])
        hit_ts = np.array(sorted(r.ts for r in rows if start <= r.ts < end and _matches(r.features, f["where"])))
        in_window = [a for a in alerts if a.kind == "new" and start <= a.ts < end + args.grace_s]
        attributed |= {a.alert_id for a in in_window}
        overlapping = [a for a in in_window if slice_preds & set(a.signature)]
        first = overlapping[0] if overlapping else None
        ranking = [s for s in rankings.get(end, []) if s["first_seen"] >= start]
        top1 = ranking[0]["signature"] if ranking else None
        promoted = {a.schema_id: a.ts for a in in_window if a.ts < end}  # promoted for this fault
        done_at = {}
        for sid, t_new in promoted.items():  # its first resolution after that promotion
            ends = [a.ts for a in alerts if a.kind == "resolved" and a.schema_id == sid and a.ts >= t_new]
            if ends:
                done_at[sid] = min(ends)
        resolve_s = (max(0.0, max(done_at.values()) - end)
                     if promoted and len(done_at) == len(promoted) else None)
        per_fault.append({
            "kind": f["kind"], "signature": f["signature"], "start_ts": start, "end_ts": end,
            "affected_events": int(hit_ts.size),
            "detected": first is not None and first.ts < end,
            "events_to_detect": int(np.searchsorted(hit_ts, first.ts, side="left")) if first else None,
            "seconds_to_detect": (first.ts - start) if first else None,
            "first_alert": first.signature if first else None,
            "first_alert_description": first.description if first else None,
            "top1": top1, "top1_correct": top1 is not None and sorted(top1) == sorted(f["signature"]),
            "alerts_in_window": [a.signature for a in in_window],
            "resolve_s": resolve_s,
        })
    stray = [a for a in alerts if a.kind == "new" and a.alert_id not in attributed]
    # control: the same seed's traffic without faults, same model
    clean_sim = Simulator(SimConfig(seed=seed, shift_at=None))
    clean_rows = [e for e in clean_sim.labelled_log(n_total) if isinstance(e, Interaction)][n_warm:]
    _, clean_alerts, _, clean_perf = run_core(error_stream(scoring, memory, clean_rows, 1.0, cache_config.code_tables),
                                              cache_config, [])
    false_new = [a for a in clean_alerts if a.kind == "new"]
    return {
        "seed": seed, "faults": per_fault, "fit_seconds": fit_s, "model_holdout": fitted.metrics,
        "fault_run": perf, "stray_alerts": [a.description for a in stray],
        "control_run": {**clean_perf, "false_alerts": len(false_new),
                        "false_alert_descriptions": [a.description for a in false_new]},
        "final_schemata": [s.signature for s in core.schemas()],
    }


def summarise(seeds: list[dict[str, Any]]) -> dict[str, Any]:
    faults = [f for s in seeds for f in s["faults"]]
    det = [f["events_to_detect"] for f in faults if f["detected"]]
    resolve = [f["resolve_s"] for f in faults if f["resolve_s"] is not None]
    clean_events = sum(s["control_run"]["records"] for s in seeds)
    false = sum(s["control_run"]["false_alerts"] for s in seeds)
    recs = sum(s["fault_run"]["records"] + s["control_run"]["records"] for s in seeds)
    secs = sum(s["fault_run"]["seconds_in_core"] + s["control_run"]["seconds_in_core"] for s in seeds)
    cpu = sum(s["fault_run"]["cpu_seconds_in_core"] + s["control_run"]["cpu_seconds_in_core"] for s in seeds)
    by_kind: dict[str, dict[str, Any]] = {}
    for f in faults:
        k = by_kind.setdefault(f["kind"] + ("_pair" if len(f["signature"]) > 1 else ""), {"n": 0, "detected": 0,
                                                                                         "top1": 0, "etd": []})
        k["n"] += 1
        k["detected"] += f["detected"]
        k["top1"] += f["top1_correct"]
        if f["detected"]:
            k["etd"].append(f["events_to_detect"])
    return {
        "faults": len(faults), "detected": len(det),
        "events_to_detect_median": float(np.median(det)) if det else None,
        "events_to_detect_max": int(max(det)) if det else None,
        "detected_under_1000": sum(d < 1000 for d in det),
        "top1_localisation": sum(f["top1_correct"] for f in faults) / max(1, len(faults)),
        "resolve_s_median": float(np.median(resolve)) if resolve else None,
        "resolve_s_max": float(max(resolve)) if resolve else None,
        "resolved": len(resolve),
        "false_alerts": false, "clean_events": clean_events,
        "false_alerts_per_100k_clean": false / clean_events * 1e5 if clean_events else None,
        "stray_alerts_in_fault_runs": sum(len(s["stray_alerts"]) for s in seeds),
        "cache_bytes_max": max(max(s["fault_run"]["nbytes"], s["control_run"]["nbytes"]) for s in seeds),
        "records_per_s_in_core": recs / secs if secs else None,
        "records_per_cpu_s_in_core": recs / cpu if cpu else None,
        "by_kind": {k: {"n": v["n"], "detected": v["detected"], "top1": v["top1"],
                        "events_to_detect_median": float(np.median(v["etd"])) if v["etd"] else None}
                    for k, v in by_kind.items()},
    }


def print_table(seeds: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    print(f"{'seed':>4}  {'kind':15}  {'slice':32}  {'affected':>8}  {'to_detect':>9}  {'top1':5}  "
          f"{'resolve_s':>9}  top-ranked")
    for s in seeds:
        for f in s["faults"]:
            etd = "-" if f["events_to_detect"] is None else str(f["events_to_detect"])
            res = "-" if f["resolve_s"] is None else f"{f['resolve_s']:.1f}"
            print(f"{s['seed']:>4}  {f['kind']:15}  {' & '.join(f['signature']):32}  {f['affected_events']:>8}  "
                  f"{etd:>9}  {'yes' if f['top1_correct'] else 'NO':5}  {res:>9}  "
                  f"{' & '.join(f['top1'] or ['-'])}")
    for key, value in summary.items():
        if key != "by_kind":
            print(f"{key:32} {value}")
    for kind, v in summary["by_kind"].items():
        print(f"  {kind:22} {v}")


# --------------------------------------------------------------------------- schema bias (--bias)

VARIANTS = ("base", "compensated", "compensated+schema", "compensated+schema(ev<10)", "compensated+schema(all)",
            "base+schema")


def bias_seed(seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """Prequential quality of the four variants on one seed's faulty stream (same model).

    Per 1-second chunk: score (base, error-memory compensated with evidence, and both with the
    schema bias applied where the evidence is cold), then apply the chunk's error records to
    the error memory and the schema cache (a chunk is scored before its feedback applies).
    """
    sim, truth, log, n_warm, fitted, _ = prepare(seed, args)
    settings = Settings().with_overrides(error_memory={"half_life_s": args.em_half_life})
    comp = ErrorMemoryCompensation(ErrorMemory(fitted.scorer.hidden_dim, settings.error_memory), fitted.scorer,
                                   rekey_window=0)
    cfg = msgspec.structs.replace(SchemaCacheConfig(**({"half_life_s": args.half_life} if args.half_life else {})),
                                  bias_when_cold=True, cold_evidence=args.cold_evidence)
    schemas = SchemaCore(cfg)
    scoring = ScoringCore(fitted.scorer, comp, schemas=schemas)
    rows = log[n_warm:]
    ts = np.fromiter((r.ts for r in rows), np.float64, len(rows))
    edges = np.searchsorted(ts, np.arange(ts[0], ts[-1] + 1.0, 1.0), side="left").tolist() + [len(rows)]
    cols: dict[str, list[np.ndarray]] = {k: [] for k in (*VARIANTS, "evidence")}
    request_us: list[float] = []
    n_matched = 0
    for lo, hi in zip(edges[:-1], edges[1:]):
        if hi <= lo:
            continue
        batch = rows[lo:hi]
        triples = [(r.user_id, r.item_id, r.features) for r in batch]
        base, (scores, evidence, codes), _ = scoring.score_rows(triples, float(ts[hi - 1]))
        t0 = time.perf_counter()  # the added cost of one 100-candidate request (schemata active)
        scoring.apply_schemas(triples[:100], "v1", scores[:100], evidence[:100], codes[:100])
        if len(schemas.cache.matcher):
            request_us.append((time.perf_counter() - t0) * 1e6)
        matched, with_schema = scoring.apply_schemas(triples, "v1", scores, evidence, codes)
        _, ev10 = scoring.apply_schemas(triples, "v1", scores, np.where(evidence < 10.0, 0.0, np.inf), codes)
        _, every = scoring.apply_schemas(triples, "v1", scores, np.zeros_like(evidence), codes)
        n_matched += sum(bool(m) for m in matched)
        _, base_schema = scoring.apply_schemas(triples, "v1", base, np.zeros_like(evidence), codes)
        for k, v in zip((*VARIANTS, "evidence"), (base, scores, with_schema, ev10, every, base_schema, evidence)):
            cols[k].append(np.asarray(v, np.float64))
        records = [ErrorRecord(error_id=f"log-{lo + j}", user_id=r.user_id, item_id=r.item_id, ts=r.ts, label=r.label,
                               base_pred=float(b), comp_pred=float(c), model_version="v1", codes=k,
                               features=r.features)
                   for j, (r, b, c, k) in enumerate(zip(batch, base.tolist(), scores.tolist(), codes.tolist()))]
        comp.apply_errors(records)
        schemas.on_batch(records)
    pred = {k: np.concatenate(v) for k, v in cols.items()}
    y = np.fromiter((r.label for r in rows), np.float64, len(rows))

    def quality(mask: np.ndarray) -> dict[str, Any]:
        out: dict[str, Any] = {"n": int(mask.sum()), "cold": int((mask & (pred["evidence"] < args.cold_evidence)).sum())}
        for k in VARIANTS:
            out[k] = {"auc": auc(y[mask], pred[k][mask]), "logloss": logloss(y[mask], pred[k][mask])}
        return out

    per_fault = []
    for f in truth:
        in_slice = np.array([_matches(r.features, f["where"]) for r in rows]) & (ts >= f["start_ts"])
        in_slice &= ts < f["end_ts"]
        first = np.flatnonzero(in_slice)[: args.bias_first]
        head = np.zeros(len(rows), bool)
        head[first] = True
        window = (ts >= f["start_ts"]) & (ts < f["end_ts"])
        per_fault.append({"kind": f["kind"], "signature": f["signature"], "slice_first": quality(head),
                          "slice_all": quality(in_slice), "window_all": quality(window)})
    return {"seed": seed, "overall": quality(np.ones(len(rows), bool)), "faults": per_fault,
            "match_us_per_request": request_us, "rows": len(rows), "rows_matched": n_matched}


def summarise_bias(seeds: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean over seeds (and faults) of each variant's AUC / log loss per evaluation set."""
    def mean(sets: list[dict[str, Any]]) -> dict[str, Any]:
        return {k: {m: float(np.nanmean([q[k][m] for q in sets])) for m in ("auc", "logloss")} for k in VARIANTS}

    out = {"overall": mean([s["overall"] for s in seeds])}
    for part in ("slice_first", "slice_all", "window_all"):
        out[part] = mean([f[part] for s in seeds for f in s["faults"]])
        out[part + "_cold_fraction"] = float(np.mean([f[part]["cold"] / max(1, f[part]["n"])
                                                      for s in seeds for f in s["faults"]]))
    us = [t for s in seeds for t in s["match_us_per_request"]]
    out["match_us_per_100_candidate_request"] = {"median": float(np.median(us)) if us else None,
                                                 "p90": float(np.percentile(us, 90)) if us else None}
    out["rows_matched_fraction"] = sum(s["rows_matched"] for s in seeds) / sum(s["rows"] for s in seeds)
    return out


def bias_main(args: argparse.Namespace) -> int:
    seeds = [bias_seed(seed, args) for seed in range(args.seeds)]
    summary = summarise_bias(seeds)
    for part in ("overall", "slice_first", "slice_all", "window_all"):
        for k, v in summary[part].items():
            print(f"{part:12} {k:26} AUC {v['auc']:.4f}  log loss {v['logloss']:.4f}")
    print({k: v for k, v in summary.items() if k not in ("overall", "slice_first", "slice_all", "window_all")})
    out = {"summary": summary, "seeds": seeds, "args": vars(args)}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(msgspec.json.decode(msgspec.json.encode(out)), indent=2) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", required=True, help="write the results here")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--requests", type=int, default=20_000, help="evaluated requests per seed (x20 records)")
    ap.add_argument("--warmup-requests", type=int, default=5_000, help="requests that train the model")
    ap.add_argument("--fault-frac", type=float, default=0.08, help="fault length, fraction of evaluated requests")
    ap.add_argument("--grace-s", type=float, default=60.0, help="alerts this long after a fault still count for it")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--half-life", type=float, default=None, help="override SchemaCacheConfig.half_life_s")
    ap.add_argument("--bias", action="store_true", help="measure the schema bias instead (AUC / log loss)")
    ap.add_argument("--bias-first", type=int, default=1000, help="--bias: first affected events of each fault")
    ap.add_argument("--cold-evidence", type=float, default=SchemaCacheConfig().cold_evidence)
    ap.add_argument("--em-half-life", type=float, default=30.0, help="--bias: error-memory half-life, s")
    ap.add_argument("--mode", choices=("hand", "pipeline", "both"), default="hand",
                    help="hand: records built here from the labelled log; pipeline: records from the real "
                         "feedback path (bench/_schema_pipeline.py); both: one JSON with both")
    ap.add_argument("--pipeline-seeds", type=int, default=3, help="pipeline: seeds 7.. (clean + main job each)")
    ap.add_argument("--pipeline-requests", type=int, default=20_000, help="pipeline: requests per run (20%% warm-up)")
    ap.add_argument("--event-time", choices=("prediction", "label"), default="prediction",
                    help="pipeline: error records' clock (label = before schema version 2, for comparison)")
    ap.add_argument("--scores", choices=("calibrated", "model"), default="calibrated",
                    help="pipeline: the simulator's pre-shift probabilities, or a slow model fitted on the "
                         "warm-up requests (alerts before the shift then judged against the truth)")
    args = ap.parse_args(argv)
    if args.bias:
        return bias_main(args)
    pipeline = _schema_pipeline.evaluate(args) if args.mode != "hand" else None
    if args.mode == "pipeline":
        out = {"pipeline": pipeline, "args": vars(args)}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(msgspec.json.decode(msgspec.json.encode(out)), indent=2) + "\n")
        return 0
    seeds = [evaluate_seed(seed, args) for seed in range(args.seeds)]
    summary = summarise(seeds)
    print_table(seeds, summary)
    out = {"summary": summary, "seeds": seeds, "args": vars(args), "pipeline": pipeline,
           "cache_config": msgspec.to_builtins(SchemaCacheConfig(
               **({"half_life_s": args.half_life} if args.half_life else {}))),
           "machine": {"python": platform.python_version(), "cpu": platform.processor() or platform.machine()}}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(msgspec.json.decode(msgspec.json.encode(out)), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
