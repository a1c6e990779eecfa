"""The quality gate, the one rule every caller applies: AUC, precision and recall each at least their minimum.

`quality_gate(metrics, GateThresholds.from_config(config.model))` gives a GateResult: whether the model
passed, every check with its value and minimum, the failed ones in words, and the dict the train command, the
retraining run record and the evaluate command print (`to_dict()`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ml_pipeline.config import ModelConfig
    from ml_pipeline.training.evaluator import EvaluationMetrics


@dataclass(frozen=True)
class GateThresholds:
    """The minimums of the quality gate (ML_MIN_AUC_SCORE, ML_MIN_PRECISION, ML_MIN_RECALL by default)."""

    min_auc: float = 0.85
    min_precision: float = 0.80
    min_recall: float = 0.75

    @classmethod
    def from_config(cls, model: ModelConfig) -> GateThresholds:
        """The configured minimums."""
        return cls(model.min_auc_score, model.min_precision, model.min_recall)


@dataclass(frozen=True)
class GateCheck:
    """One condition of the gate: `name` (AUC, precision, recall) measured `value` against `minimum`."""

    name: str
    value: float
    minimum: float

    @property
    def passed(self) -> bool:
        """Whether the value reaches the minimum."""
        return self.value >= self.minimum

    def reason(self) -> str:
        """Why it failed, in one line: `AUC 0.8123 < 0.8500`."""
        return f"{self.name} {self.value:.4f} < {self.minimum:.4f}"


@dataclass(frozen=True)
class GateResult:
    """The gate's verdict on one model: every check, which ones failed and why."""

    thresholds: GateThresholds
    checks: tuple[GateCheck, ...]

    @property
    def passed(self) -> bool:
        """Whether every check passed."""
        return all(check.passed for check in self.checks)

    @property
    def failed(self) -> tuple[GateCheck, ...]:
        """The checks that failed."""
        return tuple(check for check in self.checks if not check.passed)

    @property
    def failures(self) -> list[str]:
        """One readable line per failed check (empty when the gate passes)."""
        return [check.reason() for check in self.failed]

    def to_dict(self) -> dict[str, Any]:
        """The gate as recorded and printed: passed, the minimums, the failed conditions."""
        return {
            "passed": self.passed,
            "min_auc": self.thresholds.min_auc,
            "min_precision": self.thresholds.min_precision,
            "min_recall": self.thresholds.min_recall,
            "failures": self.failures,
        }


def quality_gate(metrics: EvaluationMetrics, thresholds: GateThresholds) -> GateResult:
    """Apply the quality gate to a model's test-split metrics."""
    return GateResult(
        thresholds,
        (
            GateCheck("AUC", metrics.auc_score, thresholds.min_auc),
            GateCheck("precision", metrics.precision, thresholds.min_precision),
            GateCheck("recall", metrics.recall, thresholds.min_recall),
        ),
    )
