"""The model registry: versions, approval, champion/challenger and traffic split, in a folder or a database."""

from ml_pipeline.model_registry.errors import IntegrityError, RegistryError, RegistryUnavailable
from ml_pipeline.model_registry.factory import is_database_location, open_registry
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
    "RegistryUnavailable",
    "ServingState",
    "is_database_location",
    "open_registry",
]
