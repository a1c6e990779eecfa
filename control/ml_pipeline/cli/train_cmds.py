"""`ml-pipeline train` and `ml-pipeline evaluate`: fit a model from a file or database, measure one.

`train` runs the training pipeline (`training.pipeline.run_training`), which writes the training output
directory (`records.TrainingOutput`), and exits 1 when the quality gate fails (the output is still written,
for inspection). `evaluate` scores labelled data with a saved model and can write the HTML report.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import click
import numpy as np
import pandas as pd
import xgboost as xgb

from ml_pipeline.cli.checks import writable_dir
from ml_pipeline.cli.data_cmds import database_password
from ml_pipeline.cli.output import emit, json_option
from ml_pipeline.config import MLPipelineConfig
from ml_pipeline.data.features import FEATURE_NAMES, LABEL
from ml_pipeline.data.sources import data_window, is_dsn, redact_dsn
from ml_pipeline.errors import JobFailed, UsageError
from ml_pipeline.model_registry.registry import MODEL_ID_PATTERN
from ml_pipeline.records import TrainingOutput
from ml_pipeline.training.evaluator import EvaluationMetrics, ModelEvaluator
from ml_pipeline.training.gate import GateThresholds, quality_gate
from ml_pipeline.training.pipeline import SourceData, TrainingSettings, run_training
from ml_pipeline.training.trainer import ModelTrainer, gain_importance, mean_abs_contribution

DEFAULT_RUNS_DIR = Path("models/runs")

data_option = click.option(
    "--data",
    metavar="FILE|DSN",
    help="Labelled alerts: a .csv/.parquet file or a postgresql:// DSN  [default: the configured database]",
)
lookback_option = click.option(
    "--lookback-days",
    type=click.IntRange(min=1),
    help="Use alerts labelled in the last N days  [default: ML_TRAINING_LOOKBACK_DAYS for a database, all for a file]",
)
threshold_option = click.option(
    "--threshold", type=click.FloatRange(0.0, 1.0), help="Decision threshold  [default: ML_DECISION_THRESHOLD]"
)


def labelled_source(data: str | None, lookback_days: int | None, config: MLPipelineConfig) -> SourceData:
    """The data source and lookback from options and configuration (a database: the configured query)."""
    source = data or config.database_dsn
    if is_dsn(source):
        lookback = lookback_days or config.training.lookback_days
        query, password = config.training.training_query, database_password(source, config)
        return SourceData(source, lookback, query=query, password=password)
    return SourceData(source, lookback_days)


def load_labelled(
    data: str | None, lookback_days: int | None, config: MLPipelineConfig
) -> tuple[str, int | None, pd.DataFrame]:
    """Resolve the data source and lookback from options and configuration, then load the alerts."""
    labelled = labelled_source(data, lookback_days, config)
    return labelled.source, labelled.lookback_days, labelled.read()


def gate_report(metrics: EvaluationMetrics, config: MLPipelineConfig) -> dict[str, Any]:
    """Quality gate outcome with the configured minimums and the failed conditions."""
    return quality_gate(metrics, GateThresholds.from_config(config.model)).to_dict()


def metric_lines(metrics: EvaluationMetrics, gate: dict[str, Any]) -> dict[str, Any]:
    """The metrics people read first, in reading order, ending with the gate verdict."""
    (tn, fp), (fn, tp) = metrics.confusion_matrix
    return {
        "samples": f"{metrics.samples:,} ({metrics.positives:,} fraud)",
        "AUC": metrics.auc_score,
        "threshold": metrics.threshold,
        "precision": metrics.precision,
        "recall": metrics.recall,
        "F1": metrics.f1_score,
        "accuracy": metrics.accuracy,
        "false positive rate": metrics.fpr,
        "confusion [[tn fp] [fn tp]]": f"[[{tn} {fp}] [{fn} {tp}]]",
        "quality gate": "passed" if gate["passed"] else "FAILED: " + "; ".join(gate["failures"]),
    }


@click.command("train")
@data_option
@lookback_option
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Output directory  [default: models/runs/<model_id>]",
)
@click.option("--max-depth", type=click.IntRange(1, 20), help="XGBoost max_depth  [default: ML_MODEL_MAX_DEPTH]")
@click.option(
    "--n-estimators", type=click.IntRange(min=1), help="Maximum boosting rounds  [default: ML_MODEL_N_ESTIMATORS]"
)
@click.option(
    "--learning-rate",
    type=click.FloatRange(0.0, 1.0, min_open=True),
    help="Learning rate  [default: ML_MODEL_LEARNING_RATE]",
)
@click.option(
    "--model-id",
    help="Name of the model in the registry (letters, digits, '.', '_', '-')  [default: xgboost_v<UTC time>]",
)
@threshold_option
@json_option
def train(
    data: str | None,
    lookback_days: int | None,
    out: Path | None,
    max_depth: int | None,
    n_estimators: int | None,
    learning_rate: float | None,
    threshold: float | None,
    model_id: str | None,
    as_json: bool,
) -> None:
    """Train a fraud model, evaluate it on the held-out test split and write the training output."""
    if model_id is not None and not MODEL_ID_PATTERN.fullmatch(model_id):
        raise UsageError(f"invalid --model-id {model_id!r}: use letters, digits, '.', '_' and '-' (at most 128)")
    writable_dir(out if out is not None else DEFAULT_RUNS_DIR, "--out")  # before the data is read and trained on
    config = MLPipelineConfig.from_env()
    settings = TrainingSettings.from_config(
        config.model,
        max_depth=max_depth,
        learning_rate=learning_rate,
        n_estimators=n_estimators,
        threshold=threshold,
        verbose=logging.getLogger().isEnabledFor(logging.DEBUG),
    )
    version = ModelTrainer.create_version_string()
    out_dir = out or DEFAULT_RUNS_DIR / (model_id or ModelTrainer.create_model_id(version))
    result = run_training(
        labelled_source(data, lookback_days, config), settings, version=version, out=out_dir, model_id=model_id
    )
    record = result.output.record()
    gate = result.gate.to_dict()
    if as_json:
        emit({**record, "output_dir": str(out_dir), "gate": gate}, as_json=True)
    else:
        header = {
            "model_id": record["model_id"],
            "data": f"{record['data_window']['source']} ({result.rows['total']:,} rows)",
            "trees": f"{record['num_trees']} (best iteration {record['best_iteration']})",
            "output": str(out_dir),
        }
        emit({**header, **metric_lines(result.metrics, gate)}, as_json=False, title="Training finished (test split)")
    if not gate["passed"]:
        raise JobFailed(f"quality gate failed ({'; '.join(gate['failures'])}); output kept in {out_dir}")


@click.command("evaluate")
@click.option(
    "--model",
    "model_path",
    required=True,
    type=click.Path(exists=True, path_type=Path),
    help="A training output directory or a model.json file.",
)
@data_option
@lookback_option
@threshold_option
@click.option("--report", type=click.Path(file_okay=False, path_type=Path), help="Write the HTML report here.")
@json_option
def evaluate(
    model_path: Path,
    data: str | None,
    lookback_days: int | None,
    threshold: float | None,
    report: Path | None,
    as_json: bool,
) -> None:
    """Score labelled alerts with a saved model and print its metrics (optionally an HTML report)."""
    if report is not None:
        writable_dir(report, "--report")
    config = MLPipelineConfig.from_env()
    booster, recorded_threshold = load_model(model_path)
    source, lookback, frame = load_labelled(data, lookback_days, config)
    chosen = next(t for t in (threshold, recorded_threshold, config.model.threshold) if t is not None)
    X = frame[FEATURE_NAMES].to_numpy(dtype=np.float32)
    y = frame[LABEL].to_numpy()
    proba = booster.predict(xgb.DMatrix(X, feature_names=FEATURE_NAMES))
    metrics = ModelEvaluator(chosen).evaluate(y, proba)
    gate = gate_report(metrics, config)
    index = None
    if report is not None:
        from ml_pipeline.training.report import write_report  # matplotlib loads only when a report is asked for

        index = write_report(report, metrics, y, proba, gain_importance(booster), mean_abs_contribution(booster, X))
    if as_json:
        window = data_window(source, lookback, frame)
        result = {"model": str(model_path), "data_window": window, "metrics": metrics.to_dict(), "gate": gate}
        emit({**result, "report": str(index) if index else None}, as_json=True)
    else:
        shown = redact_dsn(source) if is_dsn(source) else source
        header = {"model": str(model_path), "data": f"{shown} ({len(frame):,} rows)"}
        footer = {"report": str(index)} if index else {}
        emit({**header, **metric_lines(metrics, gate), **footer}, as_json=False, title="Evaluation")


def load_model(path: Path) -> tuple[xgb.Booster, float | None]:
    """Load a model file (or a training output directory's) and the threshold its training record holds, if any."""
    model_file = TrainingOutput.model_file(path) if path.is_dir() else path
    if not model_file.is_file():
        raise UsageError(
            f"{path}: no {model_file.name} there; give a training output directory or a model file"
            if path.is_dir()
            else f"{path}: no such model file; give a training output directory or a model file"
        )
    try:
        booster = xgb.Booster(model_file=str(model_file))
    except xgb.core.XGBoostError as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else "unreadable"
        raise UsageError(f"{model_file}: not an XGBoost model ({first_line})") from None
    if booster.feature_names not in (None, FEATURE_NAMES):
        raise UsageError(f"{model_file}: model features {booster.feature_names} differ from {FEATURE_NAMES}")
    folder = model_file.parent
    beside_record = model_file == TrainingOutput.model_file(folder) and TrainingOutput.record_file(folder).is_file()
    threshold = TrainingOutput.read_record(folder).get("threshold") if beside_record else None
    return booster, threshold


COMMANDS = [train, evaluate]
