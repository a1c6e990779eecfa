"""Integration: labelled alerts in the real PostgreSQL → asyncpg source (default query) → train → quality gate."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ml_pipeline.config import DEFAULT_TRAINING_QUERY, MLPipelineConfig
from ml_pipeline.data.generator import generate_alerts
from ml_pipeline.data.sources import data_window, load_training_data, write_alerts_to_postgres
from ml_pipeline.training.evaluator import ModelEvaluator
from ml_pipeline.training.trainer import ModelTrainer, write_training_output

pytestmark = [pytest.mark.integration, pytest.mark.postgres]


def test_train_from_postgres_passes_the_gate(pg_dsn: str, tmp_path: Path) -> None:
    now = datetime.now(UTC)
    recent = generate_alerts(30_000, days=5, seed=3, end=now)  # this seed passes the default gate
    stale = generate_alerts(5_000, days=5, seed=99, end=now - timedelta(days=20))
    write_alerts_to_postgres(pg_dsn, recent)
    write_alerts_to_postgres(pg_dsn, stale)
    config = MLPipelineConfig.from_env({})

    frame = load_training_data(pg_dsn, config.training.lookback_days, query=DEFAULT_TRAINING_QUERY)
    assert len(frame) == len(recent)  # the 20-day-old alerts are outside the 7-day window

    trainer = ModelTrainer(**{k: getattr(config.model, k) for k in ("max_depth", "learning_rate", "n_estimators")})
    dtrain, dval, dtest = trainer.prepare_data(frame)
    trainer.train(dtrain, dval)
    metrics = ModelEvaluator(config.model.threshold).evaluate(
        trainer.splits["test"].y, trainer.predict_from_dmatrix(dtest)
    )
    gate = config.model
    assert metrics.passes_thresholds(gate.min_auc_score, gate.min_precision, gate.min_recall), metrics
    assert metrics.auc_score < 0.99

    window = data_window(pg_dsn, config.training.lookback_days, frame)
    record = write_training_output(tmp_path, trainer, metrics.to_dict(), window)
    saved = json.loads((tmp_path / "training.json").read_text())
    assert saved == record and saved["data_window"]["rows"] == len(recent)
    start = datetime.fromisoformat(saved["data_window"]["start"])
    assert now - timedelta(days=7) <= start <= datetime.fromisoformat(saved["data_window"]["end"])
