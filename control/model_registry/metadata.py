"""ModelMetadata: what the registry knows about one model, round-tripping through JSON without losing keys."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from enum import StrEnum
from pathlib import Path
from typing import Any

from ml_pipeline.model_registry.errors import RegistryError
from ml_pipeline.model_registry.storage import sha256_file

TRAINING_FILES = ("model.json", "training.json", "test_sample.npz")
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
    created_at: str
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
        """Build a candidate's metadata from a training output folder (model.json, training.json, test_sample.npz)."""
        root = Path(directory)
        for name in TRAINING_FILES:
            if not (root / name).is_file():
                raise RegistryError(f"{root / name} is missing: pass the --out folder of `ml-pipeline train`")
        try:
            info = json.loads((root / "training.json").read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RegistryError(f"{root / 'training.json'} is not valid JSON: {exc}") from None
        metrics = dict(info.get("metrics", {}))
        known = {
            "model_id",
            "version",
            "created_at",
            "algorithm",
            "training_samples",
            "features",
            "hyperparameters",
            "feature_importance",
            "threshold",
            "metrics",
            "data_window",
            "best_iteration",
            "num_trees",
            "drift_reference",
        }
        try:
            return cls(
                model_id=info["model_id"],
                version=info["version"],
                created_at=info["created_at"],
                algorithm=info.get("algorithm", "xgboost"),
                training_samples=int(info.get("training_samples", 0)),
                features=list(info.get("features", [])),
                feature_importance=dict(info.get("feature_importance", {})),
                hyperparameters=dict(info.get("hyperparameters", {})),
                threshold=float(info.get("threshold", metrics.get("threshold", 0.7))),
                data_window=dict(info.get("data_window", {})),
                metrics=metrics,
                best_iteration=info.get("best_iteration"),
                num_trees=info.get("num_trees"),
                drift_reference=info.get("drift_reference"),
                artifact_sha256=sha256_file(root / "model.json"),
                extra={k: v for k, v in info.items() if k not in known},
                **{m: float(metrics.get(m, 0.0)) for m in HEADLINE_METRICS},
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise RegistryError(
                f"{root / 'training.json'} lacks or mangles {exc}: re-run `ml-pipeline train`"
            ) from None
