"""The one training recipe: data → split → train → evaluate → quality gate → training output.

`run_training(data, settings)` runs it and returns a TrainingResult; the train command, a retraining run (on
this machine or on Dask) and the demo all call it. Where the rows come from and how they are split is the
`data` step: `SourceData` reads a file or database, `FrameData` takes a DataFrame in hand, and
`retraining.dask_train.DaskData` reads partitions on Dask workers and trains there (its own trainer).

    result = run_training(SourceData("alerts.parquet", None), TrainingSettings.from_config(config.model), out=out)
    result.gate.passed, result.metrics.auc_score, result.output.model_id
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC
from functools import cached_property
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np
import pandas as pd
import xgboost as xgb

from ml_pipeline.config import ModelConfig
from ml_pipeline.data.features import FEATURE_NAMES, LABEL
from ml_pipeline.data.sources import TIMESTAMP, data_window, load_training_data
from ml_pipeline.errors import JobFailed
from ml_pipeline.records import TrainingOutput
from ml_pipeline.training.evaluator import EvaluationMetrics, ModelEvaluator
from ml_pipeline.training.gate import GateResult, GateThresholds, quality_gate
from ml_pipeline.training.trainer import ModelTrainer, stratified_split, training_output

TrainerT = TypeVar("TrainerT", bound=ModelTrainer)


@dataclass(frozen=True)
class TrainingSettings:
    """Hyperparameters, seed, decision threshold, quality gate and (for retraining) the minimum rows of a run."""

    max_depth: int = 6
    learning_rate: float = 0.1
    n_estimators: int = 100
    random_state: int = 42
    threshold: float = 0.7
    gate: GateThresholds = field(default_factory=GateThresholds)
    min_rows: int | None = None
    """Refuse (JobFailed) a window with fewer rows or a single class, before training; None: no such check."""
    early_stopping_rounds: int = 20
    verbose: bool = False

    @classmethod
    def from_config(cls, model: ModelConfig, **overrides: Any) -> TrainingSettings:
        """The configured hyperparameters, threshold and gate (ML_MODEL_*, ML_DECISION_THRESHOLD, ML_MIN_*),
        with `overrides` (None values are ignored, so optional command-line options can be passed as they are)."""
        base = cls(
            max_depth=model.max_depth,
            learning_rate=model.learning_rate,
            n_estimators=model.n_estimators,
            threshold=model.threshold,
            gate=GateThresholds.from_config(model),
        )
        return replace(base, **{k: v for k, v in overrides.items() if v is not None})

    def trainer_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ModelTrainer for these settings."""
        return {
            "max_depth": self.max_depth,
            "learning_rate": self.learning_rate,
            "n_estimators": self.n_estimators,
            "random_state": self.random_state,
            "verbose": self.verbose,
        }


@dataclass(frozen=True)
class LoadedData:
    """What the data step read: its data window record (training.json's `data_window`) and the row counts."""

    data_window: dict[str, Any]
    total: int
    fraud: int


@dataclass(frozen=True)
class SplitData:
    """The split the data step made: the train and validation sets the trainer trains on, and the row counts.

    `rows` holds total, fraud, train, val and test; `test_labelled_at` the label times (naive UTC datetime64)
    of the test split's rows, aligned with them, or None when the source has no label times.
    """

    train: Any
    val: Any
    rows: dict[str, int]
    test_labelled_at: np.ndarray | None = None


class DataStep(ABC, Generic[TrainerT]):
    """Where the rows come from and how they are split, with the trainer that can train on that split."""

    @abstractmethod
    def make_trainer(self, settings: TrainingSettings) -> TrainerT:
        """The trainer for these settings."""

    @abstractmethod
    def load(self, trainer: TrainerT) -> LoadedData:
        """Read the labelled alerts (timed as "extract")."""

    @abstractmethod
    def split(self, trainer: TrainerT) -> SplitData:
        """Split them 70/10/20 into `trainer.splits` (seeded, stratified); the sets to train on."""


class FrameData(DataStep[ModelTrainer]):
    """Labelled alerts in a DataFrame, with the data window they came from; split by `ModelTrainer.prepare_data`."""

    def __init__(self, frame: pd.DataFrame | None = None, window: dict[str, Any] | None = None) -> None:
        self.frame = frame
        self.window = window

    def make_trainer(self, settings: TrainingSettings) -> ModelTrainer:
        """A ModelTrainer with these settings."""
        return ModelTrainer(**settings.trainer_kwargs())

    def read(self) -> pd.DataFrame:
        """The rows (here: the frame given)."""
        if self.frame is None:
            raise RuntimeError("FrameData without a frame")
        return self.frame

    def describe(self, frame: pd.DataFrame) -> dict[str, Any]:
        """The data window record of `frame` (here: the one given, else its label times with source "dataframe")."""
        if self.window is not None:
            return self.window
        return {**data_window("dataframe", None, frame), "source": "dataframe"}

    def load(self, trainer: ModelTrainer) -> LoadedData:
        """Read the rows and describe them."""
        frame = self.frame = self.read()
        self.window = self.describe(frame)
        fraud = int(frame[LABEL].sum()) if LABEL in frame else 0
        return LoadedData(self.window, len(frame), fraud)

    def split(self, trainer: ModelTrainer) -> SplitData:
        """`trainer.prepare_data`; the frame is released (the splits hold the rows now)."""
        frame = self.read()
        dtrain, dval, _ = trainer.prepare_data(frame)
        labelled_at = None
        if TIMESTAMP in frame:  # the same seeded split of the row numbers: which rows went to the test split
            labels = frame[LABEL].to_numpy(dtype=np.int8)
            numbers = stratified_split(np.arange(len(labels)).reshape(-1, 1), labels, trainer.random_state)
            labelled_at = utc_datetime64(frame[TIMESTAMP])[numbers["test"].X[:, 0]]
        self.frame = None
        return SplitData(dtrain, dval, split_rows(trainer, len(frame)), labelled_at)


class SourceData(FrameData):
    """Labelled alerts read from a .csv/.parquet file or a postgresql:// DSN (`data.sources.load_training_data`)."""

    def __init__(
        self, source: str, lookback_days: int | None, query: str | None = None, password: str | None = None
    ) -> None:
        super().__init__()
        self.source = source
        self.lookback_days = lookback_days
        self.query = query
        self.password = password

    def read(self) -> pd.DataFrame:
        """The rows of the window (read once; `split` releases them)."""
        if self.frame is None:
            self.frame = load_training_data(self.source, self.lookback_days, query=self.query, password=self.password)
        return self.frame

    def describe(self, frame: pd.DataFrame) -> dict[str, Any]:
        """Source (without password), lookback, first and last label time, rows."""
        return data_window(self.source, self.lookback_days, frame)


@dataclass(frozen=True)
class TrainingResult:
    """A trained and evaluated model: the trainer (best iteration), test metrics, gate verdict, data and rows.

    `output` is its TrainingOutput record (built on first use); `output_dir` where run_training wrote it, if it did.
    """

    trainer: ModelTrainer
    metrics: EvaluationMetrics
    gate: GateResult
    data_window: dict[str, Any]
    rows: dict[str, int]
    version: str
    test_proba: np.ndarray = field(repr=False)
    test_labelled_at: np.ndarray | None = field(default=None, repr=False)
    output_dir: Path | None = None
    name: str | None = None

    @property
    def model_id(self) -> str:
        """The name given to run_training, else `xgboost_v<version>`."""
        return self.name or self.trainer.create_model_id(self.version)

    @cached_property
    def output(self) -> TrainingOutput:
        """The training output record (model, test sample, training record), built once."""
        return training_output(self.trainer, self.metrics.to_dict(), self.data_window, self.version, self.model_id)

    def write(self, folder: str | Path) -> TrainingOutput:
        """Write the training output folder; returns its record."""
        output = self.output
        output.write(folder)
        return output


def run_training(
    data: DataStep[TrainerT],
    settings: TrainingSettings,
    *,
    version: str | None = None,
    out: str | Path | None = None,
    timings: dict[str, float] | None = None,
    model_id: str | None = None,
) -> TrainingResult:
    """The recipe: load (`extract`), check the rows (with `settings.min_rows`), split and train with early
    stopping (`train`), evaluate on the test split (`evaluate`), apply the quality gate, and write the
    training output folder into `out` when given (whatever the gate says: a failed model is kept for inspection).

    `version` dates the model (default: now, UTC) and names it `xgboost_v<version>` unless `model_id` is given;
    `timings` receives the seconds of each step.
    """
    timings = {} if timings is None else timings
    trainer = data.make_trainer(settings)
    with timed(timings, "extract"):
        loaded = data.load(trainer)
    if settings.min_rows is not None:
        check_rows(loaded.total, loaded.fraud, settings.min_rows, window_text(loaded.data_window))
    with timed(timings, "train"):
        split = data.split(trainer)
        trainer.train(split.train, split.val, early_stopping_rounds=settings.early_stopping_rounds)
    with timed(timings, "evaluate"):
        test = trainer.splits["test"]
        proba = trainer.predict_from_dmatrix(xgb.DMatrix(test.X, feature_names=FEATURE_NAMES))
        metrics = ModelEvaluator(settings.threshold).evaluate(test.y, proba)
    result = TrainingResult(
        trainer=trainer,
        metrics=metrics,
        gate=quality_gate(metrics, settings.gate),
        data_window=loaded.data_window,
        rows=split.rows,
        version=version or trainer.create_version_string(),
        test_proba=proba,
        test_labelled_at=split.test_labelled_at,
        output_dir=None if out is None else Path(out),
        name=model_id,
    )
    if out is not None:
        with timed(timings, "write"):
            result.write(out)
    return result


# ---- helpers of the recipe ----


def check_rows(rows: int, fraud: int, min_rows: int, where: str) -> None:
    """Refuse a window with fewer than `min_rows` alerts or only one class, saying what to change."""
    if rows < min_rows:
        raise JobFailed(
            f"only {rows} labelled alerts in {where} (need at least {min_rows}, ML_RETRAIN_MIN_ROWS); "
            "widen the window with --lookback-days or wait for more labels"
        )
    if fraud == 0 or fraud == rows:
        only = "fraud" if fraud else "normal"
        raise JobFailed(f"all {rows} labelled alerts in {where} are {only}: training needs fraud and normal alerts")


def window_text(window: dict[str, Any]) -> str:
    """The data window in words, for reasons: source and lookback."""
    days = window.get("lookback_days")
    return f"{window['source']}" + (f" (last {days} days)" if days else "")


def split_rows(trainer: ModelTrainer, total: int) -> dict[str, int]:
    """Row counts of the run: total, fraud, and the three splits."""
    counts = {name: len(split.y) for name, split in trainer.splits.items()}
    fraud = sum(int(np.asarray(split.y).sum()) for split in trainer.splits.values())
    return {"total": total, "fraud": fraud, **counts}


def utc_datetime64(stamps: pd.Series) -> np.ndarray:
    """Aware label times as naive UTC datetime64[us] (what the comparison with the champion's data uses)."""
    naive: np.ndarray = stamps.dt.tz_convert(UTC).dt.tz_localize(None).to_numpy(dtype="datetime64[us]")
    return naive


@contextmanager
def timed(timings: dict[str, float], step: str) -> Iterator[None]:
    """Record the seconds the block took as `timings[step]`."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        timings[step] = round(time.perf_counter() - t0, 3)
