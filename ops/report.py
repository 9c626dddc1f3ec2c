"""Terminal rendering of run and replay reports (rich tables; plain text when not a TTY)."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table


def _fmt(x: Any, nd: int = 4) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return str(x)


def _table(title: str, columns: list[str], rows: list[list[str]]) -> Table:
    t = Table(title=title)
    for col in columns:
        t.add_column(col)
    for r in rows:
        t.add_row(*r)
    return t


def _retrain_marks(report: dict[str, Any]) -> list[tuple[float, str]]:
    """``(s from the start of sending, "vN registered")`` for each model registered during the run."""
    start = report.get("send_started_unix")
    if start is None:
        return []
    return [(m["created_ts"] - start, f"{m['version']} registered ({m['trigger']})")
            for m in report.get("models") or [] if m.get("created_ts") is not None and m["created_ts"] >= start]


def print_run_report(report: dict[str, Any], console: Console | None = None) -> None:
    """Print the main job's report: traffic and latency, versions per window with the swaps,
    quality before/after the shift and the swap, the alerts raised, media memory, events/s."""
    c = console or Console()
    if console is None and not c.is_terminal:
        c = Console(width=140)  # a log file or a pipe: rich would wrap at 80 columns
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
    t.add_row("model versions served (requests)", str(report.get("versions")))
    for sw in report.get("swaps") or []:
        t.add_row(f"swap to {sw['version']}", f"first request at {_fmt(sw['after_shift_s'], 1)} s of event time "
                                              f"after the shift; {sw['requests']} requests")
    t.add_row("labelled predictions (pending)", f"{summ.get('labelled')} ({w.get('pending')})")
    t.add_row("AUC base / compensated (whole run)",
              f"{_fmt(summ.get('auc_base'))} / {_fmt(summ.get('auc_compensated'))}")
    t.add_row("log loss base / compensated (whole run)",
              f"{_fmt(summ.get('logloss_base'))} / {_fmt(summ.get('logloss_compensated'))}")
    rates = report.get("events_per_s") or {}
    for direction in ("in", "out"):
        if rates.get(direction):
            t.add_row(f"worker events/s {direction}", ", ".join(f"{k} {v:g}" for k, v in sorted(rates[direction].items())))
    media = report.get("media") or {}
    if media:
        t.add_row("media memory", ", ".join(f"{k} {v:,.0f}" for k, v in media.items() if v is not None))
    stored = report.get("broker_stored") or {}
    if stored:  # every fetch lists its partition's stored batches (docs/operations.md, Latency)
        t.add_row("embedded broker: batches stored (records)",
                  ", ".join(f"{k} {v['batches']:,} ({v['records']:,})" for k, v in stored.items()))
    c.print(t)
    vpw = report.get("versions_per_window") or []
    if vpw:
        names = sorted({v for r in vpw for v in r["versions"]}, key=lambda v: (len(v), v))
        c.print(_table("Versions served per window (event time, s from the shift)", ["window", *names],
                       [[f"{r['from_s']:.0f} .. {r['to_s']:.0f}", *(str(r["versions"].get(n, 0)) for n in names)]
                        for r in vpw]))
    lw = report.get("latency_windows") or []
    if lw:
        marks = _retrain_marks(report)
        c.print(_table("Latency per 10 s of sending (ms)", ["sent at (s)", "requests", "p50", "p99", ""],
                       [[f"{r['from_s']:.0f} .. {r['to_s']:.0f}", str(r["requests"]), _fmt(r["p50"], 1),
                         _fmt(r["p99"], 1), ", ".join(m for at, m in marks if r["from_s"] <= at < r["to_s"])]
                        for r in lw]))
    phases = report.get("quality_phases") or []
    if phases:
        c.print(_table("Quality by phase (mean over metric windows)",
                       ["phase", "windows", "AUC base", "AUC comp", "logloss base", "logloss comp"],
                       [[p["phase"], str(p["windows"]), _fmt(p["auc_base"]), _fmt(p["auc_compensated"]),
                         _fmt(p["logloss_base"]), _fmt(p["logloss_compensated"])] for p in phases]))
    alerts = report.get("alerts") or []
    c.print(_table(f"Alerts ({len(alerts)}; {report.get('schema_updates', 0)} schema updates)",
                   ["s from shift", "kind", "signature", "direction", "observed", "predicted", "support", "reason"],
                   [[_fmt(a["after_shift_s"], 1), a["kind"], a["signature"], a["direction"],
                     _fmt(a["observed_rate"], 3), _fmt(a["predicted_rate"], 3), _fmt(a["support"], 0),
                     a.get("reason", "")] for a in alerts]))
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
    for note in report.get("notes") or []:
        c.print(f"note: {note}")


# ---- the main job's report: versions per window, swaps, alerts, quality by phase, media ----

_PROM_LINE = re.compile(r'^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>[^}]*)\})?\s+(?P<value>\S+)$')


def prometheus_values(text: str) -> dict[tuple[str, str], float]:
    """``{(metric name, 'k=v,...'): value}`` from a Prometheus text exposition.

    >>> prometheus_values('# HELP x y\\nreloop_memory_bytes{memory="media_memory"} 42.0\\nup 1')
    {('reloop_memory_bytes', 'memory=media_memory'): 42.0, ('up', ''): 1.0}
    """
    out: dict[tuple[str, str], float] = {}
    for line in text.splitlines():
        m = _PROM_LINE.match(line.strip())
        if m is None or line.startswith("#"):
            continue
        labels = ",".join(p.replace('"', "") for p in (m["labels"] or "").split(",") if p)
        try:
            out[(m["name"], labels)] = float(m["value"])
        except ValueError:
            continue
    return out


def versions_per_window(answered: list[tuple[float, str]], shift_ts: float | None,
                        windows: int = 10) -> list[dict[str, Any]]:
    """Answered requests per equal event-time window: ``from_s``/``to_s`` relative to the shift
    (or to the first request when there is none), and the count per model version.

    >>> rows = versions_per_window([(0.0, "v1"), (5.0, "v1"), (9.0, "v2"), (10.0, "v2")], 5.0, windows=2)
    >>> [(r["from_s"], r["to_s"], r["versions"]) for r in rows]
    [(-5.0, 0.0, {'v1': 1}), (0.0, 5.0, {'v1': 1, 'v2': 2})]
    """
    if not answered:
        return []
    ts = np.array([a[0] for a in answered])
    lo, hi = float(ts.min()), float(ts.max())
    ref = shift_ts if shift_ts is not None else lo
    edges = np.linspace(lo, hi, windows + 1)
    idx = np.minimum(np.searchsorted(edges, ts, side="right") - 1, windows - 1)
    rows: list[dict[str, Any]] = [{"from_s": round(float(edges[i]) - ref, 1), "to_s": round(float(edges[i + 1]) - ref, 1),
                                   "versions": {}} for i in range(windows)]
    for i, (_, version) in zip(idx.tolist(), answered):
        counts = rows[i]["versions"]
        counts[version] = counts.get(version, 0) + 1
    return rows


def swaps(answered: list[tuple[float, str]], shift_ts: float | None) -> list[dict[str, Any]]:
    """The first request (in event time) each version after the first one answered.

    >>> swaps([(3.0, "v2"), (1.0, "v1"), (4.0, "v1"), (5.0, "v2")], 2.0)
    [{'version': 'v2', 'event_ts': 3.0, 'after_shift_s': 1.0, 'requests': 2}]
    """
    ordered = sorted(answered)
    seen: dict[str, dict[str, Any]] = {}
    for ts, version in ordered:
        if version not in seen:
            seen[version] = {"version": version, "event_ts": ts,
                             "after_shift_s": None if shift_ts is None else round(ts - shift_ts, 1), "requests": 0}
        seen[version]["requests"] += 1
    return list(seen.values())[1:]


def alert_rows(alerts: list[dict[str, Any]], updates: list[dict[str, Any]],
               shift_ts: float | None) -> list[dict[str, Any]]:
    """One row per alert: kind, signature, direction, observed and predicted rates (from the
    schema's update at the alert's event time: the ``promoted`` one for ``new``), support,
    event time relative to the shift (seconds), and for ``resolved`` why (``weak``,
    ``significance``, ``explained by ...``: :class:`~reloop.processors.schemas.SchemaAlert`)."""
    by_key = {(u["schema_id"], u["ts"]): u for u in updates}
    rows = []
    for a in alerts:
        u = by_key.get((a["schema_id"], a["ts"]), {})
        rows.append({"ts": a["ts"], "after_shift_s": None if shift_ts is None else round(a["ts"] - shift_ts, 1),
                     "kind": a["kind"], "schema_id": a["schema_id"], "signature": " & ".join(a["signature"]),
                     "direction": a["direction"], "observed_rate": u.get("observed_rate"),
                     "predicted_rate": u.get("predicted_rate"), "support": a["support"], "z": a["z"],
                     "reason": a.get("reason", "")})
    return rows


def quality_phases(series: list[dict[str, Any]], shift_ts: float | None,
                   swap_ts: float | None) -> list[dict[str, Any]]:
    """Mean AUC and log loss, base vs compensated, over the worker's metric windows (equal
    event counts) before the shift, after it until the swap, and after the swap; a window
    belongs to a phase by the event time of its last prediction."""
    cuts = [("before shift", float("-inf"), shift_ts if shift_ts is not None else float("inf")),
            ("after shift, before swap" if swap_ts is not None else "after shift",
             shift_ts if shift_ts is not None else float("inf"), swap_ts if swap_ts is not None else float("inf"))]
    if swap_ts is not None:
        cuts.append(("after swap", swap_ts, float("inf")))
    out = []
    for name, lo, hi in cuts:
        pts = [p for p in series if lo <= p["ts"] < hi]
        row: dict[str, Any] = {"phase": name, "windows": len(pts)}
        for k in ("auc_base", "auc_compensated", "logloss_base", "logloss_compensated"):
            vals = [p[k] for p in pts if p.get(k) is not None]
            row[k] = float(np.mean(vals)) if vals else None
        out.append(row)
    return out


def run_summary(report: dict[str, Any], alerts: list[dict[str, Any]], updates: list[dict[str, Any]],
                metrics_text: str) -> dict[str, Any]:
    """The derived sections of the main job's report (see :func:`print_run_report`); pops the
    per-request ``answered`` list from ``report``."""
    answered = [tuple(a) for a in report.pop("answered", [])]
    shift = report.get("shift_ts")
    sw = swaps(answered, shift)  # type: ignore[arg-type]
    swap_ts = sw[0]["event_ts"] if sw else None
    w = report.get("worker") or {}
    prom = prometheus_values(metrics_text)
    elapsed = report.get("elapsed_seconds") or float("nan")
    counters = w.get("counters") or {}
    rates = {direction: {t: round(v / elapsed, 1) for t, v in (counters.get(f"events_{direction}") or {}).items()}
             for direction in ("in", "out")}
    media: dict[str, Any] = {"media_events_in": (counters.get("events_in") or {}).get("media")}
    for (metric, labels), value in prom.items():
        if metric == "reloop_memory_bytes":
            media[f"{labels.removeprefix('memory=')}_bytes"] = value
    labelled = (w.get("summary") or {}).get("labelled") or 0
    live_from = report.get("live_from_ts")
    span = (max(a[0] for a in answered) - live_from) if answered and live_from is not None else 0.0
    window = report.get("attribution_window_s")
    notes = []
    if not labelled:
        notes.append(f"no prediction was labelled: a request's negatives are labelled when its attribution window "
                     f"({window:g} s of event time) closes, and this run's traffic spans {span:.0f} s of event time; "
                     "drive more --events")
    served = {a[1] for a in answered}
    for m in report.get("models") or []:
        if m["version"] not in served:
            notes.append(f"{m['version']} was registered ({m['trigger']}) but answered no request before the traffic "
                         "ended: the retrain finished too late in the run")
    lw, stored = report.get("latency_windows") or [], report.get("broker_stored")
    if stored and len(lw) >= 2 and lw[-1]["p50"] > 3 * lw[0]["p50"]:
        notes.append(f"latency p50 grew from {lw[0]['p50']:.1f} ms in the first 10 s to {lw[-1]['p50']:.1f} ms in the "
                     "last: the embedded broker lists every batch stored in a partition on each fetch that returns "
                     f"data, and it stored {stored['requests']['batches']:,} batches of requests and "
                     f"{stored['recommendations']['batches']:,} of recommendations; a Kafka cluster (--broker) does "
                     "not (docs/operations.md, Latency)")
    phases = quality_phases(w.get("series") or [], shift, swap_ts)
    if swap_ts is not None and phases[-1]["windows"] == 0:
        end = max(a[0] for a in answered)
        notes.append(f"no metric window after the swap yet: the traffic ended {end - swap_ts:.0f} s of event time "
                     f"after it, and a prediction's negatives are labelled {window:g} s after it")
    return {"versions_per_window": versions_per_window(answered, shift), "swaps": sw,  # type: ignore[arg-type]
            "alerts": alert_rows(alerts, updates, shift), "schema_updates": len(updates),
            "quality_phases": phases, "media": media, "events_per_s": rates, "notes": notes}
