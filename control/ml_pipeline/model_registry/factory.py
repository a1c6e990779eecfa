"""open_registry: the one way to open the model registry a location names, a folder or a postgresql:// DSN."""

from __future__ import annotations

import os
from typing import Any

from ml_pipeline.data.database import check_scheme, is_dsn
from ml_pipeline.model_registry.registry import ModelRegistry


def is_database_location(location: str | os.PathLike[str]) -> bool:
    """True when `location` names a database registry (postgresql:// or postgres://)."""
    return isinstance(location, str) and is_dsn(location)


def open_registry(location: str | os.PathLike[str], **options: Any) -> ModelRegistry:
    """The registry at `location`: a DatabaseRegistry for a postgresql:// DSN, else the directory ModelRegistry.

    Both have the same API and semantics (DatabaseRegistry is a ModelRegistry); `options` go to the constructor
    (lock_timeout, compiled_models_dir; for a database also password, cache_dir, and isolation, by default
    ML_REGISTRY_ISOLATION). UsageError for a URL of
    another scheme (mysql://...), which would otherwise silently become a folder of that name."""
    if is_database_location(location):
        from ml_pipeline.config import env_value
        from ml_pipeline.model_registry.database import DatabaseRegistry  # asyncpg only when a database is used

        options.setdefault("isolation", env_value("ML_REGISTRY_ISOLATION"))
        return DatabaseRegistry(str(location), **options)
    check_scheme(os.fspath(location), "registry", alternatives="a folder")
    return ModelRegistry(location, **options)
