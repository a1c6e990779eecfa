"""ModelTrainer: split, early stopping, best-iteration model (evaluated == saved), the training output folder."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xgboost as xgb

from ml_pipeline.data.features import FEATURE_NAMES, LABEL
from ml_pipeline.data.generator import generate_alerts
from ml_pipeline.data.sources import data_window
from ml_pipeline.errors import UsageError
from ml_pipeline.training.evaluator import ModelEvaluator
from ml_pipeline.training.trainer import ModelTrainer, write_training_output

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def alerts() -> pd.DataFrame:
    return generate_alerts(20_000, seed=3)


@pytest.fixture(scope="module")
def stopped_early(alerts: pd.DataFrame) -> tuple[ModelTrainer, xgb.DMatrix, dict]:
    """A trainer whose early stopping fired well before the round limit (aggressive learning rate)."""
    trainer = ModelTrainer(max_depth=4, learning_rate=0.5, n_estimators=150)
    dtrain, dval, dtest = trainer.prepare_data(alerts)
    history = trainer.train(dtrain, dval, early_stopping_rounds=5)
    return trainer, dtest, history


def test_split_is_70_10_20_stratified_and_seeded(alerts: pd.DataFrame) -> None:
    trainer = ModelTrainer()
    dtrain, dval, dtest = trainer.prepare_data(alerts)
    assert (dtrain.num_row(), dval.num_row(), dtest.num_row()) == (14_000, 2_000, 4_000)
    assert dtrain.feature_names == FEATURE_NAMES
    overall = alerts[LABEL].mean()
    for split in trainer.splits.values():
        assert abs(split.y.mean() - overall) < 0.002
        assert split.X.dtype == np.float32 and np.isnan(split.X).any()
    again = ModelTrainer()
    again.prepare_data(alerts)
    np.testing.assert_array_equal(again.splits["test"].X, trainer.splits["test"].X)
    other = ModelTrainer(random_state=1)
    other.prepare_data(alerts)
    assert not np.array_equal(other.splits["test"].y, trainer.splits["test"].y)


def test_prepare_data_refuses_unusable_frames(alerts: pd.DataFrame) -> None:
    with pytest.raises(UsageError, match="lacks columns: sim_age_days"):
        ModelTrainer().prepare_data(alerts.drop(columns="sim_age_days"))
    few_fraud = pd.concat([alerts[alerts[LABEL] == 0], alerts[alerts[LABEL] == 1].head(3)])
    with pytest.raises(UsageError, match="got 3 fraud"):
        ModelTrainer().prepare_data(few_fraud)


def test_early_stopping_keeps_only_the_best_iteration(stopped_early) -> None:
    trainer, _, history = stopped_early
    rounds_run = len(history["val"]["logloss"])
    assert rounds_run < 150
    best = int(np.argmin(history["val"]["logloss"]))
    assert trainer.best_iteration == best < rounds_run - 1
    assert trainer.model.num_boosted_rounds() == best + 1
    assert set(history) == {"train", "val"} and set(history["val"]) == {"auc", "logloss"}


def test_saved_model_predicts_exactly_what_was_evaluated(stopped_early, tmp_path: Path) -> None:
    trainer, dtest, _ = stopped_early
    evaluated = trainer.predict_from_dmatrix(dtest)
    reloaded = xgb.Booster(model_file=str(trainer.save_model(tmp_path / "model.json")))
    np.testing.assert_array_equal(reloaded.predict(dtest), evaluated)
    assert reloaded.num_boosted_rounds() == trainer.best_iteration + 1


def test_feature_importance_covers_every_feature(stopped_early) -> None:
    importance = stopped_early[0].get_feature_importance()
    assert list(importance) == FEATURE_NAMES
    assert all(v >= 0 for v in importance.values()) and sum(v > 0 for v in importance.values()) >= 4


def test_version_string_and_model_id() -> None:
    lagos = timezone(timedelta(hours=1))
    version = ModelTrainer.create_version_string(datetime(2026, 11, 29, 18, 45, 1, tzinfo=lagos))
    assert version == "2026.11.29.174501"
    assert ModelTrainer.create_model_id(version) == "xgboost_v2026.11.29.174501"
    assert re.fullmatch(r"\d{4}\.\d{2}\.\d{2}\.\d{6}", ModelTrainer.create_version_string())


def test_params_and_untrained_use() -> None:
    trainer = ModelTrainer(max_depth=3, learning_rate=0.2, subsample=0.8)
    assert trainer.params["max_depth"] == 3 and trainer.params["learning_rate"] == 0.2
    assert trainer.params["subsample"] == 0.8 and trainer.params["objective"] == "binary:logistic"
    assert ModelTrainer.FEATURE_NAMES == FEATURE_NAMES
    with pytest.raises(RuntimeError, match="train"):
        trainer.get_feature_importance()


def test_training_output_holds_every_recorded_field(stopped_early, tmp_path: Path, alerts: pd.DataFrame) -> None:
    trainer, dtest, _ = stopped_early
    metrics = ModelEvaluator(0.7).evaluate(trainer.splits["test"].y, trainer.predict_from_dmatrix(dtest))
    window = data_window("postgresql://u:pw@db/voxguard", 7, alerts)
    record = write_training_output(tmp_path, trainer, metrics.to_dict(), window, version="2026.11.29.174501")

    assert json.loads((tmp_path / "training.json").read_text()) == record
    assert record["model_id"] == "xgboost_v2026.11.29.174501" and record["version"] == "2026.11.29.174501"
    assert datetime.fromisoformat(record["created_at"]).utcoffset() == timedelta(0)
    assert record["algorithm"] == "xgboost" and record["features"] == FEATURE_NAMES
    assert record["training_samples"] == 14_000 and record["threshold"] == 0.7
    assert record["num_trees"] == record["best_iteration"] + 1 == trainer.model.num_boosted_rounds()
    assert record["hyperparameters"]["max_depth"] == 4 and record["hyperparameters"]["n_estimators"] == 150
    assert list(record["feature_importance"]) == FEATURE_NAMES
    expected_metrics = {"auc_score", "precision", "recall", "f1_score", "accuracy", "specificity", "fpr", "fnr"}
    assert set(record["metrics"]) == expected_metrics | {"confusion_matrix", "threshold"}
    assert record["data_window"]["source"] == "postgresql://u@db/voxguard" and "pw" not in json.dumps(record)

    sample = np.load(tmp_path / "test_sample.npz")
    assert (sample["X"].dtype, sample["y"].dtype, sample["proba"].dtype) == (np.float32, np.int8, np.float32)
    assert sample["X"].shape == (4_000, 8) and np.isnan(sample["X"]).any()
    np.testing.assert_array_equal(sample["y"], trainer.splits["test"].y)
    saved = xgb.Booster(model_file=str(tmp_path / "model.json"))
    proba = saved.predict(xgb.DMatrix(sample["X"], feature_names=FEATURE_NAMES))
    np.testing.assert_array_equal(sample["proba"], proba.astype(np.float32))


def test_test_sample_is_capped_at_5000_rows(tmp_path: Path) -> None:
    trainer = ModelTrainer(n_estimators=5)
    dtrain, dval, dtest = trainer.prepare_data(generate_alerts(30_000, seed=8))
    trainer.train(dtrain, dval)
    metrics = ModelEvaluator().evaluate(trainer.splits["test"].y, trainer.predict_from_dmatrix(dtest))
    write_training_output(tmp_path, trainer, metrics.to_dict(), {"source": "file:x", "rows": 30_000})
    assert np.load(tmp_path / "test_sample.npz")["X"].shape == (5_000, 8)
