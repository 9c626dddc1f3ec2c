"""The multi-configuration replay behind ``reloop replay LOG --compare A.toml B.toml ...``.

:func:`run_compare` replays one decoded log under several configurations (which may differ
only in compensation settings, :func:`reloop.ops.compare.check_comparable`) and compares their
compensated predictions with the metrics and user bootstrap of :mod:`reloop.ops.compare`.
:func:`replay_configs` (a decoded log) and :func:`replay_configs_streaming` (a log file read
once, as ``reloop replay LOG --compare`` does) are the calls into the replay engine: one pass
over the log (:func:`reloop.ops.replay.run_many` / ``run_warm_many``), each batch stepped by
every configuration in turn, sharing the reading, the fitted model and (through
:class:`_SharedScorer`) the base scores and hidden vectors of each batch.
:func:`cmd_compare` is the command-line side (flags in :mod:`reloop.ops.replay_cli`).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import msgspec
import numpy as np

from reloop.ops.compare import (ECE_BINS, Estimate, bootstrap_metrics, check_comparable, format_table,
                                rolling_metrics, user_index)

log = logging.getLogger("reloop.compare")


# --------------------------------------------------------------------------- the runs

class _SharedScorer:
    """An ONNX scorer that remembers its latest outputs by input digest: in a one-pass
    comparison every configuration steps the same batch in turn, so the first scores it and
    the others reuse its base scores and hidden vectors. Everything but :meth:`score` is the
    wrapped scorer's.

    Memory: the last ``keep`` distinct batches' (base (n,) float64, hidden (n, H) float32).

    Args:
        scorer: the wrapped :class:`reloop.models.scorer.OnnxScorer`.
        keep: batches remembered (older ones are forgotten first).
    """

    def __init__(self, scorer: Any, keep: int = 4) -> None:
        self._scorer = scorer
        self._memo: OrderedDict[bytes, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self.keep = keep
        self.hits = 0
        self.misses = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._scorer, name)

    def score(self, tokens: np.ndarray, dense: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``scorer.score(tokens, dense)``: (base (n,) float64, hidden (n, H) float32), copies."""
        h = hashlib.blake2b(digest_size=16)
        for a in (tokens, dense):
            h.update(str((a.dtype, a.shape)).encode())
            h.update(np.ascontiguousarray(a).tobytes())
        key = h.digest()
        got = self._memo.get(key)
        if got is None:
            self.misses += 1
            got = self._memo[key] = self._scorer.score(tokens, dense)
            while len(self._memo) > self.keep:
                self._memo.popitem(last=False)
        else:
            self.hits += 1
            self._memo.move_to_end(key)
        return got[0].copy(), got[1].copy()


@dataclass
class ConfigRun:
    """One configuration's replay: (n,) arrays over the scored interactions, in log order."""

    labels: np.ndarray
    base: np.ndarray
    compensated: np.ndarray
    ts: np.ndarray
    users: np.ndarray
    report: dict = field(default_factory=dict)


def replay_configs(loaded: Any, configs: Mapping[str, Any], *, progress: bool = False,
                   fitted: Any = None) -> tuple[dict[str, ConfigRun], dict]:
    """Replay ``loaded`` under every configuration in one pass (module doc): the decoded log
    and the fitted base model (and any retrained ones) are shared, and each batch's base
    scores are computed once (:class:`_SharedScorer`).

    Args:
        loaded: the decoded log; configs: name -> Settings (already checked comparable).
        progress: a progress bar per run; fitted: the initial model (None = fit it on the
            warm-up, once, with the first configuration's settings).

    Returns:
        (name -> :class:`ConfigRun`, facts about the sharing).
    """
    from reloop.ops.replay import run_many

    shared, share = _sharing()
    t0 = time.perf_counter()
    results = run_many(_engines(configs), loaded, progress=progress, fitted=fitted, model_cache={}, share=share)
    return _collect(results, shared, time.perf_counter() - t0)


def replay_configs_streaming(events: Iterable[Any], n_warm: int, configs: Mapping[str, Any], *,
                             source: str = "", progress: bool = False,
                             fitted: Any = None) -> tuple[dict[str, ConfigRun], dict]:
    """:func:`replay_configs` over a stream of an interaction log (read once, in constant
    memory but for the predictions): its first ``n_warm`` interactions fit the initial model
    (unless ``fitted``) and are not scored (:func:`reloop.ops.replay.run_warm_many`)."""
    from reloop.ops.replay import run_warm_many

    shared, share = _sharing()
    t0 = time.perf_counter()
    results = run_warm_many(_engines(configs), events, n_warm, source=source, progress=progress, fitted=fitted,
                            model_cache={}, share=share)
    return _collect(results, shared, time.perf_counter() - t0)


def _sharing() -> tuple[dict[str, _SharedScorer], Callable[[Any], Any]]:
    """A holder for the :class:`_SharedScorer` and the ``share`` hook that wraps the initial
    model's scorer in it once the replay knows the model (fitted or given)."""
    box: dict[str, _SharedScorer] = {}

    def share(f: Any) -> Any:
        box["scorer"] = _SharedScorer(f.scorer)
        return dataclasses.replace(f, scorer=box["scorer"])

    return box, share


def _engines(configs: Mapping[str, Any]) -> dict[str, Any]:
    from reloop.ops.replay import ReplayEngine
    from reloop.ops.serving import compensation_factory

    return {name: ReplayEngine(s, compensation_factory(s)) for name, s in configs.items()}


def _collect(results: Mapping[str, Any], box: dict[str, _SharedScorer], seconds: float
             ) -> tuple[dict[str, ConfigRun], dict]:
    """Each configuration's :class:`ConfigRun` and the facts about the sharing (``seconds``:
    the whole pass, fit included)."""
    shared = box["scorer"]
    fit_s = next(iter(results.values())).report.get("fit_seconds", 0.0)
    seconds = {"fit": fit_s, "replay": seconds - fit_s}
    runs: dict[str, ConfigRun] = {}
    for name, result in results.items():
        log.info("compare_run", extra={"config": name, "scored": len(result.labels),
                                       "events_per_s": result.report.get("events_per_s")})
        # the step emits error records in its own order (per batch, per partition): each
        # prediction carries its user, so no alignment with the log is assumed
        runs[name] = ConfigRun(result.labels, result.base, result.compensated, result.ts,
                               np.asarray(result.user_ids), result.report)
    names = list(runs)
    base0 = runs[names[0]].base
    facts = {"base_max_abs_diff": max(float(np.max(np.abs(r.base - base0), initial=0.0)) for r in runs.values()),
             "base_batches_scored": shared.misses, "base_batches_reused": shared.hits,
             "one_pass": True, "seconds": seconds}
    return runs, facts


@dataclass
class CompareReport:
    """What :func:`run_compare` found (metric definitions: :mod:`reloop.ops.compare`).

    Attributes:
        reference: the first configuration's name.
        metrics: name -> metric -> :class:`Estimate` (value and 95% user-bootstrap interval).
        deltas: name -> metric -> Estimate of ``metric(name) - metric(reference)`` (paired).
        rolling: :func:`reloop.ops.compare.rolling_metrics` points over event time.
        meta: counts, bootstrap settings, definitions, per-config settings, sharing facts.
    """

    reference: str
    metrics: dict[str, dict[str, Estimate]]
    deltas: dict[str, dict[str, Estimate]]
    rolling: list[dict[str, Any]]
    meta: dict[str, Any]

    def table(self) -> str:
        """The Markdown table (:func:`format_table`)."""
        return format_table(self.metrics, self.deltas, self.reference)

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict (NaN stays NaN; :func:`reloop.ops.replay.write_report` writes null)."""
        def ests(d: Mapping[str, Mapping[str, Estimate]]) -> dict:
            return {k: {m: dataclasses.asdict(e) for m, e in v.items()} for k, v in d.items()}
        return {**self.meta, "reference": self.reference, "metrics": ests(self.metrics),
                "deltas": ests(self.deltas), "rolling": self.rolling}


def run_compare(log_source: Any, configs: Mapping[str, Any], *, resamples: int = 200, seed: int = 0,
                windows: int = 40, progress: bool = False, fitted: Any = None,
                runner: Callable[..., tuple[dict[str, ConfigRun], dict]] = replay_configs) -> CompareReport:
    """Replay one log under several configurations and compare their compensated predictions.

    Args:
        log_source: a :class:`reloop.ops.logs.LoadedLog` (decoded once, shared by every run), or
            anything with a ``source`` name when ``runner`` reads the log itself
            (:func:`replay_configs_streaming`, as ``reloop replay LOG --compare`` does).
        configs: name -> :class:`reloop.ops.settings.Settings`; the first is the reference.
        resamples, seed: user-bootstrap size and seed; windows: points of the rolling series.
        fitted: the initial model to replay with (None = fit it once on the warm-up).
        runner: replays the log per configuration (default :func:`replay_configs`).

    Raises:
        ValueError: the configurations differ in a setting that changes base scores.
    """
    check_comparable(configs)
    runs, facts = runner(log_source, configs, progress=progress, fitted=fitted)
    t0 = time.perf_counter()
    names = list(runs)
    ref = runs[names[0]]
    for k in names[1:]:
        if not np.array_equal(runs[k].labels, ref.labels):
            raise RuntimeError(f"config {k!r} scored other events than {names[0]!r}")
    preds = {k: r.compensated for k, r in runs.items()}
    metrics, deltas = bootstrap_metrics(ref.labels, preds, ref.users, resamples=resamples, seed=seed)
    idx, n_users = user_index(ref.users)
    both = np.bincount(idx, ref.labels == 1, n_users) * np.bincount(idx, ref.labels == 0, n_users) > 0
    meta = {
        "source": getattr(log_source, "source", ""),
        "scored": int(len(ref.labels)), "positives": int(ref.labels.sum()),
        "users": n_users, "users_with_both_labels": int(both.sum()),
        "bootstrap": {"unit": "user", "resamples": resamples, "seed": seed, "level": 0.95,
                      "interval": "percentile"},
        "definitions": {
            "auc": "ROC AUC over all scored interactions, ties count 1/2",
            "gauc": "sum_u n_u AUC_u / sum_u n_u over users with both labels (n_u = scored interactions of u)",
            "logloss": "mean binary cross-entropy, nats, p clipped to [1e-7, 1-1e-7]",
            "calib": "sum p / sum y (predicted / observed)",
            "ece": f"sum_b (n_b/n) |mean p_b - mean y_b| over {ECE_BINS} equal-width bins of p"},
        "configs": {k: {"compensation": configs[k].worker.compensation, "error_memory":
                        msgspec.to_builtins(configs[k].error_memory),
                        "events_per_s": r.report.get("events_per_s")}
                    for k, r in runs.items()},
        "sharing": facts,
    }
    rolling = rolling_metrics(ref.labels, preds, ref.ts, windows, users=ref.users, resamples=resamples, seed=seed)
    facts.setdefault("seconds", {})["metrics_and_bootstrap"] = time.perf_counter() - t0
    return CompareReport(names[0], metrics, deltas, rolling, meta)


# --------------------------------------------------------------------------- the command

def config_names(paths: Sequence[str]) -> list[str]:
    """Short names for config files: their stems, made unique with ``-2``, ``-3``..."""
    out: list[str] = []
    for p in paths:
        stem, n = Path(p).stem, 2
        name = stem
        while name in out:
            name, n = f"{stem}-{n}", n + 1
        out.append(name)
    return out


def cmd_compare(args: argparse.Namespace) -> int:
    """``reloop replay PATH --format F --compare A.toml B.toml ... [--report OUT.json]``:
    prints the table, writes the JSON report (default ``compare.json``) and the SVG beside it."""
    from reloop.ops.compare_plot import rolling_svg
    from reloop.ops.logs import read_log
    from reloop.ops.replay import write_report
    from reloop.ops.settings import load_settings

    if getattr(args, "config", None):
        raise ValueError("--config does not apply with --compare: every --compare file is a complete settings file")
    if getattr(args, "no_compensation", False):
        raise ValueError("--no-compensation does not mix with --compare: compare a file with "
                         "[worker] compensation = \"none\" instead")
    if args.bootstrap < 0 or args.windows < 1:
        raise ValueError(f"--bootstrap must be >= 0 and --windows >= 1, got {args.bootstrap} and {args.windows}")
    configs = {}
    for name, path in zip(config_names(args.compare), args.compare):
        s = load_settings(path)
        configs[name] = s.with_overrides(replay={"warmup": args.warmup}) if args.warmup is not None else s
    check_comparable(configs)
    first = next(iter(configs.values()))
    if args.format == "movielens":  # a dataset directory, read whole
        source = read_log(args.path, args.format, first.limits)
        rep = run_compare(source, configs, resamples=args.bootstrap, seed=args.bootstrap_seed,
                          windows=args.windows, progress=True)
    else:  # a log file, streamed once for every configuration
        from types import SimpleNamespace

        from reloop.ops.replay_cli import open_interaction_log

        n_warm, events, _ = open_interaction_log(args, first, args.path)
        source = SimpleNamespace(source=args.path)
        rep = run_compare(source, configs, resamples=args.bootstrap, seed=args.bootstrap_seed, windows=args.windows,
                          progress=True, runner=lambda _src, cfgs, progress, fitted: replay_configs_streaming(
                              events, n_warm, cfgs, source=args.path, progress=progress, fitted=fitted))
    rep.meta["config_files"] = dict(zip(configs, args.compare))
    out = Path(args.report or "compare.json")
    write_report(rep.to_json(), str(out))
    plot = Path(args.plot) if args.plot else out.with_suffix(".svg")
    plot.parent.mkdir(parents=True, exist_ok=True)
    plot.write_text(rolling_svg(rep.rolling, list(rep.metrics), title=f"{Path(source.source).name}: rolling "
                                f"metrics, {rep.meta['scored']} scored events"))
    print(rep.table())
    print(f"\n95% percentile intervals from {args.bootstrap} user-bootstrap resamples (seed {args.bootstrap_seed}); "
          f"report {out}, plot {plot}")
    return 0
