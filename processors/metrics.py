"""Online quality metrics of the base and compensated predictions.

Per variant (``base``, ``compensated``): a river ``RollingROCAUC`` over the last ``window``
labelled samples, cumulative log loss, cumulative AUC from score histograms (4096 bins, so
exact up to ties within 1/4096), and a series with one point per ``window`` samples holding
that window's exact AUC and log loss. Updates are batch-first (numpy), except river's rolling
AUC which is per sample (~0.5 us each).
"""

from __future__ import annotations

from typing import Any

import msgspec
import numpy as np
from river import metrics as river_metrics

from reloop.models.metrics import auc, logloss

_BINS = 4096
_EPS = 1e-7
VARIANTS = ("base", "compensated")


def _hist_auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """AUC from per-bin positive/negative counts (ties within a bin count one half)."""
    n_pos, n_neg = pos.sum(), neg.sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    neg_below = np.cumsum(neg) - neg
    return float((pos * (neg_below + 0.5 * neg)).sum() / (n_pos * n_neg))


class OnlineMetrics:
    """Running AUC / log loss of base vs. compensated predictions.

    >>> m = OnlineMetrics(window=4)
    >>> m.update(np.array([1, 0, 1, 0]), np.array([.9, .2, .8, .3]), np.array([.9, .1, .9, .2]), ts=np.zeros(4))
    >>> m.summary()["auc_base"], len(m.series)
    (1.0, 1)
    """

    def __init__(self, window: int = 1000) -> None:
        self.window = window
        self.count = 0
        self.positives = 0
        self._ll_sum = {v: 0.0 for v in VARIANTS}
        self._pos = {v: np.zeros(_BINS, np.int64) for v in VARIANTS}
        self._neg = {v: np.zeros(_BINS, np.int64) for v in VARIANTS}
        self._rolling = {v: river_metrics.RollingROCAUC(window_size=window) for v in VARIANTS}
        self._buf: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        self._buf_n = 0
        self.series: list[dict[str, float]] = []
        # the last ``window`` (y, p) per variant, oldest first: what the rolling AUC holds,
        # kept so a snapshot can rebuild it exactly
        self._recent: tuple[np.ndarray, np.ndarray, np.ndarray] = (
            np.zeros(0, np.int64), np.zeros(0, np.float64), np.zeros(0, np.float64))

    def update(self, y: np.ndarray, p_base: np.ndarray, p_comp: np.ndarray, ts: np.ndarray) -> None:
        """Add labelled samples: y (n,) {0,1}; p_base, p_comp (n,) in [0,1]; ts (n,) seconds."""
        if len(y) == 0:
            return
        y = np.asarray(y, np.int64)
        self.count += len(y)
        self.positives += int(y.sum())
        for v, p in zip(VARIANTS, (p_base, p_comp)):
            pc = np.clip(np.asarray(p, np.float64), _EPS, 1 - _EPS)
            self._ll_sum[v] += float(-(y * np.log(pc) + (1 - y) * np.log1p(-pc)).sum())
            bins = np.minimum((pc * _BINS).astype(np.int64), _BINS - 1)
            self._pos[v] += np.bincount(bins[y == 1], minlength=_BINS)
            self._neg[v] += np.bincount(bins[y == 0], minlength=_BINS)
            # the rolling AUC holds the last ``window`` samples and depends on them alone (as
            # from_state relies on): older ones of a large batch would only pass through it
            roll = self._rolling[v]
            for yi, pi in zip(y[-self.window:].tolist(), pc[-self.window:].tolist()):
                roll.update(yi, pi)
        ry, rb, rc = self._recent
        self._recent = (np.concatenate([ry, y])[-self.window:],
                        np.concatenate([rb, np.clip(np.asarray(p_base, np.float64), _EPS, 1 - _EPS)])[-self.window:],
                        np.concatenate([rc, np.clip(np.asarray(p_comp, np.float64), _EPS, 1 - _EPS)])[-self.window:])
        self._buf.append((y, np.asarray(p_base), np.asarray(p_comp), np.asarray(ts)))
        self._buf_n += len(y)
        while self._buf_n >= self.window:
            self._close_window()

    def update_records(self, records: Any) -> None:
        """:meth:`update` from error records (objects with ``label``, ``base_pred``,
        ``comp_pred``, ``ts``), their columns built in one pass (labels and floats are exact
        in float64)."""
        if not len(records):
            return
        cols = np.array([(r.label, r.base_pred, r.comp_pred, r.ts) for r in records], np.float64).T
        self.update(cols[0].astype(np.int64), cols[1].copy(), cols[2].copy(), cols[3].copy())

    def _close_window(self) -> None:
        for roll in self._rolling.values():
            # river (0.26) buffers every update in Python lists until ``get()``, ~110 bytes
            # per prediction with no bound (1 GB over a 10M-event replay, or a worker nobody
            # scrapes): read it once per window (~70 us) to flush them
            roll.get()
        y, pb, pc, ts = (np.concatenate(c) for c in zip(*self._buf))
        w = self.window
        self.series.append({
            "events": float(self.count - self._buf_n + w), "ts": float(ts[w - 1]),
            "auc_base": auc(y[:w], pb[:w]), "auc_compensated": auc(y[:w], pc[:w]),
            "logloss_base": logloss(y[:w], pb[:w]), "logloss_compensated": logloss(y[:w], pc[:w]),
        })
        self._buf = [(y[w:], pb[w:], pc[w:], ts[w:])] if len(y) > w else []
        self._buf_n = len(y) - w

    def summary(self) -> dict[str, Any]:
        """Cumulative and rolling figures (NaN where undefined)."""
        out: dict[str, Any] = {"labelled": self.count, "positives": self.positives}
        for v in VARIANTS:
            out[f"auc_{v}"] = _hist_auc(self._pos[v], self._neg[v])
            out[f"logloss_{v}"] = self._ll_sum[v] / self.count if self.count else float("nan")
            out[f"rolling_auc_{v}"] = float(self._rolling[v].get()) if self.count else float("nan")
        return out

    # ---- snapshots -------------------------------------------------------------------------
    def to_state(self) -> bytes:
        """Every figure as msgpack bytes; the rolling AUCs are rebuilt from the last ``window``
        samples, which is all they depend on."""
        return msgspec.msgpack.encode({
            "window": self.window, "count": self.count, "positives": self.positives,
            "ll_sum": self._ll_sum, "pos": {v: a.tolist() for v, a in self._pos.items()},
            "neg": {v: a.tolist() for v, a in self._neg.items()},
            "recent": [a.tolist() for a in self._recent],
            "buf": [[a.tolist() for a in part] for part in self._buf], "buf_n": self._buf_n,
            "series": self.series})

    @classmethod
    def from_state(cls, raw: bytes) -> OnlineMetrics:
        """Rebuild metrics written by :meth:`to_state`."""
        st = msgspec.msgpack.decode(raw)
        m = cls(window=int(st["window"]))
        m.count, m.positives, m._ll_sum = st["count"], st["positives"], st["ll_sum"]
        m._pos = {v: np.asarray(a, np.int64) for v, a in st["pos"].items()}
        m._neg = {v: np.asarray(a, np.int64) for v, a in st["neg"].items()}
        ry, rb, rc = st["recent"]
        m._recent = (np.asarray(ry, np.int64), np.asarray(rb, np.float64), np.asarray(rc, np.float64))
        for v, p in zip(VARIANTS, m._recent[1:]):
            for yi, pi in zip(ry, p.tolist()):
                m._rolling[v].update(yi, pi)
        m._buf = [(np.asarray(y, np.int64), np.asarray(pb, np.float64), np.asarray(pc, np.float64),
                   np.asarray(ts, np.float64)) for y, pb, pc, ts in st["buf"]]
        m._buf_n, m.series = st["buf_n"], st["series"]
        return m


class ClusterQuality:
    """Online metrics of the whole cluster's resolved predictions, measured from the error
    records themselves (``errors``: label, base and compensated prediction, event time).

    A worker's own :class:`OnlineMetrics` cover the predictions it resolved, so they stop
    with it and restart empty when its partitions move. These are computed by the one worker
    that reads ``errors`` (the schema cache's distiller), from a topic that outlives any
    worker, each record once (duplicates dropped by error id): a rebalance, a lost worker or a
    restart changes nothing in the counts, the histogram AUCs and (up to float rounding) the
    log losses. Records are measured as they arrive, so the windowed series and the rolling
    AUC follow the partitions' arrival order. Not thread-safe: call :meth:`view` in the thread
    that measures (the worker's replica thread).

    >>> from types import SimpleNamespace as R
    >>> q = ClusterQuality(window=2)
    >>> q.measure([R(label=1, base_pred=.9, comp_pred=.8, ts=1.0), R(label=0, base_pred=.2, comp_pred=.3, ts=2.0)])
    >>> v = q.view()
    >>> v["summary"]["labelled"], v["summary"]["auc_base"], len(v["series"])
    (2, 1.0, 1)
    """

    def __init__(self, window: int = 1000, metrics: OnlineMetrics | None = None) -> None:
        self.metrics = metrics or OnlineMetrics(window=window)

    def measure(self, records: Any) -> None:
        """Add error records (objects with ``label``, ``base_pred``, ``comp_pred``, ``ts``)."""
        self.metrics.update_records(records)

    def view(self) -> dict[str, Any]:
        """``summary`` (as :meth:`OnlineMetrics.summary`) and the last 300 ``series`` windows
        (~45 us: computed when asked, not per batch)."""
        return {"summary": self.metrics.summary(), "series": self.metrics.series[-300:]}

    def to_state(self) -> bytes:
        """:meth:`OnlineMetrics.to_state` of the figures."""
        return self.metrics.to_state()

    @classmethod
    def from_state(cls, raw: bytes) -> ClusterQuality:
        """Figures written by :meth:`to_state`."""
        return cls(metrics=OnlineMetrics.from_state(raw))

