"""The compensation hook between the slow model and the ranking.

``ScoringCore`` hands every batch of base predictions and hidden representations to a
:class:`Compensation`; ``FeedbackCore``'s error records flow back into it through
``apply_errors``. :class:`NoCompensation` is the identity (the slow model alone); the error
memory (ReLoop2) implements the same protocol in :mod:`reloop.processors.error_memory`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple, Protocol, Sequence

import numpy as np

from reloop.streams.events import ErrorRecord
from reloop.streams.memory_batch import MemoryBatch

if TYPE_CHECKING:
    from reloop.models.scorer import OnnxScorer


class Compensated(NamedTuple):
    """Output of a compensation for n candidates.

    Attributes:
        scores: (n,) float64 compensated probabilities in [0, 1].
        evidence: (n,) float64 memory support behind each correction (0 = none).
        codes: (n, K) int32 memory keys to keep with the pending prediction ((n, 0) if none).
    """

    scores: np.ndarray
    evidence: np.ndarray
    codes: np.ndarray


class Compensation(Protocol):
    """Corrects base predictions at serving time and learns from error records."""

    def compensate(self, base: np.ndarray, hidden: np.ndarray, now: float) -> Compensated:
        """base (n,) float64, hidden (n, H) float32, now = event time (s)."""
        ...

    def apply_errors(self, records: Sequence[ErrorRecord]) -> int:
        """Learn from error records; returns how many were stored."""
        ...

    def apply_memory_batch(self, batch: MemoryBatch) -> int:
        """Learn from one binary ``memory`` batch (arrays of rows); returns rows stored."""
        ...

    def memory_records(self, errors: Sequence[ErrorRecord]) -> list[bytes]:
        """The binary ``memory`` records (values) that carry ``errors`` to every replica; none
        when the compensation keeps no shared sketch."""
        ...

    def on_model_change(self, scorer: "OnnxScorer") -> None:
        """The slow model changed to ``scorer``: hidden keys change meaning."""
        ...

    def snapshot(self, reuse_buffers: bool = False) -> dict[str, np.ndarray]:
        """Plain arrays of the replica's state (for atomic snapshot files); ``reuse_buffers``:
        may overwrite the arrays the previous ``reuse_buffers`` call returned."""
        ...

    def restore(self, snap: dict[str, np.ndarray]) -> bool:
        """Adopt a snapshot if it fits the current model; returns whether it did."""
        ...

    def digest(self) -> str:
        """A short fingerprint of the state (equal state, equal digest)."""
        ...


class NoCompensation:
    """The identity: compensated score = base score, no evidence, no codes."""

    def snapshot(self, reuse_buffers: bool = False) -> dict[str, np.ndarray]:
        return {}

    def restore(self, snap: dict[str, np.ndarray]) -> bool:
        return False

    def digest(self) -> str:
        return ""

    def compensate(self, base: np.ndarray, hidden: np.ndarray, now: float) -> Compensated:
        n = len(base)
        return Compensated(np.asarray(base, np.float64), np.zeros(n), np.zeros((n, 0), np.int32))

    def apply_errors(self, records: Sequence[ErrorRecord]) -> int:
        return 0

    def apply_memory_batch(self, batch: MemoryBatch) -> int:
        return 0

    def memory_records(self, errors: Sequence[ErrorRecord]) -> list[bytes]:
        return []

    def on_model_change(self, scorer: "OnnxScorer") -> None:
        return None
