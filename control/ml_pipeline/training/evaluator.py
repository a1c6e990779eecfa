"""Evaluation of a fraud model's probabilities with scikit-learn metrics, the quality gate and comparison.

`ModelEvaluator(threshold).evaluate(y_true, y_proba)` gives EvaluationMetrics: AUC (threshold-free) and the
confusion-matrix metrics at the decision threshold, plus a sweep over thresholds for choosing one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support, roc_auc_score

from ml_pipeline.errors import UsageError
from ml_pipeline.training.gate import GateThresholds, quality_gate

SWEEP_THRESHOLDS: tuple[float, ...] = tuple(round(t, 2) for t in np.arange(0.05, 1.0, 0.05))


@dataclass(frozen=True)
class ThresholdPoint:
    """Precision, recall, F1 and false-positive rate if calls at or above `threshold` were flagged."""

    threshold: float
    precision: float
    recall: float
    f1_score: float
    fpr: float
    flagged: int


@dataclass(frozen=True)
class EvaluationMetrics:
    """Metrics of one model on one labelled set; rates at `threshold`, confusion matrix [[tn, fp], [fn, tp]]."""

    auc_score: float
    accuracy: float
    precision: float
    recall: float
    f1_score: float
    confusion_matrix: list[list[int]]
    specificity: float
    fpr: float
    fnr: float
    threshold: float
    samples: int
    positives: int
    threshold_sweep: list[ThresholdPoint] = field(default_factory=list)

    def passes_thresholds(self, min_auc: float, min_precision: float, min_recall: float) -> bool:
        """The quality gate (`training.gate.quality_gate`): AUC, precision and recall each at least their minimum."""
        return quality_gate(self, GateThresholds(min_auc, min_precision, min_recall)).passed

    def gate_failures(self, min_auc: float, min_precision: float, min_recall: float) -> list[str]:
        """Which gate conditions fail, one readable line each (empty when the gate passes)."""
        return quality_gate(self, GateThresholds(min_auc, min_precision, min_recall)).failures

    def is_better_than(self, baseline: EvaluationMetrics, min_improvement: float = 0.02) -> bool:
        """Whether this model should replace `baseline` (both measured on the same labelled rows).

        Rule: its AUC is higher by at least `min_improvement` (absolute, e.g. 0.02 = two points), and neither
        its precision nor its recall at the decision threshold is lower than the baseline's by more than
        `min_improvement`. A gain in ranking must not be paid for by worse decisions.
        """
        return (
            self.auc_score >= baseline.auc_score + min_improvement
            and self.precision >= baseline.precision - min_improvement
            and self.recall >= baseline.recall - min_improvement
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (the sweep as a list of dicts)."""
        return asdict(self)


class ModelEvaluator:
    """Compute EvaluationMetrics from true labels and predicted fraud probabilities."""

    def __init__(self, threshold: float = 0.7) -> None:
        if not 0.0 <= threshold <= 1.0:
            raise UsageError(f"decision threshold {threshold} is outside [0, 1]")
        self.threshold = threshold

    def evaluate(self, y_true: np.ndarray, y_pred_proba: np.ndarray) -> EvaluationMetrics:
        """Metrics of `y_pred_proba` against `y_true` (0/1); a call is flagged when proba >= threshold."""
        y, proba = _checked(y_true, y_pred_proba)
        at = _point(y, proba, self.threshold)
        (tn, fp), (fn, tp) = confusion_matrix(y, proba >= self.threshold, labels=[0, 1]).tolist()
        return EvaluationMetrics(
            auc_score=float(roc_auc_score(y, proba)),
            accuracy=float(accuracy_score(y, proba >= self.threshold)),
            precision=at.precision,
            recall=at.recall,
            f1_score=at.f1_score,
            confusion_matrix=[[tn, fp], [fn, tp]],
            specificity=_ratio(tn, tn + fp),
            fpr=_ratio(fp, tn + fp),
            fnr=_ratio(fn, fn + tp),
            threshold=self.threshold,
            samples=int(y.size),
            positives=int(y.sum()),
            threshold_sweep=[_point(y, proba, t) for t in SWEEP_THRESHOLDS],
        )


def _checked(y_true: np.ndarray, y_pred_proba: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true).ravel()
    proba = np.asarray(y_pred_proba, dtype=np.float64).ravel()
    if y.size != proba.size:
        raise UsageError(f"{y.size} labels but {proba.size} probabilities; they must be the same rows")
    if not np.isin(y, (0, 1)).all():
        raise UsageError("labels must be 0 or 1")
    if np.unique(y).size < 2:
        raise UsageError(
            f"all {y.size} labels are {int(y[0]) if y.size else '-'}; evaluation needs fraud and normal rows"
        )
    if not np.all((proba >= 0.0) & (proba <= 1.0)):  # also rejects NaN
        raise UsageError("probabilities must lie in [0, 1] (got NaN or a value outside)")
    return y.astype(np.int8), proba


def _point(y: np.ndarray, proba: np.ndarray, threshold: float) -> ThresholdPoint:
    flagged = proba >= threshold
    precision, recall, f1, _ = precision_recall_fscore_support(
        y, flagged, average="binary", pos_label=1, zero_division=0.0
    )
    (tn, fp), _ = confusion_matrix(y, flagged, labels=[0, 1]).tolist()
    return ThresholdPoint(
        threshold=threshold,
        precision=float(precision),
        recall=float(recall),
        f1_score=float(f1),
        fpr=_ratio(fp, tn + fp),
        flagged=int(flagged.sum()),
    )


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else 0.0
