"""ModelEvaluator and EvaluationMetrics: values on a hand-checked example, sweep, gate, comparison, errors."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from ml_pipeline.errors import UsageError
from ml_pipeline.training.evaluator import SWEEP_THRESHOLDS, EvaluationMetrics, ModelEvaluator

pytestmark = pytest.mark.unit

Y = np.array([0, 0, 0, 0, 1, 1, 1])
P = np.array([0.10, 0.20, 0.80, 0.30, 0.70, 0.90, 0.40])


@pytest.fixture
def metrics() -> EvaluationMetrics:
    return ModelEvaluator(threshold=0.7).evaluate(Y, P)


def test_metrics_of_a_hand_checked_example(metrics: EvaluationMetrics) -> None:
    # flagged (>= 0.7): rows 2 (normal), 4 and 5 (fraud) -> tp 2, fp 1, fn 1, tn 3
    assert metrics.confusion_matrix == [[3, 1], [1, 2]]
    assert metrics.precision == pytest.approx(2 / 3)
    assert metrics.recall == pytest.approx(2 / 3)
    assert metrics.f1_score == pytest.approx(2 / 3)
    assert metrics.accuracy == pytest.approx(5 / 7)
    assert metrics.specificity == pytest.approx(3 / 4)
    assert metrics.fpr == pytest.approx(1 / 4)
    assert metrics.fnr == pytest.approx(1 / 3)
    # 12 fraud/normal pairs; the fraud scores 0.7, 0.9, 0.4 beat 3, 4 and 3 normal scores.
    assert metrics.auc_score == pytest.approx(10 / 12)
    assert (metrics.samples, metrics.positives, metrics.threshold) == (7, 3, 0.7)


def test_threshold_sweep(metrics: EvaluationMetrics) -> None:
    sweep = metrics.threshold_sweep
    assert [p.threshold for p in sweep] == list(SWEEP_THRESHOLDS)
    assert sweep[0].threshold == 0.05 and sweep[-1].threshold == 0.95
    recalls = [p.recall for p in sweep]
    assert recalls == sorted(recalls, reverse=True)
    at_07 = next(p for p in sweep if p.threshold == 0.7)
    assert (at_07.precision, at_07.recall, at_07.flagged) == (metrics.precision, metrics.recall, 3)
    assert sweep[-1].flagged == 0 and sweep[-1].precision == 0.0


def test_quality_gate(metrics: EvaluationMetrics) -> None:
    assert metrics.passes_thresholds(0.8, 0.6, 0.6)
    assert not metrics.passes_thresholds(0.9, 0.6, 0.6)
    assert metrics.gate_failures(0.9, 0.6, 0.7) == ["AUC 0.8333 < 0.9000", "recall 0.6667 < 0.7000"]
    assert metrics.gate_failures(0.8, 0.6, 0.6) == []


def test_is_better_than_follows_the_documented_rule(metrics: EvaluationMetrics) -> None:
    baseline = metrics
    assert replace(baseline, auc_score=baseline.auc_score + 0.03).is_better_than(baseline)
    assert not replace(baseline, auc_score=baseline.auc_score + 0.01).is_better_than(baseline)
    assert replace(baseline, auc_score=baseline.auc_score + 0.01).is_better_than(baseline, min_improvement=0.005)
    worse_recall = replace(baseline, auc_score=baseline.auc_score + 0.05, recall=baseline.recall - 0.05)
    assert not worse_recall.is_better_than(baseline)
    worse_precision = replace(baseline, auc_score=baseline.auc_score + 0.05, precision=baseline.precision - 0.03)
    assert not worse_precision.is_better_than(baseline)
    assert not baseline.is_better_than(baseline)


def test_to_dict_is_json_ready(metrics: EvaluationMetrics) -> None:
    data = json.loads(json.dumps(metrics.to_dict()))
    assert data["confusion_matrix"] == [[3, 1], [1, 2]]
    assert data["threshold_sweep"][0] == {
        "threshold": 0.05,
        "precision": pytest.approx(3 / 7),
        "recall": 1.0,
        "f1_score": pytest.approx(0.6),
        "fpr": 1.0,
        "flagged": 7,
    }


@pytest.mark.parametrize(
    ("y", "p", "message"),
    [
        ([0, 0, 0], [0.1, 0.2, 0.3], "evaluation needs fraud and normal rows"),
        ([1, 1], [0.1, 0.2], "evaluation needs fraud and normal rows"),
        ([0, 1, 1], [0.1, 0.2], "3 labels but 2 probabilities"),
        ([0, 1], [0.1, 1.5], r"probabilities must lie in \[0, 1\]"),
        ([0, 1], [-0.1, 0.5], r"probabilities must lie in \[0, 1\]"),
        ([0, 1], [np.nan, 0.5], r"probabilities must lie in \[0, 1\]"),
        ([0, 2], [0.1, 0.5], "labels must be 0 or 1"),
    ],
)
def test_bad_inputs_give_a_clear_error(y: list, p: list, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        ModelEvaluator().evaluate(np.array(y), np.array(p))


def test_threshold_outside_zero_one_is_refused() -> None:
    with pytest.raises(UsageError, match="outside"):
        ModelEvaluator(threshold=1.5)
