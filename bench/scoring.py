"""Serving speed of the slow model, old vs new architecture: torch vs onnxruntime, threads, idle CPU.

    OMP_NUM_THREADS=1 python bench/scoring.py --json reports/scoring.json [--iters 2000]
        [--idle-seconds 3] [--movielens ../shared/data/ml-100k | --skip-auc]

Models: ``old`` = :data:`reloop.models.ctr.LEGACY_MODEL_CONFIG` (two full-rank cross layers, 16-wide
embeddings: the model before issue 14) and ``new`` = ``Settings().model`` (today's default),
both over the simulator's features with ``Settings()`` feature defaults (2^18 hashed buckets,
16 tokens, hidden 64), exported with the project's exporter. Inputs are real encoded candidate
rows. Timing does not depend on the weights, so the timed models are untrained.

Latency, per call, for batches of 1, 32 and 256 candidates (median and p90 over ``--iters``
calls after a warm-up, all in one process, interleaved per batch size so that machine noise
hits every variant alike), per model:

- ``torch``: eager ``model(tokens, dense)`` under ``torch.inference_mode()``, 1 intra-op thread;
- ``ort``: the serving path, :meth:`reloop.models.scorer.OnnxScorer.score` (input checks included)
  with the session options of :func:`reloop.models.scorer.make_session_options`, 1 thread;
- ``ort_default``: onnxruntime with default ``SessionOptions`` (threads = cores, spinning on).

``per_candidate_us`` = ``ort`` median / batch size. Threading table (new model, batches 1 to
2048): median wall ms and process CPU ms per call with 1 and 2 intra-op threads (tuned options,
no spinning); it is what :data:`reloop.models.scorer.LARGE_BATCH_THREADS` and ``LARGE_BATCH_ROWS`` are
set from.

Quality: ML-100K prequential AUC (frozen v1 and retrained every 10k ratings) of each
architecture: ``bench/retrain.py --skip-cycle --model <config>`` in one child process per
architecture, run side by side after the timings (2-8 min depending on the machine's load).

CPU while idle, measured in child processes (``resource.getrusage(RUSAGE_SELF)``, user + sys)
that each hold one session of the new model: ``idle`` = no request at all for
``--idle-seconds``; ``trickle`` = one batch-1 request every 10 ms (a quiet worker). Reported as
CPU seconds per wall second (1.0 = one core busy), tuned vs default options.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

BATCHES = (1, 32, 256)
THREAD_BATCHES = (1, 32, 256, 512, 1024, 2048)
DEFAULT_ML100K = Path(__file__).resolve().parents[2] / "shared" / "data" / "ml-100k"


def _cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _session(onnx_path: str | bytes, tuned: bool, threads: int = 1):
    import onnxruntime as ort

    from reloop.models.scorer import make_session_options

    opts = make_session_options(threads) if tuned else ort.SessionOptions()
    return ort.InferenceSession(onnx_path, sess_options=opts, providers=["CPUExecutionProvider"])


def idle_child(onnx_path: str, tuned: bool, seconds: float, mode: str) -> dict[str, float]:
    """Run in a child process: hold a session, then measure CPU use over ``seconds`` of wall time."""
    session = _session(onnx_path, tuned)
    spec_t = session.get_inputs()[0].shape[1]
    spec_d = session.get_inputs()[1].shape[1]
    feed = {"tokens": np.ones((1, spec_t), np.int64), "dense": np.zeros((1, spec_d), np.float32)}
    for _ in range(50):
        session.run(None, feed)
    cpu0, t0 = _cpu_seconds(), time.perf_counter()
    requests = 0
    if mode == "idle":
        time.sleep(seconds)
    else:
        next_at = t0
        while time.perf_counter() - t0 < seconds:
            session.run(None, feed)
            requests += 1
            next_at += 0.010
            time.sleep(max(0.0, next_at - time.perf_counter()))
    wall = time.perf_counter() - t0
    return {"cpu_per_wall_s": (_cpu_seconds() - cpu0) / wall, "wall_s": wall, "requests": requests}


def _child(onnx_path: str, tuned: bool, seconds: float, mode: str) -> dict[str, float]:
    out = subprocess.run([sys.executable, __file__, "--idle-child", onnx_path, "--tuned", str(int(tuned)),
                          "--idle-seconds", str(seconds), "--mode", mode],
                         capture_output=True, text=True, check=True, timeout=seconds + 120)
    return json.loads(out.stdout.strip().splitlines()[-1])


def simulator_rows(seed: int = 0) -> list:
    """Candidate rows ``(user, item, features)`` of 200 simulator events."""
    from reloop.ops.simulator import SimConfig, Simulator
    from reloop.streams.events import RecommendationRequest

    rows = []
    for ev in Simulator(SimConfig(seed=seed)).events(200):
        if isinstance(ev, RecommendationRequest):
            rows += [(ev.user_id, c.item_id, {**ev.features, **c.features}) for c in ev.candidates]
    return rows


def build_model(config: Any = None, seed: int = 0):
    """A model of ``config`` (default ``Settings().model``), its ONNX bytes and encoded rows."""
    from reloop.models.ctr import CTRModel
    from reloop.models.export import export_onnx
    from reloop.models.features import FeatureEncoder, FeatureSpec
    from reloop.ops.settings import Settings

    settings = Settings()
    rows = simulator_rows(seed)
    spec = FeatureSpec.infer(rows, n_buckets=settings.features.n_buckets, max_tokens=settings.features.max_tokens)
    model = CTRModel(spec, config if config is not None else settings.model).eval()
    tokens, dense = FeatureEncoder(spec).encode(rows)
    return model, export_onnx(model, spec), tokens, dense


def time_calls(fn: Callable[[], Any], iters: int, warmup: int = 50) -> list[float]:
    """Seconds per call of ``fn()`` over ``iters`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(iters):
        t0 = time.perf_counter_ns()
        fn()
        out.append((time.perf_counter_ns() - t0) * 1e-9)
    return out


def time_wall_cpu(fn: Callable[[], Any], iters: int, warmup: int = 5) -> tuple[list[float], float]:
    """Per-call wall seconds and the mean process CPU seconds per call (all threads)."""
    for _ in range(warmup):
        fn()
    cpu0 = time.process_time()
    walls = time_calls(fn, iters, warmup=0)
    return walls, (time.process_time() - cpu0) / iters


def _stats(ts: list[float]) -> dict[str, float]:
    return {"median_ms": statistics.median(ts) * 1e3, "p90_ms": float(np.percentile(ts, 90)) * 1e3, "calls": len(ts)}


def latency(models: dict[str, tuple], iters: int) -> dict[str, dict]:
    """Interleaved torch / ort / ort_default timings per model and batch size (module doc)."""
    import torch

    from reloop.models.scorer import OnnxScorer

    torch.set_num_threads(1)
    prepared = {}
    for name, (model, onnx_bytes, _tokens, _dense) in models.items():
        scorer = OnnxScorer(onnx_bytes, version=name, spec=model.spec, intra_op_num_threads=1, large_batch_threads=1)
        prepared[name] = (model, scorer, _session(onnx_bytes, tuned=False))
    _, _, tokens, dense = next(iter(models.values()))
    results: dict[str, dict] = {}
    for b in BATCHES:
        t = np.ascontiguousarray(tokens[:b])
        d = np.ascontiguousarray(dense[:b])
        tt, td = torch.from_numpy(t), torch.from_numpy(d)
        feed = {"tokens": t, "dense": d}
        variants: dict[tuple[str, str], Callable[[], Any]] = {}
        for name, (model, scorer, default_session) in prepared.items():
            def run_torch(model=model) -> None:
                with torch.inference_mode():
                    model(tt, td)

            variants[(name, "torch")] = run_torch
            variants[(name, "ort")] = lambda scorer=scorer: scorer.score(t, d)
            variants[(name, "ort_default")] = lambda s=default_session: s.run(None, feed)
        iters_b = max(50, iters // (1 if b == 1 else 4 if b == 32 else 10))
        times: dict[tuple[str, str], list[float]] = {k: [] for k in variants}
        for rnd in range(4):  # interleave the variants so that noise hits all of them alike
            for key, fn in variants.items():
                times[key] += time_calls(fn, iters_b // 4, warmup=50 if rnd == 0 else 5)
        row: dict[str, Any] = {}
        for name in prepared:
            r = {v: _stats(times[(name, v)]) for v in ("torch", "ort", "ort_default")}
            r["per_candidate_us"] = r["ort"]["median_ms"] * 1e3 / b
            r["torch_over_ort"] = r["torch"]["median_ms"] / r["ort"]["median_ms"]
            row[name] = r
        if {"old", "new"} <= set(row):
            row["old_over_new_ort"] = row["old"]["ort"]["median_ms"] / row["new"]["ort"]["median_ms"]
        results[f"batch_{b}"] = row
        print(f"batch {b:>3}: " + "  |  ".join(
            f"{n}: {r['per_candidate_us']:.2f} us/cand (ort {r['ort']['median_ms']:.3f} ms, torch "
            f"{r['torch']['median_ms']:.3f} ms, x{r['torch_over_ort']:.2f}; ort default "
            f"{r['ort_default']['median_ms']:.3f} ms)" for n, r in row.items() if isinstance(r, dict))
              + (f"  old/new {row['old_over_new_ort']:.2f}x" if "old_over_new_ort" in row else ""), flush=True)
    return results


def threading(onnx_bytes: bytes, tokens: np.ndarray, dense: np.ndarray, iters: int) -> dict[str, Any]:
    """Wall and process CPU per call with 1 vs 2 intra-op threads (tuned options), per batch size.

    ORT's default options are left out here: their spinning threads keep burning CPU after a
    call, which the next variant's CPU figure would absorb (the latency table has them).
    """
    sessions = {"tuned_1": _session(onnx_bytes, True, 1), "tuned_2": _session(onnx_bytes, True, 2)}
    reps = -(-max(THREAD_BATCHES) // len(tokens))
    tokens, dense = np.tile(tokens, (reps, 1)), np.tile(dense, (reps, 1))
    out: dict[str, Any] = {}
    for b in THREAD_BATCHES:
        feed = {"tokens": np.ascontiguousarray(tokens[:b]), "dense": np.ascontiguousarray(dense[:b])}
        n = max(50, iters // max(1, b // 4) // 4)
        walls: dict[str, list[float]] = {k: [] for k in sessions}
        cpus: dict[str, list[float]] = {k: [] for k in sessions}
        for _ in range(4):
            for k, s in sessions.items():
                w, c = time_wall_cpu(lambda s=s: s.run(None, feed), n)
                walls[k] += w
                cpus[k].append(c)
        row: dict[str, Any] = {k: {"wall_ms": statistics.median(walls[k]) * 1e3,
                                   "cpu_ms": statistics.median(cpus[k]) * 1e3} for k in sessions}
        row["two_threads_wall_speedup"] = row["tuned_1"]["wall_ms"] / row["tuned_2"]["wall_ms"]
        row["two_threads_cpu_ratio"] = row["tuned_2"]["cpu_ms"] / row["tuned_1"]["cpu_ms"]
        out[f"batch_{b}"] = row
        print(f"threads, batch {b:>4}: 1 thread {row['tuned_1']['wall_ms']:.3f} ms (cpu {row['tuned_1']['cpu_ms']:.3f})"
              f"  2 threads {row['tuned_2']['wall_ms']:.3f} ms (cpu {row['tuned_2']['cpu_ms']:.3f})"
              f"  2-thread wall speed-up {row['two_threads_wall_speedup']:.2f}x, cpu x{row['two_threads_cpu_ratio']:.2f}",
              flush=True)
    return out


def movielens_auc(path: Path, configs: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """ML-100K prequential AUC per architecture, frozen and retrained every 10k ratings.

    Each architecture runs ``bench/retrain.py --skip-cycle --model <config>`` (the same
    protocol and code) in its own child process, all at once, after the timings are done.
    """
    import msgspec

    out: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        procs = {}
        for name, cfg in configs.items():
            target = Path(tmp) / f"{name}.json"
            cmd = [sys.executable, str(Path(__file__).with_name("retrain.py")), "--skip-cycle", "--movielens", str(path),
                   "--model", msgspec.json.encode(cfg).decode(), "--json", str(target)]
            procs[name] = (subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True), target)
        for name, (proc, target) in procs.items():
            _, err = proc.communicate(timeout=3600)
            if proc.returncode != 0:
                raise RuntimeError(f"bench/retrain.py for {name} failed: {err[-2000:]}")
            r = json.loads(target.read_text())["movielens"]
            out[name] = {"frozen_auc": r["frozen"]["auc"], "retrained_auc": r["retrained"]["auc"],
                         "frozen_logloss": r["frozen"]["logloss"], "retrained_logloss": r["retrained"]["logloss"],
                         "retrains_served": sum(x["accepted"] for x in r["retrains"]), "retrains": len(r["retrains"])}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--iters", type=int, default=2000, help="timed calls per variant at batch 1 (fewer for larger)")
    ap.add_argument("--idle-seconds", type=float, default=3.0)
    ap.add_argument("--movielens", default=str(DEFAULT_ML100K), help="ML-100K directory (read in place)")
    ap.add_argument("--skip-auc", action="store_true", help="no ML-100K run (speed only)")
    ap.add_argument("--idle-child", help=argparse.SUPPRESS)
    ap.add_argument("--tuned", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--mode", default="idle", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.idle_child:
        print(json.dumps(idle_child(args.idle_child, bool(args.tuned), args.idle_seconds, args.mode)))
        return 0

    import msgspec
    import onnxruntime as ort
    import torch

    from reloop.models.ctr import LEGACY_MODEL_CONFIG
    from reloop.ops.logging_setup import setup_logging
    from reloop.ops.settings import Settings

    setup_logging("ERROR")
    configs = {"old": LEGACY_MODEL_CONFIG, "new": Settings().model}
    models = {name: build_model(cfg) for name, cfg in configs.items()}
    results = latency(models, args.iters)
    _, new_bytes, tokens, dense = models["new"]
    threads = threading(new_bytes, tokens, dense, args.iters)

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.onnx")
        Path(path).write_bytes(new_bytes)
        idle = {f"{mode}_{'tuned' if tuned else 'default'}": _child(path, tuned, args.idle_seconds, mode)
                for mode in ("idle", "trickle") for tuned in (True, False)}
    for k, v in idle.items():
        print(f"{k:>16}: {v['cpu_per_wall_s']:.4f} CPU s per wall s ({v['requests']} requests)", flush=True)

    quality: dict[str, Any] = {}
    if not args.skip_auc:
        quality = movielens_auc(Path(args.movielens), configs)
        for name, q in quality.items():
            print(f"ml-100k {name}: prequential AUC frozen {q['frozen_auc']:.4f}, retrained every 10k "
                  f"{q['retrained_auc']:.4f} ({q['retrains_served']}/{q['retrains']} retrains served)", flush=True)

    b256 = results["batch_256"]["new"]
    targets: dict[str, Any] = {
        "new_at_most_2us_per_candidate_at_256": b256["per_candidate_us"] <= 2.0,
        "new_ort_at_least_1_5x_torch_at_256": b256["torch_over_ort"] >= 1.5,
    }
    if quality:
        targets["new_auc_at_least_old"] = (quality["new"]["frozen_auc"] >= quality["old"]["frozen_auc"]
                                           and quality["new"]["retrained_auc"] >= quality["old"]["retrained_auc"])
    report = {
        "command": " ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:])),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": str(torch.__version__),
                    "onnxruntime": ort.__version__, "platform": platform.platform(),
                    "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"), "torch_threads": torch.get_num_threads(),
                    "ort_threads_served": 1},
        "models": {name: {"config": msgspec.to_builtins(model.config), "onnx_bytes": len(onnx_bytes),
                          "parameters": int(sum(p.numel() for p in model.parameters())),
                          "dense_parameters": int(sum(p.numel() for n, p in model.named_parameters()
                                                      if not n.startswith("embedding."))),
                          "n_buckets": model.spec.n_buckets, "max_tokens": model.spec.max_tokens,
                          "dense": list(model.spec.dense_names), "hidden_dim": model.hidden_dim}
                   for name, (model, onnx_bytes, _, _) in models.items()},
        "per_candidate_us": {f"batch_{b}": {n: results[f"batch_{b}"][n]["per_candidate_us"] for n in configs}
                             for b in BATCHES},
        "movielens_auc": quality,
        "latency": results,
        "threads": threads,
        "idle_cpu": idle,
        "targets": targets,
    }
    print("targets: " + ", ".join(f"{k}={v}" for k, v in targets.items()), flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
