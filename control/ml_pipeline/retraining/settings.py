"""What a retraining run and the scheduler need beyond MLPipelineConfig, read from the ML_RETRAIN_* variables."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ml_pipeline.config import env_value

RUNS_FOLDER = "retrain_runs"


@dataclass(frozen=True)
class RetrainSettings:
    """Margin over the champion, minimum rows, where run records go, the webhook and the Dask scheduler."""

    min_improvement: float = 0.02
    min_rows: int = 1000
    runs_path: str | None = None
    catch_up: bool = True
    webhook_url: str | None = None
    webhook_timeout_s: float = 10.0
    webhook_attempts: int = 3
    dask_scheduler: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> RetrainSettings:
        """Settings from the ML_RETRAIN_* variables (ConfigError names a bad one)."""
        env = os.environ if environ is None else environ
        return cls(
            min_improvement=env_value("ML_RETRAIN_MIN_IMPROVEMENT", env),
            min_rows=env_value("ML_RETRAIN_MIN_ROWS", env),
            runs_path=env_value("ML_RETRAIN_RUNS_PATH", env),
            catch_up=env_value("ML_RETRAIN_CATCH_UP", env),
            webhook_url=env_value("ML_RETRAIN_WEBHOOK_URL", env),
            webhook_timeout_s=env_value("ML_RETRAIN_WEBHOOK_TIMEOUT_S", env),
            webhook_attempts=env_value("ML_RETRAIN_WEBHOOK_ATTEMPTS", env),
            dask_scheduler=env_value("ML_RETRAIN_DASK_SCHEDULER", env),
        )

    def runs_dir(self, registry_root: Path) -> Path:
        """Folder of the run records: ML_RETRAIN_RUNS_PATH, else `retrain_runs` beside the registry folder."""
        return Path(self.runs_path) if self.runs_path else registry_root.resolve().parent / RUNS_FOLDER
