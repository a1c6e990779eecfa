"""Retraining runs against the real PostgreSQL server: the lookback window, the gate, the champion comparison,
the refusals, and the `retrain` / `runs` commands."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xgboost as xgb

from ml_pipeline.cli import main
from ml_pipeline.config import MLPipelineConfig
from ml_pipeline.data.features import FEATURE_NAMES, LABEL
from ml_pipeline.data.generator import GeneratorSettings, generate_alerts
from ml_pipeline.data.sources import data_window, load_training_data, write_alerts_to_postgres
from ml_pipeline.model_registry import ModelMetadata, ModelRegistry
from ml_pipeline.retraining import RetrainSettings, RunStore, retrain
from ml_pipeline.retraining.records import RunStatus
from ml_pipeline.training.evaluator import ModelEvaluator
from ml_pipeline.training.trainer import ModelTrainer, stratified_split, write_training_output

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

LOOKBACK = 7
SMALL_MODEL = {"ML_MODEL_N_ESTIMATORS": "40", "ML_MODEL_MAX_DEPTH": "4"}
CLEAN = GeneratorSettings(fraud_rate=0.1, stealth_rate=0.0, fraud_label_noise=0.0, normal_label_noise=0.0)
HOPELESS = GeneratorSettings(fraud_rate=0.1, stealth_rate=1.0, stealth_blend=(1.0, 1.0), fraud_label_noise=0.3)


def alerts_over_30_days(rows: int, settings: GeneratorSettings, seed: int = 5) -> pd.DataFrame:
    """Alerts labelled over the last 30 days, minus those within an hour of the lookback boundary."""
    frame = generate_alerts(rows, days=30, seed=seed, settings=settings)
    age = pd.Timestamp.now(tz="UTC") - frame["labelled_at"]
    return frame[(age - pd.Timedelta(days=LOOKBACK)).abs() >= pd.Timedelta(hours=1)].reset_index(drop=True)


def in_window(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[frame["labelled_at"] >= pd.Timestamp.now(tz="UTC") - pd.Timedelta(days=LOOKBACK)]


@pytest.fixture
def config() -> MLPipelineConfig:
    return MLPipelineConfig.from_env({**SMALL_MODEL, "ML_TRAINING_LOOKBACK_DAYS": str(LOOKBACK)})


@pytest.fixture
def settings(tmp_path: Path) -> RetrainSettings:
    return RetrainSettings(min_rows=500, runs_path=str(tmp_path / "runs"))


@pytest.fixture
def registry(tmp_path: Path) -> ModelRegistry:
    return ModelRegistry(tmp_path / "registry")


def test_a_run_trains_on_exactly_the_lookback_window_and_registers_a_candidate(
    pg_dsn: str, config: MLPipelineConfig, settings: RetrainSettings, registry: ModelRegistry
) -> None:
    frame = alerts_over_30_days(12_000, CLEAN)
    write_alerts_to_postgres(pg_dsn, frame)
    expected = in_window(frame)

    record = retrain(config, source=pg_dsn, registry=registry, settings=settings)

    assert record.status == RunStatus.REGISTERED and record.exit_code == 0, record.reason
    assert 0 < record.rows["total"] == len(expected) < len(frame)
    assert record.rows["fraud"] == int(expected[LABEL].sum())
    assert record.rows["train"] + record.rows["val"] + record.rows["test"] == len(expected)
    window_start = datetime.fromisoformat(record.data_window["start"])
    assert window_start == expected["labelled_at"].min().to_pydatetime()
    assert record.reason == "passes the quality gate; there is no champion to compare with"

    meta = registry.get_model(record.model_id)
    assert meta.status == "candidate" and meta.data_window["rows"] == len(expected)
    assert meta.extra["retraining"]["run_id"] == record.run_id
    assert registry.attachment_path(record.model_id, "test_sample.npz") is not None
    entry = registry.history(record.model_id)[-1]
    assert entry.actor == "ml-pipeline retrain" and record.run_id in entry.reason
    assert record.approval_command.startswith(f"ml-pipeline registry approve {record.model_id} --registry ")

    saved = RunStore(settings.runs_path).get(record.run_id)
    assert saved == record and set(saved.durations_s) >= {"extract", "train", "evaluate", "register", "total"}


def test_a_run_that_fails_the_gate_registers_nothing(
    pg_dsn: str, config: MLPipelineConfig, settings: RetrainSettings, registry: ModelRegistry
) -> None:
    write_alerts_to_postgres(pg_dsn, alerts_over_30_days(12_000, HOPELESS))

    record = retrain(config, source=pg_dsn, registry=registry, settings=settings)

    assert record.status == RunStatus.GATE_FAILED and record.exit_code == 1
    assert record.reason.startswith("quality gate failed (") and not record.gate["passed"]
    assert registry.list_models() == [] and not record.registered
    assert RunStore(settings.runs_path).get(record.run_id).status == RunStatus.GATE_FAILED


def register_weak_champion(registry: ModelRegistry, dsn: str, out: Path, days_ago: int = 0) -> str:
    """Three stumps trained on the alerts of the last 30 days (up to `days_ago`), promoted: a champion with
    low AUC that flags nothing."""
    data = load_training_data(dsn, 30)
    data = data[data["labelled_at"] < pd.Timestamp.now(tz="UTC") - pd.Timedelta(days=days_ago)]
    stump = ModelTrainer(max_depth=1, n_estimators=3)
    dtrain, dval, dtest = stump.prepare_data(data)
    stump.train(dtrain, dval)
    metrics = ModelEvaluator(0.7).evaluate(stump.splits["test"].y, stump.predict_from_dmatrix(dtest))
    write_training_output(out, stump, metrics.to_dict(), data_window(dsn, 30, data), version="2026.01.01.000000")
    meta = registry.register_model(out / "model.json", ModelMetadata.from_training_output(out))
    registry.promote_to_champion(meta.model_id, force=True)
    return meta.model_id


def test_the_champion_is_scored_on_this_runs_test_rows(
    pg_dsn: str, config: MLPipelineConfig, settings: RetrainSettings, registry: ModelRegistry, tmp_path: Path
) -> None:
    write_alerts_to_postgres(pg_dsn, alerts_over_30_days(12_000, CLEAN))
    weak = register_weak_champion(registry, pg_dsn, tmp_path / "weak")

    record = retrain(config, source=pg_dsn, registry=registry, settings=settings)

    # The same rows, recomputed independently: the window from the database, the seeded 70/10/20 split.
    data = load_training_data(pg_dsn, LOOKBACK)
    test = stratified_split(data[FEATURE_NAMES].to_numpy(np.float32), data[LABEL].to_numpy(np.int8), 42)["test"]
    champion = xgb.Booster(model_file=str(registry.artifact_path(weak)))
    proba = champion.predict(xgb.DMatrix(test.X, feature_names=FEATURE_NAMES))
    on_same_rows = ModelEvaluator(0.7).evaluate(test.y, proba)

    assert record.champion["model_id"] == weak
    assert record.champion["metrics"]["auc_score"] == pytest.approx(on_same_rows.auc_score, abs=1e-12)
    assert record.champion["metrics"]["confusion_matrix"] == on_same_rows.confusion_matrix
    assert record.champion["metrics"]["samples"] == len(test.y) == record.rows["test"]
    assert record.champion["metrics"]["auc_score"] != registry.get_model(weak).auc_score
    assert record.comparison["better"] and record.comparison["auc_gain"] >= settings.min_improvement, record.reason
    assert record.status == RunStatus.REGISTERED and f"better than champion {weak}" in record.reason
    assert record.comparison["basis"].startswith("all test rows; only 0 fraud and 0 normal labelled after")


def test_the_comparison_keeps_to_test_rows_the_champion_never_saw(
    pg_dsn: str, config: MLPipelineConfig, settings: RetrainSettings, registry: ModelRegistry, tmp_path: Path
) -> None:
    write_alerts_to_postgres(pg_dsn, alerts_over_30_days(12_000, CLEAN))
    weak = register_weak_champion(registry, pg_dsn, tmp_path / "weak", days_ago=3)  # saw nothing of the last 3 days
    champion_end = pd.Timestamp(registry.get_model(weak).data_window["end"])

    record = retrain(config, source=pg_dsn, registry=registry, settings=settings)

    data = load_training_data(pg_dsn, LOOKBACK)
    y = data[LABEL].to_numpy(np.int8)
    test_rows = stratified_split(np.arange(len(y)).reshape(-1, 1), y, 42)["test"].X[:, 0]
    fresh = test_rows[(data["labelled_at"].to_numpy()[test_rows] > champion_end)]
    assert 0 < len(fresh) < record.rows["test"]
    X_fresh = data[FEATURE_NAMES].to_numpy(np.float32)[fresh]
    champion = xgb.Booster(model_file=str(registry.artifact_path(weak)))
    expected = ModelEvaluator(0.7).evaluate(
        y[fresh], champion.predict(xgb.DMatrix(X_fresh, feature_names=FEATURE_NAMES))
    )

    assert record.comparison["test_rows"] == len(fresh) == record.champion["metrics"]["samples"]
    assert record.champion["metrics"]["confusion_matrix"] == expected.confusion_matrix
    assert record.comparison["basis"] == f"labelled after the champion's data, which ends {champion_end.isoformat()}"
    assert record.comparison["metrics"]["samples"] == len(fresh) and record.metrics["samples"] == record.rows["test"]


def test_a_model_no_better_than_the_champion_is_rejected_with_the_reason(
    pg_dsn: str, config: MLPipelineConfig, settings: RetrainSettings, registry: ModelRegistry
) -> None:
    write_alerts_to_postgres(pg_dsn, alerts_over_30_days(12_000, CLEAN))
    first = retrain(config, source=pg_dsn, registry=registry, settings=settings)
    registry.approve_model(first.model_id)
    registry.promote_to_champion(first.model_id)

    second = retrain(
        config, source=pg_dsn, registry=registry, settings=settings, now=datetime.now(UTC) + timedelta(seconds=1)
    )

    assert second.status == RunStatus.REJECTED and second.exit_code == 0
    assert second.reason.startswith(f"not better than champion {first.model_id} on the same ")
    assert "AUC gain +0.0000 < 0.02" in second.reason  # same data, same seed: the same model
    assert not second.comparison["better"] and second.comparison["margin"] == 0.02
    assert [m.model_id for m in registry.list_models()] == [first.model_id]


# ---- refusals and the commands ----


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exited:
        main(list(args))
    out = capsys.readouterr()
    return exited.value.code, out.out, out.err


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for name, value in {**SMALL_MODEL, "ML_RETRAIN_MIN_ROWS": "500"}.items():
        monkeypatch.setenv(name, value)
    return tmp_path / "registry"


@pytest.mark.parametrize(
    ("rows", "settings", "message"),
    [
        (1_000, CLEAN, "only 2"),  # ~230 rows in the window, fewer than ML_RETRAIN_MIN_ROWS=500
        (12_000, GeneratorSettings(fraud_rate=0.0, normal_label_noise=0.0), "are normal: training needs fraud"),
    ],
    ids=["too-few-rows", "single-class"],
)
def test_unusable_windows_exit_1_and_register_nothing(
    pg_dsn: str, cli_env: Path, capsys: pytest.CaptureFixture[str], rows: int, settings: GeneratorSettings, message: str
) -> None:
    write_alerts_to_postgres(pg_dsn, alerts_over_30_days(rows, settings))
    code, _, err = cli(capsys, "retrain", "--data", pg_dsn, "--registry", str(cli_env))
    assert code == 1 and message in err and "ml-pipeline runs show run-" in err
    assert ModelRegistry(cli_env).list_models() == []
    (record,) = RunStore(cli_env.parent / "retrain_runs").list_runs()
    assert record.status == RunStatus.FAILED and message in record.reason


def test_an_unreachable_database_exits_1_with_a_record(cli_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(
        capsys, "retrain", "--data", "postgresql://nobody:pw@127.0.0.1:1/none", "--registry", str(cli_env)
    )
    assert code == 1 and "cannot connect to the training database postgresql://nobody@127.0.0.1:1/none" in err
    assert "pw" not in err
    (record,) = RunStore(cli_env.parent / "retrain_runs").list_runs()
    assert record.status == RunStatus.FAILED and ModelRegistry(cli_env).list_models() == []


def test_retrain_runs_list_and_show_commands(pg_dsn: str, cli_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_alerts_to_postgres(pg_dsn, alerts_over_30_days(12_000, CLEAN))
    code, out, _ = cli(
        capsys, "retrain", "--data", pg_dsn, "--lookback-days", "10", "--registry", str(cli_env), "--json"
    )
    assert code == 0
    record = json.loads(out)
    assert record["status"] == "registered" and record["inputs"]["lookback_days"] == 10

    code, out, _ = cli(capsys, "runs", "list", "--registry", str(cli_env))
    assert code == 0 and record["run_id"] in out and "registered" in out
    code, out, _ = cli(capsys, "runs", "show", record["run_id"], "--registry", str(cli_env))
    assert code == 0 and f"ml-pipeline registry approve {record['model_id']}" in out
    code, _, err = cli(capsys, "runs", "show", "run-nope", "--registry", str(cli_env))
    assert code == 2 and "ml-pipeline runs list" in err
