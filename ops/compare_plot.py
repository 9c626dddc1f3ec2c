"""An SVG line plot of a comparison's rolling metrics over event time, as plain text.

No plotting library: :func:`rolling_svg` writes the SVG elements itself (axes, ticks, one
polyline per configuration, a legend), so the plot costs no dependency.

>>> pts = [{"ts_mid": 0.0, "a": {"auc": 0.6, "logloss": 0.7}}, {"ts_mid": 86400.0, "a": {"auc": 0.7, "logloss": 0.6}}]
>>> svg = rolling_svg(pts, ["a"])
>>> svg.startswith("<svg") and svg.count("<polyline") == 2
True
"""

from __future__ import annotations

import math
import time
from html import escape
from typing import Any, Sequence

#: line colours per configuration, in order (colour-blind safe, Okabe-Ito)
PALETTE = ("#000000", "#E69F00", "#0072B2", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442")

PANELS = (("auc", "AUC (higher is better)"), ("logloss", "log loss (lower is better)"))


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round tick values covering ``[lo, hi]``.

    >>> nice_ticks(0.61, 0.69)
    [0.62, 0.64, 0.66, 0.68]
    """
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo] if math.isfinite(lo) else []
    raw = (hi - lo) / max(1, n)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    out, k = [], 0
    while first + k * step <= hi + 1e-12:
        out.append(round(first + k * step, 12))
        k += 1
    return out


def _date(ts: float, span: float) -> str:
    fmt = "%Y-%m-%d" if span > 2 * 86400 else "%m-%d %H:%M"
    return time.strftime(fmt, time.gmtime(ts))


def rolling_svg(rolling: Sequence[dict[str, Any]], names: Sequence[str], *, title: str = "",
                width: int = 820, panel_height: int = 230) -> str:
    """The rolling series of :func:`reloop.ops.compare.rolling_metrics` as an SVG document.

    Args:
        rolling: points with ``ts_mid`` (event time, s) and per name ``{"auc", "logloss"}``.
        names: the configurations to draw, in legend order.
        title: a line above the panels; width, panel_height: pixels.

    Returns:
        The SVG text: one panel per metric in :data:`PANELS`, x = event time (UTC dates).
    """
    left, right, top, gap, bottom = 70, 20, 56 if title else 36, 44, 40
    height = top + len(PANELS) * panel_height + (len(PANELS) - 1) * gap + bottom
    inner_w = width - left - right
    xs = [float(p["ts_mid"]) for p in rolling]
    x0, x1 = (min(xs), max(xs)) if xs else (0.0, 1.0)
    if x1 <= x0:
        x0, x1 = x0 - 1.0, x1 + 1.0
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
           f'<rect width="{width}" height="{height}" fill="white"/>']
    if title:
        out.append(f'<text x="{left}" y="22" font-size="15">{escape(title)}</text>')
    for j, name in enumerate(names):  # legend
        lx = left + j * 150
        col = PALETTE[j % len(PALETTE)]
        out.append(f'<line x1="{lx}" y1="{top - 14}" x2="{lx + 24}" y2="{top - 14}" stroke="{col}" stroke-width="2.5"/>')
        out.append(f'<text x="{lx + 30}" y="{top - 10}">{escape(name)}</text>')

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * inner_w

    for i, (metric, label) in enumerate(PANELS):
        py = top + i * (panel_height + gap)
        vals = [p[n][metric] for p in rolling for n in names
                if n in p and p[n].get(metric) is not None and math.isfinite(p[n][metric])]
        y0, y1 = (min(vals), max(vals)) if vals else (0.0, 1.0)
        pad = (y1 - y0) * 0.08 or 0.01
        y0, y1 = y0 - pad, y1 + pad

        def sy(y: float, py: int = py, y0: float = y0, y1: float = y1) -> float:
            return py + panel_height - (y - y0) / (y1 - y0) * panel_height

        out.append(f'<rect x="{left}" y="{py}" width="{inner_w}" height="{panel_height}" fill="none" stroke="#888"/>')
        out.append(f'<text x="{left + 6}" y="{py + 16}" fill="#333">{escape(label)}</text>')
        for t in nice_ticks(y0, y1):
            y = sy(t)
            out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + inner_w}" y2="{y:.1f}" stroke="#eee"/>')
            out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{t:g}</text>')
        for j, name in enumerate(names):
            pts = [(sx(float(p["ts_mid"])), sy(p[name][metric])) for p in rolling
                   if name in p and p[name].get(metric) is not None and math.isfinite(p[name][metric])]
            if pts:
                coords = " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
                out.append(f'<polyline fill="none" stroke="{PALETTE[j % len(PALETTE)]}" stroke-width="1.8" '
                           f'points="{coords}"><title>{escape(name)} {metric}</title></polyline>')
    axis_y = top + len(PANELS) * panel_height + (len(PANELS) - 1) * gap
    for k in range(6):  # event-time ticks, UTC
        t = x0 + (x1 - x0) * k / 5
        x = sx(t)
        out.append(f'<line x1="{x:.1f}" y1="{axis_y}" x2="{x:.1f}" y2="{axis_y + 5}" stroke="#888"/>')
        out.append(f'<text x="{x:.1f}" y="{axis_y + 18}" text-anchor="middle">{_date(t, x1 - x0)}</text>')
    out.append(f'<text x="{left + inner_w / 2:.0f}" y="{height - 6}" text-anchor="middle" fill="#333">'
               'event time (UTC); each point = one window of equal event count</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"
