"""The model registry: versions, approval, champion/challenger and traffic split, crash-safe on disk."""

from ml_pipeline.model_registry.errors import IntegrityError, RegistryError
from ml_pipeline.model_registry.metadata import ModelMetadata, ModelStatus
from ml_pipeline.model_registry.records import HistoryEntry, MetricComparison, ServingState
from ml_pipeline.model_registry.registry import ModelRegistry

__all__ = [
    "HistoryEntry",
    "IntegrityError",
    "MetricComparison",
    "ModelMetadata",
    "ModelRegistry",
    "ModelStatus",
    "RegistryError",
    "ServingState",
]
