"""One retraining run: extract the lookback window, train, evaluate, gate, compare with the champion on
this run's test rows, register a candidate (or not, with the reason), record the run and notify.

Extracting, training, evaluating and gating are the training pipeline (`training.pipeline.run_training`),
here or on a Dask cluster (`dask_train.dask_data`, the same recipe with Dask's data step and trainer).

`retrain()` never raises for a run that failed for a known reason (too few rows, a single class, an
unreachable database, a failed gate): the returned RunRecord says why and `exit_code` is 1. A run record
is written whatever happens, before the notification, so a failed webhook never loses a run.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import xgboost as xgb

from ml_pipeline.config import MLPipelineConfig
from ml_pipeline.data import database
from ml_pipeline.data.features import FEATURE_NAMES
from ml_pipeline.data.sources import describe_source, is_dsn
from ml_pipeline.errors import JobFailed, PipelineError
from ml_pipeline.model_registry import ModelMetadata, ModelRegistry, is_database_location, open_registry
from ml_pipeline.records import TrainingOutput
from ml_pipeline.redaction import redact
from ml_pipeline.retraining.notify import WebhookNotifier, announce
from ml_pipeline.retraining.records import RunRecord, RunStatus, RunStore, new_run_id
from ml_pipeline.retraining.settings import RetrainSettings
from ml_pipeline.training.evaluator import EvaluationMetrics, ModelEvaluator
from ml_pipeline.training.pipeline import SourceData, TrainingResult, TrainingSettings, run_training, timed
from ml_pipeline.training.trainer import MIN_ROWS_PER_CLASS, TRAINING_METRICS, ModelTrainer

log = logging.getLogger(__name__)

ACTOR = "ml-pipeline retrain"
RECORDED_METRICS = (*TRAINING_METRICS, "samples", "positives")


def retrain(
    config: MLPipelineConfig,
    *,
    source: str | None = None,
    registry: ModelRegistry | str | Path | None = None,
    now: datetime | None = None,
    notifier: WebhookNotifier | None = None,
    dask_scheduler: str | None = None,
    settings: RetrainSettings | None = None,
    runs: RunStore | None = None,
    trigger: str = "manual",
    slot: datetime | None = None,
) -> RunRecord:
    """Run the eight retraining steps once and return the (already saved) run record.

    `source` is a file or DSN (default: the configured database); `registry` a ModelRegistry or its path
    (default: ML_MODEL_REGISTRY_PATH); `now` the run's start time (tests pin it); `notifier` the webhook
    (default: ML_RETRAIN_WEBHOOK_URL if set); `dask_scheduler` trains on that Dask cluster.
    """
    settings = settings or RetrainSettings.from_env()
    if not isinstance(registry, ModelRegistry):
        registry = open_registry(registry or config.model.model_registry_path)
    runs = runs or RunStore(settings.runs_dir(registry.root))
    if notifier is None and settings.webhook_url:
        notifier = WebhookNotifier(settings.webhook_url, settings.webhook_timeout_s, settings.webhook_attempts)
    source = source or config.database_dsn
    dask_scheduler = dask_scheduler or settings.dask_scheduler
    started = now or datetime.now(UTC)
    record = RunRecord(
        run_id=new_run_id(started),
        started_at=started.astimezone(UTC).isoformat(timespec="seconds"),
        trigger=trigger,
        slot=slot.isoformat() if slot else None,
        inputs=_inputs(config, settings, source, dask_scheduler),
    )
    runs.save(record)  # status "running": a run killed midway still leaves its trace
    log.info("retraining run %s started (%s)", record.run_id, record.inputs["source"])
    t0 = time.perf_counter()
    unexpected: BaseException | None = None
    try:
        _run_steps(record, config, settings, source, registry, started, dask_scheduler)
    except PipelineError as exc:
        record.status, record.reason = RunStatus.FAILED, redact(exc)
    except Exception as exc:  # a bug or an unforeseen library error: record it, then let it surface
        record.status, record.reason = RunStatus.FAILED, redact(f"unexpected {type(exc).__name__}: {exc}")
        unexpected = exc
    record.durations_s["total"] = round(time.perf_counter() - t0, 3)
    record.finished_at = datetime.now(UTC).isoformat(timespec="seconds")
    runs.save(record)
    result = announce(record.summary(), notifier)
    if result is not None:
        record.notification = result.to_dict()
        runs.save(record)
    if unexpected is not None:
        raise unexpected
    return record


def _run_steps(
    record: RunRecord,
    config: MLPipelineConfig,
    settings: RetrainSettings,
    source: str,
    registry: ModelRegistry,
    started: datetime,
    dask_scheduler: str | None,
) -> None:
    """Steps 1-7; each one stores what it learnt in `record`, the first refusal ends the run."""
    with _trained_model(config, settings, source, started, dask_scheduler, record.durations_s) as model:
        _decide(record, config, settings, registry, model)


@contextmanager
def _trained_model(
    config: MLPipelineConfig,
    settings: RetrainSettings,
    source: str,
    started: datetime,
    dask_scheduler: str | None,
    timings: dict[str, float],
) -> Iterator[TrainingResult]:
    """Steps 1-5, the training pipeline, here or on the Dask cluster (whose client stays connected while the
    model is used: its train and validation splits live on the workers)."""
    training = TrainingSettings.from_config(config.model, min_rows=settings.min_rows)
    version = ModelTrainer.create_version_string(started)
    lookback, query, password = config.training.lookback_days, config.training.training_query, _password(source, config)
    if dask_scheduler:
        from ml_pipeline.retraining.dask_train import dask_data  # dask is an optional extra

        with dask_data(dask_scheduler, source, lookback, query, password) as data:
            yield run_training(data, training, version=version, timings=timings)
    else:
        local = SourceData(source, lookback, query=query, password=password)
        yield run_training(local, training, version=version, timings=timings)


def _decide(
    record: RunRecord,
    config: MLPipelineConfig,
    settings: RetrainSettings,
    registry: ModelRegistry,
    model: TrainingResult,
) -> None:
    """Steps 5-7: gate (already applied by the pipeline), champion comparison, registration; the first refusal
    ends the run."""
    record.data_window, record.rows = model.data_window, model.rows
    record.metrics = _recorded(model.metrics)
    record.model_id = model.model_id
    record.gate = model.gate.to_dict()
    if not model.gate.passed:
        record.status = RunStatus.GATE_FAILED
        record.reason = f"quality gate failed ({'; '.join(model.gate.failures)}); nothing registered"
        return

    with timed(record.durations_s, "compare"):
        decision = _compare_with_champion(record, registry, model, settings.min_improvement, config.model.threshold)
    if decision is not None:
        record.status, record.reason = RunStatus.REJECTED, decision
        return

    with timed(record.durations_s, "register"), tempfile.TemporaryDirectory(prefix="retrain-") as work:
        out = Path(work)
        model.write(out)
        meta = ModelMetadata.from_training_output(out)
        meta.extra["retraining"] = {"run_id": record.run_id, "reason": record.reason, "champion": record.champion}
        registry.register_model(  # the test sample and drift reference are found beside the model file
            TrainingOutput.model_file(out), meta, actor=ACTOR, reason=f"{record.run_id}: {record.reason}"
        )
    record.status, record.registered = RunStatus.REGISTERED, True
    where = registry.location if is_database_location(registry.location) else registry.root.resolve()
    record.approval_command = f"ml-pipeline registry approve {meta.model_id} --registry {where}"


def _compare_with_champion(
    record: RunRecord, registry: ModelRegistry, model: TrainingResult, margin: float, threshold: float
) -> str | None:
    """Step 6: score the champion on this run's test rows; None when the new model should be proposed,
    else the reason it is not. Sets record.champion, record.comparison and the proposal reason.

    Only the test rows labelled after the champion's data window are used when there are enough of both
    classes: the champion trained on most older rows, and scoring it on them would flatter it.
    """
    champion_id = registry.serving_state().champion_id
    if champion_id is None:
        record.reason = "passes the quality gate; there is no champion to compare with"
        return None
    champion = registry.get_model(champion_id)
    booster = xgb.Booster(model_file=str(registry.artifact_path(champion_id)))
    if booster.feature_names not in (None, FEATURE_NAMES):
        raise JobFailed(f"champion {champion_id} uses features {booster.feature_names}, not {FEATURE_NAMES}")
    test = model.trainer.splits["test"]
    rows, basis = unseen_by_champion(model.test_labelled_at, test.y, champion.data_window.get("end"))
    X, y = test.X[rows], test.y[rows]
    ours = ModelEvaluator(threshold).evaluate(y, model.trainer.predict_from_dmatrix(_dmatrix(X)))
    theirs = ModelEvaluator(champion.threshold).evaluate(y, booster.predict(_dmatrix(X)))
    record.champion = {"model_id": champion_id, "threshold": champion.threshold, "metrics": _recorded(theirs)}
    better = ours.is_better_than(theirs, margin)
    record.comparison = {
        "basis": basis,
        "test_rows": int(len(y)),
        "margin": margin,
        "metrics": _recorded(ours),
        "auc_gain": ours.auc_score - theirs.auc_score,
        "precision_change": ours.precision - theirs.precision,
        "recall_change": ours.recall - theirs.recall,
        "better": better,
    }
    figures = (
        f"AUC {ours.auc_score:.4f} vs {theirs.auc_score:.4f}, precision {ours.precision:.4f} vs "
        f"{theirs.precision:.4f}, recall {ours.recall:.4f} vs {theirs.recall:.4f}"
    )
    on_rows = f"on the same {len(y)} test rows ({basis})"
    if better:
        record.reason = f"better than champion {champion_id} {on_rows} by at least {margin} AUC ({figures})"
        return None
    shortfalls = [
        text
        for failed, text in (
            (
                ours.auc_score < theirs.auc_score + margin,
                f"AUC gain {ours.auc_score - theirs.auc_score:+.4f} < {margin}",
            ),
            (ours.precision < theirs.precision - margin, f"precision drops by more than {margin}"),
            (ours.recall < theirs.recall - margin, f"recall drops by more than {margin}"),
        )
        if failed
    ]
    return f"not better than champion {champion_id} {on_rows}: {'; '.join(shortfalls)} ({figures}); nothing registered"


def unseen_by_champion(
    test_labelled_at: np.ndarray | None, y: np.ndarray, champion_data_end: str | None
) -> tuple[np.ndarray, str]:
    """Which test rows to compare on, and why: those labelled after `champion_data_end` when they hold at
    least MIN_ROWS_PER_CLASS of each class, else all of them."""
    everything = np.ones(len(y), dtype=bool)
    if test_labelled_at is None or not champion_data_end:
        return everything, "all test rows; no label times to tell which ones the champion saw"
    end = np.datetime64(datetime.fromisoformat(champion_data_end).astimezone(UTC).replace(tzinfo=None), "us")
    fresh = test_labelled_at > end
    counts = np.bincount(y[fresh], minlength=2)
    if counts.min() < MIN_ROWS_PER_CLASS:
        return everything, (
            f"all test rows; only {counts[1]} fraud and {counts[0]} normal labelled after the champion's data, "
            f"which ends {champion_data_end}"
        )
    return fresh, f"labelled after the champion's data, which ends {champion_data_end}"


def _dmatrix(X: np.ndarray) -> xgb.DMatrix:
    return xgb.DMatrix(X, feature_names=FEATURE_NAMES)


def _recorded(metrics: EvaluationMetrics) -> dict[str, Any]:
    data = metrics.to_dict()
    return {k: data[k] for k in RECORDED_METRICS}


def _inputs(config: MLPipelineConfig, settings: RetrainSettings, source: str, dask: str | None) -> dict[str, Any]:
    return {
        "source": describe_source(source),
        "lookback_days": config.training.lookback_days,
        "training_query": config.training.training_query,
        "min_rows": settings.min_rows,
        "min_improvement": settings.min_improvement,
        "threshold": config.model.threshold,
        "hyperparameters": {
            "max_depth": config.model.max_depth,
            "learning_rate": config.model.learning_rate,
            "n_estimators": config.model.n_estimators,
        },
        "dask_scheduler": dask,
    }


def _password(source: str, config: MLPipelineConfig) -> str | None:
    """YUGABYTE_PASSWORD for a DSN that carries no password of its own (none for files)."""
    return database.password_for(source, config.database.password) if is_dsn(source) else None
