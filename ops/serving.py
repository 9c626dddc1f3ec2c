"""How the worker and the replay engine build their compensation from settings."""

from __future__ import annotations

from models.scorer import OnnxScorer
from ops.replay import CompensationFactory
from ops.settings import Settings
from processors.compensation import Compensation
from processors.error_memory import ErrorMemoryCompensation
from state.error_memory import ErrorMemory


def make_compensation(settings: Settings, scorer: OnnxScorer) -> Compensation | None:
    """The configured compensation for the model ``scorer`` serves."""
    if settings.worker.compensation == "none":
        return None
    return ErrorMemoryCompensation(ErrorMemory(scorer.hidden_dim, settings.error_memory), scorer,
                                   rekey_window=settings.worker.rekey_window)


def compensation_factory(settings: Settings) -> CompensationFactory | None:
    """Factory for :class:`ops.replay.ReplayEngine` (None = slow model only)."""
    if settings.worker.compensation == "none":
        return None
    return lambda fitted: make_compensation(settings, fitted.scorer)  # type: ignore[return-value]
