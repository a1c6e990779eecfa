"""XGBoost training of the fraud model: seeded stratified split, early stopping, best-iteration model.

After `train`, the trainer's booster is trimmed to the best iteration, so what is evaluated, saved,
compiled and served is the same model. `training_output` builds the TrainingOutput record the registry
registers (`write_training_output` writes it as a folder); `save_model` writes the model file and, when the
trainer split the data itself, its test sample and drift reference beside it (see ml_pipeline.records).
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import numpy as np
import pandas as pd
import xgboost as xgb
from sklearn.model_selection import train_test_split

from ml_pipeline.data.features import FEATURE_NAMES, LABEL
from ml_pipeline.errors import UsageError
from ml_pipeline.monitoring.drift import DriftReference
from ml_pipeline.records import ModelAttachments, TestSample, TrainingOutput

log = logging.getLogger(__name__)

TEST_SAMPLE_ROWS = 5_000
MIN_ROWS_PER_CLASS = 10


@dataclass(frozen=True)
class Split:
    """One part of the data split as plain arrays (float32 features, NaN = missing; int8 labels)."""

    X: np.ndarray
    y: np.ndarray


def stratified_split(X: np.ndarray, y: np.ndarray, random_state: int) -> dict[str, Split]:
    """Seeded 70/10/20 train/val/test split, stratified on the label (also run per partition on Dask)."""
    X_rest, X_test, y_rest, y_test = train_test_split(X, y, test_size=0.2, stratify=y, random_state=random_state)
    X_train, X_val, y_train, y_val = train_test_split(
        X_rest, y_rest, test_size=0.125, stratify=y_rest, random_state=random_state
    )
    return {"train": Split(X_train, y_train), "val": Split(X_val, y_val), "test": Split(X_test, y_test)}


class ModelTrainer:
    """Train an XGBoost binary fraud classifier on the eight FEATURE_NAMES."""

    FEATURE_NAMES: list[str] = FEATURE_NAMES

    def __init__(
        self,
        max_depth: int = 6,
        learning_rate: float = 0.1,
        n_estimators: int = 100,
        random_state: int = 42,
        verbose: bool = False,
        **params: Any,
    ) -> None:
        self.n_estimators = n_estimators
        self.random_state = random_state
        self.verbose = verbose
        self.params: dict[str, Any] = {
            "objective": "binary:logistic",
            "eval_metric": ["auc", "logloss"],
            "tree_method": "hist",
            "max_depth": max_depth,
            "learning_rate": learning_rate,
            "seed": random_state,
            **params,
        }
        self.model: xgb.Booster | None = None
        self.best_iteration: int | None = None
        self.splits: dict[str, Split] = {}

    def prepare_data(self, df: pd.DataFrame) -> tuple[xgb.DMatrix, xgb.DMatrix, xgb.DMatrix]:
        """Split `df` 70/10/20 into train/validation/test, stratified on the label and seeded.

        The arrays stay available in `self.splits` ("train", "val", "test"), e.g. for the test sample.
        """
        df = _named_columns(df)
        missing = [c for c in (*FEATURE_NAMES, LABEL) if c not in df]
        if missing:
            raise UsageError(f"training data lacks columns: {', '.join(missing)}")
        X = df[FEATURE_NAMES].to_numpy(dtype=np.float32)
        y = df[LABEL].to_numpy(dtype=np.int8)
        counts = np.bincount(y, minlength=2)
        if counts.min() < MIN_ROWS_PER_CLASS:
            raise UsageError(
                f"training needs at least {MIN_ROWS_PER_CLASS} fraud and {MIN_ROWS_PER_CLASS} normal rows; "
                f"got {counts[1]} fraud and {counts[0]} normal (widen the data window)"
            )
        self.splits = stratified_split(X, y, self.random_state)
        dtrain, dval, dtest = (xgb.DMatrix(s.X, label=s.y, feature_names=FEATURE_NAMES) for s in self.splits.values())
        return dtrain, dval, dtest

    def train(self, dtrain: xgb.DMatrix, dval: xgb.DMatrix, early_stopping_rounds: int = 20) -> dict[str, Any]:
        """Boost up to n_estimators rounds, stop when validation logloss stalls; keep the best iteration.

        Returns the evaluation history {"train": {metric: [...]}, "val": {...}}.
        """
        history: dict[str, Any] = {}
        callbacks = [_Progress(self.n_estimators)] if self.verbose or sys.stderr.isatty() else []
        booster = xgb.train(
            self.params,
            dtrain,
            num_boost_round=self.n_estimators,
            evals=[(dtrain, "train"), (dval, "val")],
            early_stopping_rounds=early_stopping_rounds,
            evals_result=history,
            verbose_eval=False,
            callbacks=callbacks,
        )
        self.best_iteration = int(booster.best_iteration)
        self.model = booster[: self.best_iteration + 1]
        self.model.set_attr(best_iteration=str(self.best_iteration))
        log.debug("trained %d rounds, best iteration %d", booster.num_boosted_rounds(), self.best_iteration)
        return history

    def predict_from_dmatrix(self, d: xgb.DMatrix) -> np.ndarray:
        """Fraud probabilities of the trained (best-iteration) model for the rows of `d`."""
        return self._booster().predict(d)

    def get_feature_importance(self) -> dict[str, float]:
        """Average gain of the splits on each feature (0.0 for a feature the model never uses)."""
        return gain_importance(self._booster())

    def get_mean_contribution(self, X: np.ndarray) -> dict[str, float]:
        """Each feature's mean |contribution| to the margin over the rows of X (see mean_abs_contribution)."""
        return mean_abs_contribution(self._booster(), X)

    def save_model(self, path: str | Path, attachments: bool = True) -> Path:
        """Save the best-iteration model as XGBoost JSON (exactly the model that was evaluated).

        With `attachments` and a trainer that split the data itself (`prepare_data`), the test sample and the
        drift reference are written beside it (`<stem>.test_sample.npz`, `<stem>.drift_reference.json`), so
        `ModelRegistry.register_model(path, metadata)` attaches them and the server can report drift.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.model_bytes())
        if attachments:
            has_data = "train" in self.splits and "test" in self.splits
            sample = self.test_sample() if has_data else None
            drift = self.drift_reference(sample) if sample is not None else None
            ModelAttachments.write_beside(path, sample, drift)
        return path

    def model_bytes(self) -> bytes:
        """The best-iteration model as XGBoost JSON, byte for byte what `save_model` writes."""
        return bytes(self._booster().save_raw("json"))

    def test_sample(self, rows: int | None = None) -> TestSample:
        """The first `rows` (default TEST_SAMPLE_ROWS) rows of the test split with this model's probabilities."""
        test = self.splits.get("test")
        if test is None:
            raise RuntimeError("no test split: call prepare_data() first")
        limit = TEST_SAMPLE_ROWS if rows is None else rows
        X, y = np.asarray(test.X[:limit], dtype=np.float32), np.asarray(test.y[:limit], dtype=np.int8)
        proba = self.predict_from_dmatrix(xgb.DMatrix(X, feature_names=FEATURE_NAMES)).astype(np.float32)
        return TestSample(X, y, proba)

    def drift_reference(self, sample: TestSample) -> dict[str, Any]:
        """The drift reference: quantile bins of each feature on the training split, of the scores on `sample`."""
        return DriftReference.fit(self.splits["train"].X, FEATURE_NAMES, sample.proba).to_dict()

    @staticmethod
    def create_version_string(now: datetime | None = None) -> str:
        """Model version from the UTC time: `YYYY.MM.DD.HHMMSS`."""
        return (now or datetime.now(UTC)).astimezone(UTC).strftime("%Y.%m.%d.%H%M%S")

    @staticmethod
    def create_model_id(version: str) -> str:
        """Model id for a version: `xgboost_v<version>`."""
        return f"xgboost_v{version}"

    def _booster(self) -> xgb.Booster:
        if self.model is None:
            raise RuntimeError("no model yet: call train() first")
        return self.model


def mean_abs_contribution(booster: xgb.Booster, X: np.ndarray, max_rows: int = 20_000) -> dict[str, float]:
    """Each of FEATURE_NAMES' mean |contribution| to the margin (XGBoost's exact TreeSHAP, `pred_contribs`) over
    the first `max_rows` rows of X: how much each feature moves answers, the scale of the served reasons."""
    rows = np.ascontiguousarray(X[:max_rows], dtype=np.float32)
    phi = booster.predict(xgb.DMatrix(rows, feature_names=FEATURE_NAMES, missing=np.nan), pred_contribs=True)
    means = np.abs(phi[:, : len(FEATURE_NAMES)]).mean(axis=0) if len(rows) else np.zeros(len(FEATURE_NAMES))
    return {name: float(value) for name, value in zip(FEATURE_NAMES, means, strict=True)}


def gain_importance(booster: xgb.Booster) -> dict[str, float]:
    """Average gain of the splits on each of FEATURE_NAMES (0.0 for a feature the model never uses)."""
    scores = booster.get_score(importance_type="gain")
    importance: dict[str, float] = {}
    for name in FEATURE_NAMES:
        gain = scores.get(name, 0.0)
        if isinstance(gain, list):  # one gain per output: only multi-output (vector-leaf) trees, not this classifier
            raise TypeError(f"feature {name} has one gain per model output ({len(gain)}); expected a binary classifier")
        importance[name] = float(gain)
    return importance


class _Progress(xgb.callback.TrainingCallback):
    """Boosting progress: a click progress bar when stderr is a terminal, else a log line every 10 rounds."""

    def __init__(self, rounds: int) -> None:
        super().__init__()
        self.bar = click.progressbar(length=rounds, label="training", file=sys.stderr, show_pos=True)
        self.terminal = sys.stderr.isatty()

    def after_iteration(self, model: xgb.Booster, epoch: int, evals_log: dict[str, Any]) -> bool:
        val_auc = evals_log.get("val", {}).get("auc", [float("nan")])[-1]
        if self.terminal:
            self.bar.label = f"training (val AUC {val_auc:.4f})"
            self.bar.update(1)
        elif (epoch + 1) % 10 == 0:
            log.info("round %d/%d: val AUC %.4f", epoch + 1, self.bar.length, val_auc)
        return False

    def after_training(self, model: xgb.Booster) -> xgb.Booster:
        if self.terminal:
            self.bar.render_finish()
        return model


def training_output(
    trainer: ModelTrainer,
    metrics: dict[str, Any],
    data_window: dict[str, Any],
    version: str | None = None,
    model_id: str | None = None,
) -> TrainingOutput:
    """The TrainingOutput record of a trained model: the model, its test sample and its training record.

    `metrics` is EvaluationMetrics.to_dict() of the test split; the test sample holds at most 5,000 test rows
    with XGBoost's own probabilities, so a compiled library can be checked against them. `drift_reference` holds
    the quantile bins of each feature on the training split and of the scores on the test sample (monitoring).
    """
    if trainer.best_iteration is None:  # a model set without train()
        raise RuntimeError("no best iteration: call train() first")
    version = version or trainer.create_version_string()
    sample = trainer.test_sample()
    return TrainingOutput(
        model_id=model_id or trainer.create_model_id(version),
        version=version,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        model=trainer.model_bytes(),
        test_sample=sample,
        algorithm="xgboost",
        training_samples=len(trainer.splits["train"].y),
        split_sizes={name: len(split.y) for name, split in trainer.splits.items()},
        features=tuple(FEATURE_NAMES),
        hyperparameters={**trainer.params, "n_estimators": trainer.n_estimators},
        feature_importance=trainer.get_feature_importance(),
        threshold=metrics["threshold"],
        metrics={k: metrics[k] for k in TRAINING_METRICS},
        data_window=data_window,
        best_iteration=trainer.best_iteration,
        num_trees=trainer.best_iteration + 1,
        drift_reference=trainer.drift_reference(sample),
    )


def write_training_output(
    out_dir: str | Path,
    trainer: ModelTrainer,
    metrics: dict[str, Any],
    data_window: dict[str, Any],
    version: str | None = None,
) -> dict[str, Any]:
    """Write the training output folder `out_dir` (`training_output(...).write`); returns its training record."""
    output = training_output(trainer, metrics, data_window, version)
    output.write(out_dir)
    return output.record()


TRAINING_METRICS = (
    "auc_score",
    "precision",
    "recall",
    "f1_score",
    "accuracy",
    "specificity",
    "fpr",
    "fnr",
    "confusion_matrix",
    "threshold",
)


#: The columns of the default training query (config.DEFAULT_TRAINING_QUERY), in its order.
QUERY_COLUMNS = [*FEATURE_NAMES, LABEL, "labelled_at"]


def _named_columns(df: pd.DataFrame) -> pd.DataFrame:
    """`df` with the training query's column names when it has none: `pd.DataFrame(await conn.fetch(query))`
    numbers the columns 0..n-1, and the rows of the default query come in QUERY_COLUMNS order."""
    if list(df.columns) == list(range(len(df.columns))) and len(FEATURE_NAMES) < len(df.columns) <= len(QUERY_COLUMNS):
        return df.set_axis(QUERY_COLUMNS[: len(df.columns)], axis=1)
    return df
