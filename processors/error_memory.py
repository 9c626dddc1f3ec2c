"""ReLoop2 compensation: the error memory (:mod:`reloop.state.error_memory.memory`) behind the hook.

Serving hashes each candidate's hidden vector once; the codes travel with the pending
prediction and come back in the error record, so feedback writes need no re-hashing.

Model changes. Hidden keys change meaning when the slow model changes. ReLoop2 resets the
memory; we *re-key* instead: the replica keeps the last ``rekey_window`` labelled samples
(features, label, event time) and, when a new model is installed, re-scores them with it
(new base prediction, new hidden vector, new codes) into a fresh memory, so compensation is
warm right after a swap. Records scored by an older model that arrive after the swap are
re-keyed the same way as they come in, so a replica's state does not depend on where in the
``errors`` stream its swap happened. ``rekey_window = 0`` gives the paper's reset.
"""

from __future__ import annotations

from collections import deque
from typing import Sequence

import numpy as np

from reloop.models.features import FeatureEncoder
from reloop.models.scorer import OnnxScorer
from reloop.processors.compensation import Compensated
from reloop.state.error_memory.memory import ErrorMemory, key_uniforms, stable_keys
from reloop.state.error_memory.knn import ExactKnnMemory
from reloop.streams.events import CODE_DTYPE, ErrorRecord
from reloop.streams.memory_batch import MAX_ROWS, MemoryBatch, encode_rows


class ErrorMemoryCompensation:
    """Compensation backed by an :class:`ErrorMemory` replica.

    Args:
        memory: the sketch (its dim must equal the model's hidden width).
        scorer: the model whose hidden space the memory is keyed by.
        rekey_window: labelled samples kept for re-keying after a model change (0 = reset).
    """

    def __init__(self, memory: ErrorMemory, scorer: OnnxScorer, rekey_window: int = 20_000) -> None:
        self.memory = memory
        self.scorer = scorer
        self.encoder = FeatureEncoder(scorer.spec)
        self.window: deque[ErrorRecord] = deque(maxlen=rekey_window) if rekey_window > 0 else deque(maxlen=0)
        self.rekey_window = max(0, rekey_window)
        self.batches: deque[MemoryBatch] = deque()  # binary batches kept for re-keying (last rows)
        self._batch_rows = 0
        self.rekeyed = 0
        self.stale_rows = 0  # memory rows of another model version (re-keyed or dropped)
        self._snapshot_buffers: dict[str, np.ndarray] | None = None  # see snapshot(reuse_buffers)

    @property
    def model_version(self) -> str:
        return self.scorer.version

    def compensate(self, base: np.ndarray, hidden: np.ndarray, now: float) -> Compensated:
        codes = self.memory.codes(hidden)
        scores, evidence = self.memory.compensate(base, codes, now)
        return Compensated(scores, evidence, codes)

    def apply_errors(self, records: Sequence[ErrorRecord]) -> int:
        """Write records; those keyed by another model version are re-keyed first.

        A record of the current version whose codes are not ``K`` values in ``[0, 2**L)``
        (e.g. from a foreign producer) is re-keyed from its features too, rather than
        failing the batch.
        """
        if not records:
            return 0
        self.window.extend(records)
        k = self.memory.config.tables
        version = self.model_version
        fresh: list[ErrorRecord] = []
        stale: list[ErrorRecord] = []
        for r in records:
            (fresh if r.model_version == version and r.n_codes == k else stale).append(r)
        written = 0
        if fresh:
            n = len(fresh)
            if all(r.codes.__class__ is bytes for r in fresh):  # the packed wire form: one buffer
                codes = np.frombuffer(b"".join([r.codes for r in fresh]), CODE_DTYPE).reshape(n, k).astype(np.int64)
            else:  # lists of ints (older producers): range-checked before the int64 cast
                nb = self.memory.n_buckets
                rows = [r.code_list() for r in fresh]
                codes = np.array([c if all(-1 < x < nb for x in c) else [-1] * k for c in rows],
                                 dtype=np.int64).reshape(n, k)
            ok = ((codes >= 0) & (codes < self.memory.n_buckets)).all(axis=1)
            if not ok.all():
                stale += [r for r, good in zip(fresh, ok.tolist()) if not good]
                fresh = [r for r, good in zip(fresh, ok.tolist()) if good]
                codes = codes[ok]
            if fresh:
                p = np.fromiter((r.base_pred for r in fresh), np.float64, len(fresh))
                written += self._write(codes.astype(np.int32), fresh, p)
        if stale and self.window.maxlen:
            written += self._rekey(stale)
        return written

    def memory_records(self, errors: Sequence[ErrorRecord]) -> list[bytes]:
        """The sketch's writes of ``errors`` as binary ``memory`` records (:func:`memory_batches`,
        with the cluster's write budget)."""
        cfg = self.memory.config
        return memory_batches(errors, cfg.tables, cfg.write_sample) if errors else []

    def apply_memory_batch(self, batch: MemoryBatch) -> int:
        """Write one ``memory`` batch (:mod:`reloop.streams.memory_batch`); returns rows written.

        No Python work per row: rows of the current model with codes in range go to the
        sketch in one kernel call. Rows of another model version (or with codes out of range)
        are re-keyed from their features, like :meth:`apply_errors` does (rare: around a swap).
        """
        n = batch.n
        if n == 0:
            return 0
        self._keep_for_rekey(batch)
        version = self.model_version
        codes = batch.codes_array()
        y, p, ts, keys = batch.y_array(), batch.p_array(), batch.ts_array(), batch.keys_array()
        fresh = batch.k == self.memory.config.tables and version in batch.versions
        if fresh:
            ok = (batch.version_array() == batch.versions.index(version))
            ok &= (codes < self.memory.n_buckets).all(axis=1)
            fresh = bool(ok.any())
        if not fresh:
            return self._rekey_batch_rows(batch, np.arange(n))
        written = 0
        if ok.all():
            written = self.memory.write(codes.view(np.int32), y, p, ts, keys, sampled=keys is None)
        else:
            idx = np.flatnonzero(ok)
            written = self.memory.write(codes[idx].view(np.int32), y[idx], p[idx], ts[idx],
                                        None if keys is None else keys[idx], sampled=keys is None)
            written += self._rekey_batch_rows(batch, np.flatnonzero(~ok))
        return written

    def _keep_for_rekey(self, batch: MemoryBatch) -> None:
        if not self.rekey_window:
            return
        self.batches.append(batch)
        self._batch_rows += batch.n
        while self.batches and self._batch_rows - self.batches[0].n >= self.rekey_window:
            self._batch_rows -= self.batches.popleft().n

    def _rekey_batch_rows(self, batch: MemoryBatch, idx: np.ndarray) -> int:
        """Re-key rows ``idx`` of ``batch`` under the current model (0 without a window)."""
        self.stale_rows += len(idx)
        if not self.rekey_window or not len(idx):
            return 0
        rows = batch.row_list()
        keys = batch.keys_array()
        return self._rekey_rows([rows[i] for i in idx.tolist()], batch.y_array()[idx], batch.ts_array()[idx],
                                None if keys is None else keys[idx])

    def _rekey_rows(self, rows: Sequence[tuple], y: np.ndarray, ts: np.ndarray, keys: np.ndarray | None) -> int:
        tokens, dense = self.encoder.encode(rows)  # type: ignore[arg-type]
        p, hidden = self.scorer.score(tokens, dense)
        self.rekeyed += len(rows)
        return self.memory.write(self.memory.codes(hidden), y, p, ts, keys, sampled=keys is None)

    def _write(self, codes: np.ndarray, recs: Sequence[ErrorRecord], p: np.ndarray) -> int:
        n = len(recs)
        y = np.fromiter((r.label for r in recs), np.float64, n)
        ts = np.fromiter((r.ts for r in recs), np.float64, n)
        keys = stable_keys(r.error_id for r in recs) if self.memory.config.write_sample < 1.0 else None
        return self.memory.write(codes, y, p, ts, keys)

    def _rekey(self, recs: Sequence[ErrorRecord]) -> int:
        """Score ``recs`` with the current model and write them under its keys."""
        tokens, dense = self.encoder.encode([(r.user_id, r.item_id, r.features) for r in recs])
        p, hidden = self.scorer.score(tokens, dense)
        self.rekeyed += len(recs)
        return self._write(self.memory.codes(hidden), recs, p)

    def snapshot(self, reuse_buffers: bool = False) -> dict[str, np.ndarray]:
        """The memory's arrays plus the model version they are keyed by (``reuse_buffers``:
        into the arrays of the previous such snapshot, see :meth:`ErrorMemory.snapshot`)."""
        arrays = self.memory.snapshot(into=self._snapshot_buffers if reuse_buffers else None)
        if reuse_buffers:
            self._snapshot_buffers = arrays
        return {**arrays, "model_version": np.array(self.model_version)}

    def restore(self, snap: dict[str, np.ndarray]) -> bool:
        """Adopt a snapshot if it was keyed by the current model; returns whether it was."""
        if str(snap.get("model_version", np.array(""))[()]) != self.model_version:
            return False
        self.memory = ErrorMemory.restore(snap)
        return True

    def digest(self) -> str:
        """sha256 of the memory's state arrays (replicas in the same state agree)."""
        import hashlib

        h = hashlib.sha256()
        for a in (self.memory.counts, self.memory.sum_y, self.memory.sum_p):
            h.update(np.ascontiguousarray(a).tobytes())
        return h.hexdigest()

    def on_model_change(self, scorer: OnnxScorer) -> None:
        """New hidden space: reset, then re-key the recent labelled window under ``scorer``."""
        self.scorer = scorer
        self.encoder = FeatureEncoder(scorer.spec)
        self.memory.reset()
        if self.window:
            self._rekey(list(self.window))
        if self.batches:  # the last rekey_window rows of the binary batches
            rows: list[tuple] = [r for b in self.batches for r in b.row_list()]
            y = np.concatenate([b.y_array() for b in self.batches])
            ts = np.concatenate([b.ts_array() for b in self.batches])
            with_keys = all(b.keys for b in self.batches)
            keys = np.concatenate([b.keys_array() for b in self.batches]) if with_keys else None  # type: ignore[misc]
            lo = max(0, len(rows) - self.rekey_window)
            self._rekey_rows(rows[lo:], y[lo:], ts[lo:], None if keys is None else keys[lo:])


class ExactKnnCompensation:
    """Exact-kNN memory over the same hidden keys (benchmark ceiling, not a serving path)."""

    def __init__(self, memory: ExactKnnMemory, scorer: OnnxScorer, k: int = 32) -> None:
        self.memory = memory
        self.scorer = scorer
        self.encoder = FeatureEncoder(scorer.spec)
        self.k = k
        self._hidden: dict[str, np.ndarray] = {}

    def compensate(self, base: np.ndarray, hidden: np.ndarray, now: float) -> Compensated:
        n = len(base)
        return Compensated(self.memory.compensate(base, hidden, now, k=self.k), np.ones(n), np.zeros((n, 0), np.int32))

    def apply_errors(self, records: Sequence[ErrorRecord]) -> int:
        if not records:
            return 0
        tokens, dense = self.encoder.encode([(r.user_id, r.item_id, r.features) for r in records])
        p, hidden = self.scorer.score(tokens, dense)
        n = len(records)
        y = np.fromiter((r.label for r in records), np.float64, n)
        ts = np.fromiter((r.ts for r in records), np.float64, n)
        return self.memory.write(hidden, y, np.fromiter((r.base_pred for r in records), np.float64, n), ts)

    def memory_records(self, errors: Sequence[ErrorRecord]) -> list[bytes]:
        return []  # a benchmark ceiling: nothing is replicated

    def on_model_change(self, scorer: OnnxScorer) -> None:
        self.scorer = scorer
        self.encoder = FeatureEncoder(scorer.spec)


def memory_batches(records: Sequence[ErrorRecord], tables: int, write_sample: float = 1.0) -> list[bytes]:
    """The ``memory`` records of one scored batch's error records (see :mod:`reloop.streams.memory_batch`).

    Rows without ``tables`` packed codes (no error memory, or a foreign producer's list form)
    are left out: they reach the error memory only through ``errors``-fed paths. With
    ``write_sample < 1`` (the cluster's write budget) only the rows whose error id hashes below
    it are sent, with their keys, so every replica writes the same rows. At most
    :data:`~reloop.streams.memory_batch.MAX_ROWS` rows per record, in the records' order.
    """
    width = 4 * tables
    rows = [r for r in records if r.codes.__class__ is bytes and len(r.codes) == width] if tables else []
    if not rows:
        return []
    keys = None
    if write_sample < 1.0:
        keys = stable_keys(r.error_id for r in rows)
        keep = key_uniforms(keys) < write_sample
        rows = [r for r, k in zip(rows, keep.tolist()) if k]
        keys = keys[keep]
    out = []
    for lo in range(0, len(rows), MAX_ROWS):
        part = rows[lo:lo + MAX_ROWS]
        n = len(part)
        out.append(encode_rows(
            error_ids=[r.error_id for r in part],
            codes=np.frombuffer(b"".join([r.codes for r in part]), CODE_DTYPE).reshape(n, tables),  # type: ignore[misc]
            y=np.fromiter((r.label for r in part), np.float64, n),
            p=np.fromiter((r.base_pred for r in part), np.float64, n),
            ts=np.fromiter((r.ts for r in part), np.float64, n),
            versions=[r.model_version for r in part],
            rows=[(r.user_id, r.item_id, r.features) for r in part],
            keys=None if keys is None else keys[lo:lo + MAX_ROWS], sample=write_sample))
    return out
