"""ReLoop2 compensation: the error memory (:mod:`state.error_memory`) behind the hook.

Serving hashes each candidate's hidden vector once; the codes travel with the pending
prediction and come back in the error record, so feedback writes need no re-hashing. Only
records scored by the current model version are written: after a model change the hidden
space changes meaning and old codes would land in the wrong buckets.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from processors.compensation import Compensated
from state.error_memory import ErrorMemory, stable_keys
from streams.events import ErrorRecord


class ErrorMemoryCompensation:
    """Compensation backed by an :class:`ErrorMemory` replica.

    Args:
        memory: the sketch (its dim must equal the model's hidden width).
        model_version: version whose hidden space the memory is keyed by.
    """

    def __init__(self, memory: ErrorMemory, model_version: str) -> None:
        self.memory = memory
        self.model_version = model_version
        self.skipped_stale = 0

    def compensate(self, base: np.ndarray, hidden: np.ndarray, now: float) -> Compensated:
        codes = self.memory.codes(hidden)
        scores, evidence = self.memory.compensate(base, codes, now)
        return Compensated(scores, evidence, codes)

    def apply_errors(self, records: Sequence[ErrorRecord]) -> int:
        """Write records of the current model version (others are counted as stale)."""
        k = self.memory.config.tables
        fresh = [r for r in records if r.model_version == self.model_version and len(r.codes) == k]
        self.skipped_stale += len(records) - len(fresh)
        if not fresh:
            return 0
        n = len(fresh)
        codes = np.array([r.codes for r in fresh], dtype=np.int32).reshape(n, k)
        y = np.fromiter((r.label for r in fresh), np.float64, n)
        p = np.fromiter((r.base_pred for r in fresh), np.float64, n)
        ts = np.fromiter((r.ts for r in fresh), np.float64, n)
        keys = stable_keys(r.error_id for r in fresh) if self.memory.config.write_sample < 1.0 else None
        return self.memory.write(codes, y, p, ts, keys)

    def on_model_change(self, version: str) -> None:
        """New hidden space: start a fresh memory keyed by ``version`` (ReLoop2's reset)."""
        self.memory.reset()
        self.model_version = version
