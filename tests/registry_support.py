"""Builds real training output folders (contract A) with a tiny XGBoost model, for the registry tests."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import xgboost as xgb

from ml_pipeline.data.features import FEATURE_NAMES


def write_training_output(directory: Path, model_id: str, seed: int = 0, rounds: int = 4) -> Path:
    """Train a few-tree XGBoost model on synthetic rows and write model.json, training.json, test_sample.npz."""
    rng = np.random.default_rng(seed)
    X = rng.random((300, len(FEATURE_NAMES)), dtype=np.float32)
    y = (X[:, 0] + 0.3 * rng.random(300) > 0.8).astype(np.int8)
    booster = xgb.train(
        {"objective": "binary:logistic", "max_depth": 3, "eta": 0.3, "nthread": 1, "seed": seed},
        xgb.DMatrix(X[:240], label=y[:240], feature_names=FEATURE_NAMES),
        num_boost_round=rounds,
    )
    directory.mkdir(parents=True, exist_ok=True)
    booster.save_model(directory / "model.json")
    test = X[240:]
    proba = booster.predict(xgb.DMatrix(test, feature_names=FEATURE_NAMES)).astype(np.float32)
    np.savez(directory / "test_sample.npz", X=test, y=y[240:], proba=proba)
    auc = 0.90 + 0.01 * seed
    training = {
        "model_id": model_id,
        "version": model_id.rsplit("_v", 1)[-1],
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "algorithm": "xgboost",
        "training_samples": 240,
        "features": FEATURE_NAMES,
        "hyperparameters": {"max_depth": 3, "learning_rate": 0.3},
        "feature_importance": {k: float(v) for k, v in booster.get_score(importance_type="gain").items()},
        "threshold": 0.7,
        "metrics": {
            "auc_score": auc,
            "precision": 0.85,
            "recall": 0.80,
            "f1_score": 0.82,
            "accuracy": 0.9,
            "specificity": 0.95,
            "fpr": 0.05,
            "fnr": 0.2,
            "confusion_matrix": [[50, 3], [2, 5]],
            "threshold": 0.7,
        },
        "data_window": {"source": "file:synthetic", "lookback_days": None, "start": None, "end": None, "rows": 300},
        "best_iteration": rounds - 1,
        "num_trees": rounds,
        "trainer_note": "a key this registry version does not know",
    }
    (directory / "training.json").write_text(json.dumps(training, indent=2))
    return directory
