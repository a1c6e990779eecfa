"""The Python API users were promised runs as written: each snippet of the service's design, in order, on one
machine (paths under a temporary folder, the server on 127.0.0.1 and an ephemeral port, `await asyncio.sleep
(86400)` shortened), against the real trainer, evaluator, registry and a real server."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from ml_pipeline.data.generator import generate_alerts

pytestmark = pytest.mark.integration


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    return tmp_path


def test_training_evaluation_registry_and_ab_snippets_run_as_written(workdir: Path) -> None:
    df = generate_alerts(20_000, seed=3)

    # ---- Model Training ----
    from ml_pipeline.training.trainer import ModelTrainer

    trainer = ModelTrainer(max_depth=6, learning_rate=0.1, n_estimators=100)
    dtrain, dval, dtest = trainer.prepare_data(df)
    history = trainer.train(dtrain, dval, early_stopping_rounds=20)
    importance = trainer.get_feature_importance()
    trainer.save_model("models/xgboost_new.json")
    assert history and importance and Path("models/xgboost_new.json").is_file()

    # ---- Model Evaluation ----
    from ml_pipeline.training.evaluator import ModelEvaluator

    evaluator = ModelEvaluator(threshold=0.7)
    y_true = dtest.get_label()
    y_pred_proba = trainer.predict_from_dmatrix(dtest)
    metrics = evaluator.evaluate(y_true, y_pred_proba)
    print(f"AUC: {metrics.auc_score:.4f}")
    print(f"Precision: {metrics.precision:.4f}")
    print(f"Recall: {metrics.recall:.4f}")
    passes = metrics.passes_thresholds(min_auc=0.85, min_precision=0.80, min_recall=0.75)
    baseline_metrics = evaluator.evaluate(y_true, y_pred_proba * 0.5)
    is_better = metrics.is_better_than(baseline_metrics, min_improvement=0.02)
    assert isinstance(passes, bool) and isinstance(is_better, bool)

    # ---- Model Registry ----
    from ml_pipeline.model_registry import ModelMetadata, ModelRegistry
    from ml_pipeline.model_registry.errors import RegistryError

    registry = ModelRegistry("models/registry")
    metadata = ModelMetadata(
        model_id="xgboost_v2026.02.03.140530",
        version="2026.02.03.140530",
        auc_score=0.92,
        precision=0.88,
        recall=0.85,
    )
    registry.register_model("models/xgboost_new.json", metadata)
    with pytest.raises(RegistryError, match=r"registry\.approve_model\('xgboost_v2026\.02\.03\.140530'\)"):
        registry.promote_to_champion("xgboost_v2026.02.03.140530")  # a candidate needs the approval first
    registry.approve_model("xgboost_v2026.02.03.140530")
    registry.promote_to_champion("xgboost_v2026.02.03.140530")
    model_id, model_path = registry.get_champion()
    assert model_id == "xgboost_v2026.02.03.140530" and model_path.is_file()

    # ---- A/B Testing ----
    from ml_pipeline.ab_testing.traffic_splitter import GradualRollout, TrafficSplitter

    splitter = TrafficSplitter(model_a_traffic=0.9, model_b_traffic=0.1)
    use_model_b = splitter.should_use_model_b()
    rollout = GradualRollout(initial_traffic=0.1, step_percentage=0.1, max_traffic=1.0)
    new_traffic = rollout.increase_traffic()  # 0.1 → 0.2
    assert isinstance(use_model_b, bool) and new_traffic == pytest.approx(0.2)


def test_the_server_and_gradual_rollout_snippets_run_as_written(workdir: Path) -> None:
    from ml_pipeline.model_registry import ModelMetadata, ModelRegistry
    from ml_pipeline.training.trainer import ModelTrainer

    registry = ModelRegistry("models/registry")
    for seed, model_id in ((1, "xgboost_v2026.02.01.020000"), (2, "xgboost_v2026.02.03.140530")):
        trainer = ModelTrainer(max_depth=3, learning_rate=0.3, n_estimators=10)
        dtrain, dval, _ = trainer.prepare_data(generate_alerts(5_000, seed=seed))
        trainer.train(dtrain, dval)
        trainer.save_model(f"models/{model_id}.json")
        registry.register_model(f"models/{model_id}.json", ModelMetadata(model_id=model_id, version=model_id[9:]))
        registry.approve_model(model_id)
    registry.promote_to_champion("xgboost_v2026.02.01.020000")

    async def design() -> list[str]:
        from ml_pipeline.inference_server import InferenceServer

        server = InferenceServer(
            registry_path="models/registry",
            host="127.0.0.1",
            port=0,
            batch_size=32,
            batch_timeout_ms=10,
            metrics_port=None,
        )
        # Set challenger model for A/B testing
        server.set_challenger_model("xgboost_v2026.02.03.140530")
        serving = asyncio.ensure_future(server.serve())
        while server.port == 0:
            await asyncio.sleep(0.01)

        from ml_pipeline.ab_testing.traffic_splitter import GradualRollout

        rollout = GradualRollout(initial_traffic=0.1, step_percentage=0.1, max_traffic=1.0)
        lines = []
        for step in range(10):
            new_traffic = rollout.increase_traffic()
            lines.append(f"Step {step + 1}: {new_traffic * 100:.0f}% traffic")
            model_a_traffic, model_b_traffic = rollout.get_current_split()
            server.traffic_splitter.update_traffic_split(model_a_traffic, model_b_traffic)
            assert server.traffic_splitter.model_b_traffic == pytest.approx(model_b_traffic)  # served now
            await asyncio.sleep(0)  # the design waits 24 hours here
            if rollout.is_complete():
                lines.append("Rollout complete!")
                break
        await server.stop(0)
        await serving
        return lines

    lines = asyncio.run(design())
    assert lines[0] == "Step 1: 20% traffic" and lines[-1] == "Rollout complete!"
    state = ModelRegistry("models/registry").serving_state()
    assert (state.challenger_id, state.challenger_share) == ("xgboost_v2026.02.03.140530", 1.0)

    # ---- Promote to Champion ----
    registry = ModelRegistry("models/registry")
    registry.promote_to_champion("xgboost_v2026.02.03.140530")
    assert registry.serving_state().champion_id == "xgboost_v2026.02.03.140530"


@pytest.mark.postgres
def test_the_manual_training_snippet_runs_as_written(
    pg_dsn: str, workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from urllib.parse import urlsplit

    from ml_pipeline.data.sources import write_alerts_to_postgres

    write_alerts_to_postgres(pg_dsn, generate_alerts(30_000, days=5, seed=3))
    parts = urlsplit(pg_dsn)
    for name, value in (
        ("YUGABYTE_HOST", parts.hostname),
        ("YUGABYTE_PORT", str(parts.port)),
        ("YUGABYTE_DB", parts.path.lstrip("/")),
        ("YUGABYTE_USER", parts.username),
    ):
        monkeypatch.setenv(name, str(value))
    monkeypatch.setenv("ML_MODEL_REGISTRY_PATH", str(workdir / "models" / "registry"))

    async def design() -> None:
        from datetime import datetime

        import asyncpg
        import pandas as pd

        from ml_pipeline.config import MLPipelineConfig
        from ml_pipeline.model_registry import ModelMetadata, ModelRegistry
        from ml_pipeline.training.evaluator import ModelEvaluator
        from ml_pipeline.training.trainer import ModelTrainer

        # Load configuration
        config = MLPipelineConfig.from_env()
        # Connect to database
        conn = await asyncpg.connect(config.database_dsn)
        # Extract training data
        query = config.training.training_query.format(lookback_days=7)
        rows = await conn.fetch(query)
        df = pd.DataFrame(rows)
        await conn.close()
        # Train model
        trainer = ModelTrainer(
            max_depth=config.model.max_depth,
            learning_rate=config.model.learning_rate,
            n_estimators=config.model.n_estimators,
        )
        dtrain, dval, dtest = trainer.prepare_data(df)
        trainer.train(dtrain, dval)
        # Evaluate
        evaluator = ModelEvaluator(threshold=0.7)
        y_test = dtest.get_label()
        y_pred = trainer.predict_from_dmatrix(dtest)
        metrics = evaluator.evaluate(y_test, y_pred)
        # Check quality
        if metrics.passes_thresholds(
            min_auc=config.model.min_auc_score,
            min_precision=config.model.min_precision,
            min_recall=config.model.min_recall,
        ):
            version = ModelTrainer.create_version_string()
            model_id = ModelTrainer.create_model_id(version)
            model_path = f"models/{model_id}.json"
            trainer.save_model(model_path)
            registry = ModelRegistry(config.model.model_registry_path)
            metadata = ModelMetadata(
                model_id=model_id,
                version=version,
                created_at=datetime.utcnow().isoformat(),
                algorithm="xgboost",
                training_samples=len(df),
                auc_score=metrics.auc_score,
                precision=metrics.precision,
                recall=metrics.recall,
                f1_score=metrics.f1_score,
                accuracy=metrics.accuracy,
                features=ModelTrainer.FEATURE_NAMES,
                feature_importance=trainer.get_feature_importance(),
                hyperparameters=trainer.params,
                status="candidate",
            )
            registry.register_model(model_path, metadata)
            print(f"Model registered: {model_id}")
            print(f"AUC: {metrics.auc_score:.4f}")
        else:
            print("Model did not pass quality thresholds")

    asyncio.run(design())
    out = capsys.readouterr().out
    assert "Model registered: xgboost_v" in out, out
