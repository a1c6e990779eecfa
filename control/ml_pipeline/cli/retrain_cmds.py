"""`ml-pipeline retrain`, `ml-pipeline runs list|show` and `ml-pipeline scheduler`.

Exit codes of `retrain`: 0 when a candidate was registered or when the new model was rejected for not
beating the champion by the margin ("rejected: ..."); 1 when the run failed (too few rows, a single
class, unreachable database, failed quality gate): nothing is registered and the reason is printed.
Every run, whatever its outcome, leaves a run record that `ml-pipeline runs show RUN_ID` displays.
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from ml_pipeline.ab_testing.auto_rollout import AutoRollout, RolloutDriver
from ml_pipeline.ab_testing.evidence import PrometheusMetrics
from ml_pipeline.cli.checks import existing_registry, writable_dir, writable_registry, writing
from ml_pipeline.cli.output import emit, json_option
from ml_pipeline.config import MLPipelineConfig, env_value
from ml_pipeline.errors import JobFailed
from ml_pipeline.model_registry import open_registry
from ml_pipeline.retraining import RetrainSettings, RunRecord, RunStore, retrain
from ml_pipeline.retraining.records import RunStatus
from ml_pipeline.retraining.scheduler import RetrainScheduler

log = logging.getLogger(__name__)

registry_option = click.option(
    "--registry",
    "registry_path",
    type=str,
    help="Registry folder or postgresql:// DSN  [default: ML_MODEL_REGISTRY_PATH]",
)
runs_option = click.option(
    "--runs",
    "runs_path",
    type=click.Path(file_okay=False, path_type=Path),
    help="Run records folder  [default: ML_RETRAIN_RUNS_PATH, else retrain_runs beside the registry]",
)
data_option = click.option(
    "--data",
    metavar="FILE|DSN",
    help="Labelled alerts: a postgresql:// DSN or a file  [default: the configured database]",
)
lookback_option = click.option(
    "--lookback-days",
    type=click.IntRange(1, 3650),
    help="Days of labels to train on  [default: ML_TRAINING_LOOKBACK_DAYS]",
)
dask_option = click.option(
    "--dask-scheduler",
    metavar="ADDRESS",
    help="Train on this Dask cluster, e.g. tcp://dask-scheduler:8786  [default: ML_RETRAIN_DASK_SCHEDULER]",
)


class RetrainContext:
    """Configuration, registry and run store of one command, from options and the environment."""

    def __init__(
        self,
        registry_path: str | None,
        runs_path: Path | None,
        lookback_days: int | None = None,
        write: bool = False,
    ) -> None:
        """`write`: retraining will register and record runs, so the registry (created on the first run when
        missing) and the runs folder must be writable; checked now, before any data is read."""
        config = MLPipelineConfig.from_env()
        if lookback_days is not None:
            config = replace(config, training=replace(config.training, lookback_days=lookback_days))
        self.config = config
        self.settings = RetrainSettings.from_env()
        runs_given = runs_path or self.settings.runs_path
        if write:
            self.registry = writable_registry(registry_path, create=True)
        elif runs_given:
            self.registry = open_registry(registry_path or config.model.model_registry_path)
        else:  # the runs folder is found beside the registry: a mistyped registry path is an error
            self.registry = existing_registry(registry_path)
        self.runs = RunStore(runs_path or self.settings.runs_dir(self.registry.root))
        if write:
            origin = "--runs" if runs_path else "ML_RETRAIN_RUNS_PATH" if self.settings.runs_path else "run records"
            writable_dir(self.runs.root, origin)

    def retrain(self, source: str | None, dask_scheduler: str | None, **run: Any) -> RunRecord:
        """One retraining run on this context's configuration, registry and run store."""
        with writing("retrain"):
            return retrain(
                self.config,
                source=source,
                registry=self.registry,
                dask_scheduler=dask_scheduler,
                settings=self.settings,
                runs=self.runs,
                **run,
            )


def run_view(record: RunRecord) -> dict[str, Any]:
    """A run as people read it: outcome first, then data, metrics, champion and timings."""
    metrics = record.metrics or {}
    champion = record.champion or {}
    view: dict[str, Any] = {
        "run_id": record.run_id,
        "status": record.status,
        "reason": record.reason,
        "model_id": record.model_id if record.registered else None,
        "next step": record.approval_command,
        "started_at": record.started_at,
        "trigger": record.trigger + (f" (slot {record.slot})" if record.slot else ""),
        "data": f"{record.inputs.get('source')}, last {record.inputs.get('lookback_days')} days",
        "window": f"{record.data_window.get('start')} .. {record.data_window.get('end')}",
        "rows": ", ".join(f"{k} {v:,}" for k, v in record.rows.items()) or None,
        "AUC": metrics.get("auc_score"),
        "precision": metrics.get("precision"),
        "recall": metrics.get("recall"),
        "champion": champion.get("model_id"),
        "champion AUC (same rows)": champion.get("metrics", {}).get("auc_score"),
        "durations (s)": ", ".join(f"{k} {v}" for k, v in record.durations_s.items()),
        "notification": _notification_text(record.notification),
    }
    return {k: v for k, v in view.items() if v is not None}


def _notification_text(notification: dict[str, Any] | None) -> str | None:
    if notification is None:
        return None
    outcome = "delivered" if notification["delivered"] else f"FAILED ({notification['error']})"
    return f"{notification['target']} {outcome} after {notification['attempts']} attempt(s)"


@click.command("retrain")
@data_option
@lookback_option
@registry_option
@runs_option
@dask_option
@json_option
def retrain_cmd(
    data: str | None,
    lookback_days: int | None,
    registry_path: str | None,
    runs_path: Path | None,
    dask_scheduler: str | None,
    as_json: bool,
) -> None:
    """Retrain on the last N days of labelled alerts; register a candidate if it beats the champion."""
    ctx = RetrainContext(registry_path, runs_path, lookback_days, write=True)
    record = ctx.retrain(data, dask_scheduler)
    if as_json:
        emit(record.to_dict(), as_json=True)
    else:
        titles: dict[str, str] = {
            RunStatus.REGISTERED: "Candidate registered",
            RunStatus.REJECTED: "rejected: " + record.reason,
        }
        emit(run_view(record), as_json=False, title=titles.get(record.status, "Retraining failed"))
    if record.exit_code:
        raise JobFailed(f"{record.reason} (run {record.run_id}; see `ml-pipeline runs show {record.run_id}`)")


@click.group("runs")
def runs_group() -> None:
    """Retraining run records: what each run used, measured and decided."""


@runs_group.command("list")
@registry_option
@runs_option
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True, help="Newest runs to show.")
@json_option
def runs_list(registry_path: str | None, runs_path: Path | None, limit: int, as_json: bool) -> None:
    """List retraining runs, newest first."""
    records = RetrainContext(registry_path, runs_path).runs.list_runs(limit)
    if as_json:
        emit([r.to_dict() for r in records], as_json=True)
        return
    rows = [
        {
            "run_id": r.run_id,
            "status": r.status,
            "rows": r.rows.get("total"),
            "auc": (r.metrics or {}).get("auc_score"),
            "model_id": r.model_id if r.registered else None,
            "trigger": r.trigger,
            "seconds": r.durations_s.get("total"),
            "reason": r.reason if len(r.reason) <= 70 else r.reason[:67] + "...",
        }
        for r in records
    ]
    emit(rows, as_json=False)


@runs_group.command("show")
@click.argument("run_id")
@registry_option
@runs_option
@json_option
def runs_show(run_id: str, registry_path: str | None, runs_path: Path | None, as_json: bool) -> None:
    """Show one retraining run (the full record with --json)."""
    record = RetrainContext(registry_path, runs_path).runs.get(run_id)
    emit(record.to_dict() if as_json else run_view(record), as_json, title=f"Retraining run {run_id}")


@click.command("scheduler")
@click.option("--once", is_flag=True, help="Handle one slot (a missed one on start, else the next) and exit.")
@data_option
@registry_option
@runs_option
@dask_option
def scheduler_cmd(
    once: bool, data: str | None, registry_path: str | None, runs_path: Path | None, dask_scheduler: str | None
) -> None:
    """Run `retrain` on ML_TRAINING_SCHEDULE in ML_TRAINING_TIMEZONE until SIGTERM (one run per slot).

    With ML_PROMETHEUS_URL set it also drives the registry's automatic rollout, if one runs (started with
    `ml-pipeline rollout auto`), checking every ML_ROLLOUT_POLL_SECONDS."""
    ctx = RetrainContext(registry_path, runs_path, write=True)
    prometheus = os.environ.get("ML_PROMETHEUS_URL")
    driver = None
    if prometheus:
        controller = AutoRollout(ctx.registry, PrometheusMetrics(prometheus))
        driver = RolloutDriver(controller, env_value("ML_ROLLOUT_POLL_SECONDS")).start()

    def job(slot: datetime) -> RunRecord:
        return ctx.retrain(data, dask_scheduler, trigger="schedule", slot=slot)

    training = ctx.config.training
    scheduler = RetrainScheduler(
        job, training.schedule, training.timezone, ctx.runs.root / ".scheduler", catch_up=ctx.settings.catch_up
    )
    scheduler.install_signal_handlers()
    log.info("scheduler: %r in %s, runs recorded in %s", training.schedule, training.timezone, ctx.runs.root)
    try:
        scheduler.run(max_slots=1 if once else None)
    finally:
        if driver is not None:
            driver.stop()


COMMANDS = [retrain_cmd, runs_group, scheduler_cmd]
