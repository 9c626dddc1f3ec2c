"""The worker's live status page: one self-contained HTML document (inline CSS, JS and SVG).

Served by the worker at ``/`` and ``/ui`` (see :mod:`reloop.ops.worker`). The page polls ``/status``
every ``POLL_MS`` milliseconds (same origin, no external assets, no build step) and draws:

- a header: model version, pending predictions, labelled samples, events in/out, dead
  letters, error records applied, and the time of the last successful poll;
- the cumulative online figures (AUC and log loss, base vs. compensated);
- two line charts over the metrics series (one point per ``worker.metrics_window``
  labelled samples; x = labelled samples so far): windowed AUC base vs. compensated and
  windowed log loss base vs. compensated.

Each chart is an ``<svg class="chart" data-points="N">`` where N is the number of series
points it drew, so a headless browser test (or a human with dev tools) can tell that data
rendered. Values from ``/status`` are written with ``textContent`` only (never parsed as
HTML): model versions and topic names come from Kafka.
"""

from __future__ import annotations

from functools import lru_cache

#: Milliseconds between two polls of ``/status``.
POLL_MS = 2000

#: The one URL in the page: the SVG XML namespace (an identifier, never fetched).
SVG_NS = "http://www.w3.org/2000/svg"

_CSS = """
*{box-sizing:border-box}
body{margin:0;font:14px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;background:#f6f7f9;color:#1d2430}
header{background:#1d2430;color:#fff;padding:12px 20px;display:flex;flex-wrap:wrap;gap:8px 28px;align-items:baseline}
header h1{font-size:18px;margin:0 12px 0 0}
.kv{display:flex;flex-direction:column}
.kv .k{font-size:11px;text-transform:uppercase;letter-spacing:.05em;opacity:.7}
.kv .v{font-size:17px;font-variant-numeric:tabular-nums}
#conn{margin-left:auto;font-size:12px}
#conn.ok::before{content:"\\25CF ";color:#4ade80}
#conn.bad::before{content:"\\25CF ";color:#f87171}
main{padding:16px 20px;display:grid;grid-template-columns:repeat(auto-fit,minmax(440px,1fr));gap:16px}
section{background:#fff;border:1px solid #dde1e7;border-radius:6px;padding:12px 14px}
section h2{font-size:15px;margin:0 0 6px}
table{border-collapse:collapse;font-variant-numeric:tabular-nums}
td,th{padding:2px 12px 2px 0;text-align:left}
.chart{width:100%;height:auto;display:block}
.axis{stroke:#9aa3af;stroke-width:1}
.grid{stroke:#eceff3;stroke-width:1}
.tick{font-size:10px;fill:#6b7280}
path.line{fill:none;stroke-width:3}
path.line.compensated{stroke-width:2;stroke-dasharray:6 3}
.base{stroke:#2563eb;fill:#2563eb}
.compensated{stroke:#ea580c;fill:#ea580c}
path.line.base,path.line.compensated{fill:none}
.legend{font-size:12px;margin:4px 0 0}
.legend span{display:inline-block;width:14px;height:3px;vertical-align:middle;margin:0 4px 0 12px}
.legend .base{background:#2563eb}
.legend .compensated{background:repeating-linear-gradient(90deg,#ea580c 0 6px,transparent 6px 9px)}
.empty{font-size:12px;fill:#6b7280}
"""

_BODY = """
<header>
  <h1>ReLoop worker</h1>
  <div class="kv"><span class="k">model version</span><span class="v" id="model-version">&ndash;</span></div>
  <div class="kv"><span class="k">pending</span><span class="v" id="pending">&ndash;</span></div>
  <div class="kv"><span class="k">labelled</span><span class="v" id="labelled">&ndash;</span></div>
  <div class="kv"><span class="k">events in</span><span class="v" id="events-in">&ndash;</span></div>
  <div class="kv"><span class="k">events out</span><span class="v" id="events-out">&ndash;</span></div>
  <div class="kv"><span class="k">dead letters</span><span class="v" id="dlq">&ndash;</span></div>
  <div class="kv"><span class="k">errors applied</span><span class="v" id="errors-applied">&ndash;</span></div>
  <span id="conn" class="bad">waiting for /status</span>
</header>
<main>
  <section>
    <h2>Online AUC per window (higher is better)</h2>
    <svg id="chart-auc" class="chart" data-points="0" viewBox="0 0 600 260" role="img"
         aria-label="AUC base vs compensated"></svg>
    <p class="legend"><span class="base"></span>base<span class="compensated"></span>compensated</p>
  </section>
  <section>
    <h2>Online log loss per window (lower is better)</h2>
    <svg id="chart-logloss" class="chart" data-points="0" viewBox="0 0 600 260" role="img"
         aria-label="log loss base vs compensated"></svg>
    <p class="legend"><span class="base"></span>base<span class="compensated"></span>compensated</p>
  </section>
  <section>
    <h2>Cumulative</h2>
    <table>
      <tr><th></th><th>base</th><th>compensated</th></tr>
      <tr><td>AUC</td><td id="auc-base">&ndash;</td><td id="auc-compensated">&ndash;</td></tr>
      <tr><td>log loss</td><td id="logloss-base">&ndash;</td><td id="logloss-compensated">&ndash;</td></tr>
      <tr><td>rolling AUC</td><td id="rolling-auc-base">&ndash;</td><td id="rolling-auc-compensated">&ndash;</td></tr>
    </table>
    <p id="series-info" class="legend"></p>
  </section>
</main>
"""

_JS = """
"use strict";
const NS = "%(svg_ns)s";
const POLL_MS = %(poll_ms)d;
const W = 600, H = 260, L = 52, R = 12, T = 12, B = 30;

function el(name, attrs, parent) {
  const e = document.createElementNS(NS, name);
  for (const k in attrs) e.setAttribute(k, attrs[k]);
  if (parent) parent.appendChild(e);
  return e;
}
function setText(id, v) { document.getElementById(id).textContent = v; }
function fmt(v, digits) {
  return (typeof v === "number" && isFinite(v)) ? v.toFixed(digits) : "\\u2013";
}
function num(v) { return (typeof v === "number" && isFinite(v)) ? v.toLocaleString("en-US") : "\\u2013"; }
function total(obj) {
  let s = 0;
  for (const k in (obj || {})) s += Number(obj[k]) || 0;
  return s;
}
function isNum(v) { return typeof v === "number" && isFinite(v); }

// Draw series[*][keys] as lines against series[*].events; returns the number of points drawn.
function drawChart(svg, series, keys) {
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  const pts = series.filter(p => isNum(p.events) && keys.some(k => isNum(p[k])));
  svg.setAttribute("data-points", String(pts.length));
  if (pts.length === 0) {
    el("text", {x: W / 2, y: H / 2, "text-anchor": "middle", class: "empty"}, svg).textContent =
      "no metrics window closed yet";
    return 0;
  }
  let x0 = Math.min(...pts.map(p => p.events)), x1 = Math.max(...pts.map(p => p.events));
  const ys = [];
  for (const p of pts) for (const k of keys) if (isNum(p[k])) ys.push(p[k]);
  let y0 = Math.min(...ys), y1 = Math.max(...ys);
  if (x1 === x0) { x0 -= 1; x1 += 1; }
  const pad = (y1 - y0) * 0.08 || Math.max(Math.abs(y1) * 0.05, 0.01);
  y0 -= pad; y1 += pad;
  const sx = x => L + (x - x0) / (x1 - x0) * (W - L - R);
  const sy = y => H - B - (y - y0) / (y1 - y0) * (H - T - B);
  for (let i = 0; i <= 4; i++) {
    const yv = y0 + (y1 - y0) * i / 4, yy = sy(yv);
    el("line", {x1: L, x2: W - R, y1: yy, y2: yy, class: "grid"}, svg);
    el("text", {x: L - 6, y: yy + 3, "text-anchor": "end", class: "tick"}, svg).textContent = yv.toFixed(3);
  }
  el("line", {x1: L, x2: W - R, y1: H - B, y2: H - B, class: "axis"}, svg);
  el("line", {x1: L, x2: L, y1: T, y2: H - B, class: "axis"}, svg);
  [[x0, "start"], [(x0 + x1) / 2, "middle"], [x1, "end"]].forEach(([xv, anchor]) => {
    el("text", {x: sx(xv), y: H - B + 16, "text-anchor": anchor, class: "tick"}, svg).textContent =
      Math.round(xv).toLocaleString("en-US");
  });
  el("text", {x: (L + W - R) / 2, y: H - 2, "text-anchor": "middle", class: "tick"}, svg).textContent =
    "labelled samples";
  for (const k of keys) {
    const variant = k.endsWith("compensated") ? "compensated" : "base";
    const own = pts.filter(p => isNum(p[k]));
    if (own.length === 0) continue;
    const d = own.map((p, i) => (i ? "L" : "M") + sx(p.events).toFixed(1) + " " + sy(p[k]).toFixed(1)).join(" ");
    el("path", {d: d, class: "line " + variant, "data-key": k}, svg);
    for (const p of own) el("circle", {cx: sx(p.events), cy: sy(p[k]), r: 2.5, class: variant}, svg);
  }
  return pts.length;
}

function render(st) {
  const s = st.summary || {}, c = st.counters || {};
  setText("model-version", st.model_version || "none");
  setText("pending", num(st.pending));
  setText("labelled", num(s.labelled));
  setText("events-in", num(total(c.events_in)));
  setText("events-out", num(total(c.events_out)));
  setText("dlq", num(total(c.dead_letters)));
  setText("errors-applied", num(total(st.errors_applied)));
  for (const m of ["auc", "logloss", "rolling-auc"]) {
    for (const v of ["base", "compensated"]) {
      setText(m + "-" + v, fmt(s[m.replace("-", "_") + "_" + v], 4));
    }
  }
  const series = st.series || [];
  const n1 = drawChart(document.getElementById("chart-auc"), series, ["auc_base", "auc_compensated"]);
  drawChart(document.getElementById("chart-logloss"), series, ["logloss_base", "logloss_compensated"]);
  setText("series-info", n1 + " window(s) plotted");
}

async function poll() {
  const conn = document.getElementById("conn");
  try {
    const r = await fetch("/status", {cache: "no-store"});
    if (!r.ok) throw new Error("HTTP " + r.status);
    render(await r.json());
    conn.className = "ok";
    conn.textContent = "live, updated " + new Date().toLocaleTimeString();
  } catch (e) {
    conn.className = "bad";
    conn.textContent = "cannot read /status: " + e.message;
  } finally {
    setTimeout(poll, POLL_MS);
  }
}
poll();
"""


@lru_cache(maxsize=1)
def status_page() -> bytes:
    """The page as UTF-8 bytes (``text/html``); constant, so it is built once."""
    js = _JS % {"svg_ns": SVG_NS, "poll_ms": POLL_MS}
    html = (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>ReLoop worker status</title>\n<style>{_CSS}</style>\n</head>\n<body>{_BODY}"
            f"<script>{js}</script>\n</body>\n</html>\n")
    return html.encode("utf-8")
