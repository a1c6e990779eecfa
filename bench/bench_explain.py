"""Reason codes: native TreeSHAP for one row at least 20x faster than XGBoost's `pred_contribs` on a one-row
DMatrix, in-process, on the same production-size model (100 trees of depth 6 trained on demo alerts).

Both are timed in interleaved best-of rounds over the same 200 live-like rows (one call per row), so the ratio
comes from one run. Run with `make bench` (or `.venv/bin/pytest bench/bench_explain.py`).
"""

from __future__ import annotations

import numpy as np
import pytest
import xgboost as xgb
from timing import interleaved_best, wall

from ml_pipeline.data.features import FEATURE_NAMES, LABEL
from ml_pipeline.data.generator import generate_alerts
from ml_pipeline.explain import pack_trees
from ml_pipeline.native.tree_explainer import TreeExplainer

SPEEDUP_BUDGET = 20.0
ROWS = 200


@pytest.fixture(scope="module")
def model() -> tuple[xgb.Booster, TreeExplainer, np.ndarray]:
    """A production-size booster, its native explainer, and live-like rows."""
    frame = generate_alerts(20_000, seed=4)
    X = frame[FEATURE_NAMES].to_numpy(dtype=np.float32)
    params = {"objective": "binary:logistic", "max_depth": 6, "eta": 0.1, "nthread": 1, "seed": 1}
    booster = xgb.train(params, xgb.DMatrix(X, label=frame[LABEL]), 100)
    live = generate_alerts(ROWS, seed=5)[FEATURE_NAMES].to_numpy(dtype=np.float32)
    return booster, TreeExplainer(pack_trees(booster.save_raw("json"))), live


def test_native_contributions_are_20x_faster_than_xgboost(model, bench_report) -> None:  # noqa: ANN001
    booster, explainer, live = model
    rows = [np.ascontiguousarray(row.reshape(1, -1)) for row in live]

    def native() -> None:
        for row in rows:
            explainer.contributions(row)

    def reference() -> None:
        for row in rows:
            booster.predict(xgb.DMatrix(row, missing=np.nan), pred_contribs=True)

    best = interleaved_best({"native": wall(native), "xgboost": wall(reference)}, repeat=5)
    per_row = {name: seconds / ROWS * 1e6 for name, seconds in best.items()}
    speedup = best["xgboost"] / best["native"]
    line = (
        f"one row, 100 trees of depth 6: native {per_row['native']:.1f} us, XGBoost pred_contribs "
        f"{per_row['xgboost']:.0f} us: {speedup:.0f}x (budget >= {SPEEDUP_BUDGET:g}x)"
    )
    bench_report("reason codes", line)
    assert speedup >= SPEEDUP_BUDGET, line
