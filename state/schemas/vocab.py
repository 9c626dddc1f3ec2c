"""Predicate vocabulary of the error-schema cache: ``name=value`` strings <-> int32 ids.

A record becomes a row of ``F`` predicate ids, one per *column* (``model_version``,
``code[k]``, then one per categorical feature name), ``0`` = absent (see
:mod:`reloop.state.schemas.kernels`). The vocabulary is bounded (``max_predicates``) and recycles ids
that no tracked pattern uses; the owner decides when (:meth:`PredicateVocab.collect`, at the
cache's event-time ticks), so which values are dropped depends on the record sequence only,
never on how it is cut into batches.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["PredicateVocab"]


class PredicateVocab:
    """Interned predicates: ``(column, value)`` <-> id in ``[1, 2**31)``, ``"name=value"`` text.

    Columns: ``model_version``, ``code[0] .. code[code_tables-1]``, then feature names, either
    the configured ones or (``features is None``) up to ``max_features`` names as first seen.
    At most ``max_predicates`` ids are live: when full, :meth:`encode` drops new values (id 0)
    and counts them in ``dropped`` until the owner frees unused ids with :meth:`collect`.
    """

    def __init__(self, *, code_tables: int, features: Sequence[str] | None, max_features: int,
                 max_predicates: int) -> None:
        self.code_tables = code_tables
        self.fixed_features = features is not None
        self.columns: list[str] = ["model_version", *(f"code[{k}]" for k in range(code_tables))]
        self.feature_base = len(self.columns)
        self.width = self.feature_base + (len(features) if features is not None else max_features)
        self.col_of: dict[str, int] = {}
        for name in features or ():
            self._add_column(name)
        self.max_predicates = max_predicates
        self.strings: list[str] = [""]  # id -> "name=value" ("" = free)
        self.cols: list[int] = [-1]  # id -> column
        self.by_col: list[dict[Any, int]] = [{} for _ in range(self.width)]
        self.free: list[int] = []
        self.dropped = 0
        self.col_arr = np.full(64, -1, dtype=np.int32)  # id -> column, as an array

    def _add_column(self, name: str) -> int | None:
        if len(self.columns) >= self.width:
            return None
        self.col_of[name] = len(self.columns)
        self.columns.append(name)
        return self.col_of[name]

    @property
    def live(self) -> int:
        """Number of ids in use."""
        return len(self.strings) - 1 - len(self.free)

    def _new(self, col: int, value: Any) -> int:
        if self.live >= self.max_predicates:
            self.dropped += 1
            return 0
        text = f"{self.columns[col]}={value}"
        if self.free:
            pid = self.free.pop()
            self.strings[pid], self.cols[pid] = text, col
        else:
            pid = len(self.strings)
            self.strings.append(text)
            self.cols.append(col)
        self.by_col[col][value] = pid
        if pid >= self.col_arr.shape[0]:
            self.col_arr = np.concatenate((self.col_arr, np.full(self.col_arr.shape[0], -1, np.int32)))
        self.col_arr[pid] = col
        return pid

    def value_of(self, pid: int) -> Any:
        """The raw value of id ``pid`` (an ``int`` for code columns, else ``str``)."""
        col = self.cols[pid]
        text = self.strings[pid][len(self.columns[col]) + 1:]
        return int(text) if 1 <= col <= self.code_tables else text

    def collect(self, referenced: np.ndarray) -> list[int]:
        """Free every live id not in ``referenced`` (int array); returns the freed ids."""
        keep = set(np.unique(referenced).tolist())
        freed = []
        for pid in range(1, len(self.strings)):
            if self.strings[pid] and pid not in keep:
                del self.by_col[self.cols[pid]][self.value_of(pid)]
                self.strings[pid], self.cols[pid] = "", -1
                self.col_arr[pid] = -1
                self.free.append(pid)
                freed.append(pid)
        return freed

    def encode(self, records: Sequence[Any]) -> np.ndarray:
        """``(n, width) int32`` predicate ids of error records (0 where absent or dropped).

        Only ``str`` feature values become predicates; dense (float) features are ignored.
        """
        width, n_codes = self.width, self.code_tables
        by_col, col_of, fixed = self.by_col, self.col_of, self.fixed_features
        flat = [0] * (len(records) * width)
        versions = by_col[0]
        for i, rec in enumerate(records):
            base = i * width
            v = rec.model_version
            flat[base] = versions.get(v) or self._new(0, v)
            if n_codes:
                codes = rec.code_list()
                for k in range(min(n_codes, len(codes))):
                    c = codes[k]
                    flat[base + 1 + k] = by_col[1 + k].get(c) or self._new(1 + k, c)
            for name, v in rec.features.items():
                if v.__class__ is not str:
                    continue
                col = col_of.get(name)
                if col is None:
                    if fixed:
                        continue
                    col = self._add_column(name)
                    if col is None:
                        continue
                flat[base + col] = by_col[col].get(v) or self._new(col, v)
        return np.array(flat, dtype=np.int32).reshape(len(records), width)

    def state(self) -> dict[str, Any]:
        """Plain builtins for a snapshot."""
        return {"columns": self.columns, "strings": self.strings, "cols": self.cols,
                "free": self.free, "dropped": self.dropped}

    def load_state(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`state` (on a vocab built with the same configuration)."""
        self.columns = list(state["columns"])
        self.col_of = {name: j for j, name in enumerate(self.columns) if j >= self.feature_base}
        self.strings, self.cols = list(state["strings"]), [int(c) for c in state["cols"]]
        self.free, self.dropped = [int(x) for x in state["free"]], int(state["dropped"])
        self.by_col = [{} for _ in range(self.width)]
        self.col_arr = np.full(max(64, len(self.cols)), -1, dtype=np.int32)
        self.col_arr[: len(self.cols)] = self.cols
        for pid in range(1, len(self.strings)):
            if self.strings[pid]:
                self.by_col[self.cols[pid]][self.value_of(pid)] = pid
