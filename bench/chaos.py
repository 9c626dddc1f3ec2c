"""Crash-recovery trials: SIGKILL a worker at seeded points, compare with an uninterrupted run.

    python bench/chaos.py --trials 20 --json reports/chaos.json [--requests 300] [--kills 3]

Each trial (``reloop.testing.chaos.run_trial``) produces one simulator log to two topic prefixes on one
embedded broker, runs worker A uninterrupted and worker B with ``--kills`` SIGKILLs while it
is busy (restarting it on the same data dir each time), and checks outputs and state: every
request answered, duplicated outputs byte-identical, same error ids / labels / base
predictions / codes, media memory identical, same pending predictions and labelled counts,
error memory equal to rtol 1e-9, schema cache fed every record once. Prints one line per trial
and the pass count; the JSON holds every check and figure per trial.
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
from reloop.testing.chaos import run_trial  # noqa: E402
from reloop.ops.replay import fit_initial_model  # noqa: E402
from reloop.ops.settings import Settings  # noqa: E402
from reloop.ops.simulator import SimConfig, Simulator  # noqa: E402
from reloop.streams.events import Interaction  # noqa: E402

#: Small model and fast snapshots so that trials take about a minute on 2 cores.
OVERRIDES = {"features": {"n_buckets": 1 << 14, "max_tokens": 12}, "train": {"epochs": 2, "batch_size": 256},
             "worker": {"metrics_window": 200, "attribution_window_s": 30.0}}


def worker_env() -> dict[str, str]:
    env = {f"RELOOP_{sec.upper()}__{k.upper()}": str(v) for sec, kv in OVERRIDES.items() for k, v in kv.items()}
    # 3 s attribution window: windows close mid-stream, so kills also hit error-record resends
    return {**env, "RELOOP_WORKER__SNAPSHOT_EVERY_S": "0.3", "RELOOP_WORKER__REPLICA_SNAPSHOT_EVERY_S": "0.3",
            "RELOOP_KAFKA__FETCH_MAX_RECORDS": "40",
            "RELOOP_WORKER__ATTRIBUTION_WINDOW_S": "3"}


def main(args: argparse.Namespace) -> dict:
    sim_config = SimConfig(seed=3, n_users=300, n_items=200)
    base = Settings().with_overrides(**OVERRIDES)
    warm = [e for e in Simulator(sim_config).labelled_log(200) if isinstance(e, Interaction)]
    model = fit_initial_model(warm, base, version="v1")
    broker = EmbeddedBroker()
    broker.start()  # runs its own event loop: before ours
    try:
        trials = asyncio.run(run_trials(args, broker, base, model, sim_config))
    finally:
        broker.stop()
    out = {"command": " ".join(sys.argv), "trials": len(trials), "passed": sum(r["passed"] for r in trials),
           "kills_per_trial": args.kills, "requests_per_trial": args.requests, "results": trials}
    print(f"passed {out['passed']}/{out['trials']} trials ({args.kills} SIGKILLs each)")
    return out


async def run_trials(args: argparse.Namespace, broker: EmbeddedBroker, base: Settings, model: Any,
                     sim_config: SimConfig) -> list[dict]:
    trials: list[dict] = []
    for t in range(args.trials):
        seed = args.seed + t
        with tempfile.TemporaryDirectory(prefix="reloop-chaos-") as tmp:
            root = Path(tmp)
            a, b = (base.with_overrides(kafka={"broker": broker.url, "topic_prefix": f"c{seed}{w}.",
                                               "group_id": f"chaos-{seed}-{w}"},
                                        worker={"data_dir": str(root / w)}) for w in "ab")
            for s in (a, b):
                ModelRegistry(Path(s.worker.data_dir) / "models").register(model)
            t0 = time.monotonic()
            try:
                r = await run_trial(a, b, seed, root, worker_env(), sim_config=sim_config,
                                    requests=args.requests, kills=args.kills)
                row = {"seed": seed, "passed": r.passed, "checks": r.checks, "details": r.details}
            except Exception as exc:  # a hung or crashed trial is a failed trial, reported
                row = {"seed": seed, "passed": False, "error": f"{type(exc).__name__}: {exc}"}
            row["seconds"] = round(time.monotonic() - t0, 1)
            report_trial(f"trial {t + 1}/{args.trials} seed {seed}", row)
            trials.append(row)
    return trials



def report_trial(label: str, row: dict) -> None:
    """One line per trial: PASS/FAIL, seconds, and the failed checks or the error."""
    failed = [k for k, ok in row.get("checks", {}).items() if not ok]
    print(f"{label}: {'PASS' if row['passed'] else 'FAIL'} "
          f"({row['seconds']} s){' ' + str(failed or row.get('error')) if not row['passed'] else ''}", flush=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--kills", type=int, default=3)
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--seed", type=int, default=100)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    result = main(args)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    sys.exit(0 if result["passed"] == result["trials"] else 1)
