"""Compare several configurations on one log: ``reloop replay LOG --compare A.toml B.toml ...``.

Pure functions over arrays: metrics, user bootstrap, rolling windows, the text table, and the
check that configurations can share base scores (:func:`check_comparable`). The replay itself
is :func:`reloop.ops.compare_run.run_compare`; the plot :mod:`reloop.ops.compare_plot`.

Metrics, over the scored (post-warm-up) interactions, each config's compensated scores:

- ``auc``: ROC AUC, ties count 1/2.
- ``gauc``: impression-weighted mean of per-user AUC, over the users with both a positive
  and a negative among their scored interactions: ``sum_u n_u AUC_u / sum_u n_u`` (``n_u``
  = scored interactions of user ``u``); users with one label kind are left out.
- ``logloss``: mean binary cross-entropy in nats, predictions clipped to ``[1e-7, 1 - 1e-7]``.
- ``calib``: predicted/observed ratio, ``sum p / sum y`` (1 = calibrated on average).
- ``ece``: expected calibration error over 10 equal-width bins of ``p``:
  ``sum_b (n_b / n) |mean p_b - mean y_b|``.

Confidence intervals: percentile 95% intervals of a bootstrap that resamples **users** with
replacement (a user's interactions are correlated; resampling events would understate the
spread), 200 resamples and seed 0 by default. Every configuration is evaluated on the same
resamples, so the differences to the reference (the first configuration) get paired
intervals (``delta``).

>>> y = np.array([1, 0, 1, 0, 1, 0]); p = np.array([.9, .1, .4, .6, .7, .2])
>>> u = np.array([0, 0, 1, 1, 2, 2])
>>> m = point_metrics(y, p, u)
>>> round(m["auc"], 4), round(m["gauc"], 4)
(0.8889, 0.6667)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import msgspec
import numpy as np

METRICS = ("auc", "gauc", "logloss", "calib", "ece")
ECE_BINS = 10
_EPS = 1e-7

#: settings that may differ between compared configurations (they act after the base model)
VARIABLE = {"error_memory": None, "schemas": None, "kafka": None, "trainer": None,
            "worker": {"compensation", "rekey_window", "schema_cache", "data_dir", "web_port", "web_bind",
                       "web_token", "snapshot_every_s", "replica_snapshot_every_s", "journal_fsync",
                       "crash_threshold", "ort_threads"}}


# --------------------------------------------------------------------------- metrics (pure)

class _GroupedAuc:
    """AUC per group (e.g. per user, or one group for the global AUC) under event weights.

    The sort and the tie structure are computed once; :meth:`auc` costs O(n) per weight
    vector, which is what the bootstrap needs.

    Args:
        y: (n,) {0, 1} labels; p: (n,) scores; group: (n,) int group index in ``[0, G)``.
    """

    def __init__(self, y: np.ndarray, p: np.ndarray, group: np.ndarray) -> None:
        self.order = np.lexsort((p, group))
        g, ps = group[self.order], p[self.order]
        new_tie = np.r_[True, (g[1:] != g[:-1]) | (ps[1:] != ps[:-1])] if len(g) else np.zeros(0, bool)
        self.tie = np.cumsum(new_tie) - 1  # tie-group index per sorted event
        tie_group = g[new_tie]
        new_group = np.r_[True, tie_group[1:] != tie_group[:-1]] if len(tie_group) else np.zeros(0, bool)
        self.rank = np.cumsum(new_group) - 1  # dense group rank per tie group
        self.first = np.flatnonzero(new_group)  # first tie group of each present group
        self.groups = tie_group[new_group]  # the group ids present, ascending
        self.ys = y[self.order].astype(np.float64)

    def auc(self, w: np.ndarray | None = None, *, sorted_w: np.ndarray | None = None
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(AUC, positive weight, negative weight) per present group (``self.groups``);
        AUC is nan where a group lacks either label. ``w``: (n,) event weights (None = 1), or
        ``sorted_w``: the same already in ``self.order``."""
        if sorted_w is not None:
            ws = sorted_w
        else:
            ws = np.ones_like(self.ys) if w is None else np.asarray(w, np.float64)[self.order]
        wpos = ws * self.ys
        pos = np.bincount(self.tie, wpos)
        neg = np.bincount(self.tie, ws) - pos
        below = np.cumsum(neg) - neg
        if len(self.first) > 1:
            below -= below[self.first][self.rank]  # negatives below, within the group only
        else:
            below -= below[0] if len(below) else 0.0
        if len(self.first) > 1:
            num = np.bincount(self.rank, pos * (below + 0.5 * neg))
            n_pos, n_neg = np.bincount(self.rank, pos), np.bincount(self.rank, neg)
        else:  # one group (the global AUC): plain sums are faster than bincounts
            num = np.array([(pos * (below + 0.5 * neg)).sum()])
            n_pos, n_neg = np.array([pos.sum()]), np.array([neg.sum()])
        with np.errstate(invalid="ignore", divide="ignore"):
            out = np.where((n_pos > 0) & (n_neg > 0), num / (n_pos * n_neg), np.nan)
        return out, n_pos, n_neg


class _Prepared:
    """One configuration's scored events, indexed for fast weighted metrics.

    Args:
        y: (n,) labels; p: (n,) predicted probabilities; users: (n,) int user index in [0, U).
    """

    def __init__(self, y: np.ndarray, p: np.ndarray, users: np.ndarray, n_users: int) -> None:
        self.y = np.asarray(y, np.float64)
        self.p = np.clip(np.asarray(p, np.float64), _EPS, 1 - _EPS)
        self.users = np.asarray(users, np.int64)
        self.n_users = n_users
        self.ll = -(self.y * np.log(self.p) + (1 - self.y) * np.log1p(-self.p))
        self.bins = np.minimum((self.p * ECE_BINS).astype(np.int64), ECE_BINS - 1)
        self.global_auc = _GroupedAuc(self.y, self.p, np.zeros(len(self.y), np.int64))
        self.users_by_p = self.users[self.global_auc.order]  # user of each event in score order
        per_user = _GroupedAuc(self.y, self.p, self.users)
        auc_u, npos, nneg = per_user.auc()
        self.user_auc = np.zeros(n_users)
        self.user_n = np.zeros(n_users)
        valid = ~np.isnan(auc_u)
        self.user_auc[per_user.groups[valid]] = auc_u[valid]
        self.user_n[per_user.groups[valid]] = (npos + nneg)[valid]

    def metrics(self, user_mult: np.ndarray | None = None) -> dict[str, float]:
        """The metrics with each user's events counted ``user_mult[u]`` times (None = once)."""
        w = np.ones_like(self.y) if user_mult is None else user_mult[self.users].astype(np.float64)
        wu = self.user_n if user_mult is None else self.user_n * user_mult
        sw = float(w.sum())
        if sw == 0:
            return dict.fromkeys(METRICS, float("nan"))
        sorted_w = None if user_mult is None else user_mult[self.users_by_p].astype(np.float64)
        auc = float(self.global_auc.auc(sorted_w=sorted_w)[0][0])
        # sums of products, not ``@``: a BLAS dot spins up threads (slow on a loaded machine)
        gauc = float((wu * self.user_auc).sum() / wu.sum()) if wu.sum() > 0 else float("nan")
        wy = float((w * self.y).sum())
        calib = float((w * self.p).sum()) / wy if wy > 0 else float("nan")
        gap = np.bincount(self.bins, w * (self.p - self.y), minlength=ECE_BINS)
        return {"auc": auc, "gauc": gauc, "logloss": float((w * self.ll).sum()) / sw, "calib": calib,
                "ece": float(np.abs(gap).sum()) / sw}


def user_index(users: Sequence[str] | np.ndarray) -> tuple[np.ndarray, int]:
    """User ids -> ((n,) int64 index into the sorted distinct ids, number of users)."""
    uniq, idx = np.unique(np.asarray(users), return_inverse=True)
    return idx.astype(np.int64), len(uniq)


def point_metrics(y: np.ndarray, p: np.ndarray, users: Sequence[str] | np.ndarray) -> dict[str, float]:
    """:data:`METRICS` of predictions ``p`` (n,) for labels ``y`` (n,) of ``users`` (n,)."""
    idx, n_users = user_index(users)
    return _Prepared(np.asarray(y), np.asarray(p), idx, n_users).metrics()


@dataclass(frozen=True)
class Estimate:
    """A metric: the full-sample value and its bootstrap percentile interval."""

    value: float
    lo: float
    hi: float


#: configuration name -> metric name -> :class:`Estimate`
Table = dict[str, dict[str, Estimate]]


def bootstrap_metrics(y: np.ndarray, preds: Mapping[str, np.ndarray], users: Sequence[str] | np.ndarray, *,
                      resamples: int = 200, seed: int = 0, level: float = 0.95,
                      reference: str | None = None) -> tuple[Table, Table]:
    """Metrics of each prediction vector with user-bootstrap intervals, and paired deltas.

    Args:
        y: (n,) labels shared by every configuration; preds: name -> (n,) probabilities.
        users: (n,) user id per event (the resampling unit).
        resamples, seed, level: bootstrap size, ``np.random.default_rng`` seed, interval mass.
        reference: the configuration deltas are taken against (default: the first).

    Returns:
        (name -> metric -> Estimate, name -> metric -> Estimate of ``metric(name) - metric(ref)``),
        deltas for every name but the reference.
    """
    idx, n_users = user_index(users)
    prepared = {k: _Prepared(y, p, idx, n_users) for k, p in preds.items()}
    ref = reference or next(iter(preds))
    full = {k: pr.metrics() for k, pr in prepared.items()}
    rng = np.random.default_rng(seed)
    draws: dict[str, list[dict[str, float]]] = {k: [] for k in preds}
    for _ in range(resamples):
        mult = np.bincount(rng.integers(0, n_users, n_users), minlength=n_users).astype(np.float64)
        for k, pr in prepared.items():
            draws[k].append(pr.metrics(mult))
    a = (1 - level) / 2

    def est(value: float, samples: list[float]) -> Estimate:
        s = np.asarray(samples, np.float64)
        s = s[~np.isnan(s)]
        if not len(s):
            return Estimate(value, float("nan"), float("nan"))
        return Estimate(value, float(np.quantile(s, a)), float(np.quantile(s, 1 - a)))

    out = {k: {m: est(full[k][m], [d[m] for d in draws[k]]) for m in METRICS} for k in preds}
    deltas = {k: {m: est(full[k][m] - full[ref][m], [d[m] - r[m] for d, r in zip(draws[k], draws[ref])])
                  for m in METRICS} for k in preds if k != ref}
    return out, deltas


def rolling_metrics(y: np.ndarray, preds: Mapping[str, np.ndarray], ts: np.ndarray, windows: int = 40, *,
                    users: Sequence[str] | np.ndarray | None = None, resamples: int = 0,
                    seed: int = 0) -> list[dict[str, Any]]:
    """Metrics over ``windows`` consecutive equal-count slices of the events (in event-time
    order).

    Returns:
        One point per slice: ``ts_first``, ``ts_last``, ``ts_median`` (event time, s), ``n``;
        per configuration ``{"auc", "logloss"}`` of that slice; and ``delta``: per
        configuration but the reference (the first), ``{"auc", "logloss"}`` each as
        ``{"value", "lo", "hi"}``, the difference to the reference with the slice's paired
        user-bootstrap interval (``resamples`` draws, ``users`` the unit; nan bounds when 0).
    """
    n = len(y)
    user_arr = np.zeros(n, np.int64) if users is None else np.asarray(users)
    edges = np.linspace(0, n, min(windows, n) + 1).astype(int) if n else np.zeros(1, int)
    out = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        if hi <= lo:
            continue
        window = {k: p[lo:hi] for k, p in preds.items()}
        full, deltas = bootstrap_metrics(y[lo:hi], window, user_arr[lo:hi], resamples=resamples, seed=seed)
        point: dict[str, Any] = {"ts_first": float(ts[lo]), "ts_last": float(ts[hi - 1]),
                                 "ts_median": float(np.median(ts[lo:hi])), "n": int(hi - lo)}
        for k, m in full.items():
            point[k] = {"auc": m["auc"].value, "logloss": m["logloss"].value}
        point["delta"] = {k: {m: {"value": e.value, "lo": e.lo, "hi": e.hi} for m, e in d.items()
                              if m in ("auc", "logloss")} for k, d in deltas.items()}
        out.append(point)
    return out


def format_table(metrics: Mapping[str, Mapping[str, Estimate]], deltas: Mapping[str, Mapping[str, Estimate]],
                 reference: str) -> str:
    """A Markdown table: one row per configuration (value [95% CI]), then one per delta."""
    fmt = {"auc": "{:.4f}", "gauc": "{:.4f}", "logloss": "{:.4f}", "calib": "{:.3f}", "ece": "{:.4f}"}

    def cell(m: str, e: Estimate, sign: bool = False) -> str:
        f = fmt[m].replace("{:", "{:+") if sign else fmt[m]
        return f"{f.format(e.value)} [{f.format(e.lo)}, {f.format(e.hi)}]"

    head = "| config | " + " | ".join(METRICS) + " |"
    rows = [head, "|" + "---|" * (len(METRICS) + 1)]
    rows += [f"| {k} | " + " | ".join(cell(m, v[m]) for m in METRICS) + " |" for k, v in metrics.items()]
    rows += [f"| {k} - {reference} | " + " | ".join(cell(m, v[m], True) for m in METRICS) + " |"
             for k, v in deltas.items()]
    return "\n".join(rows)


# --------------------------------------------------------------------------- configurations

def _shared_part(settings: Any) -> dict[str, Any]:
    """The settings that decide the base scores (everything outside :data:`VARIABLE`)."""
    data = msgspec.to_builtins(settings)
    out: dict[str, Any] = {}
    for section, values in data.items():
        free = VARIABLE.get(section, ())
        if free is None:
            continue
        out[section] = {k: v for k, v in values.items() if k not in free} if isinstance(values, dict) else values
    return out


def check_comparable(configs: Mapping[str, Any]) -> None:
    """Refuse configurations that cannot share base scores.

    Raises:
        ValueError: one line naming the two configurations and the first setting
            (``section.field``) outside the compensation settings where they differ.
    """
    if not configs:
        raise ValueError("--compare needs at least one configuration")
    names = list(configs)
    ref = _shared_part(configs[names[0]])
    for name in names[1:]:
        other = _shared_part(configs[name])
        for section in sorted(set(ref) | set(other)):
            a, b = ref.get(section, {}), other.get(section, {})
            for key in sorted(set(a) | set(b)):
                if a.get(key) != b.get(key):
                    raise ValueError(
                        f"configs {names[0]!r} and {name!r} differ in {section}.{key} ({a.get(key)!r} vs "
                        f"{b.get(key)!r}): they cannot share base scores; only error_memory, schemas and "
                        "worker.compensation/rekey_window/schema_cache may differ")
