"""One retrain cycle, and where the trainer keeps its files (:mod:`reloop.ops.trainer` runs it).

:func:`retrain_once` on a time-ordered window of samples:

1. warm start from the serving version (``CURRENT``) on the window, last
   ``holdout_fraction`` held out (:func:`fit_candidate`, :func:`reloop.models.fit.fit_model`
   with ``init=``);
2. export ONNX and run the gates (:func:`gate_and_register`,
   :func:`reloop.models.checks.validate_candidate`: parity torch vs onnxruntime, holdout AUC /
   log loss vs the serving model on the same rows);
3. if every gate passed: register the version atomically (parent, window bounds, metrics
   including the gate results) and make it current. A rejected candidate is never written or
   promoted: the serving model stays.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import msgspec
import numpy as np

from reloop.models.bundle import CorruptModelError
from reloop.models.checks import CheckConfig, validate_candidate
from reloop.models.export import ParityError
from reloop.models.fit import FittedModel, fit_model
from reloop.models.registry import ModelRegistry
from reloop.models.scorer import OnnxScorer
from reloop.ops.settings import Settings
from reloop.processors.trainer import TrainerConfig
from reloop.state.sample_window import Sample, SampleWindow

__all__ = ["RetrainOutcome", "trainer_config", "registry_root", "window_root", "open_window",
           "fit_candidate", "gate_and_register", "retrain_once", "load_serving"]

log = logging.getLogger("reloop.trainer")


def trainer_config(settings: Settings) -> TrainerConfig:
    """The ``[trainer]`` section (defaults until the section exists in :class:`Settings`)."""
    return getattr(settings, "trainer", None) or TrainerConfig()


def registry_root(settings: Settings) -> Path:
    """Where the worker and the trainer share the model registry: ``<data_dir>/models``."""
    return Path(settings.worker.data_dir) / "models"


def window_root(settings: Settings) -> Path:
    """The training window's directory: ``<data_dir>/window``."""
    return Path(settings.worker.data_dir) / "window"


def open_window(settings: Settings, config: TrainerConfig | None = None) -> SampleWindow:
    """The trainer's window with the configured retention."""
    cfg = config or trainer_config(settings)
    return SampleWindow(window_root(settings), max_samples=cfg.window_max_samples,
                        max_age_s=cfg.window_max_age_s, segment_max_samples=cfg.segment_max_samples)


@dataclass
class RetrainOutcome:
    """Result of one retrain cycle.

    Attributes:
        accepted: the candidate passed every gate and was registered as current.
        candidate_version: the version name the candidate was trained as.
        version: the registered version (None if rejected).
        parent_version: the serving version it was warm-started from / compared against.
        trigger: why it ran (``drift``, ``samples``, ``time``, ``initial``, ``manual``).
        reasons: why it was rejected (empty if accepted).
        samples: window size, rows; window: event-time bounds (unix s).
        seconds: wall time per stage (``fit`` = train + export + fit's parity, ``checks``,
            ``register``, ``total``).
        metrics: training metrics plus the ``check_*`` gate results.
    """

    accepted: bool
    candidate_version: str
    version: str | None
    parent_version: str | None
    trigger: str
    reasons: list[str] = field(default_factory=list)
    samples: int = 0
    window: tuple[float, float] | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)


def load_serving(registry: ModelRegistry) -> tuple[str | None, Any, OnnxScorer | None]:
    """(version, torch model, scorer) to warm-start from and compare against: ``CURRENT``, or if
    it cannot be loaded its rollback target; Nones when there is no loadable version."""
    version = registry.current()
    while version is not None:
        try:
            bundle = registry.load(version)
            return version, bundle.load_torch_model(), bundle.load_scorer()
        except (CorruptModelError, ValueError) as exc:
            log.error("serving_model_unloadable", extra={"version": version, "reason": str(exc)})
        try:
            version = registry.rollback_target(version)
        except FileNotFoundError:
            version = None
    return None, None, None


def fit_candidate(samples: Sequence[Sample], settings: Settings, config: TrainerConfig, version: str,
                  init: Any = None) -> FittedModel:
    """Train (warm-started from ``init`` if given), export and parity-probe a candidate.

    ``samples`` must be in event-time order; the last ``config.holdout_fraction`` is held out.
    A warm start runs ``config.warm_epochs`` passes, a cold start ``settings.train.epochs``.

    Raises:
        reloop.models.export.ParityError: the export does not match the torch model.
    """
    rows = [s.row for s in samples]
    labels = np.fromiter((s.label for s in samples), np.float32, len(samples))
    train_cfg = msgspec.structs.replace(settings.train, holdout_fraction=config.holdout_fraction,
                                        num_threads=config.train_threads,
                                        epochs=config.warm_epochs if init is not None else settings.train.epochs)
    return fit_model(rows, labels, feature_defaults=settings.features, model_config=settings.model,
                     train_config=train_cfg, version=version, init=init, ort_threads=1)


def gate_and_register(candidate: FittedModel, samples: Sequence[Sample], registry: ModelRegistry,
                      config: TrainerConfig, *, serving_version: str | None, serving: OnnxScorer | None,
                      trigger: str = "manual") -> RetrainOutcome:
    """Run the gates on ``candidate`` and register it as current only if all pass."""
    t0 = time.perf_counter()
    n_hold = int(round(len(samples) * config.holdout_fraction))
    held = samples[len(samples) - n_hold:] if n_hold else []
    report = validate_candidate(
        candidate, [s.row for s in held], np.fromiter((s.label for s in held), np.int64, len(held)), serving,
        CheckConfig(parity_atol=config.parity_atol, max_auc_drop=config.max_auc_drop,
                    max_logloss_increase=config.max_logloss_increase, min_holdout_rows=config.min_holdout_rows))
    window = (samples[0].ts, samples[-1].ts) if samples else None
    outcome = RetrainOutcome(accepted=False, candidate_version=candidate.version, version=None,
                             parent_version=serving_version, trigger=trigger, reasons=list(report.reasons),
                             samples=len(samples), window=window,
                             seconds={"checks": time.perf_counter() - t0})
    candidate.metrics.update(report.as_metrics())
    candidate.metrics["trigger"] = trigger
    outcome.metrics = candidate.metrics
    if not report.passed:
        log.warning("model_rejected", extra={"version": candidate.version, "trigger": trigger,
                                             "serving_version": serving_version, "reasons": report.reasons})
        return outcome
    t1 = time.perf_counter()
    registry.register(candidate, parent=serving_version, window=window, make_current=True)
    outcome.seconds["register"] = time.perf_counter() - t1
    outcome.accepted, outcome.version = True, candidate.version
    return outcome


def retrain_once(samples: Sequence[Sample], registry: ModelRegistry, settings: Settings,
                 config: TrainerConfig | None = None, *, trigger: str = "manual") -> RetrainOutcome:
    """One full cycle on a time-ordered window: fit, export, gates, register (see module doc)."""
    cfg = config or trainer_config(settings)
    t0 = time.perf_counter()
    serving_version, parent_model, serving = load_serving(registry)
    version = registry.next_version()
    base = RetrainOutcome(accepted=False, candidate_version=version, version=None,
                          parent_version=serving_version, trigger=trigger, samples=len(samples),
                          window=(samples[0].ts, samples[-1].ts) if samples else None)
    if len(samples) < cfg.min_samples:
        base.reasons.append(f"window has {len(samples)} samples, fewer than min_samples={cfg.min_samples}")
        return base
    log.info("retrain_started", extra={"version": version, "parent": serving_version, "trigger": trigger,
                                       "samples": len(samples)})
    try:
        candidate = fit_candidate(samples, settings, cfg, version, init=parent_model)
    except ParityError as exc:
        base.reasons.append(f"parity: {exc}")
        log.warning("model_rejected", extra={"version": version, "trigger": trigger, "reasons": base.reasons})
        return base
    fit_s = time.perf_counter() - t0
    outcome = gate_and_register(candidate, samples, registry, cfg, serving_version=serving_version,
                                serving=serving, trigger=trigger)
    outcome.seconds = {"fit": fit_s, **outcome.seconds, "total": time.perf_counter() - t0}
    log.info("retrain_finished", extra={"version": version, "accepted": outcome.accepted,
                                        "trigger": trigger, **{f"{k}_s": round(v, 3)
                                                               for k, v in outcome.seconds.items()}})
    return outcome
