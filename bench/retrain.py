"""The slow-model retrain cycle: its wall time on a full window, and what retraining buys.

    python bench/retrain.py --json reports/retrain.json [--window 50000] [--retrain-every 10000]
                            [--movielens ../shared/data/ml-100k] [--drift]

1. **One retrain cycle on a ``--window``-sample window** (default 50k) of simulator traffic with
   the default ``Settings()`` model and ``TrainerConfig()`` gates, warm-started from a v1 trained
   on the preceding traffic: train + export (dynamo) + parity (torch vs onnxruntime) + holdout
   check vs v1 + atomic register, exactly :func:`reloop.ops.retrain.retrain_once`. Also times writing
   the window to its durable segments and reading it back (a trainer restart).
2. **ML-100K prequential AUC**, retraining every ``--retrain-every`` samples vs a frozen model.
   The ratings (label = rating >= 4) are replayed in time order: the first 20% train v1; then
   per block of 1000 ratings, each model scores the block *before* learning from it. The
   retrained arm runs the real trainer parts: the block becomes error records of the serving
   version, goes into a :class:`~reloop.state.sample_window.SampleWindow` (``window_max_samples``
   newest samples), :class:`~reloop.processors.trainer.TrainerCore` decides (schedule, and drift with
   ``--drift``), and :func:`~reloop.ops.retrain.retrain_once` trains, gates and registers; a version that
   fails the gates is not served. Reported: AUC and log loss over every scored rating, per arm.

The data is read in place with :func:`reloop.ops.logs.read_movielens` (never copied). Wall times are
for this machine (``os.cpu_count()`` reported; training uses ``trainer.train_threads`` threads).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import msgspec  # noqa: E402
import numpy as np  # noqa: E402

from reloop.models.features import FeatureEncoder  # noqa: E402
from reloop.models.metrics import auc, logloss  # noqa: E402
from reloop.models.registry import ModelRegistry  # noqa: E402
from reloop.ops.logs import read_movielens  # noqa: E402
from reloop.ops.replay import fit_initial_model  # noqa: E402
from reloop.ops.settings import Settings  # noqa: E402
from reloop.ops.simulator import SimConfig, Simulator  # noqa: E402
from reloop.ops.retrain import retrain_once  # noqa: E402
from reloop.processors.trainer import TrainerConfig, TrainerCore  # noqa: E402
from reloop.state.sample_window import Sample, SampleWindow  # noqa: E402
from reloop.streams.events import ErrorRecord, Interaction  # noqa: E402

DEFAULT_ML100K = Path(__file__).resolve().parents[2] / "shared" / "data" / "ml-100k"


def _samples(events: list[Interaction], tag: str) -> list[Sample]:
    return [Sample(sample_id=f"{tag}{i}", user_id=e.user_id, item_id=e.item_id, ts=e.ts, label=e.label,
                   features=e.features) for i, e in enumerate(events)]


def retrain_cycle(window_size: int, settings: Settings, config: TrainerConfig, tmp: Path) -> dict[str, Any]:
    """Part 1: one warm-started cycle on ``window_size`` simulator samples (see module doc)."""
    n_warm = 5000
    n_requests = (n_warm + window_size) // 20 + 1
    sim = Simulator(SimConfig(seed=1, shift_at=None))
    events = [e for e in sim.labelled_log(n_requests) if isinstance(e, Interaction)][: n_warm + window_size]
    registry = ModelRegistry(tmp / "cycle" / "models")
    t0 = time.perf_counter()
    v1 = fit_initial_model(events[:n_warm], settings, version="v1")
    registry.register(v1)
    initial_s = time.perf_counter() - t0
    cfg = msgspec.structs.replace(config, window_max_samples=window_size, window_max_age_s=1e9)
    t0 = time.perf_counter()
    window = SampleWindow(tmp / "cycle" / "window", max_samples=window_size, max_age_s=1e9,
                          segment_max_samples=cfg.segment_max_samples)
    window.add(_samples(events[n_warm:], "s"))
    window.close()
    write_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    window = SampleWindow(tmp / "cycle" / "window", max_samples=window_size, max_age_s=1e9)
    samples = window.samples()
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    outcome = retrain_once(samples, registry, settings, cfg, trigger="samples")
    cycle_s = time.perf_counter() - t0
    m = outcome.metrics
    print(f"retrain cycle on {len(samples)} samples: {cycle_s:.1f} s wall "
          f"({', '.join(f'{k} {v:.2f}s' for k, v in outcome.seconds.items())}); accepted={outcome.accepted}",
          flush=True)
    return {"window_samples": len(samples), "wall_s": cycle_s, "stages_s": outcome.seconds,
            "accepted": outcome.accepted, "reasons": outcome.reasons, "version": outcome.version,
            "initial_fit_s": initial_s, "window_write_s": write_s, "window_load_s": load_s,
            "train_seconds": m.get("train_seconds"), "holdout": {
                k: m.get(k) for k in ("check_candidate_auc", "check_candidate_logloss", "check_serving_auc",
                                      "check_serving_logloss", "check_parity_max_abs_diff", "check_candidate_rows")},
            "target_under_60s": cycle_s < 60.0}


def movielens_prequential(path: Path, settings: Settings, config: TrainerConfig, retrain_every: int,
                          drift: bool, tmp: Path, block: int = 1000) -> dict[str, Any]:
    """Part 2: frozen vs retrained prequential AUC on ML-100K (see module doc)."""
    loaded = read_movielens(path)
    events = loaded.interactions
    n_warm = int(round(len(events) * 0.2))
    registry = ModelRegistry(tmp / "ml" / "models")
    t0 = time.perf_counter()
    v1 = fit_initial_model(events[:n_warm], settings, version="v1")
    registry.register(v1)
    print(f"ml-100k: {len(events)} ratings, v1 trained on {n_warm} in {time.perf_counter() - t0:.1f}s", flush=True)
    cfg = msgspec.structs.replace(config, retrain_every_samples=retrain_every, window_max_age_s=1e10,
                                  drift_detector=config.drift_detector if drift else "none")
    window = SampleWindow(tmp / "ml" / "window", max_samples=cfg.window_max_samples, max_age_s=cfg.window_max_age_s,
                          fsync=False)
    window.add(_samples(events[:n_warm], "w"))  # the trainer would have seen the warm-up as well
    core = TrainerCore(cfg, "v1", window_samples=len(window))
    frozen, serving = v1.scorer, v1.scorer
    labels, p_frozen, p_retrained = [], [], []
    retrains: list[dict[str, Any]] = []
    for lo in range(n_warm, len(events), block):
        batch = events[lo:lo + block]
        rows = [(e.user_id, e.item_id, e.features) for e in batch]
        pf, _ = frozen.score(*FeatureEncoder(frozen.spec).encode(rows))
        pr, _ = serving.score(*FeatureEncoder(serving.spec).encode(rows))
        labels += [e.label for e in batch]
        p_frozen += pf.tolist()
        p_retrained += pr.tolist()
        records = [ErrorRecord(error_id=f"m{lo + j}", user_id=e.user_id, item_id=e.item_id, ts=e.ts, label=e.label,
                               base_pred=float(p), comp_pred=float(p), model_version=serving.version,
                               features=e.features) for j, (e, p) in enumerate(zip(batch, pr))]
        window.add(Sample(sample_id=r.error_id, user_id=r.user_id, item_id=r.item_id, ts=r.ts, label=r.label,
                          features=r.features) for r in records)
        decision = core.on_batch(records)
        if decision is None:
            continue
        outcome = retrain_once(window.samples(), registry, settings, cfg, trigger=decision.reason)
        retrains.append({"after_ratings": lo + len(batch) - n_warm, "trigger": decision.reason,
                         "accepted": outcome.accepted, "version": outcome.version, "wall_s": outcome.seconds.get("total"),
                         "reasons": outcome.reasons,
                         "holdout_auc": outcome.metrics.get("check_candidate_auc"),
                         "serving_holdout_auc": outcome.metrics.get("check_serving_auc")})
        print(f"  retrain after {retrains[-1]['after_ratings']} ratings ({decision.reason}): "
              f"{'accepted ' + str(outcome.version) if outcome.accepted else 'rejected: ' + '; '.join(outcome.reasons)}"
              f" in {outcome.seconds.get('total', 0):.1f}s", flush=True)
        if outcome.accepted and outcome.version is not None:
            serving = registry.load(outcome.version).load_scorer()
            core.on_retrained(outcome.version)
        else:
            core.on_retrain_failed()
    window.close()
    y = np.array(labels)
    pf_a, pr_a = np.array(p_frozen), np.array(p_retrained)
    result = {
        "ratings": len(events), "warmup": n_warm, "scored": int(len(y)), "block": block,
        "retrain_every": retrain_every, "drift_detector": cfg.drift_detector,
        "window_max_samples": cfg.window_max_samples,
        "frozen": {"auc": auc(y, pf_a), "logloss": logloss(y, pf_a)},
        "retrained": {"auc": auc(y, pr_a), "logloss": logloss(y, pr_a)},
        "retrains": retrains,
        "blocks_10k": [{"from": i, "auc_frozen": auc(y[i:i + 10000], pf_a[i:i + 10000]),
                        "auc_retrained": auc(y[i:i + 10000], pr_a[i:i + 10000])} for i in range(0, len(y), 10000)],
    }
    print(f"ml-100k prequential AUC: frozen {result['frozen']['auc']:.4f}, retrained every {retrain_every} "
          f"{result['retrained']['auc']:.4f} ({sum(r['accepted'] for r in retrains)}/{len(retrains)} retrains served)",
          flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--window", type=int, default=50_000, help="samples in the timed cycle's window")
    ap.add_argument("--retrain-every", type=int, default=10_000, help="ML-100K: retrain every N ratings")
    ap.add_argument("--movielens", default=str(DEFAULT_ML100K), help="ML-100K directory (read in place)")
    ap.add_argument("--drift", action="store_true", help="ML-100K: also retrain on drift alarms")
    ap.add_argument("--skip-movielens", action="store_true")
    ap.add_argument("--skip-cycle", action="store_true", help="only the ML-100K part")
    ap.add_argument("--model", default="{}", help='JSON overrides of Settings().model, e.g. \'{"cross": "full"}\'')
    args = ap.parse_args(argv)

    import torch

    from reloop.ops.logging_setup import setup_logging

    setup_logging("ERROR")  # the bench prints its own lines; rejections are in the report
    settings, config = Settings().with_overrides(model=json.loads(args.model)), TrainerConfig()
    report: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                          "torch": str(torch.__version__), "platform": platform.platform()},
                              "trainer_config": msgspec.to_builtins(config),
                              "model_config": msgspec.to_builtins(settings.model)}
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_cycle:
            report["cycle"] = retrain_cycle(args.window, settings, config, Path(tmp))
        if not args.skip_movielens:
            report["movielens"] = movielens_prequential(Path(args.movielens), settings, config, args.retrain_every,
                                                        args.drift, Path(tmp))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(msgspec.json.decode(msgspec.json.encode(report)), indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
