"""Replay's per-prediction columns in bounded memory: spilled to disk in chunks, exact AUC.

A replay keeps, per resolved prediction (one error record each, in emission order), its
label, base and compensated probability, event time and user. At production sizes (10M
events) these columns outgrow the rest of a replay's memory, so :class:`PredictionLog`
holds at most one chunk of them (``chunk_rows`` rows, ~29 bytes a row) and appends every full
chunk to anonymous temporary files (deleted when closed or collected; ``TMPDIR`` picks the
place). Memory stays flat as the log grows; disk grows by ~29 bytes a prediction plus ~8
bytes per negative and variant for the sorted runs below.

What it computes from the spilled columns, without loading them whole:

- **AUC, exact** (ties count 1/2): every chunk's negative scores are kept sorted on disk;
  for each chunk of positives, ``searchsorted`` into every sorted run counts the negatives
  strictly below and equal. ``U = below + equal / 2`` is a sum of half-integers, exact in
  float64 below 2**52, so ``U / (n_pos * n_neg)`` is bit-identical to the rank-sum
  :func:`reloop.models.metrics.auc` over the whole arrays. Cost: O(R^2) searchsorted calls
  over R chunks (10M predictions, 1M-row chunks: 100 calls).
- **log loss**: per-chunk sums of the same expression as :func:`reloop.models.metrics.logloss`,
  added chunk after chunk, divided by n: identical to it when the log fits one chunk, else
  equal up to float rounding of the sum (relative ~1e-15).

The whole columns are still available (:meth:`column`, :meth:`user_ids`), read back from disk
for callers that need them (``reloop replay --compare``'s bootstrap): those pay O(n) memory.

>>> from types import SimpleNamespace as Rec  # the fields of an ErrorRecord it reads
>>> recs = [Rec(user_id=u, ts=float(k), label=y, base_pred=b, comp_pred=b) for k, (u, y, b) in
...         enumerate([("a", 1, .9), ("b", 0, .2), ("a", 0, .9), ("b", 1, .7), ("a", 0, .1)])]
>>> log = PredictionLog(chunk_rows=2)
>>> log.append(recs[:3]); log.append(recs[3:])
>>> len(log), log.spilled_chunks, log.positives, log.auc("b")
(5, 2, 2, 0.75)
>>> log.user_ids().tolist(), log.column("y").tolist()
(['a', 'b', 'a', 'b', 'a'], [1, 0, 0, 1, 0])
"""

from __future__ import annotations

import tempfile
from typing import IO, Sequence

import numpy as np

from reloop.models.metrics import LOGLOSS_EPS
from reloop.streams.events import ErrorRecord

__all__ = ["PredictionLog", "COLUMNS", "CHUNK_ROWS"]

#: column name -> dtype: label, base and compensated probability, event time (s), user index
COLUMNS: dict[str, np.dtype] = {"y": np.dtype(np.int8), "b": np.dtype(np.float64), "c": np.dtype(np.float64),
                                 "t": np.dtype(np.float64), "u": np.dtype(np.int32)}
#: rows held in memory before a chunk is spilled (~29 MB of columns)
CHUNK_ROWS = 1 << 20
VARIANTS = ("b", "c")


class PredictionLog:
    """Append-only columns of a replay's resolved predictions (module doc).

    Args:
        chunk_rows: rows per spilled chunk (memory bound: one chunk of columns, plus one
            chunk's worth of work arrays while an AUC is computed).
        spill_dir: directory for the temporary files (default: ``tempfile``'s).
    """

    def __init__(self, chunk_rows: int = CHUNK_ROWS, spill_dir: str | None = None) -> None:
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
        self.chunk_rows = chunk_rows
        self.spill_dir = spill_dir
        self._users: dict[str, int] = {}  # user id -> index (bounded by the users, not the log)
        self._user_list: list[str] = []
        self._buf: dict[str, list[np.ndarray]] = {k: [] for k in COLUMNS}
        self._buf_n = 0
        self._n = 0
        self._pos = 0
        self._ll_sums: dict[str, list[float]] = {v: [] for v in VARIANTS}  # one per chunk
        self._files: dict[str, IO[bytes]] = {}  # column (or sorted negatives "neg_b"/"neg_c") -> file
        self._chunks: list[tuple[int, int, int]] = []  # (first row, rows, negatives) per spilled chunk
        self._negs = 0

    # ---- appending ------------------------------------------------------------------------
    def append(self, errors: Sequence[ErrorRecord]) -> None:
        """Add one batch's error records (in emission order)."""
        n = len(errors)
        if not n:
            return
        users, ulist = self._users, self._user_list
        idx = np.empty(n, np.int32)
        for k, r in enumerate(errors):
            u = users.get(r.user_id)
            if u is None:
                u = users[r.user_id] = len(ulist)
                ulist.append(r.user_id)
            idx[k] = u
        buf = self._buf
        buf["y"].append(np.fromiter((r.label for r in errors), np.int8, n))
        buf["b"].append(np.fromiter((r.base_pred for r in errors), np.float64, n))
        buf["c"].append(np.fromiter((r.comp_pred for r in errors), np.float64, n))
        buf["t"].append(np.fromiter((r.ts for r in errors), np.float64, n))
        buf["u"].append(idx)
        self._buf_n += n
        self._n += n
        if self._buf_n >= self.chunk_rows:
            self._spill()

    def _buffered(self) -> dict[str, np.ndarray]:
        return {k: (np.concatenate(v) if len(v) > 1 else v[0]) if v else np.empty(0, COLUMNS[k])
                for k, v in self._buf.items()}

    def _spill(self) -> None:
        """Write the buffered rows as one chunk: the columns, each variant's sorted negative
        scores, and the chunk's log-loss sums."""
        cols = self._buffered()
        rows = len(cols["y"])
        self._account(cols)
        neg = cols["y"] == 0
        for name in (*COLUMNS, *(f"neg_{v}" for v in VARIANTS)):
            if name not in self._files:
                self._files[name] = tempfile.TemporaryFile(prefix=f"reloop-replay-{name}-", dir=self.spill_dir)
        for k, a in cols.items():
            self._files[k].write(np.ascontiguousarray(a, COLUMNS[k]).tobytes())
        for v in VARIANTS:
            self._files[f"neg_{v}"].write(np.sort(cols[v][neg], kind="stable").tobytes())
        n_neg = int(neg.sum())
        self._chunks.append((self._n - self._buf_n, rows, n_neg))
        self._negs += n_neg
        self._buf = {k: [] for k in COLUMNS}
        self._buf_n = 0

    def _account(self, cols: dict[str, np.ndarray]) -> None:
        """Positives and the log-loss sums of one chunk (the expression of ``logloss``)."""
        y = cols["y"].astype(np.float64)
        self._pos += int(np.count_nonzero(cols["y"]))
        for v in VARIANTS:
            p = np.clip(cols[v], LOGLOSS_EPS, 1.0 - LOGLOSS_EPS)
            self._ll_sums[v].append(float(np.add.reduce(y * np.log(p) + (1.0 - y) * np.log1p(-p))))

    # ---- reading --------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._n

    @property
    def spilled_chunks(self) -> int:
        """Chunks written to disk so far (the rows still in memory are not counted)."""
        return len(self._chunks)

    @property
    def positives(self) -> int:
        """Predictions labelled 1."""
        return self._pos + sum(int(np.count_nonzero(a)) for a in self._buf["y"])

    def _read(self, name: str, start: int, count: int) -> np.ndarray:
        dt = COLUMNS[name] if name in COLUMNS else np.dtype(np.float64)
        fh = self._files[name]
        fh.seek(start * dt.itemsize)
        return np.fromfile(fh, dt, count)

    def _tail(self) -> dict[str, np.ndarray]:
        """The rows not spilled yet, as arrays (kept as one array each)."""
        cols = self._buffered()
        self._buf = {k: [a] if len(a) else [] for k, a in cols.items()}
        return cols

    def column(self, name: str) -> np.ndarray:
        """The whole column ``name`` (:data:`COLUMNS`), read back: (n,) array, O(n) memory."""
        if name not in COLUMNS:
            raise KeyError(f"no column {name!r} (have {', '.join(COLUMNS)})")
        spilled = self._n - self._buf_n
        head = self._read(name, 0, spilled) if spilled else np.empty(0, COLUMNS[name])
        return np.concatenate([head, self._tail()[name]])

    def user_ids(self) -> np.ndarray:
        """(n,) object array of the user id of each prediction (O(n) memory)."""
        return np.asarray(self._user_list, object)[self.column("u")] if self._n else np.empty(0, object)

    def logloss(self, variant: str) -> float:
        """Mean binary cross-entropy (nats) of variant ``b`` (base) or ``c`` (compensated)."""
        if not self._n:
            return float("nan")
        sums = list(self._ll_sums[variant])
        tail = self._tail()
        if len(tail["y"]):
            y = tail["y"].astype(np.float64)
            p = np.clip(tail[variant], LOGLOSS_EPS, 1.0 - LOGLOSS_EPS)
            sums.append(float(np.add.reduce(y * np.log(p) + (1.0 - y) * np.log1p(-p))))
        total = sums[0]
        for s in sums[1:]:
            total += s
        return float(-(total / self._n))

    def auc(self, variant: str) -> float:
        """Exact ROC AUC of variant ``b`` or ``c`` (module doc); nan with one label kind."""
        tail = self._tail()
        t_neg = tail["y"] == 0
        tail_negs = np.sort(tail[variant][t_neg], kind="stable")
        n_neg = self._negs + len(tail_negs)
        n_pos = self._n - n_neg
        if n_pos == 0 or n_neg == 0:
            return float("nan")
        runs: list[tuple[int, int]] = []  # (start, count) of each spilled sorted run of negatives
        at = 0
        for _, _, negs in self._chunks:
            runs.append((at, negs))
            at += negs
        acc = [0, 0]  # negatives strictly below a positive, equal to it (pairs)
        positives = [(first, rows) for first, rows, _ in self._chunks] + [(-1, 0)]
        for first, rows in positives:  # one chunk of positives at a time (-1: the rows in memory)
            if first < 0:
                pos = tail[variant][~t_neg]
            else:
                pos = self._read(variant, first, rows)[self._read("y", first, rows) != 0]
            if not len(pos):
                continue
            pos = np.sort(pos)
            for start, negs in runs:
                if negs:
                    self._count_run(self._read(f"neg_{variant}", start, negs), pos, acc)
            self._count_run(tail_negs, pos, acc)
        below, equal = acc
        return float((below + 0.5 * equal) / (float(n_pos) * float(n_neg)))

    @staticmethod
    def _count_run(negs: np.ndarray, pos_sorted: np.ndarray, acc: list[int]) -> None:
        """Add to ``acc`` the (negative, positive) pairs with the negative strictly below
        (``acc[0]``) and equal (``acc[1]``), for sorted ``negs`` and sorted positives."""
        if not len(negs):
            return
        lo = np.searchsorted(negs, pos_sorted, "left")
        hi = np.searchsorted(negs, pos_sorted, "right")
        acc[0] += int(lo.sum())
        acc[1] += int((hi - lo).sum())

    def close(self) -> None:
        """Delete the spilled files (also done when the log is collected)."""
        for fh in self._files.values():
            fh.close()
        self._files.clear()
