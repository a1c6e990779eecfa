"""The Grafana dashboard and the runbook show the same queries, and every ml_* metric they use is one a real
server exports (scraped from a server on 127.0.0.1 after a prediction)."""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path

import grpc
import pytest
from server_harness import running_server
from serving_models import NUM_FEATURES, build_model, register_compiled

from ml_pipeline.model_registry import ModelRegistry
from ml_pipeline.proto_gen import fraud_detection_pb2 as pb

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "voxguard-ml-inference.json"
RUNBOOK = ROOT / "docs" / "operations.md"


def dashboard_queries() -> list[str]:
    """The PromQL of every dashboard panel, in panel order."""
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [target["expr"] for panel in panels for target in panel["targets"]]


def runbook_queries() -> list[str]:
    """The PromQL column of the runbook's dashboard table, in row order."""
    section = RUNBOOK.read_text().split("## Reading the dashboard", 1)[1].split("\n## ", 1)[0]
    return [row.split("|")[2].strip().strip("`") for row in section.splitlines() if row.startswith("| ") and "`" in row]


def test_runbook_explains_every_dashboard_panel() -> None:
    assert runbook_queries() == dashboard_queries()
    assert len(dashboard_queries()) >= 6


def test_dashboard_uses_metrics_the_server_exports(tmp_path: Path) -> None:
    model = build_model(tmp_path / "models", "dash_v1", seed=3)
    registry = ModelRegistry(tmp_path / "registry")
    register_compiled(registry, model)
    registry.promote_to_champion(model.model_id, actor="test")
    with running_server(registry.root) as server:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            predict = channel.unary_unary("/FraudDetection/Predict")
            predict(pb.PredictionRequest(features=[0.5] * NUM_FEATURES).SerializeToString(), timeout=5)
            with pytest.raises(grpc.RpcError) as refused:  # counted in ml_prediction_errors_total
                predict(pb.PredictionRequest(features=[0.5]).SerializeToString(), timeout=5)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        scrape = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5).read().decode()
    exported = set(re.findall(r"^(ml_\w+?)(?:\{| )", scrape, re.MULTILINE))
    used = {name for query in dashboard_queries() for name in re.findall(r"\bml_\w+", query)}
    assert used and used <= exported, f"not exported: {used - exported}"
