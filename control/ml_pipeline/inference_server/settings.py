"""What one `ml-pipeline serve` runs: the server options, read from the environment (config.ENV_VARS)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from ml_pipeline.config import MLPipelineConfig, env_value
from ml_pipeline.errors import UsageError
from ml_pipeline.inference_server.admission import AdmissionSettings
from ml_pipeline.inference_server.server import InferenceServer
from ml_pipeline.inference_server.tls import ServerTLS
from ml_pipeline.inference_server.transport import AUTO, resolve_transport, transport_name


@dataclass(frozen=True)
class ServerSettings:
    """Options of the inference server processes; `workers` > 1 runs that many processes on one port."""

    registry_path: str = "models/registry"
    host: str = "0.0.0.0"
    port: int = 50051
    metrics_port: int | None = 9091
    max_workers: int = 10
    workers: int = 1
    poll_seconds: float = 1.0
    shutdown_grace: float = 10.0
    enable_ab_testing: bool = True
    transport: str = AUTO
    tls: ServerTLS | None = None
    metrics_host: str | None = None
    admission: AdmissionSettings = field(default_factory=AdmissionSettings)
    explain: str = "request"
    explain_top_k: int = 3
    model_name: str = "fraud-detector"
    http_port: int | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ServerSettings:
        """Settings from the ML_* variables (ConfigError names a bad one)."""
        env = os.environ if environ is None else environ
        config = MLPipelineConfig.from_env(env)
        return cls(
            registry_path=config.model.model_registry_path,
            host=config.inference_host,
            port=config.inference_port,
            metrics_port=config.metrics_port,
            max_workers=config.max_workers,
            workers=env_value("ML_INFERENCE_WORKERS", env),
            poll_seconds=env_value("ML_REGISTRY_POLL_SECONDS", env),
            shutdown_grace=env_value("ML_SHUTDOWN_GRACE_SECONDS", env),
            enable_ab_testing=env_value("ML_ENABLE_AB_TESTING", env),
            transport=env_value("ML_INFERENCE_TRANSPORT", env),
            tls=ServerTLS.from_env(env),
            metrics_host=env_value("ML_METRICS_HOST", env),
            admission=AdmissionSettings.from_env(env),
            explain=env_value("ML_EXPLAIN", env),
            explain_top_k=env_value("ML_EXPLAIN_TOP_K", env),
            model_name=env_value("ML_MODEL_NAME", env),
            http_port=env_value("ML_HTTP_PORT", env),
        )

    def with_overrides(self, **changes: Any) -> ServerSettings:
        """A copy with the given (non-None) options replaced, checked."""
        settings = replace(self, **{k: v for k, v in changes.items() if v is not None})
        if settings.workers > 1 and settings.port == 0:
            raise UsageError("--workers > 1 needs a fixed --port (the processes share it)")
        if transport_name(settings.transport) == "native":
            resolve_transport("native")  # UsageError now when not built, rather than in each worker
        return settings

    def make_server(self, worker_index: int = 0) -> InferenceServer:
        """The InferenceServer of worker `worker_index` (worker i exports metrics on metrics_port + i)."""
        metrics_port = self.metrics_port
        if metrics_port and worker_index:
            metrics_port += worker_index
        return InferenceServer(
            registry_path=self.registry_path,
            host=self.host,
            port=self.port,
            enable_ab_testing=self.enable_ab_testing,
            max_workers=self.max_workers,
            metrics_port=metrics_port,
            poll_seconds=self.poll_seconds,
            shutdown_grace=self.shutdown_grace,
            reuse_port=self.workers > 1,
            transport=self.transport,
            tls=self.tls,
            metrics_host=self.metrics_host,
            admission=self.admission,
            explain=self.explain,
            explain_top_k=self.explain_top_k,
            model_name=self.model_name,
            http_port=self.http_port,
        )
