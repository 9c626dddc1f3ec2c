"""Offline quality metrics for binary predictions (numpy only, no sklearn).

Both functions take labels ``y`` ``(n,)`` in {0, 1} (any numeric/bool dtype) and predicted
probabilities ``p`` ``(n,)`` in [0, 1].
"""

from __future__ import annotations

import numpy as np

__all__ = ["auc", "logloss", "LOGLOSS_EPS"]

#: Probabilities are clipped to ``[LOGLOSS_EPS, 1 - LOGLOSS_EPS]`` before taking logs.
LOGLOSS_EPS = 1e-7


def _as_arrays(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(y).reshape(-1).astype(np.float64)
    probs = np.asarray(p).reshape(-1).astype(np.float64)
    if labels.shape != probs.shape:
        raise ValueError(f"y has {labels.shape[0]} values, p has {probs.shape[0]}")
    return labels, probs


def auc(y: np.ndarray, p: np.ndarray) -> float:
    """Area under the ROC curve via the rank-sum (Mann-Whitney U) statistic.

    Ties in ``p`` get the average of the ranks they span, so a tied (positive, negative) pair
    counts as 1/2 -- the same value as the trapezoidal ROC AUC. Returns ``nan`` when ``y``
    holds only one class (AUC is undefined). Cost: one ``argsort``, O(n log n).
    """
    labels, probs = _as_arrays(y, p)
    n_pos = float(np.count_nonzero(labels > 0.5))
    n_neg = float(labels.shape[0] - n_pos)
    if n_pos == 0.0 or n_neg == 0.0:
        return float("nan")
    order = np.argsort(probs, kind="mergesort")
    sorted_p = probs[order]
    # Average ranks (1-based) over runs of equal scores.
    boundaries = np.flatnonzero(np.diff(sorted_p)) + 1
    starts = np.concatenate(([0], boundaries))
    ends = np.concatenate((boundaries, [sorted_p.shape[0]]))
    run_rank = (starts + ends + 1) / 2.0  # mean of ranks starts+1 .. ends
    ranks = np.empty_like(probs)
    ranks[order] = np.repeat(run_rank, ends - starts)
    rank_sum_pos = float(ranks[labels > 0.5].sum())
    return (rank_sum_pos - n_pos * (n_pos + 1.0) / 2.0) / (n_pos * n_neg)


def logloss(y: np.ndarray, p: np.ndarray) -> float:
    """Mean binary cross-entropy in nats; ``p`` clipped to ``[1e-7, 1 - 1e-7]``; ``nan`` if empty."""
    labels, probs = _as_arrays(y, p)
    if labels.shape[0] == 0:
        return float("nan")
    probs = np.clip(probs, LOGLOSS_EPS, 1.0 - LOGLOSS_EPS)
    return float(-np.mean(labels * np.log(probs) + (1.0 - labels) * np.log1p(-probs)))
