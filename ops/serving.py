"""How the worker and the replay engine build their compensation from settings."""

from __future__ import annotations

from models.fit import FittedModel
from ops.replay import CompensationFactory
from ops.settings import Settings
from processors.compensation import Compensation
from processors.error_memory import ErrorMemoryCompensation
from state.error_memory import ErrorMemory


def make_compensation(settings: Settings, hidden_dim: int, model_version: str) -> Compensation | None:
    """The configured compensation for a model with ``hidden_dim`` hidden units."""
    if settings.worker.compensation == "none":
        return None
    return ErrorMemoryCompensation(ErrorMemory(hidden_dim, settings.error_memory), model_version)


def compensation_factory(settings: Settings) -> CompensationFactory | None:
    """Factory for :class:`ops.replay.ReplayEngine` (None = slow model only)."""
    if settings.worker.compensation == "none":
        return None
    return lambda fitted: make_compensation(settings, fitted.scorer.hidden_dim, fitted.version)  # type: ignore[return-value]
