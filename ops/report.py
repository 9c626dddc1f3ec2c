"""Terminal rendering of run and replay reports (rich tables; plain text when not a TTY)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table


def _fmt(x: Any, nd: int = 4) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return str(x)


def print_run_report(report: dict[str, Any], console: Console | None = None) -> None:
    """Print the main job's report: traffic, latency, quality over time with the shift marked."""
    c = console or Console()
    w = report.get("worker", {}) or {}
    summ = w.get("summary", {}) or {}
    t = Table(title="ReLoop run", show_header=False)
    produced = report.get("produced", {})
    t.add_row("requests / interactions / media sent",
              f"{produced.get('requests')} / {produced.get('interactions')} / {produced.get('media')}")
    t.add_row("recommendations received (unanswered)",
              f"{report.get('recommendations')} ({report.get('unanswered')})")
    t.add_row("offered load / answered (req/s)",
              f"{_fmt(report.get('offered_rps'), 0)} / {_fmt(report.get('answered_rps'), 1)}")
    lat = report.get("latency_ms", {})
    t.add_row("request->recommendation latency p50/p90/p99 (ms)",
              f"{_fmt(lat.get('p50'), 1)} / {_fmt(lat.get('p90'), 1)} / {_fmt(lat.get('p99'), 1)}")
    t.add_row("model versions served", str(report.get("versions")))
    t.add_row("labelled predictions (pending)", f"{summ.get('labelled')} ({w.get('pending')})")
    t.add_row("AUC base / compensated", f"{_fmt(summ.get('auc_base'))} / {_fmt(summ.get('auc_compensated'))}")
    t.add_row("log loss base / compensated",
              f"{_fmt(summ.get('logloss_base'))} / {_fmt(summ.get('logloss_compensated'))}")
    c.print(t)
    series = sorted(w.get("series") or [], key=lambda p: p["ts"])  # windows close out of order
    if series:
        shift = report.get("shift_ts")
        s = Table(title="Quality per window (event time)")
        for col in ("window end (s)", "AUC base", "AUC comp", "logloss base", "logloss comp", ""):
            s.add_column(col)
        t0 = report.get("live_from_ts") or series[0]["ts"]
        step = max(1, len(series) // 20)
        marked = False
        for p in series[::step]:
            mark = ""
            if shift is not None and not marked and p["ts"] >= shift:
                mark, marked = "<- shift", True
            s.add_row(f"{p['ts'] - t0:.0f}", _fmt(p.get("auc_base")), _fmt(p.get("auc_compensated")),
                      _fmt(p.get("logloss_base")), _fmt(p.get("logloss_compensated")), mark)
        c.print(s)
