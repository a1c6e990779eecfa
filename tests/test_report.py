"""The evaluation report: six PNG charts and an HTML page that shows them with the metrics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ml_pipeline.data.features import FEATURE_NAMES
from ml_pipeline.training.evaluator import ModelEvaluator
from ml_pipeline.training.report import CHARTS, write_report

pytestmark = pytest.mark.unit

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_report_writes_every_chart_and_a_page_that_shows_them(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    y = (rng.random(2_000) < 0.05).astype(np.int8)
    proba = np.clip(0.6 * y + rng.normal(0.2, 0.15, y.size), 0, 1)
    metrics = ModelEvaluator(0.7).evaluate(y, proba)
    importance = {name: float(i) for i, name in enumerate(FEATURE_NAMES)}

    contribution = {name: 0.1 * (i + 1) for i, name in enumerate(FEATURE_NAMES)}
    index = write_report(tmp_path / "report", metrics, y, proba, importance, contribution)

    assert index == tmp_path / "report" / "index.html"
    page = index.read_text()
    for name in CHARTS:
        chart = tmp_path / "report" / name
        assert chart.read_bytes().startswith(PNG_SIGNATURE) and chart.stat().st_size > 5_000
        assert f'src="{name}"' in page
    assert f"{metrics.auc_score:.4f}" in page and f"{metrics.recall:.4f}" in page
    assert page.count("<tr><td>") == len(metrics.threshold_sweep)
    assert f"<tr><th>{FEATURE_NAMES[-1]}</th><td>0.8000</td></tr>" in page  # the largest mean |contribution|
