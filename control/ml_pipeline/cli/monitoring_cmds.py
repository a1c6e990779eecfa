"""`ml-pipeline drift-report` and `ml-pipeline ab-report`: offline monitoring of a served model.

`drift-report` compares a window of live alerts with the model's training-time reference (PSI, KS,
Wasserstein; histograms as PNG); with --fail-on-drift it exits 1 when a PSI reaches 0.25. `ab-report` joins
the prediction log with labels (a prediction's request_id is the alert_id of its label) and compares
champion and challenger.
"""

from __future__ import annotations

import math
from pathlib import Path

import click
import numpy as np

from ml_pipeline.cli.checks import writable_dir
from ml_pipeline.cli.data_cmds import database_password
from ml_pipeline.cli.output import emit, json_option
from ml_pipeline.cli.registry_cmds import open_registry, registry_option
from ml_pipeline.cli.train_cmds import data_option, load_labelled, lookback_option
from ml_pipeline.config import MLPipelineConfig
from ml_pipeline.data.features import FEATURE_NAMES
from ml_pipeline.data.sources import data_window, is_dsn
from ml_pipeline.errors import JobFailed, UsageError
from ml_pipeline.monitoring.ab_report import ABReport, load_labels, load_predictions
from ml_pipeline.monitoring.drift import PSI_ACT
from ml_pipeline.monitoring.paired_report import PairedReport, shadow_records

WINDOW_UNITS = {"h": 1 / 24, "d": 1.0, "w": 7.0}


def window_days(text: str) -> float:
    """Days in a window such as `36h`, `7d` or `2w` (UsageError otherwise)."""
    unit = text[-1:].lower()
    try:
        value = float(text[:-1]) * WINDOW_UNITS[unit]
    except (KeyError, ValueError):
        raise UsageError(f"--window {text!r} is not a duration: use e.g. 36h, 7d or 2w") from None
    if not value > 0:
        raise UsageError(f"--window {text!r} must be positive")
    return value


@click.command("drift-report")
@click.option("--model", "model_id", required=True, help="Registered model id whose reference is compared.")
@data_option
@lookback_option
@click.option(
    "--window",
    help="Only the span ending at the newest alert read: 36h, 7d, 2w (the newest alert, not now: an older "
    "file works; applied within --lookback-days when both are given).",
)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Report directory.")
@click.option("--fail-on-drift", is_flag=True, help=f"Exit 1 when a feature's or the score's PSI is >= {PSI_ACT}.")
@registry_option
@json_option
def drift_report(
    model_id: str,
    data: str | None,
    lookback_days: int | None,
    window: str | None,
    out: Path,
    fail_on_drift: bool,
    registry_path: str | None,
    as_json: bool,
) -> None:
    """Drift of live alerts against a model's training reference: PSI, KS and Wasserstein, with histograms."""
    from ml_pipeline.monitoring.drift_report import DriftAnalysis, write_drift_report  # matplotlib only here

    days = window_days(window) if window else None
    writable_dir(out, "--out")
    registry = open_registry(registry_path)
    registry.get_model(model_id)  # an unknown id is a usage error before any data is read
    config = MLPipelineConfig.from_env()
    lookback = lookback_days
    if lookback is None and days is not None and is_dsn(data or config.database_dsn):
        # a database is read through its lookback: make it span the window at least
        lookback = max(config.training.lookback_days, math.ceil(days))
    source, lookback, frame = load_labelled(data, lookback, config)
    if days is not None:
        if "labelled_at" not in frame:
            raise UsageError("--window needs label times (a labelled_at column); use --lookback-days or leave it out")
        cutoff = frame["labelled_at"].max() - np.timedelta64(round(days * 86400), "s")
        frame = frame[frame["labelled_at"] >= cutoff]
    if frame.empty:
        raise UsageError("no live rows in the window: widen --window/--lookback-days")
    live = frame[FEATURE_NAMES].to_numpy(dtype=np.float32)
    analysis = DriftAnalysis.run(registry, model_id, live, data_window(source, lookback, frame))
    index = write_drift_report(out, analysis)
    rows = [d.row() for d in [*analysis.features, analysis.score]]
    if as_json:
        emit({**analysis.to_dict(), "report": str(index)}, as_json=True)
    else:
        emit(rows, as_json=False, title=f"Drift of {model_id} ({len(frame):,} live rows)")
        click.echo(f"report: {index}")
    worst = analysis.worst
    if fail_on_drift and worst.psi >= PSI_ACT:
        raise JobFailed(f"drift: {worst.name} has PSI {worst.psi:.3f} >= {PSI_ACT}; see {index}")


@click.command("ab-report")
@click.option(
    "--log",
    "log_source",
    required=True,
    metavar="FILE|DSN",
    help="Prediction log: the JSON Lines file (FILE or file:FILE, as in ML_PREDICTION_LOG; rotated FILE.1... "
    "included) or a postgresql:// DSN.",
)
@click.option(
    "--labels",
    "label_source",
    metavar="FILE|DSN",
    help="Labels (alert_id, is_fraud): .csv/.parquet or a postgresql:// DSN (labelled_alerts)  [default: database].",
)
@click.option("--bootstrap", type=click.IntRange(100, 100_000), default=1000, show_default=True, help="Resamples.")
@click.option("--seed", type=int, default=7, show_default=True, help="Bootstrap seed.")
@json_option
def ab_report(log_source: str, label_source: str | None, bootstrap: int, seed: int, as_json: bool) -> None:
    """Champion versus challenger on logged, labelled predictions: per-arm metrics with 95 % intervals; on a
    shadow log, also both models on the same requests (paired bootstrap, McNemar).

    A prediction is joined to its label on request_id = alert_id: the caller must send the alert's id as
    the Predict request_id. When no logged request_id matches a label the report exits 1 and says so."""
    config = MLPipelineConfig.from_env()
    labels_from = label_source or config.database_dsn
    predictions = load_predictions(log_source, database_password(log_source, config) if is_dsn(log_source) else None)
    labels = load_labels(labels_from, database_password(labels_from, config) if is_dsn(labels_from) else None)
    report = ABReport.compute(predictions, labels, n_bootstrap=bootstrap, seed=seed)
    shadowed = not shadow_records(predictions).empty
    paired = PairedReport.compute(predictions, labels, n_bootstrap=bootstrap, seed=seed) if shadowed else None
    if as_json:
        emit({**report.to_dict(), "paired": paired.to_dict() if paired else None}, as_json=True)
        return
    if paired is None or report.arms[1].predictions:  # a shadow log with no A/B traffic: the paired report alone
        emit(
            [arm.row() for arm in report.arms],
            as_json=False,
            title=f"A/B report ({report.joined:,} labelled predictions)",
        )
        click.echo(report.verdict)
    if paired is not None:
        click.echo("shadow, paired on the same requests:")
        for line in paired.lines():
            click.echo(line)


COMMANDS = [drift_report, ab_report]
