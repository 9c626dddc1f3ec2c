"""Matching samples against the active error schemata, and the schema-level bias.

:class:`SchemaMatcher` is an immutable view of the active schemata built once per cache
decision (tick), so the scoring path only reads it. A sample matches a schema when every
predicate of its signature holds: ``model_version=<v>`` on the serving model version,
``code[k]=<bucket>`` on the error-memory codes, ``name=value`` on a ``str`` feature (dense
features never match). :meth:`SchemaMatcher.match_rows` matches a whole batch column-wise:
one pass over the rows per feature name that some schema uses (value -> small int), then
one comparison of all predicates at once and a ``(predicates, schemata)`` incidence product,
so the cost is ``O(n * (names + predicates + schemata))`` in a few numpy calls, and nothing
when the cache is empty.

Bias (applied by ``ScoringCore`` to candidates whose error-memory evidence is cold): each
matching schema ``j`` contributes a logit shift ``beta_j = (logit(q_j + gap_j) - logit(q_j))
* n_j / (n_j + bias_prior)``, where ``q_j`` is the slice's mean prediction
(``predicted_rate``), ``gap_j`` its calibration gap and ``n_j`` its decayed support (both
probabilities clipped to ``[eps, 1 - eps]``); a schema whose signature is contained in
another matching one is skipped (the more specific one wins). The sample's shift is the sum,
clipped to ``[-max_logit_bias, max_logit_bias]``, and the corrected score is
``sigmoid(logit(p) + beta)``. A logit shift scales with the odds: a slice whose click rate
collapsed to 5% of the prediction moves every candidate's odds by about the same factor.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from reloop.state.schemas.types import Schema

__all__ = ["SchemaMatcher", "logit", "sigmoid"]

_EPS = 1e-4
_NEVER = -(1 << 62)  # code value of rows without that code table: matches no predicate


def logit(p: np.ndarray) -> np.ndarray:
    """``log(p / (1 - p))`` of probabilities clipped to ``[1e-4, 1 - 1e-4]``."""
    q = np.clip(np.asarray(p, np.float64), _EPS, 1.0 - _EPS)
    return np.log(q / (1.0 - q))


def sigmoid(x: np.ndarray) -> np.ndarray:
    """``1 / (1 + exp(-x))``."""
    return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


class SchemaMatcher:
    """Column-wise matcher over a fixed set of active schemata.

    Args:
        schemata: the active schemata, by decreasing impact (their order is kept in output).
        bias_prior: shrinkage of the bias, in decayed records (weight ``n / (n + prior)``).
        max_logit_bias: bound of the total logit shift of one sample (> 0).
    """

    def __init__(self, schemata: Sequence[Schema], bias_prior: float, max_logit_bias: float = 3.0) -> None:
        self.schemata = list(schemata)
        self.ids = [s.schema_id for s in self.schemata]
        self.max_logit_bias = max_logit_bias
        # columns: ("version", 0), ("code", k) or ("feature", name); predicates: (column, value id)
        self._columns: list[tuple[str, str | int]] = []
        self._value_ids: dict[tuple[str, str | int], dict[str, int]] = {}
        pred_col: list[int] = []
        pred_val: list[int] = []
        pred_of: dict[str, int] = {}
        incidence: list[list[int]] = []
        for s in self.schemata:
            mine = []
            for text in s.signature:
                if text not in pred_of:
                    name, _, value = text.partition("=")
                    if name == "model_version":
                        col: tuple[str, str | int] = ("version", 0)
                    elif name.startswith("code[") and name.endswith("]") and name[5:-1].isdigit():
                        col = ("code", int(name[5:-1]))
                    else:
                        col = ("feature", name)
                    if col not in self._value_ids:
                        self._value_ids[col] = {}
                        self._columns.append(col)
                    ids = self._value_ids[col]
                    vid = int(value) if col[0] == "code" and value.lstrip("-").isdigit() else ids.setdefault(
                        value, len(ids))
                    pred_of[text] = len(pred_col)
                    pred_col.append(self._columns.index(col))
                    pred_val.append(vid)
                mine.append(pred_of[text])
            incidence.append(mine)
        self._pred_col = np.array(pred_col, dtype=np.int64)
        self._pred_val = np.array(pred_val, dtype=np.int64)
        self._incidence = np.zeros((len(pred_col), len(self.schemata)), dtype=np.int32)
        for j, mine in enumerate(incidence):
            self._incidence[mine, j] = 1
        self._n_preds = self._incidence.sum(axis=0)
        sets = [set(s.signature) for s in self.schemata]
        # contained[i, j]: signature i is a strict subset of signature j (j is more specific)
        self._contained = np.array([[a < b for b in sets] for a in sets], dtype=np.float64).reshape(
            len(sets), len(sets))
        q = np.clip(np.array([s.predicted_rate for s in self.schemata], np.float64), _EPS, 1.0 - _EPS)
        gap = np.array([s.calibration_gap for s in self.schemata], np.float64)
        n = np.array([s.support for s in self.schemata], np.float64)
        shrink = n / (n + bias_prior) if bias_prior > 0 else np.ones_like(n)
        self.logit_shift = (logit(q + gap) - logit(q)) * shrink  # (S,)
        self.prob_shift = gap * shrink  # (S,), for SchemaCache.bias_for

    def __len__(self) -> int:
        return len(self.schemata)

    def matrix(self, features: Sequence[Mapping[str, object]], model_version: str,
               codes: np.ndarray | None = None) -> np.ndarray:
        """``(n, S) bool``: row ``i`` matches schema ``j``.

        Args:
            features: per-row feature mappings (only ``str`` values can match).
            model_version: version of the model that scored the rows.
            codes: ``(n, K) int`` error-memory codes of the rows, or None (code predicates
                then never match).
        """
        n, n_s = len(features), len(self.schemata)
        if n_s == 0 or n == 0:
            return np.zeros((n, n_s), dtype=bool)
        values = np.empty((n, len(self._columns)), dtype=np.int64)
        for c, col in enumerate(self._columns):
            kind, name = col
            ids = self._value_ids[col]
            if kind == "version":
                values[:, c] = ids.get(model_version, -1)
            elif kind == "code":
                k = int(name)
                ok = codes is not None and codes.ndim == 2 and codes.shape[1] > k
                values[:, c] = np.asarray(codes)[:, k] if ok else _NEVER
            else:
                values[:, c] = np.fromiter(
                    (ids.get(v, -1) if (v := f.get(name)).__class__ is str else -1 for f in features), np.int64, n)
        hit = values[:, self._pred_col] == self._pred_val  # (n, P): each predicate once
        return (hit.astype(np.int32) @ self._incidence) == self._n_preds

    def _effective(self, m: np.ndarray) -> np.ndarray:
        """Matches minus those contained in a more specific matching schema."""
        if m.shape[1] == 0:
            return m
        dominated = (m.astype(np.float64) @ self._contained.T) > 0.0
        return m & ~dominated

    def match_rows(self, features: Sequence[Mapping[str, object]], model_version: str,
                   codes: np.ndarray | None = None) -> tuple[list[list[str]], np.ndarray]:
        """Matching schema ids per row (by decreasing impact) and the logit shift ``(n,)``."""
        n = len(features)
        if not self.schemata:
            return [[] for _ in range(n)], np.zeros(n)
        m = self.matrix(features, model_version, codes)
        ids = self.ids
        rows, cols = np.nonzero(m)
        matched: list[list[str]] = [[] for _ in range(n)]
        for i, j in zip(rows.tolist(), cols.tolist()):
            matched[i].append(ids[j])
        shift = self._effective(m).astype(np.float64) @ self.logit_shift
        return matched, np.clip(shift, -self.max_logit_bias, self.max_logit_bias)

    def prob_bias(self, features: Mapping[str, object], model_version: str, codes: Sequence[int] = ()) -> float:
        """Additive probability correction of one sample (``sum gap_j * shrink_j``, clipped to [-1, 1])."""
        if not self.schemata:
            return 0.0
        c = np.asarray([list(codes)], dtype=np.int64) if len(codes) else None
        m = self._effective(self.matrix([features], model_version, c))
        return float(np.clip(m[0].astype(np.float64) @ self.prob_shift, -1.0, 1.0))
