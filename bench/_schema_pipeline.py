"""Pipeline-made error records for ``bench/error_schemas.py --mode pipeline``.

The hand-made mode builds :class:`~reloop.streams.events.ErrorRecord` s itself, with one clock. This
module makes them the way the worker does: the simulator's live traffic (``Simulator.events``:
requests, clicks after 1-20 s, media), scored, joined by :class:`reloop.processors.tasks.FeedbackTasks`
(one :class:`~reloop.processors.feedback.FeedbackCore` per user partition, attribution windows closed
by each partition's stream time, unclicked impressions becoming negatives when the window
closes), then ordered per ``errors`` partition by :class:`reloop.processors.reorder.EventTimeReorder`
(the worker's buffer, same settings) into :class:`reloop.processors.schemas.SchemaCore`.

Scores: the simulator's own click probability *before the shift* (``Simulator._probs`` with
the request's real media history, ``sgn = +1``): a perfectly calibrated model of the pre-shift
world. So every alert before the shift is false, and after it the truth of a slice is known
exactly (the mean of the shifted minus the model's probability over its records). A fitted
model would add its own (true) miscalibrations, which are not what this bench counts.

Streams: the main job's (``reloop run``: ``SimConfig(seed, media_weight=1.5)``, shift of
``segment=s1`` at 60% of the requests, the first 20% warm-up requests not sent) and a clean one
(the same without shift).
"""

from __future__ import annotations

import math
import time
import zlib
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import msgspec
import numpy as np

from reloop.ops.settings import Settings
from reloop.ops.simulator import SEGMENTS, SimConfig, Simulator
from reloop.processors.metrics import OnlineMetrics
from reloop.processors.pending import Pending
from reloop.processors.reorder import EventTimeReorder
from reloop.processors.schemas import SchemaAlert, SchemaCore
from reloop.processors.tasks import FeedbackTasks
from reloop.state.schemas.cache import SchemaCacheConfig
from reloop.streams.events import ErrorRecord, Interaction, MediaEvent, RecommendationRequest, error_id_for
from reloop.streams.topics import TOPICS

SHIFT_PREDICATE = "segment=s1"


def partition_of(user_id: str, partitions: int) -> int:
    """A stable user -> partition map (the real one is Kafka's; only the grouping matters)."""
    return zlib.crc32(user_id.encode()) % partitions


class CalibratedScorer:
    """Pre-shift click probabilities of the simulator's world, with each user's real media history.

    ``score(request)`` returns (model p, true p) per candidate, both (C,) float64: model p with the
    pre-shift preferences, true p as the simulator draws clicks (shifted for the shift segment
    from the shift time on).
    """

    def __init__(self, sim: Simulator, shift_ts: float | None) -> None:
        self.sim, self.shift_ts = sim, shift_ts
        self.k = sim.config.media_history
        self.history: dict[int, list[int]] = {}
        self.shift_seg = SEGMENTS.index(sim.config.shift_segment)

    def watch(self, ev: MediaEvent) -> None:
        h = self.history.setdefault(int(ev.user_id[1:]), [])
        h.append(self.sim._item_index[ev.item_id])
        del h[:-self.k]

    def score(self, req: RecommendationRequest) -> tuple[np.ndarray, np.ndarray]:
        u = int(req.user_id[1:])
        items = np.array([self.sim._item_index[c.item_id] for c in req.candidates], np.int64)[None, :]
        hist = np.full((1, self.k), -1, np.int64)
        h = self.history.get(u, [])
        hist[0, :len(h)] = h
        p = self.sim._probs(np.array([u]), items, hist, np.array([1.0]))[0]
        shifted = self.shift_ts is not None and req.ts >= self.shift_ts and self.sim.world.seg[u] == self.shift_seg
        q = self.sim._probs(np.array([u]), items, hist, np.array([-1.0]))[0] if shifted else p
        return p, q


class ModelScorer:
    """A slow model fitted like the main job's on the warm-up requests' labelled log (without
    media features), in place of the calibrated scores; the truth stays the simulator's."""

    def __init__(self, sim: Simulator, shift_ts: float | None, n_warm: int, settings: Settings) -> None:
        from reloop.ops.replay import fit_initial_model
        from reloop.processors.scoring import ScoringCore

        self.truth = CalibratedScorer(sim, shift_ts)
        warm = [e for e in sim.labelled_log(n_warm) if isinstance(e, Interaction)]
        self.fitted = fit_initial_model(warm, settings, version="v1")
        self.core = ScoringCore(self.fitted.scorer)

    def watch(self, ev: MediaEvent) -> None:
        self.truth.watch(ev)

    def score(self, req: RecommendationRequest) -> tuple[np.ndarray, np.ndarray]:
        rows = [(req.user_id, c.item_id, {**req.features, **c.features}) for c in req.candidates]
        base, _, _ = self.core.score_rows(rows, req.ts)
        return np.asarray(base, np.float64), self.truth.score(req)[1]


def error_stream(seed: int, n_requests: int, shift: bool, settings: Settings, *, warmup: float = 0.2,
                 batch_s: float = 0.5, stats: dict[str, Any], drain: bool = False,
                 scores: str = "calibrated") -> Iterator[list[ErrorRecord]]:
    """Error records as the worker's feedback path emits them, per batch of ``batch_s`` event seconds,
    in (errors partition, emission) order; ``drain``: close the open windows at the end (the
    log is finite). ``stats`` receives the shift time, the true probability of each record
    (``truth``: error id -> p) and the feedback counters at the end."""
    sim = Simulator(SimConfig(seed=seed, media_weight=1.5, shift_at=0.6 if shift else None))
    shift_ts = sim.shift_ts(n_requests)
    stats["shift_ts"] = shift_ts
    n_warm = int(n_requests * warmup)
    scorer = (CalibratedScorer(sim, shift_ts) if scores == "calibrated"
              else ModelScorer(sim, shift_ts, n_warm, settings.with_overrides(worker={"media_features": False})))
    parts = TOPICS["requests"].partitions
    tasks = FeedbackTasks(settings.worker.attribution_window_s, settings.worker.pending_limit,
                          OnlineMetrics(window=settings.worker.metrics_window))
    truth: dict[str, float] = stats.setdefault("truth", {})
    seq, live = 0, set()
    batch_req: dict[int, list[Pending]] = defaultdict(list)
    batch_int: dict[int, list[Interaction]] = defaultdict(list)
    batch_ts: dict[int, tuple[list[float], list[float]]] = defaultdict(lambda: ([], []))
    edge = None

    def flush() -> list[ErrorRecord]:
        out: list[ErrorRecord] = []
        for p in sorted(set(batch_req) | set(batch_int)):
            req_ts, int_ts = batch_ts[p]
            out += tasks.apply(p, batch_req[p], batch_int[p], tasks.stream_times(p, req_ts, int_ts))
        batch_req.clear(), batch_int.clear(), batch_ts.clear()
        return out

    for ev in sim.events(n_requests):
        if edge is None or ev.ts >= edge:
            if edge is not None:
                yield flush()
            edge = math.floor(ev.ts / batch_s) * batch_s + batch_s
        if isinstance(ev, MediaEvent):
            scorer.watch(ev)
            continue
        if isinstance(ev, RecommendationRequest):
            seq += 1
            if seq <= n_warm:
                continue
            live.add(ev.request_id)
            p_model, p_true = scorer.score(ev)
            part = partition_of(ev.user_id, parts)
            for c, pm, pt in zip(ev.candidates, p_model.tolist(), p_true.tolist()):
                batch_req[part].append(Pending(ev.request_id, c.item_id, ev.user_id, ev.ts, pm, pm, "v1", b"",
                                               {**ev.features, **c.features}))
                truth[error_id_for(ev.request_id, c.item_id)] = pt
            batch_ts[part][0].append(ev.ts)
        elif ev.request_id in live:
            part = partition_of(ev.user_id, parts)
            batch_int[part].append(ev)
            batch_ts[part][1].append(ev.ts)
    yield flush()
    if drain:  # as the tasks' windows would close as time goes on: in event-time order
        yield sorted((r for _, core in sorted(tasks.tasks.items()) for r in core.drain()), key=lambda r: r.ts)
    stats["feedback"] = {"late": sum(c.late for c in tasks.tasks.values()), "unattributed": tasks.unattributed,
                         "duplicates": tasks.duplicates, "pending_at_end": tasks.pending_count}


def run(seed: int, n_requests: int, shift: bool, settings: Settings, cache_config: SchemaCacheConfig, *,
        event_time: str = "prediction", top1_after_s: float = 60.0, batch_s: float = 0.5,
        scores: str = "calibrated") -> dict[str, Any]:
    """One stream through feedback, the reorder buffer and the schema core; alerts and counts.

    ``event_time="label"`` rewrites each record's ``ts`` to its ``label_ts`` (the clock of
    error records before schema version 2), to measure what the fix changed.
    """
    stats: dict[str, Any] = {}
    core = SchemaCore(cache_config)
    n_err = TOPICS["errors"].partitions
    reorder = EventTimeReorder(range(cache_config.reorder_partitions or n_err),
                               lateness_s=cache_config.reorder_lateness_s, idle_s=cache_config.reorder_idle_s,
                               max_held=cache_config.reorder_max_held)
    alerts: list[SchemaAlert] = []
    fed: list[ErrorRecord] = []
    behind = {q: 0.0 for q in range(n_err)}  # largest lag of a record behind its partition's newest, s
    marks: dict[int, float] = {}
    ranking: list[dict[str, Any]] | None = None
    t0, c0 = time.perf_counter(), time.process_time()
    core_s = 0.0
    early = 0
    for batch in error_stream(seed, n_requests, shift, settings, batch_s=batch_s, stats=stats, scores=scores):
        if not batch:
            continue
        by_part: dict[int, list[ErrorRecord]] = defaultdict(list)
        for r in batch:
            if event_time == "label":
                r = msgspec.structs.replace(r, ts=r.label_ts)
            elif r.label_ts is not None and r.label_ts < r.ts + settings.worker.attribution_window_s and r.label == 0:
                early += 1  # a negative resolved before its window closed (all candidates labelled)
            by_part[partition_of(r.user_id, n_err)].append(r)
        for q, recs in sorted(by_part.items()):
            wm = marks.get(q, -math.inf)
            for r in recs:
                behind[q] = max(behind[q], wm - r.ts)
                wm = max(wm, r.ts)
            marks[q] = wm
            reorder.push(q, recs)
        ready = reorder.pop_ready()
        if ready:
            s0 = time.perf_counter()
            _, new = core.on_batch(ready)
            core_s += time.perf_counter() - s0
            alerts += new
            fed += ready
        shift_ts = stats["shift_ts"]
        if ranking is None and shift_ts is not None and core.cache.max_ts >= shift_ts + top1_after_s:
            ranking = [{"signature": s.signature, "direction": s.direction, "impact": s.impact,
                        "first_seen": s.first_seen} for s in core.schemas() if s.first_seen >= shift_ts]
    return {"seed": seed, "shift": shift, "event_time": event_time, "scores": scores, "alerts": alerts, "records": fed,
            "ranking": ranking, "shift_ts": stats["shift_ts"], "truth": stats["truth"],
            "feedback": stats["feedback"], "wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0,
            "core_s": core_s, "early_negatives": early,
            "reorder": {"lateness_s": reorder.lateness_s, "clamped": reorder.clamped, "overtaken": reorder.overtaken,
                        "forced": reorder.forced, "held_at_end": reorder.held,
                        "max_behind_s": max(behind.values())}}


def _matches(r: ErrorRecord, signature: list[str]) -> bool:
    for pred in signature:
        name, _, value = pred.partition("=")
        if (r.model_version if name == "model_version" else r.features.get(name)) != value:
            return False
    return True


def truth_direction(res: dict[str, Any], signature: list[str], until: float) -> tuple[str, float]:
    """Direction of the true error on a slice after the shift (``under`` when the true rate
    exceeds the model's), and the true mean gap (probability units), over its records in
    ``[shift_ts, until)``."""
    gaps = [res["truth"][r.error_id] - r.base_pred for r in res["records"]
            if res["shift_ts"] <= r.ts < until and _matches(r, signature)]
    gap = float(np.mean(gaps)) if gaps else 0.0
    return ("under" if gap > 0 else "over"), gap


def summarise_run(res: dict[str, Any]) -> dict[str, Any]:
    """False alerts before the shift (all of a clean run); detection of the shift after it."""
    shift_ts = res["shift_ts"] if res["shift"] else None
    recs = res["records"]
    cut = math.inf if shift_ts is None else shift_ts
    clean_records = sum(r.ts < cut for r in recs)
    new = [a for a in res["alerts"] if a.kind == "new"]
    false = [a for a in new if a.ts < cut]
    judged = []  # each alert before the shift against the truth on its slice (records it had seen)
    for a in false:
        direction, gap = truth_direction({**res, "shift_ts": -math.inf}, a.signature, a.ts)
        judged.append({"description": a.description, "true_gap": gap,
                       "true": direction == a.direction and abs(gap) >= 0.01})
    out: dict[str, Any] = {
        "seed": res["seed"], "stream": "main_job" if res["shift"] else "clean", "event_time": res["event_time"],
        "records": len(recs), "clean_records": clean_records, "false_alerts": len(false),
        "false_alerts_per_100k": len(false) / clean_records * 1e5 if clean_records else None,
        "false_alert_descriptions": [a.description for a in false[:20]], "alerts_before_shift_judged": judged,
        "alerts_before_shift_true": sum(j["true"] for j in judged), "scores": res["scores"],
        "label_rate": float(np.mean([r.label for r in recs])) if recs else None,
        "mean_prediction": float(np.mean([r.base_pred for r in recs])) if recs else None,
        "reorder": res["reorder"], "feedback": res["feedback"], "early_negatives": res["early_negatives"],
        "records_per_s_in_core": len(recs) / res["core_s"] if res["core_s"] else None,
        "wall_s": res["wall_s"], "cpu_s": res["cpu_s"],
    }
    if shift_ts is None:
        return out
    after = [a for a in new if a.ts >= shift_ts]
    named = [a for a in after if SHIFT_PREDICATE in a.signature]
    stray = [a for a in after if SHIFT_PREDICATE not in a.signature]
    directions = []
    for a in named:
        truth, gap = truth_direction(res, a.signature, a.ts)
        directions.append({"signature": a.signature, "direction": a.direction, "truth": truth, "true_gap": gap,
                           "observed_rate": a.description, "seconds_after_shift": a.ts - shift_ts})
    first = named[0] if named else None
    s1_ts = np.array(sorted(r.ts for r in recs if r.ts >= shift_ts and _matches(r, [SHIFT_PREDICATE])))
    top = res["ranking"][0] if res["ranking"] else None
    top_ok = False
    if top is not None and SHIFT_PREDICATE in top["signature"]:
        top_ok = truth_direction(res, top["signature"], math.inf)[0] == top["direction"]
    out.update({
        "shift_ts": shift_ts, "detected": first is not None,
        "events_to_detect": int(np.searchsorted(s1_ts, first.ts, side="left")) if first else None,
        "seconds_to_detect": first.ts - shift_ts if first else None,
        "first_alert": first.signature if first else None,
        "first_alert_direction": first.direction if first else None,
        "alerts_naming_shift": len(named), "alerts_right_direction": sum(d["direction"] == d["truth"]
                                                                         for d in directions),
        "shift_alerts": directions, "stray_alerts_after_shift": [a.description for a in stray],
        "top1": top["signature"] if top else None, "top1_direction": top["direction"] if top else None,
        "top1_correct": top_ok,
    })
    return out


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Totals over seeds: false alerts per 100k (clean, main job before its shift), detection."""
    out: dict[str, Any] = {}
    for stream in ("clean", "main_job"):
        rs = [r for r in runs if r["stream"] == stream]
        if not rs:
            continue
        recs, false = sum(r["clean_records"] for r in rs), sum(r["false_alerts"] for r in rs)
        out[stream] = {"seeds": len(rs), "clean_records": recs, "false_alerts": false,
                       "of_which_true_per_simulator": sum(r["alerts_before_shift_true"] for r in rs),
                       "false_alerts_per_100k": false / recs * 1e5 if recs else None,
                       "reorder_clamped": sum(r["reorder"]["clamped"] for r in rs),
                       "reorder_max_behind_s": max(r["reorder"]["max_behind_s"] for r in rs),
                       "early_negatives": sum(r["early_negatives"] for r in rs)}
    shifted = [r for r in runs if r["stream"] == "main_job"]
    if shifted:
        etd = [r["events_to_detect"] for r in shifted if r["detected"]]
        named = sum(r["alerts_naming_shift"] for r in shifted)
        out["shift"] = {
            "detected": sum(r["detected"] for r in shifted), "runs": len(shifted),
            "events_to_detect_median": float(np.median(etd)) if etd else None,
            "events_to_detect_max": int(max(etd)) if etd else None,
            "detected_within_1000": sum(e < 1000 for e in etd),
            "top1_rate": sum(r["top1_correct"] for r in shifted) / len(shifted),
            "alerts_naming_shift": named,
            "right_direction_rate": (sum(r["alerts_right_direction"] for r in shifted) / named) if named else None,
            "stray_alerts_after_shift": sum(len(r["stray_alerts_after_shift"]) for r in shifted),
        }
    return out


def evaluate(args: Any) -> dict[str, Any]:
    """``--mode pipeline``: per seed (``7 + k``, the main job's default first), the clean stream
    and the main job's stream; prints one line per run and the totals."""
    settings = Settings()
    cfg = SchemaCacheConfig(**({"half_life_s": args.half_life} if args.half_life else {}))
    runs = []
    print(f"{'seed':>4}  {'stream':8}  {'clock':10}  {'records':>8}  {'false':>5}  {'to_detect':>9}  "
          f"{'top1':5}  {'dir_ok':>6}  {'stray':>5}  {'clamped':>7}  first alert")
    for k in range(args.pipeline_seeds):
        for shift in (False, True):
            res = run(7 + k, args.pipeline_requests, shift, settings, cfg, event_time=args.event_time,
                      scores=args.scores)
            s = summarise_run(res)
            runs.append(s)
            etd = "-" if s.get("events_to_detect") is None else str(s["events_to_detect"])
            print(f"{s['seed']:>4}  {s['stream']:8}  {s['event_time']:10}  {s['records']:>8}  {s['false_alerts']:>5}  "
                  f"{etd:>9}  {('yes' if s.get('top1_correct') else 'NO') if shift else '-':5}  "
                  f"{(str(s['alerts_right_direction']) + '/' + str(s['alerts_naming_shift'])) if shift else '-':>6}  "
                  f"{len(s.get('stray_alerts_after_shift', [])):>5}  {s['reorder']['clamped']:>7}  "
                  f"{' & '.join(s.get('first_alert') or ['-'])}", flush=True)
    summary = summarise(runs)
    for key, value in summary.items():
        print(f"{key:10} {value}")
    return {"summary": summary, "runs": runs, "cache_config": msgspec.to_builtins(cfg),
            "scores": args.scores,
            "requests_per_run": args.pipeline_requests, "event_time": args.event_time}
