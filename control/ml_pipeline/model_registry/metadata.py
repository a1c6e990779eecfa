"""ModelMetadata: what the registry knows about one model, round-tripping through JSON without losing keys."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ml_pipeline.model_registry.storage import sha256_file

if TYPE_CHECKING:
    from ml_pipeline.records import TrainingOutput

HEADLINE_METRICS = ("auc_score", "precision", "recall", "f1_score", "accuracy")


class ModelStatus(StrEnum):
    """Lifecycle of a model: candidate → approved → champion/challenger → archived."""

    CANDIDATE = "candidate"
    APPROVED = "approved"
    CHAMPION = "champion"
    CHALLENGER = "challenger"
    ARCHIVED = "archived"


@dataclass
class ModelMetadata:
    """One registered model: identity, quality metrics, artifact hash, lifecycle status and later additions.

    Keys this version does not know (written by a newer one) are kept in `extra` and written back unchanged.
    """

    model_id: str
    version: str
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    algorithm: str = "xgboost"
    training_samples: int = 0
    auc_score: float = 0.0
    precision: float = 0.0
    recall: float = 0.0
    f1_score: float = 0.0
    accuracy: float = 0.0
    features: list[str] = field(default_factory=list)
    feature_importance: dict[str, float] = field(default_factory=dict)
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    status: str = ModelStatus.CANDIDATE.value
    threshold: float = 0.7
    artifact_sha256: str = ""
    artifact_name: str = "model.json"
    data_window: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    best_iteration: int | None = None
    num_trees: int | None = None
    approved_at: str | None = None
    approved_by: str | None = None
    compiled: dict[str, Any] | None = None
    drift_reference: dict[str, Any] | None = None
    attachments: dict[str, str] = field(default_factory=dict)
    split_sizes: dict[str, int] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict; the keys kept in `extra` come back at the top level."""
        data = asdict(self)
        extra = data.pop("extra")
        return {**data, **{k: v for k, v in extra.items() if k not in data}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelMetadata:
        """Build from a dict such as `to_dict()` gives; unknown keys go to `extra`."""
        known = {f.name for f in fields(cls)} - {"extra"}
        missing = [k for k in ("model_id", "version", "created_at") if k not in data]
        if missing:
            raise ValueError(f"missing keys {missing}")
        kwargs = {k: v for k, v in data.items() if k in known}
        extra = {**data.get("extra", {}), **{k: v for k, v in data.items() if k not in known and k != "extra"}}
        return cls(**kwargs, extra=extra)

    def to_json(self) -> str:
        """JSON text of `to_dict()`."""
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> ModelMetadata:
        """Inverse of `to_json()`."""
        return cls.from_dict(json.loads(text))

    @classmethod
    def from_training_output(cls, directory: str | Path) -> ModelMetadata:
        """Build a candidate's metadata from a training output folder, read and validated by TrainingOutput.read
        (RegistryError naming the file that is missing, corrupt or mismatched)."""
        from ml_pipeline.records import TrainingOutput  # ml_pipeline.records imports this package

        output = TrainingOutput.read(directory)
        return cls.from_output(output, sha256_file(TrainingOutput.model_file(directory)))

    @classmethod
    def from_output(cls, output: TrainingOutput, artifact_sha256: str = "") -> ModelMetadata:
        """A candidate's metadata from a TrainingOutput record (`artifact_sha256`: of its model file, if known)."""
        metrics = dict(output.metrics)

        def headline(name: str) -> float:
            return float(metrics.get(name, 0.0))

        return cls(
            model_id=output.model_id,
            version=output.version,
            created_at=output.created_at,
            algorithm=output.algorithm,
            training_samples=output.training_samples,
            split_sizes=dict(output.split_sizes),
            features=list(output.features),
            feature_importance=dict(output.feature_importance),
            hyperparameters=dict(output.hyperparameters),
            threshold=output.threshold,
            data_window=dict(output.data_window),
            metrics=metrics,
            best_iteration=output.best_iteration,
            num_trees=output.num_trees,
            drift_reference=output.drift_reference,
            artifact_sha256=artifact_sha256,
            extra=dict(output.extra),
            auc_score=headline("auc_score"),
            precision=headline("precision"),
            recall=headline("recall"),
            f1_score=headline("f1_score"),
            accuracy=headline("accuracy"),
        )
