"""Replay at production sizes: events/s and peak RSS per log size and format.

For each size (events of a labelled simulator log: per request one labelled interaction per
candidate, plus media events) and format (``jsonl.gz``, ``jsonl.zst``, ``parquet``, ``jsonl``),
one child process per measurement reads the log and reports its events/s (wall and CPU) and
its peak RSS (``VmHWM``, or ``ru_maxrss`` where there is no /proc), so memory is measured per
size and shows whether it stays flat. ``--mode engine`` also splits the peak: ``peak_rss_fit_mb``
(reading the warm-up and fitting the initial model: torch training and ONNX export) and
``peak_rss_replay_mb`` (the replay alone: the peak is reset after the fit through
/proc/self/clear_refs), with ``rss_after_fit_mb`` and ``rss_end_mb``; ``peak_rss_mb`` is the
larger of the two peaks.

Modes:

- ``--mode readers`` (default): the streaming readers alone
  (:func:`reloop.ops.log_readers.iter_events`), every event pulled and dropped;
- ``--mode engine``: end to end through :class:`reloop.ops.replay.ReplayEngine` with
  compensation on, through whatever API ops/replay.py has: an engine with
  ``run_stream(events, fitted)`` gets the stream (the initial model is fitted first on the
  first ``--warmup-interactions`` interactions, not timed); one with only ``run(LoadedLog)``
  gets the events materialised first (``"materialised": true``: fit included, RSS grows with
  the log);
- ``--baseline``: today's in-memory reader (:func:`reloop.ops.logs.read_jsonl`, plain JSONL
  only, sizes up to ``--baseline-max``) for comparison.

Logs are generated once, streaming (``--data-dir``, reused when present).

Usage::

    PYTHONPATH=. python bench/replay_speed.py --sizes 100000,1000000,10000000 --json out.json
    PYTHONPATH=. python bench/replay_speed.py --mode engine --sizes 100000 --json engine.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

FORMATS = ("jsonl.gz", "jsonl.zst", "parquet", "jsonl")


def log_path(data_dir: Path, n: int, fmt: str, seed: int) -> Path:
    return data_dir / f"sim_labelled_{n}_s{seed}.{fmt}"


def generate(data_dir: Path, n: int, fmts: list[str], seed: int) -> dict[str, float]:
    """Write the ``n``-event labelled simulator log in each format (streaming); returns seconds per format."""
    from reloop.ops.log_parquet import write_parquet
    from reloop.ops.log_readers import iter_events, write_jsonl_compressed
    from reloop.ops.simulator import SimConfig, Simulator
    from reloop.streams.validation import Limits

    data_dir.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}
    first = log_path(data_dir, n, "jsonl.gz", seed)
    if not first.exists():
        t0 = time.perf_counter()
        sim = Simulator(SimConfig(seed=seed))
        tmp = str(first) + ".tmp.gz"
        write_jsonl_compressed(itertools.islice(sim.labelled_log(n // 15 + 10), n), tmp, level=3)
        os.replace(tmp, first)
        times["jsonl.gz"] = time.perf_counter() - t0
    for fmt in fmts:
        out = log_path(data_dir, n, fmt, seed)
        if out.exists():
            continue
        t0 = time.perf_counter()
        events = iter_events([str(first)], "jsonl", Limits(max_future_s=0))
        tmp = str(out) + ".tmp." + fmt.split(".")[-1]
        if fmt == "parquet":
            write_parquet(events, tmp)
        else:
            write_jsonl_compressed(events, tmp)
        os.replace(tmp, out)
        times[fmt] = time.perf_counter() - t0
    return times


def _rss_mb() -> float:
    """Peak RSS of this process, MB: ``VmHWM`` (reset by exec, unlike ``ru_maxrss``, which a
    child keeps from the parent it was forked from), else ``ru_maxrss``."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _rss_now_mb() -> float | None:
    """Current RSS of this process, MB (``VmRSS``; None without /proc)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    """Reset this process's peak RSS (``VmHWM``) to its current RSS (Linux >= 4.0: write 5 to
    /proc/self/clear_refs), so the peak read later is the replay's alone, not the fit's
    (torch training and ONNX export peak higher than a short replay)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _import_format(path: str) -> None:
    """Load the reader's libraries first, so ``rss_before_mb`` includes them (pyarrow: ~100 MB)."""
    if path.endswith(".parquet"):
        import reloop.ops.log_parquet  # noqa: F401
    if path.endswith(".zst"):
        import zstandard  # noqa: F401


def child_readers(path: str, reorder_s: float) -> dict[str, Any]:
    from reloop.ops.log_readers import iter_events
    from reloop.streams.validation import Limits

    _import_format(path)
    rss0 = _rss_mb()
    t0, c0 = time.perf_counter(), time.process_time()
    stream = iter_events([path], "auto", Limits(max_future_s=0), reorder_s)
    n = 0
    for _ in stream:
        n += 1
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"events": n, "invalid": stream.stats.invalid, "seconds": wall, "cpu_seconds": cpu,
            "events_per_s": n / wall, "events_per_cpu_s": n / cpu, "rss_before_mb": rss0, "peak_rss_mb": _rss_mb()}


def child_baseline(path: str) -> dict[str, Any]:
    from reloop.ops.logs import read_jsonl
    from reloop.streams.validation import Limits

    rss0 = _rss_mb()
    t0, c0 = time.perf_counter(), time.process_time()
    n = len(read_jsonl(path, Limits(max_future_s=0)).events)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"events": n, "seconds": wall, "cpu_seconds": cpu, "events_per_s": n / wall,
            "events_per_cpu_s": n / cpu, "rss_before_mb": rss0, "peak_rss_mb": _rss_mb()}


def _fit_on_prefix(stream: Any, settings: Any, warm_n: int) -> tuple[Any, list[Any], int]:
    """Fit the initial model on the log's first ``warm_n`` interactions (a bounded prefix);
    returns (fitted, the prefix's media events, interactions used)."""
    from reloop.ops import replay
    from reloop.streams.events import Interaction, MediaEvent

    prefix: list[Any] = []
    n = 0
    for ev in stream:
        prefix.append(ev)
        if isinstance(ev, Interaction):
            n += 1
            if n >= warm_n:
                break
    media = [e for e in prefix if isinstance(e, MediaEvent)]
    warm: list[Any] = [e for e in prefix if isinstance(e, Interaction)]
    if settings.worker.media_features and media:
        from reloop.processors.media import MediaCore, annotate_log

        warm = annotate_log(MediaCore(settings.media), prefix)
    return replay.fit_initial_model(warm, settings), media, n


def child_engine(path: str, reorder_s: float, config: str | None, warm_n: int) -> dict[str, Any]:
    """End to end through the ReplayEngine of ops/replay.py, whatever its input API is:
    ``run_stream(events, fitted)`` (streaming; the model is fitted first on a bounded prefix,
    not timed), else ``run(LoadedLog)`` (the log materialised, fit included in the time)."""
    import itertools

    from reloop.ops import replay
    from reloop.ops.log_readers import iter_events
    from reloop.ops.serving import compensation_factory
    from reloop.ops.settings import load_settings

    settings = load_settings(config).with_overrides(limits={"max_future_s": 0})
    engine = replay.ReplayEngine(settings, compensation_factory(settings))
    _import_format(path)
    rss0 = _rss_mb()
    stream = iter_events([path], "auto", settings.limits, reorder_s)
    materialised = not hasattr(engine, "run_stream")
    fit_s = None
    if materialised:
        from reloop.ops.logs import LoadedLog

        t0, c0 = time.perf_counter(), time.process_time()
        result = engine.run(LoadedLog(list(stream), [(n, r) for _, n, r in stream.stats.examples], path))
        n_events = stream.stats.events
    else:
        t_fit = time.perf_counter()
        fitted, media, n_warm = _fit_on_prefix(iter(stream), settings, warm_n)
        fit_s = time.perf_counter() - t_fit
        first = stream.stats.events
        peak_fit = _rss_mb()
        rss_fit = _rss_now_mb()
        reset = _reset_peak()
        t0, c0 = time.perf_counter(), time.process_time()
        result = engine.run_stream(itertools.chain(media, stream), fitted, source=path, seq0=n_warm)
        n_events = stream.stats.events - first + len(media)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    rep = result.report
    replay_rss = {} if materialised else {
        "peak_rss_fit_mb": peak_fit, "rss_after_fit_mb": rss_fit, "rss_end_mb": _rss_now_mb(),
        "peak_rss_replay_mb": _rss_mb() if reset else None}
    return {"events": n_events, "seconds": wall, "cpu_seconds": cpu,
            "events_per_s": n_events / wall, "events_per_cpu_s": n_events / cpu,
            "engine_events_per_s": rep.get("events_per_s"), "fit_seconds": fit_s or rep.get("fit_seconds"),
            "scored": rep.get("scored"), "auc_base": rep.get("auc_base"), "auc_compensated": rep.get("auc_compensated"),
            "compensation": rep.get("compensation"), "materialised": materialised,
            "schema_ticks": rep.get("schema_ticks"), "schema_tick_seconds": rep.get("schema_tick_seconds"),
            "digests": rep.get("digests"), "rss_before_mb": rss0,
            "peak_rss_mb": max(_rss_mb(), replay_rss.get("peak_rss_fit_mb") or 0.0),
            **replay_rss}


def run_child(kind: str, path: Path, reorder_s: float, config: str | None = None,
              warm_n: int = 10_000) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", kind, "--child-path", str(path), "--reorder-s", str(reorder_s),
           "--warmup-interactions", str(warm_n)]
    if config:
        cmd += ["--config", config]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100000,1000000", help="events per log, comma-separated")
    ap.add_argument("--formats", default="jsonl.gz,parquet", help=f"some of {','.join(FORMATS)}")
    ap.add_argument("--mode", choices=("readers", "engine", "both"), default="readers")
    ap.add_argument("--baseline", action="store_true", help="also today's in-memory reader (plain JSONL)")
    ap.add_argument("--baseline-max", type=int, default=1_000_000, help="largest size for the baseline")
    ap.add_argument("--data-dir", default="var/bench/replay_logs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--reorder-s", type=float, default=0.0)
    ap.add_argument("--config", help="settings TOML for --mode engine (default: $RELOOP_CONFIG / defaults)")
    ap.add_argument("--warmup-interactions", type=int, default=10_000,
                    help="--mode engine with a streaming engine: interactions that fit the initial model")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--child", choices=("readers", "engine", "baseline"), help=argparse.SUPPRESS)
    ap.add_argument("--child-path", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        fn = {"readers": lambda: child_readers(args.child_path, args.reorder_s),
              "engine": lambda: child_engine(args.child_path, args.reorder_s, args.config, args.warmup_interactions),
              "baseline": lambda: child_baseline(args.child_path)}[args.child]
        print(json.dumps(fn()))
        return 0
    sizes = [int(s) for s in args.sizes.split(",") if s]
    fmts = [f for f in args.formats.split(",") if f]
    unknown = [f for f in fmts if f not in FORMATS]
    if unknown:
        ap.error(f"unknown formats {unknown}")
    data_dir = Path(args.data_dir)
    results: list[dict[str, Any]] = []
    for n in sizes:
        need = fmts + (["jsonl"] if args.baseline and n <= args.baseline_max else [])
        gen_s = generate(data_dir, n, need, args.seed)
        kinds = ["readers", "engine"] if args.mode == "both" else [args.mode]
        for fmt in fmts:
            path = log_path(data_dir, n, fmt, args.seed)
            for kind in kinds:
                row = {"size": n, "format": fmt, "mode": kind, "file_mb": path.stat().st_size / 1e6,
                       **run_child(kind, path, args.reorder_s, args.config,
                                                         args.warmup_interactions)}
                results.append(row)
                print(json.dumps(row), flush=True)
        if args.baseline and n <= args.baseline_max:
            path = log_path(data_dir, n, "jsonl", args.seed)
            row = {"size": n, "format": "jsonl", "mode": "baseline_read_jsonl",
                   "file_mb": path.stat().st_size / 1e6, **run_child("baseline", path, 0.0)}
            results.append(row)
            print(json.dumps(row), flush=True)
        if gen_s:
            print(json.dumps({"size": n, "generated_seconds": gen_s}), flush=True)
    out = {"command": " ".join([os.path.basename(sys.executable), *sys.argv]), "machine": platform.platform(),
           "cpus": os.cpu_count(), "results": results}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
