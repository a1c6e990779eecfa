"""Check the native explainer against XGBoost's own TreeSHAP (`pred_contribs=True`) on the same rows."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import xgboost as xgb

from ml_pipeline.errors import JobFailed
from ml_pipeline.native.tree_explainer import TreeExplainer

#: Largest |difference| allowed between a native contribution (or bias) and XGBoost's.
CONTRIBUTION_TOLERANCE = 1e-4
#: Rows compared at most (the compiler's verification rows are cut to this many, evenly spread).
MAX_CHECKED_ROWS = 2_000


class ExplanationMismatch(JobFailed):
    """Native contributions differ from XGBoost's by more than the tolerance: the model serves no reasons."""


@dataclass(frozen=True)
class ContributionCheck:
    """How the explainer was checked: rows compared and the largest difference seen."""

    rows: int
    max_abs_diff: float


def check_contributions(
    explainer: TreeExplainer, booster: xgb.Booster, rows: np.ndarray, tolerance: float = CONTRIBUTION_TOLERANCE
) -> ContributionCheck:
    """Compare contributions and bias with `booster.predict(..., pred_contribs=True)` on `rows` (NaN = missing);
    ExplanationMismatch naming the worst row and feature when a difference exceeds `tolerance`."""
    data = np.ascontiguousarray(rows, dtype=np.float32)
    if len(data) > MAX_CHECKED_ROWS:
        data = data[np.linspace(0, len(data) - 1, MAX_CHECKED_ROWS).astype(np.int64)]
    unnamed = booster.copy()
    unnamed.feature_names = None  # rows are positional, like the served features
    rounds = unnamed.num_boosted_rounds()
    reference = unnamed.predict(xgb.DMatrix(data, missing=np.nan), pred_contribs=True, iteration_range=(0, rounds))
    native = explainer.contributions(data)
    diff = np.abs(native - reference.reshape(native.shape))
    worst = float(diff.max()) if diff.size else 0.0
    if worst > tolerance:
        row, column = (int(i) for i in np.unravel_index(int(diff.argmax()), diff.shape))
        what = "the bias" if column == explainer.num_features else f"feature {column}"
        raise ExplanationMismatch(
            f"native contributions differ from XGBoost's by {worst:.3g} (> {tolerance:g}) at row {row}, {what}: "
            f"{native[row, column]!r} vs {reference.reshape(native.shape)[row, column]!r}"
        )
    return ContributionCheck(rows=len(data), max_abs_diff=worst)
