"""Offline replay: the worker's cores fed from a log in event-time order, without Kafka.

Protocol (prequential, deterministic):

1. the first ``warmup`` fraction of the log's interactions trains the initial slow model and
   is not scored;
2. the rest is cut into micro-batches of ``batch_size`` events in log order. For each batch:
   every interaction is scored as a one-candidate request (:mod:`reloop.processors.prequential`),
   then the batch's labels are fed back (``FeedbackCore``) and the resulting error records
   are applied to the compensation. **A batch is scored before its feedback is applied**:
   the worker follows the same rule per polled batch.

``reloop replay PATH --format F --report OUT.json`` runs it from the command line.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import msgspec
import numpy as np

from reloop.models.fit import FittedModel, fit_model
from reloop.models.metrics import auc, logloss
from reloop.processors.compensation import Compensation
from reloop.processors.feedback import FeedbackCore
from reloop.processors.media import MediaCore, annotate_log
from reloop.processors.metrics import OnlineMetrics
from reloop.processors.pending import PendingStore
from reloop.processors.prequential import as_feedback, as_request
from reloop.processors.scoring import ScoringCore
from reloop.ops.logs import LoadedLog
from reloop.ops.settings import Settings
from reloop.streams.events import Interaction, MediaEvent

log = logging.getLogger("reloop.replay")

#: Builds the compensation for a fitted model (e.g. an error memory sized to its hidden dim).
CompensationFactory = Callable[[FittedModel], Compensation]


@dataclass
class ReplayResult:
    """What a replay produced.

    Attributes:
        report: the JSON report (see :func:`ReplayEngine.run`).
        labels, base, compensated, ts: (n,) per scored interaction, in log order.
        fitted: the initial model.
    """

    report: dict
    labels: np.ndarray
    base: np.ndarray
    compensated: np.ndarray
    ts: np.ndarray
    fitted: FittedModel


def batches(seq: Sequence, size: int) -> Iterator[Sequence]:
    """Consecutive slices of ``seq`` of length ``size`` (the last may be shorter)."""
    for lo in range(0, len(seq), size):
        yield seq[lo:lo + size]


def split_warmup(interactions: list[Interaction], fraction: float) -> tuple[list[Interaction], list[Interaction]]:
    """The leading ``fraction`` (at least one event) and the rest."""
    n = max(1, int(round(len(interactions) * fraction)))
    return interactions[:n], interactions[n:]


def fit_initial_model(warm: Sequence[Interaction], settings: Settings, version: str = "v1") -> FittedModel:
    """Train, export and parity-check the initial slow model on labelled interactions."""
    rows = [(it.user_id, it.item_id, it.features) for it in warm]
    labels = np.fromiter((it.label for it in warm), np.float32, len(warm))
    return fit_model(rows, labels, feature_defaults=settings.features, model_config=settings.model,
                     train_config=settings.train, version=version)


def check_labelled(loaded: LoadedLog, interactions: Sequence[Interaction]) -> None:
    """Refuse a log replay cannot score: fewer than 2 interactions, or labels of one kind only
    (e.g. a log of clicks without their impressions: AUC and calibration need both).

    Raises:
        ValueError: naming the log, what it holds and how to get a labelled one.
    """
    positives = sum(it.label for it in interactions)
    if len(interactions) >= 2 and 0 < positives < len(interactions):
        return
    what = (f"{len(interactions)} interaction(s), {positives} positive and {len(interactions) - positives} "
            f"negative, and {len(loaded.invalid)} line(s) that are not valid interactions or media events")
    raise ValueError(f"log {loaded.source!r} has {what}: replay needs labelled interactions of both kinds "
                     "(every impression with label 0 or 1, e.g. `reloop simulate --labelled`)")


class ReplayEngine:
    """Runs the prequential protocol above over a loaded log.

    Args:
        settings: the deployment settings (replay, worker, model sections are used).
        compensation_factory: builds the compensation (identity when None).
    """

    def __init__(self, settings: Settings, compensation_factory: CompensationFactory | None = None) -> None:
        self.settings = settings
        self.compensation_factory = compensation_factory

    def run(self, loaded: LoadedLog, *, progress: bool = False, fitted: FittedModel | None = None,
            model_cache: dict[str, FittedModel] | None = None) -> ReplayResult:
        """Replay ``loaded``; returns the result (report + per-event predictions).

        With ``replay.retrain_every = N`` the slow model is retrained (warm start) after every
        N scored events on the last ``retrain_window`` labelled events and swapped in between
        batches; the compensation is told (reset or re-key). ``model_cache`` (version -> model)
        lets several runs over the same log share their retrained models (they depend only on
        the labels, not on the compensation).
        """
        cfg = self.settings.replay
        has_media = any(isinstance(e, MediaEvent) for e in loaded.events)
        media = MediaCore(self.settings.media) if self.settings.worker.media_features and has_media else None
        interactions = annotate_log(media, loaded.events) if media is not None else loaded.interactions
        check_labelled(loaded, interactions)
        warm, rest = split_warmup(interactions, cfg.warmup)
        t_fit = time.perf_counter()
        cache = model_cache if model_cache is not None else {}
        fitted = fitted or cache.get("v1") or fit_initial_model(warm, self.settings)
        cache.setdefault("v1", fitted)
        current = fitted
        retrains: list[dict] = []
        fit_s = time.perf_counter() - t_fit
        compensation = self.compensation_factory(fitted) if self.compensation_factory else None
        scoring = ScoringCore(fitted.scorer, compensation)
        metrics = OnlineMetrics(window=self.settings.worker.metrics_window)
        feedback = FeedbackCore(PendingStore(self.settings.worker.attribution_window_s), metrics)
        n_media = sum(isinstance(e, MediaEvent) for e in loaded.events)

        base, comp, labels, ts = [], [], [], []
        seq0 = len(warm)
        t0 = time.perf_counter()
        with _progress(progress, len(rest)) as advance:
            for b, batch in enumerate(batches(rest, cfg.batch_size)):
                first = seq0 + b * cfg.batch_size
                reqs = [as_request(it, first + j) for j, it in enumerate(batch)]
                _, pending = scoring.score(reqs)
                feedback.on_scored(pending)
                records = feedback.on_batch([as_feedback(it, first + j) for j, it in enumerate(batch)])
                scoring.compensation.apply_errors(records)
                done = (b + 1) * cfg.batch_size
                if cfg.retrain_every and done // cfg.retrain_every > (done - len(batch)) // cfg.retrain_every \
                        and done < len(rest):
                    seen = interactions[max(0, len(warm) + done - cfg.retrain_window): len(warm) + done]
                    current = self._retrain(current, seen, f"v{len(retrains) + 2}", cache)
                    scoring.swap_model(current.scorer)
                    retrains.append({"version": current.version, "after_events": done,
                                     "holdout_auc": current.metrics.get("holdout_auc")})
                for r in records:
                    base.append(r.base_pred)
                    comp.append(r.comp_pred)
                    labels.append(r.label)
                    ts.append(r.ts)
                advance(len(batch))
        elapsed = time.perf_counter() - t0
        y, pb, pc = np.array(labels, np.int64), np.array(base), np.array(comp)
        report = {
            "source": loaded.source,
            "events": len(loaded.events),
            "interactions": len(interactions),
            "media_events": n_media,
            "warmup_events": len(warm),
            "scored": int(len(y)),
            "positives": int(y.sum()),
            "invalid_lines": len(loaded.invalid),
            "invalid_examples": [{"line": n, "reason": r} for n, r in loaded.invalid[:20]],
            "auc_base": auc(y, pb),
            "auc_compensated": auc(y, pc),
            "logloss_base": logloss(y, pb),
            "logloss_compensated": logloss(y, pc),
            "events_per_s": len(rest) / elapsed if elapsed > 0 else float("nan"),
            "fit_seconds": fit_s,
            "batch_size": cfg.batch_size,
            "model_version": fitted.version,
            "model_holdout": fitted.metrics,
            "compensation": type(scoring.compensation).__name__,
            "retrains": retrains,
            "series": metrics.series,
        }
        return ReplayResult(report, y, pb, pc, np.array(ts), fitted)


    def _retrain(self, current: FittedModel, window: Sequence[Interaction], version: str,
                 cache: dict[str, FittedModel]) -> FittedModel:
        if version not in cache:
            rows = [(it.user_id, it.item_id, it.features) for it in window]
            labels = np.fromiter((it.label for it in window), np.float32, len(window))
            cache[version] = fit_model(rows, labels, feature_defaults=self.settings.features,
                                       model_config=self.settings.model, train_config=self.settings.train,
                                       version=version, init=current.model)
        return cache[version]


class _progress:
    """A rich progress bar on a terminal; a no-op otherwise."""

    def __init__(self, enabled: bool, total: int) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self.total = total

    def __enter__(self) -> Callable[[int], None]:
        if not self.enabled:
            return lambda n: None
        from rich.progress import Progress

        self._bar = Progress(transient=True)
        self._bar.start()
        task = self._bar.add_task("replay", total=self.total)
        return lambda n: self._bar.advance(task, n)

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self._bar.stop()


def write_report(report: dict, path: str) -> None:
    """Write a report as indented JSON (NaN becomes null)."""
    from pathlib import Path

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    clean = msgspec.json.decode(msgspec.json.encode(report))  # NaN -> null
    Path(path).write_bytes(msgspec.json.format(msgspec.json.encode(clean), indent=2) + b"\n")
