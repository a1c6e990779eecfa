"""Monitoring assets: the exposition (metric names, buckets, promtool check metrics), the Grafana dashboard
(structure, every expression parses, every metric it uses is exposed) and the alert rules (promtool test rules).

The exposition comes from a real InferenceServer on 127.0.0.1 serving a compiled model, with drift tracking
and the prediction log on, after real Predict calls (good, refused, and drifted traffic).
"""

from __future__ import annotations

import json
import re
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from monitoring_support import PROMTOOL_MISSING, drift_registry, require_tools, send_rows
from server_harness import Client, running_server, wait_until

from ml_pipeline.monitoring.serving import MonitoringSettings

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "monitoring/grafana/dashboards/ml-monitoring.json"
ALERTS = ROOT / "monitoring/prometheus/alerts.yml"
ALERTS_TEST = ROOT / "monitoring/prometheus/alerts_test.yml"
SERVED_METRICS = {
    "ml_predictions_total": {"model_version"},
    "ml_prediction_latency_seconds_bucket": {"model_version", "le"},
    "ml_fraud_detected_total": {"model_version"},
    "ml_model_a_requests_total": set(),
    "ml_model_b_requests_total": set(),
    "ml_feature_drift": {"feature_name"},
    "ml_prediction_drift": set(),
    "ml_prediction_errors_total": {"code"},
    "ml_model_events_total": {"event", "slot"},
    "ml_prediction_score_bucket": {"model_version", "le"},
    "ml_shadow_predictions_total": {"model_version"},
    "ml_shadow_fraud_detected_total": {"model_version"},
    "ml_shadow_agreements_total": {"model_version"},
}
# The name ml_model_b_requests_total reads to promtool's linter as "b" (bytes) abbreviated: the only lint
# finding allowed, because dashboards and alert rules rely on that exact name (the A/B split's counters).
ALLOWED_LINT = "ml_model_b_requests_total metric names should not contain abbreviated units"


@pytest.fixture
def promtool() -> None:
    """Skip (fail in CI) without promtool."""
    require_tools(("promtool", PROMTOOL_MISSING))


@pytest.fixture(scope="module")
def exposition(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The metrics page of a real server after good, refused and drifted traffic."""
    root = tmp_path_factory.mktemp("assets")
    registry = drift_registry(root)
    settings = MonitoringSettings(f"file:{root / 'log.jsonl'}", drift_publish_seconds=0.2, drift_window_seconds=60)
    with running_server(registry.root, monitoring=settings) as server:
        client = Client(server.port)
        try:
            send_rows(client, np.random.default_rng(1).normal(size=(400, 8)))
            with pytest.raises(Exception, match="INVALID_ARGUMENT"):
                client.predict_raw(b"\xff\xff")
            url = f"http://127.0.0.1:{server.metrics_port}/metrics"

            def page() -> str:
                return urllib.request.urlopen(url, timeout=5).read().decode()

            wait_until(lambda: "ml_feature_drift{" in page() and "ml_prediction_drift " in page())
            yield page()
        finally:
            client.close()


def series(text: str) -> dict[str, set[str]]:
    """Metric name → label names of every sample on an exposition page."""
    found: dict[str, set[str]] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            match = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s", line)
            assert match, line
            labels = set(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="', match.group(2) or ""))
            found.setdefault(match.group(1), set()).update(labels)
    return found


@pytest.mark.e2e
def test_metric_names_are_exactly_the_served_ones(exposition: str) -> None:
    exposed = series(exposition)
    for name, labels in SERVED_METRICS.items():
        assert name in exposed, name
        assert exposed[name] == labels, (name, exposed[name])
    assert 'ml_prediction_errors_total{code="INVALID_ARGUMENT"} 1.0' in exposition
    assert 'ml_model_events_total{event="swap",slot="champion"} 1.0' in exposition
    assert "ml_champion_loaded 1.0" in exposition


@pytest.mark.e2e
def test_latency_buckets_resolve_50_microseconds_to_10_milliseconds(exposition: str) -> None:
    bounds = {float(b) for b in re.findall(r'ml_prediction_latency_seconds_bucket\{le="([^"+]+)"', exposition)}
    inside = sorted(b for b in bounds if 50e-6 <= b <= 10e-3)
    assert inside[0] == 50e-6 and inside[-1] == 10e-3
    assert all(high / low <= 2.5 for low, high in zip(inside, inside[1:], strict=False))


@pytest.mark.e2e
def test_promtool_checks_the_exposition(exposition: str, promtool: None) -> None:
    result = subprocess.run(["promtool", "check", "metrics"], input=exposition, capture_output=True, text=True)
    problems = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert result.returncode in (0, 3), problems  # 3: lint findings only, no parse error
    assert problems in ([], [ALLOWED_LINT]), problems


def dashboard_exprs() -> list[str]:
    """Every PromQL expression of the dashboard."""
    board = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in board["panels"] for target in panel["targets"]]


@pytest.mark.unit
def test_dashboard_structure() -> None:
    board = json.loads(DASHBOARD.read_text())
    assert board["uid"] and board["title"] and isinstance(board["schemaVersion"], int)
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in board["panels"]:
        assert panel["type"] in {"timeseries", "stat"} and panel["title"] and panel["description"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["h"] > 0
        area = {
            (x, y) for x in range(grid["x"], grid["x"] + grid["w"]) for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not area & cells, f"panel {panel['title']} overlaps another"
        cells |= area
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs)) and all(t["expr"].strip() for t in panel["targets"])
    titles = " | ".join(p["title"].lower() for p in board["panels"])
    needed_titles = ("p50 / p99", "request rate", "fraud rate", "traffic split", "feature drift", "errors", "shadow")
    for needed in needed_titles:
        assert needed in titles, needed


@pytest.mark.integration
def test_every_dashboard_expression_parses(tmp_path: Path, promtool: None) -> None:
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:expr_{i}", "expr": expr.replace("$__rate_interval", "1m")}
                    for i, expr in enumerate(dashboard_exprs())
                ],
            }
        ]
    }
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(json.dumps(rules))  # JSON is YAML
    result = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def metric_names(expr: str) -> set[str]:
    """Metric names used in a PromQL expression (ours all start with ml_)."""
    return set(re.findall(r"\bml_[a-z_]+\b", expr))


@pytest.mark.e2e
def test_every_metric_of_the_dashboard_and_the_alerts_is_exposed(exposition: str) -> None:
    exposed = set(series(exposition))
    used = set().union(*(metric_names(e) for e in dashboard_exprs()), metric_names(ALERTS.read_text()))
    assert used - exposed == set()
    assert {"ml_feature_drift", "ml_prediction_latency_seconds_bucket", "ml_model_b_requests_total"} <= used


@pytest.mark.integration
def test_alert_rules_pass_check_and_unit_tests(promtool: None) -> None:
    check = subprocess.run(["promtool", "check", "rules", str(ALERTS)], capture_output=True, text=True)
    assert check.returncode == 0 and "SUCCESS: 5 rules found" in check.stdout, check.stdout + check.stderr
    test = subprocess.run(
        ["promtool", "test", "rules", ALERTS_TEST.name], cwd=ALERTS_TEST.parent, capture_output=True, text=True
    )
    assert test.returncode == 0 and "SUCCESS" in test.stdout, test.stdout + test.stderr
