"""One retraining run: extract the lookback window, train, evaluate, gate, compare with the champion on
this run's test rows, register a candidate (or not, with the reason), record the run and notify.

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
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pandas as pd
import xgboost as xgb

from ml_pipeline.config import MLPipelineConfig
from ml_pipeline.data.features import FEATURE_NAMES, LABEL
from ml_pipeline.data.sources import TIMESTAMP, data_window, describe_source, is_dsn, load_training_data
from ml_pipeline.errors import JobFailed, PipelineError
from ml_pipeline.model_registry import ModelMetadata, ModelRegistry
from ml_pipeline.retraining.notify import WebhookNotifier, announce
from ml_pipeline.retraining.records import RunRecord, RunStatus, RunStore, new_run_id
from ml_pipeline.retraining.settings import RetrainSettings
from ml_pipeline.training.evaluator import EvaluationMetrics, ModelEvaluator
from ml_pipeline.training.trainer import (
    CONTRACT_METRICS,
    MIN_ROWS_PER_CLASS,
    ModelTrainer,
    stratified_split,
    write_training_output,
)

log = logging.getLogger(__name__)

ACTOR = "ml-pipeline retrain"
RECORDED_METRICS = (*CONTRACT_METRICS, "samples", "positives")


@dataclass(frozen=True)
class TrainedModel:
    """A trained model with the test split it was evaluated on and the data it came from.

    `test_labelled_at` (UTC datetime64, aligned with the test split) lets the champion comparison keep to
    the test rows labelled after the champion's own data; None when the source has no label times.
    """

    trainer: ModelTrainer
    metrics: EvaluationMetrics
    data_window: dict[str, Any]
    rows: dict[str, int]
    test_labelled_at: np.ndarray | None = None


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
        registry = ModelRegistry(registry or config.model.model_registry_path)
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
        record.status, record.reason = RunStatus.FAILED, str(exc)
    except Exception as exc:  # a bug or an unforeseen library error: record it, then let it surface
        record.status, record.reason = RunStatus.FAILED, f"unexpected {type(exc).__name__}: {exc}"
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
    with _trained_model(config, source, settings.min_rows, dask_scheduler, record.durations_s) as model:
        _decide(record, config, settings, registry, started, model)


@contextmanager
def _trained_model(
    config: MLPipelineConfig, source: str, min_rows: int, dask_scheduler: str | None, timings: dict[str, float]
) -> Iterator[TrainedModel]:
    """Steps 1-4 here or on the Dask cluster (whose client stays connected while the model is used)."""
    if dask_scheduler:
        from ml_pipeline.retraining.dask_train import train_on_dask  # dask is an optional extra

        with train_on_dask(dask_scheduler, config, source, min_rows, _password(source, config), timings) as model:
            yield model
    else:
        yield _train_locally(config, source, min_rows, timings)


def _decide(
    record: RunRecord,
    config: MLPipelineConfig,
    settings: RetrainSettings,
    registry: ModelRegistry,
    started: datetime,
    model: TrainedModel,
) -> None:
    """Steps 5-7: gate, champion comparison, registration; the first refusal ends the run."""
    record.data_window, record.rows = model.data_window, model.rows
    record.metrics = _recorded(model.metrics)
    record.model_id = model.trainer.create_model_id(model.trainer.create_version_string(started))

    limits = (config.model.min_auc_score, config.model.min_precision, config.model.min_recall)
    failures = model.metrics.gate_failures(*limits)
    record.gate = {
        "passed": not failures,
        "failures": failures,
        **dict(zip(("min_auc", "min_precision", "min_recall"), limits, strict=True)),
    }
    if failures:
        record.status = RunStatus.GATE_FAILED
        record.reason = f"quality gate failed ({'; '.join(failures)}); nothing registered"
        return

    with timed(record.durations_s, "compare"):
        decision = _compare_with_champion(record, registry, model, settings.min_improvement, config.model.threshold)
    if decision is not None:
        record.status, record.reason = RunStatus.REJECTED, decision
        return

    with timed(record.durations_s, "register"), tempfile.TemporaryDirectory(prefix="retrain-") as work:
        out = Path(work)
        version = model.trainer.create_version_string(started)
        write_training_output(out, model.trainer, model.metrics.to_dict(), model.data_window, version)
        meta = ModelMetadata.from_training_output(out)
        meta.extra["retraining"] = {"run_id": record.run_id, "reason": record.reason, "champion": record.champion}
        registry.register_model(
            out / "model.json",
            meta,
            attachments={"test_sample.npz": out / "test_sample.npz"},
            actor=ACTOR,
            reason=f"{record.run_id}: {record.reason}",
        )
    record.status, record.registered = RunStatus.REGISTERED, True
    record.approval_command = f"ml-pipeline registry approve {meta.model_id} --registry {registry.root.resolve()}"


def _train_locally(config: MLPipelineConfig, source: str, min_rows: int, timings: dict[str, float]) -> TrainedModel:
    """Steps 1-4 on this machine: stream the window, split 70/10/20, train with early stopping, evaluate."""
    lookback = config.training.lookback_days
    with timed(timings, "extract"):
        frame = load_training_data(
            source, lookback, query=config.training.training_query, password=_password(source, config)
        )
    window = data_window(source, lookback, frame)
    labels = frame[LABEL].to_numpy()
    check_rows(len(labels), int(labels.sum()), min_rows, window_text(window))
    trainer = ModelTrainer(
        max_depth=config.model.max_depth,
        learning_rate=config.model.learning_rate,
        n_estimators=config.model.n_estimators,
    )
    with timed(timings, "train"):
        dtrain, dval, dtest = trainer.prepare_data(frame)
        test_labelled_at = None
        if TIMESTAMP in frame:  # the same seeded split of the row numbers: which rows went to the test split
            numbers = stratified_split(np.arange(len(labels)).reshape(-1, 1), labels, trainer.random_state)
            test_labelled_at = utc_datetime64(frame[TIMESTAMP])[numbers["test"].X[:, 0]]
        del frame, labels  # the splits hold the data now
        trainer.train(dtrain, dval)
    with timed(timings, "evaluate"):
        proba = trainer.predict_from_dmatrix(dtest)
        metrics = ModelEvaluator(config.model.threshold).evaluate(trainer.splits["test"].y, proba)
    return TrainedModel(trainer, metrics, window, split_rows(trainer, window["rows"]), test_labelled_at)


def utc_datetime64(stamps: pd.Series) -> np.ndarray:
    """Aware label times as naive UTC datetime64[us] (what the comparison with the champion's data uses)."""
    return stamps.dt.tz_convert(UTC).dt.tz_localize(None).to_numpy(dtype="datetime64[us]")


def window_text(window: dict[str, Any]) -> str:
    """The data window in words, for reasons: source and lookback."""
    days = window.get("lookback_days")
    return f"{window['source']}" + (f" (last {days} days)" if days else "")


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


def split_rows(trainer: ModelTrainer, total: int) -> dict[str, int]:
    """Row counts of the run: total, fraud, and the three splits."""
    counts = {name: len(split.y) for name, split in trainer.splits.items()}
    fraud = sum(int(np.asarray(split.y).sum()) for split in trainer.splits.values())
    return {"total": total, "fraud": fraud, **counts}


def _compare_with_champion(
    record: RunRecord, registry: ModelRegistry, model: TrainedModel, margin: float, threshold: float
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
    if not is_dsn(source):
        return None
    parts = urlsplit(source)
    has_own = parts.password is not None or "password=" in parts.query
    return None if has_own else config.database.password.reveal()


@contextmanager
def timed(timings: dict[str, float], step: str) -> Iterator[None]:
    """Record the seconds the block took as `timings[step]`."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        timings[step] = round(time.perf_counter() - t0, 3)
