"""One engine's side of a replay pass: its step state, predictions, retraining and report.

:func:`reloop.ops.replay.run_stream_many` reads, routes and cuts a log once and hands every
batch to one :class:`EngineRun` per configuration. An engine run keeps what it needs for its
report in bounded memory: the resolved predictions go to a
:class:`~reloop.ops.replay_predictions.PredictionLog` (spilled to disk in chunks; exact AUC
and log loss at the end), outputs only with ``keep_outputs``.
"""

from __future__ import annotations

import gc
import sys
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import numpy as np

from reloop.models.fit import FittedModel
from reloop.ops.replay_engine import Routed, StepReplay
from reloop.ops.replay_predictions import PredictionLog
from reloop.streams.events import ErrorRecord, Interaction, Recommendation

if TYPE_CHECKING:
    from reloop.ops.replay import ReplayEngine
    from reloop.processors.schemas import SchemaCore

__all__ = ["ReplayResult", "EngineRun", "progress_bar", "steady_gc", "STEP_GC_THRESHOLDS"]

#: The collector's thresholds while replay steps (gen0 allocations, gen1 and gen2 counts).
#: A step allocates ~30 containers per event that mostly die with their batch: at Python's
#: default (700, 10, 10) the sim10k replay (164k events stepped) ran ~4,500 young and ~17
#: full collections, 1.6-2.9 s of its 17-29 s of CPU (``gc.callbacks``, 2026-12-07, shared
#: 2-core machine); with the heap from before the replay frozen (:func:`steady_gc`) and these
#: thresholds, 0.45-0.8 s, of which ~0.3 s is the one full collection on entry.
STEP_GC_THRESHOLDS = (10_000, 10, 10)


@dataclass
class ReplayResult:
    """What a replay produced.

    Attributes:
        report: the JSON report (see :meth:`reloop.ops.replay.ReplayEngine.run`).
        fitted: the initial model.
        predictions: per resolved prediction (one error record each, in the order the step
            emitted them): label, base and compensated probability, event time, user; held
            on disk past one chunk (:class:`~reloop.ops.replay_predictions.PredictionLog`).
        state: the stepped cores and replica at the end (digests: ``state.digests()``).
        recommendations, errors: every output, when run with ``keep_outputs=True`` (else empty).

    ``labels`` (int8), ``base``, ``compensated``, ``ts`` (float64) and ``user_ids`` (object)
    are (n,) arrays of the predictions, read back from disk at each access (O(n) memory).
    """

    report: dict
    fitted: FittedModel
    predictions: PredictionLog = field(default_factory=PredictionLog)
    state: StepReplay | None = None
    recommendations: list[Recommendation] = field(default_factory=list)
    errors: list[ErrorRecord] = field(default_factory=list)

    @property
    def labels(self) -> np.ndarray:
        """(n,) int8 labels."""
        return self.predictions.column("y")

    @property
    def base(self) -> np.ndarray:
        """(n,) float64 base (slow-model) probabilities."""
        return self.predictions.column("b")

    @property
    def compensated(self) -> np.ndarray:
        """(n,) float64 compensated probabilities."""
        return self.predictions.column("c")

    @property
    def ts(self) -> np.ndarray:
        """(n,) float64 event times of the predictions, s."""
        return self.predictions.column("t")

    @property
    def user_ids(self) -> np.ndarray:
        """(n,) object array of user ids."""
        return self.predictions.user_ids()


class EngineRun:
    """One engine's side of :func:`reloop.ops.replay.run_stream_many` (module doc).

    Args:
        engine: the :class:`~reloop.ops.replay.ReplayEngine` (settings, compensation factory).
        fitted: the initial model; cache: version -> retrained model, shared between runs.
        window: the recent labelled interactions a retrain learns from (shared).
        keep_outputs: keep every recommendation and error record (O(n) memory).
    """

    def __init__(self, engine: ReplayEngine, fitted: FittedModel, cache: dict[str, FittedModel],
                 window: deque[Interaction], keep_outputs: bool) -> None:
        self.engine, self.fitted, self.cache, self.window = engine, fitted, cache, window
        comp = engine.compensation_factory(fitted) if engine.compensation_factory else None
        self.state = StepReplay(engine.settings, fitted.scorer, comp)
        self.keep_outputs = keep_outputs
        self.predictions = PredictionLog()
        self.recs: list[Recommendation] = []
        self.errs: list[ErrorRecord] = []
        self.scored = 0
        self.current, self.retrains = fitted, []
        self.seconds = 0.0  # own step time (s)
        self._retrain_every = engine.settings.replay.retrain_every

    def feed(self, batch: Sequence[Routed]) -> None:
        """Step one batch; keep its predictions; retrain when ``replay.retrain_every`` is due."""
        t0 = time.perf_counter()
        res = self.state.step(batch)
        e = res.errors
        if e:
            self.predictions.append(e)
        if self.keep_outputs:
            self.recs += res.recommendations
            self.errs += e
        before, self.scored = self.scored, self.scored + len(res.recommendations)
        every = self._retrain_every
        if every and self.scored // every > before // every and self.window:
            self.current = self.engine._retrain(self.current, list(self.window),  # noqa: SLF001
                                                f"v{len(self.retrains) + 2}", self.cache)
            self.state.scoring.swap_model(self.current.scorer)
            self.retrains.append({"version": self.current.version, "after_events": self.scored,
                                  "holdout_auc": self.current.metrics.get("holdout_auc")})
        self.seconds += time.perf_counter() - t0

    def result(self, source: str, counts: dict[str, int], seconds: float, kernels_s: float) -> ReplayResult:
        """The :class:`ReplayResult` (report keys: :meth:`reloop.ops.replay.ReplayEngine.run`)."""
        cfg, state, preds = self.engine.settings.replay, self.state, self.predictions
        n_events = sum(counts.values())
        report = {
            "source": source, "events": n_events, "interactions": counts["interactions"],
            "requests": counts["requests"], "media_events": counts["media"], "warmup_events": 0,
            "scored": len(preds), "positives": preds.positives, "recommendations": self.scored,
            "dead_letters": len(state.dead_letters), "duplicates": state.duplicates,
            "invalid_lines": 0, "invalid_examples": [],
            "auc_base": preds.auc("b"), "auc_compensated": preds.auc("c"),
            "logloss_base": preds.logloss("b"), "logloss_compensated": preds.logloss("c"),
            "events_per_s": n_events / seconds if seconds > 0 else float("nan"),
            "fit_seconds": 0.0, "kernels_seconds": kernels_s, "batch_size": cfg.batch_size,
            "partitions": self.engine.partitions, "model_version": self.fitted.version,
            "model_holdout": self.fitted.metrics, "compensation": type(state.scoring.compensation).__name__,
            "retrains": self.retrains, "digests": state.digests(), "series": state.tasks.metrics.series,
            "schema_updates": state.published.get("schemas", 0), "alerts": state.published.get("alerts", 0),
            **_tick_figures(state.replica.schema_core),
        }
        return ReplayResult(report, self.fitted, preds, state, self.recs, self.errs)


def _tick_figures(core: SchemaCore | None) -> dict[str, Any]:
    """The schema cache's evaluation ticks and their CPU seconds (0 without a schema cache)."""
    if core is None:
        return {"schema_ticks": 0, "schema_tick_seconds": 0.0}
    return {"schema_ticks": core.cache.ticks, "schema_tick_seconds": core.cache.tick_seconds}


@contextmanager
def steady_gc(thresholds: tuple[int, int, int] = STEP_GC_THRESHOLDS) -> Iterator[None]:
    """Run a replay's steps with the cyclic garbage collector tuned for them, then restore it.

    Everything alive on entry (the imported modules, torch, the fitted model: ~550k objects
    after a fit) is collected once and frozen (:func:`gc.freeze`), so the full collections
    during the replay no longer walk it, and the young generation is collected every
    ``thresholds[0]`` allocations instead of 700. No object's lifetime changes in a way
    replay can see (nothing in the step relies on a collection), so outputs are identical;
    the collector's thresholds are restored and the frozen objects released on exit.

    >>> before, frozen = gc.get_threshold(), gc.get_freeze_count()
    >>> with steady_gc():
    ...     gc.get_threshold() == STEP_GC_THRESHOLDS, gc.get_freeze_count() > frozen
    (True, True)
    >>> gc.get_threshold() == before, gc.get_freeze_count() == 0
    (True, True)
    """
    old = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(*thresholds)
    try:
        yield
    finally:
        gc.set_threshold(*old)
        gc.unfreeze()


class progress_bar:  # noqa: N801 - used as a function: ``with progress_bar(on, total) as advance``
    """A rich progress bar on a terminal (events done of the total, events/s, time elapsed and
    ETA); a no-op otherwise."""

    def __init__(self, enabled: bool, total: int | None) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self.total = total

    def __enter__(self) -> Callable[[int], None]:
        if not self.enabled:
            return lambda n: None
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        self._bar: Any = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TextColumn("{task.fields[rate]} events/s"), TimeElapsedColumn(),
                                  TextColumn("ETA"), TimeRemainingColumn(), transient=True)
        self._bar.start()
        task = self._bar.add_task("replay", total=self.total, rate="-")

        def advance(n: int) -> None:
            self._bar.advance(task, n)
            speed = self._bar.tasks[0].speed
            if speed:
                self._bar.update(task, rate=f"{speed:,.0f}")

        return advance

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self._bar.stop()
