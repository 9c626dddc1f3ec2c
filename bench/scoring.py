"""Serving speed of the slow model: torch eager vs onnxruntime, and CPU burnt while idle.

    python bench/scoring.py --json reports/scoring.json [--iters 2000] [--idle-seconds 3]

Model: the default-size :class:`~models.ctr.CTRModel` (``Settings()`` defaults: 2^18 hashed
buckets, 16 tokens, DCN-v2 cross + deep tower, hidden 64) over the simulator's features,
exported with the project's exporter. Inputs are real encoded candidate rows.

Latency, per call, for batches of 1, 32 and 256 candidates (median and p90 over ``--iters``
calls after a warm-up, all in one process, interleaved per batch size so that machine noise
hits every variant alike):

- ``torch``: eager ``model(tokens, dense)`` under ``torch.inference_mode()``, 1 intra-op thread;
- ``ort``: the serving path, :meth:`models.scorer.OnnxScorer.score` (input checks included)
  with the tuned session options of :func:`models.scorer.make_session_options`;
- ``ort_default``: onnxruntime with default ``SessionOptions`` (threads = cores, spinning on).

CPU while idle, measured in child processes (``resource.getrusage(RUSAGE_SELF)``, user + sys)
that each hold one session: ``idle`` = no request at all for ``--idle-seconds``; ``trickle`` =
one batch-1 request every 10 ms (a quiet worker). Reported as CPU seconds per wall second
(1.0 = one core busy), tuned vs default options.
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

BATCHES = (1, 32, 256)


def _cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _session(onnx_path: str, tuned: bool):
    import onnxruntime as ort

    from models.scorer import make_session_options

    opts = make_session_options(1) if tuned else ort.SessionOptions()
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


def build_model(seed: int = 0):
    """A default-size model and encoded candidate rows of the simulator (no training needed)."""
    from models.ctr import CTRModel
    from models.export import export_onnx
    from models.features import FeatureEncoder, FeatureSpec
    from ops.settings import Settings
    from ops.simulator import SimConfig, Simulator
    from streams.events import RecommendationRequest

    settings = Settings()
    sim = Simulator(SimConfig(seed=seed))
    rows = []
    for ev in sim.events(200):
        if isinstance(ev, RecommendationRequest):
            rows += [(ev.user_id, c.item_id, {**ev.features, **c.features}) for c in ev.candidates]
    spec = FeatureSpec.infer(rows, n_buckets=settings.features.n_buckets, max_tokens=settings.features.max_tokens)
    model = CTRModel(spec, settings.model).eval()
    tokens, dense = FeatureEncoder(spec).encode(rows)
    return model, export_onnx(model, spec), tokens, dense


def time_calls(fn, iters: int, warmup: int = 50) -> list[float]:
    """Seconds per call of ``fn()`` over ``iters`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(iters):
        t0 = time.perf_counter_ns()
        fn()
        out.append((time.perf_counter_ns() - t0) * 1e-9)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--iters", type=int, default=2000, help="timed calls per variant and batch size")
    ap.add_argument("--idle-seconds", type=float, default=3.0)
    ap.add_argument("--idle-child", help=argparse.SUPPRESS)
    ap.add_argument("--tuned", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--mode", default="idle", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.idle_child:
        print(json.dumps(idle_child(args.idle_child, bool(args.tuned), args.idle_seconds, args.mode)))
        return 0

    import onnxruntime as ort
    import torch

    from models.scorer import OnnxScorer

    model, onnx_bytes, tokens, dense = build_model()
    torch.set_num_threads(1)
    scorer = OnnxScorer(onnx_bytes, version="bench", spec=model.spec, intra_op_num_threads=1)
    default_session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    results: dict[str, dict] = {}
    for b in BATCHES:
        t = np.ascontiguousarray(tokens[:b])
        d = np.ascontiguousarray(dense[:b])
        tt, td = torch.from_numpy(t), torch.from_numpy(d)
        feed = {"tokens": t, "dense": d}

        def run_torch() -> None:
            with torch.inference_mode():
                model(tt, td)

        variants = {"torch": run_torch, "ort": lambda: scorer.score(t, d),
                    "ort_default": lambda: default_session.run(None, feed)}
        iters = max(50, args.iters // (1 if b == 1 else 4 if b == 32 else 10))
        times: dict[str, list[float]] = {k: [] for k in variants}
        for rnd in range(4):  # interleave the variants so that noise hits all of them alike
            for name, fn in variants.items():
                times[name] += time_calls(fn, iters // 4, warmup=50 if rnd == 0 else 5)
        row = {name: {"median_ms": statistics.median(ts) * 1e3,
                      "p90_ms": float(np.percentile(ts, 90)) * 1e3, "calls": len(ts)} for name, ts in times.items()}
        row["torch_over_ort"] = row["torch"]["median_ms"] / row["ort"]["median_ms"]
        row["rows_per_s_ort"] = b / (row["ort"]["median_ms"] / 1e3)
        results[f"batch_{b}"] = row
        print(f"batch {b:>3}: torch {row['torch']['median_ms']:.3f} ms  ort {row['ort']['median_ms']:.3f} ms  "
              f"ort(default opts) {row['ort_default']['median_ms']:.3f} ms  torch/ort {row['torch_over_ort']:.2f}x",
              flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.onnx")
        Path(path).write_bytes(onnx_bytes)
        idle = {f"{mode}_{'tuned' if tuned else 'default'}": _child(path, tuned, args.idle_seconds, mode)
                for mode in ("idle", "trickle") for tuned in (True, False)}
    for k, v in idle.items():
        print(f"{k:>16}: {v['cpu_per_wall_s']:.4f} CPU s per wall s ({v['requests']} requests)", flush=True)

    report = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": str(torch.__version__),
                    "onnxruntime": ort.__version__, "platform": platform.platform()},
        "model": {"n_buckets": model.spec.n_buckets, "max_tokens": model.spec.max_tokens,
                  "dense": list(model.spec.dense_names), "hidden_dim": model.hidden_dim,
                  "onnx_bytes": len(onnx_bytes)},
        "latency": results,
        "idle_cpu": idle,
        "targets": {"ort_2x_faster_at_batch_1": results["batch_1"]["torch_over_ort"] >= 2.0,
                    "ort_not_slower_at_batch_256": results["batch_256"]["torch_over_ort"] >= 1.0},
    }
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
