"""End to end: a real Prometheus server (Debian's package) scrapes a running inference server on 127.0.0.1 every
second; the series are read back through Prometheus's HTTP API, and the alert rules load into it.

What it shows: traffic with exactly one shifted feature makes ml_feature_drift high for that feature
only (PSI >= 0.25 there, < 0.1 elsewhere), as Prometheus sees it.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from monitoring_support import PROMETHEUS_MISSING, drift_registry, require_tools, send_rows
from server_harness import Client, running_server

from ml_pipeline.data.features import FEATURE_NAMES
from ml_pipeline.inference_server import InferenceServer
from ml_pipeline.monitoring.serving import MonitoringSettings

pytestmark = pytest.mark.e2e

ALERTS = Path(__file__).resolve().parents[1] / "monitoring/prometheus/alerts.yml"
SHIFTED = 3  # international_ratio
ROWS = 800


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Prometheus:
    """A Prometheus server process with a temporary config and data directory, scraping one target every 1 s."""

    def __init__(self, folder: Path, target: str) -> None:
        self.port = free_port()
        config = folder / "prometheus.yml"
        config.write_text(
            json.dumps(
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "rule_files": [str(ALERTS)],
                    "scrape_configs": [{"job_name": "voxguard", "static_configs": [{"targets": [target]}]}],
                }
            )
        )
        self.log = (folder / "prometheus.log").open("w")
        self.process = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={config}",
                f"--storage.tsdb.path={folder / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--storage.tsdb.retention.time=1h",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.wait_for(lambda: self.get("/-/ready") is not None, "Prometheus ready")

    def get(self, path: str) -> bytes | None:
        """GET from Prometheus's HTTP API (None while it is not answering)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as response:
                return response.read()
        except OSError:
            if self.process.poll() is not None:
                raise AssertionError(f"prometheus exited with {self.process.returncode}") from None
            return None

    def query(self, expr: str) -> list[dict]:
        """Instant query: the result vector."""
        body = self.get("/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
        data = json.loads(body or b'{"status": "error"}')
        assert data.get("status") == "success", data
        return data["data"]["result"]

    def wait_for(self, condition: object, what: str, timeout: float = 30.0) -> None:
        """Poll `condition` (a callable) until it holds."""
        deadline = time.monotonic() + timeout
        while not condition():  # type: ignore[operator]
            assert time.monotonic() < deadline, f"timed out waiting for: {what}"
            time.sleep(0.25)

    def stop(self) -> None:
        """Terminate the server and wait for it."""
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        self.log.close()


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Prometheus, InferenceServer]]:
    """A running inference server that received traffic with one shifted feature, and Prometheus scraping it."""
    require_tools(("prometheus", PROMETHEUS_MISSING))
    root = tmp_path_factory.mktemp("prom")
    registry = drift_registry(root)
    settings = MonitoringSettings(drift_publish_seconds=0.5, drift_window_seconds=300)
    with running_server(registry.root, monitoring=settings) as server:
        client = Client(server.port)
        prometheus = Prometheus(root, f"127.0.0.1:{server.metrics_port}")
        try:
            prometheus.wait_for(lambda: prometheus.query('up{job="voxguard"} == 1'), "first scrape")
            rows = np.random.default_rng(21).normal(size=(ROWS, len(FEATURE_NAMES))).astype(np.float32)
            rows[:, SHIFTED] += 1.5
            send_rows(client, rows)
            yield prometheus, server
        finally:
            prometheus.stop()
            client.close()


def by_label(result: list[dict], label: str) -> dict[str, float]:
    """label value → sample value of an instant-query result."""
    return {r["metric"].get(label, ""): float(r["value"][1]) for r in result}


def test_prometheus_scrapes_the_served_metrics(scraped: tuple[Prometheus, InferenceServer]) -> None:
    prometheus, _ = scraped
    prometheus.wait_for(
        lambda: by_label(prometheus.query("ml_predictions_total"), "model_version").get("drift-champion") == ROWS,
        "all predictions scraped",
    )
    assert by_label(prometheus.query('up{job="voxguard"}'), "job") == {"voxguard": 1.0}
    assert float(prometheus.query("ml_model_a_requests_total")[0]["value"][1]) == ROWS
    p99 = prometheus.query(
        "histogram_quantile(0.99, sum by (le, model_version) (rate(ml_prediction_latency_seconds_bucket[1m])))"
    )
    assert p99 and 0 < float(p99[0]["value"][1]) < 0.01
    assert float(prometheus.query("ml_champion_loaded")[0]["value"][1]) == 1.0


def test_the_shifted_feature_and_only_it_drifts(scraped: tuple[Prometheus, InferenceServer]) -> None:
    prometheus, _ = scraped
    prometheus.wait_for(lambda: len(prometheus.query("ml_feature_drift")) == len(FEATURE_NAMES), "drift gauges")
    prometheus.wait_for(
        lambda: by_label(prometheus.query("ml_drift_window_rows"), "").get("", 0) >= ROWS, "whole window scraped"
    )
    drift = by_label(prometheus.query("ml_feature_drift"), "feature_name")
    high = {name for name, value in drift.items() if value >= 0.25}
    assert high == {FEATURE_NAMES[SHIFTED]}, drift
    assert all(value < 0.1 for name, value in drift.items() if name != FEATURE_NAMES[SHIFTED]), drift
    assert prometheus.query("ml_prediction_drift"), "score drift published"


def test_the_alert_rules_load_into_prometheus(scraped: tuple[Prometheus, InferenceServer]) -> None:
    prometheus, _ = scraped

    def rules() -> list[dict]:
        body = json.loads(prometheus.get("/api/v1/rules") or b"{}")
        return [rule for group in body["data"]["groups"] for rule in group["rules"]]

    prometheus.wait_for(lambda: all(rule["health"] == "ok" for rule in rules()), "rules evaluated")
    names = {rule["name"] for rule in rules()}
    assert names == {
        "MLPredictionLatencyP99High",
        "MLPredictionErrorRatioHigh",
        "MLFeatureDriftHigh",
        "MLPredictionDriftHigh",
        "MLNoChampionLoaded",
    }
    firing = {rule["name"] for rule in rules() if rule["state"] != "inactive"}
    assert "MLNoChampionLoaded" not in firing and "MLPredictionErrorRatioHigh" not in firing
