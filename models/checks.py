"""Gates a retrained model must pass before it is registered and served.

1. **Parity**: the torch model and its ONNX export, run by onnxruntime with the serving session
   options, agree on held-out rows within ``parity_atol`` (max abs diff over ``prob`` and
   ``hidden``; :func:`reloop.models.export.check_parity`). A mismatch means the served graph is not the
   model that was validated.
2. **Holdout quality** (rollback of harmful updates, as in Ekko): the candidate and the model
   currently serving score the *same* held-out rows (the newest slice of the training window,
   which the candidate did not train on) through onnxruntime, i.e. exactly as they would be
   served. The candidate is rejected if its AUC is lower than the serving model's by more than
   ``max_auc_drop`` or its log loss higher by more than ``max_logloss_increase``. Without a
   serving model (first model) only absolute sanity applies: finite metrics.

Both run in :func:`validate_candidate`, which never raises for a bad candidate: it returns a
:class:`CheckReport` whose ``passed`` is False with the reasons.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import msgspec
import numpy as np

from reloop.models.export import ParityError, check_parity
from reloop.models.features import FeatureEncoder, Row
from reloop.models.fit import FittedModel
from reloop.models.metrics import auc, logloss
from reloop.models.scorer import OnnxScorer

__all__ = ["CheckConfig", "HoldoutScores", "CheckReport", "score_holdout", "validate_candidate",
           "PARITY_PROBE_ROWS"]

log = logging.getLogger("reloop.checks")

#: Most held-out rows used for the parity probe (parity is per row; more rows add little).
PARITY_PROBE_ROWS = 2048


class CheckConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Thresholds of the gates (see module docstring); log loss in nats."""

    parity_atol: float = 1e-5
    max_auc_drop: float = 0.005
    max_logloss_increase: float = 0.005
    min_holdout_rows: int = 100


@dataclass(frozen=True)
class HoldoutScores:
    """One model's quality on the held-out rows: AUC (nan with one class), log loss, row count."""

    auc: float
    logloss: float
    rows: int


@dataclass
class CheckReport:
    """Outcome of :func:`validate_candidate`.

    Attributes:
        passed: True if every gate passed.
        reasons: why it failed (empty if passed).
        parity_max_abs_diff: torch vs onnxruntime max abs difference (nan if not computed).
        candidate: the candidate's holdout scores (None if parity failed first).
        serving: the serving model's scores on the same rows (None without a serving model).
        serving_version: version of the serving model compared against.
    """

    passed: bool
    reasons: list[str] = field(default_factory=list)
    parity_max_abs_diff: float = float("nan")
    candidate: HoldoutScores | None = None
    serving: HoldoutScores | None = None
    serving_version: str | None = None

    def as_metrics(self) -> dict[str, Any]:
        """Flat metrics to store with a registered version (``check_*`` keys)."""
        out: dict[str, Any] = {"check_passed": self.passed, "check_parity_max_abs_diff": self.parity_max_abs_diff}
        for name, scores in (("candidate", self.candidate), ("serving", self.serving)):
            if scores is not None:
                out.update({f"check_{name}_{k}": v for k, v in asdict(scores).items()})
        if self.serving_version is not None:
            out["check_serving_version"] = self.serving_version
        return out


def score_holdout(scorer: OnnxScorer, rows: Sequence[Row], labels: np.ndarray) -> HoldoutScores:
    """Score ``rows`` with ``scorer`` (encoded with the scorer's own spec); labels ``(n,)`` {0,1}."""
    tokens, dense = FeatureEncoder(scorer.spec).encode(rows)
    probs, _ = scorer.score(tokens, dense)
    y = np.asarray(labels).reshape(-1)
    return HoldoutScores(auc=auc(y, probs), logloss=logloss(y, probs), rows=int(y.shape[0]))


def validate_candidate(candidate: FittedModel, holdout_rows: Sequence[Row], holdout_labels: np.ndarray,
                       serving: OnnxScorer | None, config: CheckConfig | None = None) -> CheckReport:
    """Run the parity and holdout gates on ``candidate`` (see module docstring).

    Args:
        candidate: the retrained model (torch model + ONNX bytes + onnxruntime scorer).
        holdout_rows: held-out ``(user_id, item_id, features)`` rows, newest slice of the window.
        holdout_labels: their labels ``(n,)`` in {0, 1}.
        serving: the model serving now (None for the first model).
        config: thresholds.
    """
    cfg = config or CheckConfig()
    report = CheckReport(passed=False, serving_version=serving.version if serving is not None else None)
    n = len(holdout_rows)
    if n < cfg.min_holdout_rows:
        report.reasons.append(f"holdout has {n} rows, fewer than min_holdout_rows={cfg.min_holdout_rows}")
        return _logged(report, candidate)
    tokens, dense = FeatureEncoder(candidate.spec).encode(holdout_rows[-PARITY_PROBE_ROWS:])
    try:
        report.parity_max_abs_diff = check_parity(candidate.model, candidate.onnx_bytes, tokens, dense,
                                                  atol=cfg.parity_atol)
    except ParityError as exc:
        report.reasons.append(f"parity: {exc}")
        return _logged(report, candidate)
    report.candidate = cand = score_holdout(candidate.scorer, holdout_rows, holdout_labels)
    if not math.isfinite(cand.logloss):
        report.reasons.append(f"candidate holdout log loss is not finite ({cand.logloss})")
    if serving is not None:
        report.serving = serv = score_holdout(serving, holdout_rows, holdout_labels)
        if cand.logloss > serv.logloss + cfg.max_logloss_increase:
            report.reasons.append(f"holdout log loss {cand.logloss:.5f} is worse than serving {serving.version}'s "
                                  f"{serv.logloss:.5f} by more than {cfg.max_logloss_increase}")
        if math.isfinite(cand.auc) and math.isfinite(serv.auc) and cand.auc < serv.auc - cfg.max_auc_drop:
            report.reasons.append(f"holdout AUC {cand.auc:.5f} is below serving {serving.version}'s "
                                  f"{serv.auc:.5f} by more than {cfg.max_auc_drop}")
    report.passed = not report.reasons
    return _logged(report, candidate)


def _logged(report: CheckReport, candidate: FittedModel) -> CheckReport:
    fields = {"version": candidate.version, "serving_version": report.serving_version,
              "parity_max_abs_diff": report.parity_max_abs_diff}
    if report.candidate is not None:
        fields.update(candidate_auc=report.candidate.auc, candidate_logloss=report.candidate.logloss,
                      holdout_rows=report.candidate.rows)
    if report.serving is not None:
        fields.update(serving_auc=report.serving.auc, serving_logloss=report.serving.logloss)
    if report.passed:
        log.info("model_checks_passed", extra=fields)
    else:
        log.warning("model_checks_failed", extra={**fields, "reasons": report.reasons})
    return report
