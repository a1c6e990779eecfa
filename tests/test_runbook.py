"""The runbook explains the monitoring the project ships: every panel of the Grafana dashboard and every
Prometheus alert is named in docs/operations.md, and every file path the runbook mentions exists."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parent.parent
RUNBOOK = (ROOT / "docs" / "operations.md").read_text()
DASHBOARD = ROOT / "monitoring" / "grafana" / "dashboards" / "ml-monitoring.json"
ALERTS = ROOT / "monitoring" / "prometheus" / "alerts.yml"


def test_every_dashboard_panel_is_explained() -> None:
    titles = [panel["title"] for panel in json.loads(DASHBOARD.read_text())["panels"]]
    assert titles and [t for t in titles if f"**{t}**" not in RUNBOOK] == []


def test_every_alert_is_named() -> None:
    alerts = [rule["alert"] for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]
    assert alerts and [a for a in alerts if f"`{a}`" not in RUNBOOK] == []


def test_every_repository_path_it_mentions_exists() -> None:
    paths = set(re.findall(r"`((?:deploy|monitoring|docs|tests|scripts)/[\w./-]+|Dockerfile|\.dockerignore)`", RUNBOOK))
    assert len(paths) >= 8
    assert sorted(p for p in paths if not (ROOT / p).exists()) == []
