"""Which model the hot path serves, and when a new one takes over: a mixin of
:class:`reloop.processors.hot_path.HotPath`.

The first model installed builds the cores (the compensation replica restored from its
snapshot, the input side recovered from checkpoint and journal); a later one is held in
``_next_scorer`` and swapped in between two batches (:meth:`HotPathModel._swap_if_due`), so a
batch is scored by one model from start to end.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any, Callable

from reloop.models.scorer import OnnxScorer
from reloop.processors.compensation import Compensation, NoCompensation
from reloop.processors.replica import GuardedCompensation
from reloop.processors.scoring import ScoringCore

log = logging.getLogger("reloop.hot_path")

__all__ = ["HotPathModel"]


class HotPathModel:
    """Model install and swap methods of the hot path (mixin; module doc)."""

    # attributes provided by HotPath
    scoring: ScoringCore | None
    _next_scorer: OnnxScorer | None
    _model_ready: asyncio.Event
    replica: Any
    tasks: Any
    media: Any
    telemetry: Any
    snapshot_path: Path | None
    compensation_factory: Callable[[OnnxScorer], Compensation | None]
    compensation: Any
    schema_core: Any
    _recover_inputs: Any

    def install_model(self, scorer: OnnxScorer) -> None:
        """Serve ``scorer`` from the next batch on (the current batch finishes on the old one)."""
        if self.scoring is None:
            self.replica.compensation = self.compensation_factory(scorer) or NoCompensation()
            if self.snapshot_path is not None:
                self._recover_inputs()
                self.replica.restore(self.snapshot_path, scorer, self.compensation_factory)
            # the replica thread writes the sketch while scoring reads it (GuardedCompensation)
            if not isinstance(self.replica.compensation, NoCompensation):
                self.replica.compensation = GuardedCompensation(self.replica.compensation)
            self.tasks.enable_tracking()  # the changelog writes what each batch changed
            self.scoring = ScoringCore(scorer, self.compensation, self.media, schemas=self.schema_core)
            self.telemetry.model_info.labels(scorer.version).set(1)
            self._model_ready.set()
        elif scorer.version == self.scoring.model_version:
            # a re-announcement, or the start's two loads (registry CURRENT and the models topic)
            # racing: no v1 -> v1 swap (it would reset and re-key the error memory)
            self._next_scorer = None
            log.info("model_already_serving", extra={"version": scorer.version})
        else:
            self._next_scorer = scorer

    def _swap_if_due(self) -> None:
        if self._next_scorer is not None and self.scoring is not None:
            old = self.scoring.model_version
            self.scoring.swap_model(self._next_scorer)
            self._next_scorer = None
            self.telemetry.model_info.labels(old).set(0)
            self.telemetry.model_info.labels(self.scoring.model_version).set(1)
            self.telemetry.model_swaps.inc()
            log.info("model_swapped", extra={"old": old, "new": self.scoring.model_version})
