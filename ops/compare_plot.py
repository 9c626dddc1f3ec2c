"""An SVG line plot of a comparison's rolling metrics over event time, as plain text.

No plotting library: :func:`rolling_svg` writes the SVG elements itself (axes, ticks, one
polyline per configuration, a legend), so the plot costs no dependency.

>>> d = {"b": {"auc": {"value": 0.01, "lo": 0.0, "hi": 0.02}, "logloss": {"value": -0.01, "lo": -0.02, "hi": 0.0}}}
>>> pts = [{"ts_median": 0.0, "a": {"auc": 0.6, "logloss": 0.7}, "b": {"auc": 0.61, "logloss": 0.69}, "delta": d},
...        {"ts_median": 86400.0, "a": {"auc": 0.7, "logloss": 0.6}, "b": {"auc": 0.71, "logloss": 0.59}, "delta": d}]
>>> svg = rolling_svg(pts, ["a", "b"])
>>> svg.startswith("<svg"), svg.count("<polyline"), svg.count("<polygon")  # 2 + 2 values, 1 + 1 deltas
(True, 6, 2)
"""

from __future__ import annotations

import math
import time
from html import escape
from typing import Any, Sequence

#: line colours per configuration, in order (colour-blind safe, Okabe-Ito)
PALETTE = ("#000000", "#E69F00", "#0072B2", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442")

#: (metric, kind, label): ``value`` draws each configuration's rolling metric; ``delta`` each
#: one's difference to the reference (the first name, drawn as the zero line) with its band
PANELS = (("auc", "value", "rolling AUC (higher is better)"),
          ("auc", "delta", "AUC minus the reference, 95% user-bootstrap band"),
          ("logloss", "value", "rolling log loss (lower is better)"),
          ("logloss", "delta", "log loss minus the reference, 95% user-bootstrap band"))


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


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _series(rolling: Sequence[dict[str, Any]], name: str, metric: str,
            kind: str) -> list[tuple[float, float, float, float]]:
    """(ts, value, lo, hi) of one line; lo = hi = value where there is no band."""
    out = []
    for p in rolling:
        if kind == "value":
            v = p.get(name, {}).get(metric)
            if _finite(v):
                out.append((float(p["ts_median"]), v, v, v))
        else:
            e = p.get("delta", {}).get(name, {}).get(metric)
            if e and _finite(e["value"]):
                lo, hi = (e["lo"], e["hi"]) if _finite(e["lo"]) and _finite(e["hi"]) else (e["value"], e["value"])
                out.append((float(p["ts_median"]), e["value"], lo, hi))
    return out


def rolling_svg(rolling: Sequence[dict[str, Any]], names: Sequence[str], *, title: str = "",
                width: int = 820, panel_height: int = 160) -> str:
    """The rolling series of :func:`reloop.ops.compare.rolling_metrics` as an SVG document.

    Args:
        rolling: its points (``ts_median`` in event-time seconds, metrics per name, ``delta``).
        names: the configurations to draw, in legend order; the first is the reference.
        title: a line above the panels; width, panel_height: pixels.

    Returns:
        The SVG text: one panel per entry of :data:`PANELS`, x = event time (UTC dates).
    """
    left, right, gap, bottom = 70, 24, 40, 40
    top = 76 if title else 56
    height = top + len(PANELS) * panel_height + (len(PANELS) - 1) * gap + bottom
    inner_w = width - left - right
    xs = [float(p["ts_median"]) for p in rolling]
    x0, x1 = (min(xs), max(xs)) if xs else (0.0, 1.0)
    if x1 <= x0:
        x0, x1 = x0 - 1.0, x1 + 1.0
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
           f'<rect width="{width}" height="{height}" fill="white"/>']
    if title:
        out.append(f'<text x="{left}" y="22" font-size="15">{escape(title)}</text>')
    for j, name in enumerate(names):  # legend
        lx, ly = left + j * 160, top - 38
        dash = ' stroke-dasharray="5,3"' if j == 0 else ""
        out.append(f'<line x1="{lx}" y1="{ly}" x2="{lx + 24}" y2="{ly}" stroke="{_colour(j)}" '
                   f'stroke-width="2.5"{dash}/>')
        out.append(f'<text x="{lx + 30}" y="{ly + 4}">{escape(name)}{" (reference)" if j == 0 else ""}</text>')

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * inner_w

    for i, (metric, kind, label) in enumerate(PANELS):
        py = top + i * (panel_height + gap)
        drawn = list(enumerate(names)) if kind == "value" else list(enumerate(names))[1:]
        lines = {j: _series(rolling, n, metric, kind) for j, n in drawn}
        vals = [v for pts in lines.values() for _, m, lo, hi in pts for v in (m, lo, hi)]
        vals += [0.0] if kind == "delta" else []
        y0, y1 = (min(vals), max(vals)) if vals else (0.0, 1.0)
        pad = (y1 - y0) * 0.08 or 0.01
        y0, y1 = y0 - pad, y1 + pad

        def sy(y: float, py: int = py, y0: float = y0, y1: float = y1) -> float:
            return py + panel_height - (y - y0) / (y1 - y0) * panel_height

        out.append(f'<text x="{left}" y="{py - 6}" fill="#333">{escape(label)}</text>')
        out.append(f'<rect x="{left}" y="{py}" width="{inner_w}" height="{panel_height}" fill="none" stroke="#888"/>')
        for t in nice_ticks(y0, y1, 4):
            y = sy(t)
            out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + inner_w}" y2="{y:.1f}" stroke="#eee"/>')
            out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{t:g}</text>')
        if kind == "delta":
            out.append(f'<line x1="{left}" y1="{sy(0.0):.1f}" x2="{left + inner_w}" y2="{sy(0.0):.1f}" '
                       f'stroke="{_colour(0)}" stroke-width="1.5" stroke-dasharray="5,3"/>')
        for j, pts in lines.items():
            if not pts:
                continue
            if kind == "delta" and any(lo != hi for _, _, lo, hi in pts):
                ring = [(sx(t), sy(hi)) for t, _, _, hi in pts] + [(sx(t), sy(lo)) for t, _, lo, _ in reversed(pts)]
                out.append(f'<polygon fill="{_colour(j)}" fill-opacity="0.18" stroke="none" points="'
                           + " ".join(f"{x:.1f},{y:.1f}" for x, y in ring) + '"/>')
            dash = ' stroke-dasharray="5,3"' if j == 0 else ""
            coords = " ".join(f"{sx(t):.1f},{sy(v):.1f}" for t, v, _, _ in pts)
            out.append(f'<polyline fill="none" stroke="{_colour(j)}" stroke-width="1.8"{dash} points="{coords}">'
                       f'<title>{escape(names[j])} {metric}{" - reference" if kind == "delta" else ""}</title>'
                       '</polyline>')
    axis_y = top + len(PANELS) * panel_height + (len(PANELS) - 1) * gap
    for k in range(6):  # event-time ticks, UTC
        t = x0 + (x1 - x0) * k / 5
        x = sx(t)
        anchor = "start" if k == 0 else "end" if k == 5 else "middle"
        out.append(f'<line x1="{x:.1f}" y1="{axis_y}" x2="{x:.1f}" y2="{axis_y + 5}" stroke="#888"/>')
        out.append(f'<text x="{x:.1f}" y="{axis_y + 18}" text-anchor="{anchor}">{_date(t, x1 - x0)}</text>')
    out.append(f'<text x="{left + inner_w / 2:.0f}" y="{height - 6}" text-anchor="middle" fill="#333">'
               'event time (UTC, median of each window); every window holds the same number of scored events</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _colour(j: int) -> str:
    return PALETTE[j % len(PALETTE)]
