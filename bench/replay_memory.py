"""What a replay holds in memory, sampled every N batches (issue 15: does it grow with the log?).

Runs the engine child of ``bench/replay_speed.py`` (fit on the first interactions, then
``ReplayEngine.run_stream`` over the rest) with a sampler after every ``--every``-th batch,
one JSON line per sample on stdout:

- ``rss_mb``, ``rss_anon_mb``: ``VmRSS`` and ``RssAnon`` of the process, MB;
- ``sketch_rss_mb``: resident MB of the error-memory sketch (``/proc/self/smaps`` over the
  array's address range; numpy asks for huge pages on large arrays, so one write into a 2 MB
  page makes all of it resident);
- ``media_users``, ``media_mb``: users with a media memory and the bytes of their arrays;
- ``resolved``, ``digests``, ``deadlines``: the feedback tasks' request ids kept for the
  attribution window (``processors/pending.py``);
- ``recent_error_ids``: the replica's duplicate filter (``recent_ids`` per errors partition);
- ``pred_buffered``: prediction rows held in memory by the ``PredictionLog`` (spilled per chunk);
- ``rolling_auc_buffered``: updates river's ``RollingROCAUC`` holds in Python lists until
  its ``get()`` (river >= 0.26 buffers them; ``OnlineMetrics`` calls ``get()`` only in
  ``summary()``, which replay never calls);
- ``gc_objects`` (every 4th sample): objects tracked by the collector (frozen ones excluded).

``--tracemalloc A,B`` starts tracemalloc (one frame) one sample before batch ``A`` and prints
the 30 lines whose live allocations grew most between batches ``A`` and ``B`` (multiples of
``--every``) on stderr (tracing slows the run and adds to its RSS). ``--flush-rolling-auc`` calls ``get()`` on the rolling AUCs after every
batch, to measure what flushing them saves (outputs unchanged: the report does not read them).

Usage::

    PYTHONPATH=. python bench/replay_memory.py var/bench/replay_logs/sim_labelled_1000000_s0.jsonl.gz --every 400
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
import replay_speed  # noqa: E402

from reloop.ops.replay_run import EngineRun  # noqa: E402
from reloop.processors.metrics import OnlineMetrics  # noqa: E402


def proc_status() -> dict[str, int]:
    """``VmRSS``, ``VmHWM`` and ``RssAnon`` of this process, MB."""
    out = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(("VmRSS:", "VmHWM:", "RssAnon:")):
                key, val = line.split(":")
                out[key] = int(val.split()[0]) // 1024
    return out


def resident_mb(addr: int, nbytes: int) -> int:
    """Resident MB of the mappings overlapping ``[addr, addr + nbytes)`` (``/proc/self/smaps``)."""
    kb, cur = 0, None
    with open("/proc/self/smaps") as fh:
        for line in fh:
            f = line.split()
            if "-" in f[0] and not f[0].endswith(":"):
                lo, hi = (int(x, 16) for x in f[0].split("-"))
                cur = lo < addr + nbytes and addr < hi
            elif f[0] == "Rss:" and cur:
                kb += int(f[1])
    return kb // 1024


def array_bytes(obj: Any) -> int:
    """Bytes of the numpy arrays among ``obj``'s attributes and its attributes' attributes."""
    total = 0
    for o in (obj, *[v for v in vars(obj).values() if hasattr(v, "__dict__")]):
        total += sum(v.nbytes for v in vars(o).values() if hasattr(v, "nbytes"))
    return total


def sample(run: EngineRun, batch: int, t0: float, objects: bool) -> dict[str, Any]:
    """One sample of ``run``'s memory (module doc)."""
    st = run.state
    status = proc_status()
    pending = [c.pending for c in st.tasks.tasks.values()]
    row: dict[str, Any] = {
        "batch": batch, "seconds": round(time.perf_counter() - t0, 1), "rss_mb": status["VmRSS"],
        "rss_anon_mb": status["RssAnon"], "predictions": len(run.predictions),
        "pred_buffered": run.predictions._buf_n,  # noqa: SLF001 - a probe
        "resolved": sum(len(p._resolved) for p in pending),  # noqa: SLF001
        "digests": sum(len(p._digests) for p in pending),  # noqa: SLF001
        "deadlines": sum(len(p._deadlines) for p in pending),  # noqa: SLF001
        "recent_error_ids": sum(len(s) for s in st.replica.recent_ids._seen.values()),  # noqa: SLF001
        "rolling_auc_buffered": sum(len(getattr(r, "_buf_scores", ()))
                                    for r in st.tasks.metrics._rolling.values()),  # noqa: SLF001
        "series_points": len(st.tasks.metrics.series),
    }
    if st.media is not None:
        users = st.media.memory.users
        row["media_users"] = len(users)
        row["media_mb"] = round(sum(array_bytes(u) for u in users.values()) / 2**20, 1)
    mem = getattr(st.replica.compensation, "memory", None)
    if mem is not None:
        row["sketch_rss_mb"] = resident_mb(mem._buckets.__array_interface__["data"][0], mem._buckets.nbytes)  # noqa: SLF001
    if objects:
        row["gc_objects"] = len(gc.get_objects())
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("log", help="a labelled log (e.g. one bench/replay_speed.py generated)")
    ap.add_argument("--every", type=int, default=400, help="batches between samples")
    ap.add_argument("--warmup-interactions", type=int, default=10_000)
    ap.add_argument("--config", help="settings TOML (default: $RELOOP_CONFIG / defaults)")
    ap.add_argument("--tracemalloc", help="A,B: top allocation growth between batches A and B")
    ap.add_argument("--flush-rolling-auc", action="store_true", help="get() the rolling AUCs after every batch")
    args = ap.parse_args(argv)
    snap_at = [int(x) for x in args.tracemalloc.split(",")] if args.tracemalloc else []
    snaps: list[tracemalloc.Snapshot] = []
    if args.flush_rolling_auc:
        update = OnlineMetrics.update

        def flushed(self: OnlineMetrics, *a: Any, **k: Any) -> None:
            update(self, *a, **k)
            for roll in self._rolling.values():  # noqa: SLF001
                roll.get()

        OnlineMetrics.update = flushed  # type: ignore[method-assign]
    feed, n, t0 = EngineRun.feed, [0], [0.0]

    def sampled(self: EngineRun, batch: Any) -> None:
        feed(self, batch)
        n[0] += 1
        if n[0] == 1:
            t0[0] = time.perf_counter()
        if snap_at and n[0] == max(1, snap_at[0] - args.every):
            tracemalloc.start(1)
        if n[0] % args.every:
            return
        print(json.dumps(sample(self, n[0], t0[0], n[0] % (4 * args.every) == 0)), flush=True)
        if n[0] in snap_at:
            snaps.append(tracemalloc.take_snapshot())
            if len(snaps) == 2:
                for stat in snaps[1].compare_to(snaps[0], "lineno")[:30]:
                    print(stat, file=sys.stderr, flush=True)
                tracemalloc.stop()

    EngineRun.feed = sampled  # type: ignore[method-assign]
    out = replay_speed.child_engine(args.log, 0.0, args.config, args.warmup_interactions)
    print(json.dumps({"end": True, **out, "rss_after_result_dropped_mb": proc_status()["VmRSS"]}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
