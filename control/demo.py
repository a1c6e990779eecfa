"""The main job (`make demo`, `python -m ml_pipeline.demo`): the pipeline end to end on generated data.

A list of named steps run in order, each a function that takes the shared DemoRun, does one thing and
returns a one-line summary; the runner prints each step with its time. Append a Step to STEPS to extend
the demo. Everything lands in demo_output/ (data, training output of contract A, HTML report).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import numpy as np
import pandas as pd

from ml_pipeline.config import MLPipelineConfig
from ml_pipeline.data.generator import generate_alerts
from ml_pipeline.data.sources import data_window, load_training_data
from ml_pipeline.errors import JobFailed, PipelineError
from ml_pipeline.training.evaluator import EvaluationMetrics, ModelEvaluator
from ml_pipeline.training.trainer import ModelTrainer, write_training_output

DEMO_DIR = Path("demo_output")
DEMO_ROWS = 100_000
DEMO_DAYS = 14
DEMO_SEED = 42


@dataclass
class DemoRun:
    """State handed from step to step (each step fills in what the next ones need)."""

    out: Path
    config: MLPipelineConfig
    data_file: Path | None = None
    frame: pd.DataFrame | None = None
    trainer: ModelTrainer | None = None
    metrics: EvaluationMetrics | None = None
    test_proba: np.ndarray | None = None
    training_dir: Path | None = None
    training_record: dict[str, Any] = field(default_factory=dict)
    report_index: Path | None = None


@dataclass(frozen=True)
class Step:
    """One named step of the demo: `run` does the work and returns a one-line summary."""

    title: str
    run: Callable[[DemoRun], str]


def generate_data(run: DemoRun) -> str:
    """Generate labelled alerts ending now and save them as Parquet."""
    frame = generate_alerts(DEMO_ROWS, days=DEMO_DAYS, seed=DEMO_SEED)
    run.data_file = run.out / "alerts.parquet"
    frame.to_parquet(run.data_file, index=False)
    fraud = int(frame["is_fraud"].sum())
    return f"{len(frame):,} alerts over {DEMO_DAYS} days, {fraud:,} fraud ({fraud / len(frame):.1%}) → {run.data_file}"


def load_data(run: DemoRun) -> str:
    """Read the alerts back through the training-data source (the same path as `ml-pipeline train`)."""
    run.frame = load_training_data(str(run.data_file))
    missing = int(run.frame.isna().to_numpy().sum())
    return f"{len(run.frame):,} rows, {missing:,} missing feature values (kept as NaN)"


def train_model(run: DemoRun) -> str:
    """Split 70/10/20 and train XGBoost with early stopping, using the configured hyperparameters."""
    model = run.config.model
    run.trainer = ModelTrainer(
        max_depth=model.max_depth, learning_rate=model.learning_rate, n_estimators=model.n_estimators
    )
    dtrain, dval, dtest = run.trainer.prepare_data(run.frame)
    run.trainer.train(dtrain, dval)
    run.test_proba = run.trainer.predict_from_dmatrix(dtest)
    return (
        f"{dtrain.num_row():,} train / {dval.num_row():,} validation / {dtest.num_row():,} test rows; "
        f"best iteration {run.trainer.best_iteration} (model trimmed to {run.trainer.best_iteration + 1} trees)"
    )


def evaluate_model(run: DemoRun) -> str:
    """Measure the model on the held-out test split at the configured decision threshold."""
    run.metrics = ModelEvaluator(run.config.model.threshold).evaluate(run.trainer.splits["test"].y, run.test_proba)
    m = run.metrics
    return (
        f"AUC {m.auc_score:.4f}, precision {m.precision:.4f}, recall {m.recall:.4f}, F1 {m.f1_score:.4f} "
        f"at threshold {m.threshold}"
    )


def save_training_output(run: DemoRun) -> str:
    """Write model.json, training.json and test_sample.npz (what the registry registers)."""
    run.training_dir = run.out / "model"
    window = data_window(str(run.data_file), None, run.frame)
    run.training_record = write_training_output(run.training_dir, run.trainer, run.metrics.to_dict(), window)
    return f"{run.training_record['model_id']} → {run.training_dir}/"


def write_evaluation_report(run: DemoRun) -> str:
    """Draw the ROC, precision-recall, confusion-matrix, threshold and importance charts into one page."""
    from ml_pipeline.training.report import write_report  # matplotlib loads only here

    test_y = run.trainer.splits["test"].y
    importance = run.trainer.get_feature_importance()
    run.report_index = write_report(run.out / "report", run.metrics, test_y, run.test_proba, importance)
    return f"open {run.report_index}"


def check_quality_gate(run: DemoRun) -> str:
    """Refuse to go further with a model below the configured AUC, precision and recall minimums."""
    model = run.config.model
    failures = run.metrics.gate_failures(model.min_auc_score, model.min_precision, model.min_recall)
    if failures:
        raise JobFailed(f"quality gate failed: {'; '.join(failures)}")
    return f"passed (AUC ≥ {model.min_auc_score}, precision ≥ {model.min_precision}, recall ≥ {model.min_recall})"


STEPS: list[Step] = [
    Step("Generate sample call data", generate_data),
    Step("Load training data", load_data),
    Step("Train XGBoost model", train_model),
    Step("Evaluate on the test split", evaluate_model),
    Step("Save training output", save_training_output),
    Step("Write evaluation report", write_evaluation_report),
    Step("Quality gate", check_quality_gate),
]


def run_steps(run: DemoRun, steps: list[Step]) -> None:
    """Run each step in order, printing its number, title, summary and time; stop at the first failure."""
    started = time.perf_counter()
    for number, step in enumerate(steps, start=1):
        click.echo(click.style(f"[{number}/{len(steps)}] {step.title}", bold=True))
        t0 = time.perf_counter()
        summary = step.run(run)
        click.echo(f"      {summary}  ({time.perf_counter() - t0:.2f} s)")
    click.echo(click.style(f"Done in {time.perf_counter() - started:.1f} s; everything is in {run.out}/", fg="green"))


def main(out: Path = DEMO_DIR) -> int:
    """Run the demo into `out`; returns the exit code (0 ok, 1 a step failed, 2 bad configuration)."""
    try:
        config = MLPipelineConfig.from_env()
        out.mkdir(parents=True, exist_ok=True)
        run_steps(DemoRun(out=out, config=config), STEPS)
    except PipelineError as exc:
        click.echo(click.style(f"error: {exc}", fg="red"), err=True)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
