"""Shared by the monitoring tests: a registry whose champion carries a drift reference, traffic, promtool.

The champion is a real compiled model (tests/model_factory.py); its drift reference is fitted on standard
normal features, so traffic drawn from the same distribution shows no drift and a shifted column shows PSI.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from model_factory import register_compiled, served_model
from server_harness import Client

from ml_pipeline.data.features import FEATURE_NAMES
from ml_pipeline.model_registry import ModelRegistry
from ml_pipeline.monitoring.drift import DriftReference
from ml_pipeline.proto_gen import fraud_detection_pb2 as pb

PROMTOOL_MISSING = shutil.which("promtool") is None
PROMETHEUS_MISSING = shutil.which("prometheus") is None
MODEL_ID = "drift-champion"


def require_tools(*missing: tuple[str, bool]) -> None:
    """Skip when a Prometheus tool is missing, except in CI (CI=true), where that fails the test."""
    absent = [name for name, gone in missing if gone]
    if absent:
        message = f"{', '.join(absent)} missing: run make install (scripts/install_monitoring_tools.sh)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def drift_registry(root: Path, seed: int = 5) -> ModelRegistry:
    """A registry whose champion is a compiled model with a drift reference from N(0, 1) features."""
    registry = ModelRegistry(root / "registry")
    model = served_model(MODEL_ID, seed)
    register_compiled(registry, model)
    reference_rows = np.random.default_rng(seed).normal(size=(5000, len(FEATURE_NAMES))).astype(np.float32)
    reference = DriftReference.fit(reference_rows, FEATURE_NAMES, model.xgboost_proba(reference_rows))
    registry.record_drift_reference(MODEL_ID, reference.to_dict(), actor="test")
    registry.promote_to_champion(MODEL_ID, actor="test")
    return registry


def send_rows(client: Client, rows: np.ndarray, prefix: str = "req") -> list[pb.PredictionResponse]:
    """One Predict per row, request ids `<prefix>-<i>`."""
    return [
        client.predict(pb.PredictionRequest(features=row.tolist(), request_id=f"{prefix}-{i}"))
        for i, row in enumerate(rows)
    ]
