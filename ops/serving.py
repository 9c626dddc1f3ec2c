"""How the worker and the replay engine build their compensation from settings."""

from __future__ import annotations

from reloop.models.scorer import OnnxScorer
from reloop.ops.replay import CompensationFactory
from reloop.ops.settings import Settings
from reloop.processors.compensation import Compensation
from reloop.processors.error_memory import ErrorMemoryCompensation
from reloop.state.error_memory.memory import ErrorMemory


def make_compensation(settings: Settings, scorer: OnnxScorer) -> Compensation | None:
    """The configured compensation for the model ``scorer`` serves."""
    if settings.worker.compensation == "none":
        return None
    return ErrorMemoryCompensation(ErrorMemory(scorer.hidden_dim, settings.error_memory), scorer,
                                   rekey_window=settings.worker.rekey_window)


def compensation_factory(settings: Settings) -> CompensationFactory | None:
    """Factory for :class:`reloop.ops.replay.ReplayEngine` (None = slow model only)."""
    if settings.worker.compensation == "none":
        return None
    return lambda fitted: make_compensation(settings, fitted.scorer)  # type: ignore[return-value]
