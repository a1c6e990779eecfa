"""What monitoring adds to an inference server: live drift gauges and, when configured, the prediction log.

`ServerMonitoring.start()` starts the drift monitor (edges follow the champion) and, with ML_PREDICTION_LOG
set, turns on the core's log ring buffer, drained every 100 ms into the PredictionLog writer. `collectors()`
are registered on the server's metrics registry beside the core's own collector.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from importlib import metadata
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from ml_pipeline.config import ENV_VARS, MLPipelineConfig
from ml_pipeline.data.database import is_dsn, password_for
from ml_pipeline.errors import JobFailed
from ml_pipeline.model_registry import ModelRegistry
from ml_pipeline.monitoring.live_drift import DriftCollector, DriftMonitor
from ml_pipeline.monitoring.prediction_log import CoreLogPump, PredictionLog, open_sink

if TYPE_CHECKING:
    from ml_pipeline.native.serving_core import ServingCore

LOG_RING_CAPACITY = 1 << 16


@dataclass(frozen=True)
class MonitoringSettings:
    """ML_PREDICTION_LOG (None: off), ML_DRIFT_PUBLISH_SECONDS, ML_DRIFT_WINDOW_SECONDS and ML_ENVIRONMENT."""

    prediction_log: str | None = None
    drift_publish_seconds: float = 30.0
    drift_window_seconds: float = 3600.0
    log_password: str | None = None
    environment: str = "production"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> MonitoringSettings:
        """Settings from the environment (ConfigError names a bad variable)."""
        env = os.environ if environ is None else environ
        values = {spec.name: spec.read(env) for spec in ENV_VARS if spec.name.startswith(("ML_PREDICTION", "ML_DRIFT"))}
        target = values["ML_PREDICTION_LOG"]  # validated by its parser (config._prediction_log)
        config = MLPipelineConfig.from_env(env)
        password = password_for(target, config.database.password) if target and is_dsn(target) else None
        return cls(
            target, values["ML_DRIFT_PUBLISH_SECONDS"], values["ML_DRIFT_WINDOW_SECONDS"], password, config.environment
        )


class ServerMonitoring:
    """Drift monitor and optional prediction log of one server's ServingCore."""

    def __init__(
        self,
        core: ServingCore,
        registry: ModelRegistry,
        champion_id: Callable[[], str | None],
        settings: MonitoringSettings,
    ) -> None:
        self.core = core
        self.settings = settings
        self.champion_id = champion_id
        self.drift = DriftMonitor(
            core, registry, champion_id, settings.drift_publish_seconds, settings.drift_window_seconds
        )
        self.prediction_log: PredictionLog | None = None
        self._pump: CoreLogPump | None = None

    def start(self) -> None:
        """Start drift tracking and, when configured, the prediction log (JobFailed when it cannot be opened)."""
        if self.settings.prediction_log:
            try:
                sink = open_sink(self.settings.prediction_log, self.settings.log_password)
            except OSError as exc:
                raise JobFailed(f"cannot open the prediction log ({exc}): fix ML_PREDICTION_LOG") from None
            self.core.enable_log(LOG_RING_CAPACITY)
            self.prediction_log = PredictionLog(sink).start()
            self._pump = CoreLogPump(self.core.drain_log, self.prediction_log).start()
        self.drift.sync_reference()  # the first requests already count
        self.drift.start()

    def stop(self) -> None:
        """Stop drift tracking; drain the ring once more and write what is queued."""
        self.drift.stop()
        if self._pump is not None and self.prediction_log is not None:
            self._pump.stop()
            self.prediction_log.close()

    def collectors(self) -> list[Collector]:
        """Collectors to register on the metrics registry."""
        return [
            DriftCollector(self.drift),
            PredictionLogCollector(self),
            ChampionCollector(self.champion_id),
            BuildInfoCollector(self.settings.environment),
        ]


def package_version() -> str:
    """The installed version of the pipeline (importlib.metadata), "unknown" when not installed."""
    try:
        return metadata.version("voxguard-ml-pipeline")
    except metadata.PackageNotFoundError:
        return "unknown"


class BuildInfoCollector(Collector):
    """ml_build_info{environment, version} = 1: which deployment (ML_ENVIRONMENT) and release a series comes from.

    Join it in PromQL (`* on(instance) group_left(environment) ml_build_info`) to label any other series."""

    def __init__(self, environment: str) -> None:
        self.labels = {"environment": environment, "version": package_version()}

    def collect(self) -> Iterator[Metric]:
        """The info metric (constant)."""
        info = InfoMetricFamily("ml_build", "Deployment (ML_ENVIRONMENT) and version of this server")
        info.add_metric([], self.labels)
        yield info


class ChampionCollector(Collector):
    """ml_champion_loaded: 1 while a verified champion serves, else 0 (Predict then answers UNAVAILABLE)."""

    def __init__(self, champion_id: Callable[[], str | None]) -> None:
        self.champion_id = champion_id

    def collect(self) -> Iterator[Metric]:
        """The gauge, read at scrape time."""
        loaded = 0 if self.champion_id() is None else 1
        yield GaugeMetricFamily("ml_champion_loaded", "1 while a verified champion model is loaded", value=loaded)


class PredictionLogCollector(Collector):
    """ml_prediction_log_written_total and ml_prediction_log_dropped_total{reason} (when the log is on)."""

    def __init__(self, monitoring: ServerMonitoring) -> None:
        self.monitoring = monitoring

    def collect(self) -> Iterator[Metric]:
        """Counts of the writer and of the core's ring buffer."""
        plog = self.monitoring.prediction_log
        if plog is None:
            return
        yield CounterMetricFamily("ml_prediction_log_written", "Prediction log records written", plog.counts["written"])
        dropped = CounterMetricFamily(
            "ml_prediction_log_dropped", "Prediction log records dropped instead of slowing Predict", labels=["reason"]
        )
        dropped.add_metric(["ring_full"], self.monitoring.core.log_dropped())
        dropped.add_metric(["queue_full"], plog.counts["dropped_queue_full"])
        dropped.add_metric(["write_failed"], plog.counts["dropped_write_failed"])
        yield dropped
