"""Quality of the error memory: base vs. +sketch vs. +exact kNN, reset vs. re-key on retrain.

    python bench/error_memory_quality.py --data ../shared/data/ml-100k --json reports/em_quality_ml.json
    python bench/error_memory_quality.py --sim --json reports/em_quality_sim.json

Same protocol as ``reloop replay`` (prequential, warm-up 20%, micro-batches scored before
their feedback applies), same slow-model schedule for every variant (retrained every
``--retrain-every`` events on the last 20k labelled events, warm start; the retrained models
are shared between variants). Variants:

- ``base``: the slow model alone;
- ``sketch``: ReLoop2 LSH error memory, re-keyed on retrain (ReLoop's default);
- ``sketch_reset``: the same sketch reset on retrain (the paper's behaviour);
- ``exact_knn``: exact k-nearest-neighbour memory over the same hidden keys (ceiling).

``--sim`` replays the simulator's log with an abrupt shift and a frozen model, and reports AUC
per window around the shift and how many events after it the compensated AUC needs to
recover half of the drop.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from reloop.models.metrics import auc  # noqa: E402
from reloop.ops.logs import LoadedLog, read_movielens  # noqa: E402
from reloop.ops.replay import ReplayEngine  # noqa: E402
from reloop.ops.serving import compensation_factory  # noqa: E402
from reloop.ops.settings import Settings  # noqa: E402
from reloop.ops.simulator import SimConfig, Simulator  # noqa: E402
from reloop.processors.error_memory import ExactKnnCompensation  # noqa: E402
from reloop.state.error_memory.knn import ExactKnnMemory  # noqa: E402


def run_variants(loaded: LoadedLog, settings: Settings, knn_capacity: int, knn_k: int,
                 only: tuple[str, ...] = ("base", "sketch", "sketch_reset", "exact_knn")) -> dict:
    cache: dict = {}
    em = settings.error_memory
    variants = {
        "base": (settings.with_overrides(worker={"compensation": "none"}), None),
        "sketch": (settings, compensation_factory(settings)),
        "sketch_reset": (settings.with_overrides(worker={"rekey_window": 0}),
                         compensation_factory(settings.with_overrides(worker={"rekey_window": 0}))),
        "exact_knn": (settings, lambda f: ExactKnnCompensation(
            ExactKnnMemory(f.scorer.hidden_dim, knn_capacity, lam=em.lam, gamma=em.gamma, tau=0.1,
                           half_life_s=em.half_life_s), f.scorer, k=knn_k)),
    }
    out: dict = {}
    results = {}
    for name, (s, factory) in variants.items():
        if name not in only:
            continue
        t0 = time.perf_counter()
        res = ReplayEngine(s, factory).run(loaded, model_cache=cache)
        results[name] = res
        rep = res.report
        out[name] = {"auc": rep["auc_compensated"], "logloss": rep["logloss_compensated"],
                     "seconds": time.perf_counter() - t0, "retrains": len(rep["retrains"])}
        print(f"  {name:13s} AUC {rep['auc_compensated']:.4f}  logloss {rep['logloss_compensated']:.4f}"
              f"  ({out[name]['seconds']:.0f} s)", flush=True)
    base = out["base"]
    for name in ("sketch", "sketch_reset", "exact_knn"):
        if name not in out:
            continue
        out[name]["auc_gain_points"] = 100 * (out[name]["auc"] - base["auc"])
        out[name]["logloss_gain"] = base["logloss"] - out[name]["logloss"]
    if "exact_knn" in out and "sketch" in out:
        knn_gain = out["exact_knn"]["auc"] - base["auc"]
        out["sketch_share_of_knn_auc_gain"] = (out["sketch"]["auc"] - base["auc"]) / knn_gain if knn_gain > 0 else None
    return out, results


def shift_recovery(res, shift_ts: float, window: int) -> dict:
    """AUC per window of base vs compensated; events after the shift to recover half the drop."""
    y, pb, pc, ts = res.labels, res.base, res.compensated, res.ts
    order = np.argsort(ts, kind="stable")
    y, pb, pc, ts = y[order], pb[order], pc[order], ts[order]
    rows = []
    for lo in range(0, len(y) - window + 1, window):
        sl = slice(lo, lo + window)
        rows.append({"end_ts": float(ts[lo + window - 1]), "events_end": lo + window,
                     "auc_base": auc(y[sl], pb[sl]), "auc_compensated": auc(y[sl], pc[sl])})
    pre = [r for r in rows if r["end_ts"] < shift_ts]
    post = [r for r in rows if r["end_ts"] >= shift_ts]
    shift_idx = int(np.searchsorted(ts, shift_ts))
    out = {"windows": rows, "shift_event": shift_idx}
    if not pre or not post:
        return out
    pre_auc = float(np.mean([r["auc_compensated"] for r in pre[-5:]]))
    floor = min(r["auc_compensated"] for r in post[:5])
    target = floor + 0.5 * (pre_auc - floor)
    low_idx = next(i for i, r in enumerate(post) if r["auc_compensated"] == floor)
    recovered = next((r for r in post[low_idx:] if r["auc_compensated"] >= target), None)
    out.update({"pre_shift_auc": pre_auc, "post_shift_floor_auc": floor, "half_recovery_target": target,
                "events_to_half_recovery": (recovered["events_end"] - shift_idx) if recovered else None,
                "base_pre_shift_auc": float(np.mean([r["auc_base"] for r in pre[-5:]])),
                "base_post_shift_auc": float(np.mean([r["auc_base"] for r in post]))})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", help="MovieLens directory (RecBole atomic layout) or u.data")
    ap.add_argument("--sim", action="store_true", help="simulator log with an abrupt shift")
    ap.add_argument("--requests", type=int, default=6000, help="simulator requests (x20 candidates)")
    ap.add_argument("--retrain-every", type=int, default=20000)
    ap.add_argument("--knn-capacity", type=int, default=20000)
    ap.add_argument("--knn-k", type=int, default=128)
    ap.add_argument("--sim-half-life", type=float, default=30.0,
                    help="error-memory half-life (event s) for the simulator, whose clock runs at 50 req/s")
    ap.add_argument("--shift-window", type=int, default=250, help="events per AUC window around the shift")
    ap.add_argument("--variants", default="base,sketch,sketch_reset,exact_knn")
    ap.add_argument("--json")
    args = ap.parse_args()
    settings = Settings()
    only = tuple(args.variants.split(","))
    result: dict = {"settings": {"error_memory": __import__("msgspec").to_builtins(settings.error_memory),
                                 "rekey_window": settings.worker.rekey_window}}
    if args.data:
        loaded = read_movielens(args.data)
        s = settings.with_overrides(replay={"retrain_every": args.retrain_every})
        print(f"ML-100K prequential, retrain every {args.retrain_every} events:", flush=True)
        result["movielens"], _ = run_variants(loaded, s, args.knn_capacity, args.knn_k, only)
    if args.sim:
        sim = Simulator(SimConfig(seed=21))
        events = list(sim.labelled_log(args.requests))
        loaded = LoadedLog(events, [], "simulator")
        s = settings.with_overrides(replay={"retrain_every": 0, "batch_size": 64},
                                    error_memory={"half_life_s": args.sim_half_life})
        print(f"simulator, {args.requests} requests, shift at {sim.shift_ts(args.requests)}, frozen model:", flush=True)
        variants, results = run_variants(loaded, s, args.knn_capacity, args.knn_k, only)
        result["simulator"] = variants
        result["simulator_shift"] = shift_recovery(results["sketch"], sim.shift_ts(args.requests), args.shift_window)
        sh = result["simulator_shift"]
        print(f"  shift: compensated AUC pre {sh.get('pre_shift_auc')}, floor {sh.get('post_shift_floor_auc')}, "
              f"events to half recovery {sh.get('events_to_half_recovery')}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2, default=lambda x: None))


if __name__ == "__main__":
    main()
