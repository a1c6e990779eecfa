"""One training recipe: the train command, a retraining run (here and on Dask) and the demo all run
`training.pipeline.run_training`, and the one quality gate (`training.gate.quality_gate`) decides for all of them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

import ml_pipeline.cli.train_cmds
import ml_pipeline.demo
import ml_pipeline.retraining.run
from ml_pipeline.cli import main
from ml_pipeline.config import MLPipelineConfig
from ml_pipeline.data.generator import GeneratorSettings, generate_alerts
from ml_pipeline.demo import DemoRun
from ml_pipeline.errors import JobFailed
from ml_pipeline.model_registry import ModelRegistry
from ml_pipeline.records import TrainingOutput
from ml_pipeline.retraining import RetrainSettings, retrain
from ml_pipeline.training import pipeline
from ml_pipeline.training.evaluator import ModelEvaluator
from ml_pipeline.training.gate import GateThresholds, quality_gate
from ml_pipeline.training.pipeline import FrameData, SourceData, TrainingResult, TrainingSettings, run_training

CLEAN = GeneratorSettings(fraud_rate=0.1, stealth_rate=0.0, fraud_label_noise=0.0, normal_label_noise=0.0)
SMALL_MODEL = {"ML_MODEL_N_ESTIMATORS": "25", "ML_MODEL_MAX_DEPTH": "3"}


@pytest.fixture(scope="module")
def alerts() -> pd.DataFrame:
    return generate_alerts(4_000, days=5, seed=8, settings=CLEAN)


@pytest.fixture
def alerts_file(alerts: pd.DataFrame, tmp_path: Path) -> Path:
    path = tmp_path / "alerts.parquet"
    alerts.to_parquet(path)
    return path


@pytest.fixture
def small_model(monkeypatch: pytest.MonkeyPatch) -> MLPipelineConfig:
    for name, value in SMALL_MODEL.items():
        monkeypatch.setenv(name, value)
    return MLPipelineConfig.from_env()


class Spy:
    """Wraps run_training where a caller looks it up; records the data step of each call."""

    def __init__(self) -> None:
        self.steps: list[pipeline.DataStep[Any]] = []

    def __call__(self, data: pipeline.DataStep[Any], *args: Any, **kwargs: Any) -> TrainingResult:
        self.steps.append(data)
        return run_training(data, *args, **kwargs)


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> Iterator[Spy]:
    spy = Spy()
    for module in (ml_pipeline.cli.train_cmds, ml_pipeline.retraining.run, ml_pipeline.demo):
        monkeypatch.setattr(module, "run_training", spy)
    yield spy


@pytest.mark.unit
def test_train_command_and_retraining_write_the_same_model_for_the_same_data_and_seed(
    alerts_file: Path, small_model: MLPipelineConfig, tmp_path: Path, spy: Spy, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "trained"
    with pytest.raises(SystemExit) as exited:
        main(["train", "--data", str(alerts_file), "--lookback-days", "7", "--out", str(out), "--json"])
    assert exited.value.code == 0, capsys.readouterr().err
    printed = json.loads(capsys.readouterr().out)

    registry = ModelRegistry(tmp_path / "registry")
    settings = RetrainSettings(min_rows=500, runs_path=str(tmp_path / "runs"))
    record = retrain(small_model, source=str(alerts_file), registry=registry, settings=settings)
    assert record.status == "registered", record.reason

    assert [type(step) for step in spy.steps] == [SourceData, SourceData]  # both ran the one recipe
    trained = TrainingOutput.read(out)
    registered = registry.get_model(record.model_id)
    # the same model, byte for byte, and the same test sample
    assert registry.artifact_path(record.model_id).read_bytes() == trained.model
    sample_file = registry.attachment_path(record.model_id, "test_sample.npz")
    assert sample_file is not None and sample_file.read_bytes() == TrainingOutput.test_sample_file(out).read_bytes()
    # the same training record, apart from the model's name and time
    for name in (
        "features",
        "threshold",
        "metrics",
        "split_sizes",
        "training_samples",
        "hyperparameters",
        "feature_importance",
        "data_window",
        "best_iteration",
        "num_trees",
        "drift_reference",
    ):
        ours, theirs = getattr(registered, name), getattr(trained, name)
        assert (list(ours) if name == "features" else ours) == (list(theirs) if name == "features" else theirs), name
    # the same gate, recorded the same way
    assert record.gate == printed["gate"] == quality_gate_of(trained, small_model)
    assert record.rows == {"total": 4_000, "fraud": record.rows["fraud"], **trained.split_sizes}


def quality_gate_of(output: TrainingOutput, config: MLPipelineConfig) -> dict[str, Any]:
    sample = output.test_sample  # the whole test split: 800 rows < 5,000
    metrics = ModelEvaluator(output.threshold).evaluate(sample.y, sample.proba)
    return quality_gate(metrics, GateThresholds.from_config(config.model)).to_dict()


@pytest.mark.unit
def test_the_demo_trains_through_the_pipeline(
    alerts: pd.DataFrame, small_model: MLPipelineConfig, tmp_path: Path, spy: Spy
) -> None:
    run = DemoRun(out=tmp_path, config=small_model, data_file=tmp_path / "alerts.parquet", frame=alerts.copy())
    ml_pipeline.demo.train_model(run)
    ml_pipeline.demo.save_training_output(run)
    assert [type(step) for step in spy.steps] == [FrameData]
    assert isinstance(run.result, TrainingResult) and run.metrics is run.result.metrics
    direct = run_training(FrameData(alerts), TrainingSettings.from_config(small_model.model))
    assert TrainingOutput.read(tmp_path / "model").model == direct.output.model  # the same recipe, the same model
    assert ml_pipeline.demo.check_quality_gate(run).startswith("passed")


@pytest.mark.unit
def test_run_training_writes_the_output_whatever_the_gate_says(alerts: pd.DataFrame, tmp_path: Path) -> None:
    strict = TrainingSettings(n_estimators=5, max_depth=2, gate=GateThresholds(0.999999, 0.0, 0.0))
    timings: dict[str, float] = {}
    result = run_training(FrameData(alerts), strict, version="2026.01.01.000000", out=tmp_path, timings=timings)
    assert not result.gate.passed and [c.name for c in result.gate.failed] == ["AUC"]
    assert result.gate.failures[0].startswith("AUC ") and result.gate.failures[0].endswith(" < 1.0000")
    assert result.output_dir == tmp_path and TrainingOutput.read(tmp_path) == result.output
    assert result.model_id == "xgboost_v2026.01.01.000000" == result.output.model_id
    assert set(timings) == {"extract", "train", "evaluate", "write"}
    fraud = int(alerts["is_fraud"].sum())
    assert result.rows == {"total": 4_000, "fraud": fraud, "train": 2_800, "val": 400, "test": 800}
    assert result.data_window["source"] == "dataframe" and result.data_window["rows"] == 4_000
    np.testing.assert_array_equal(result.test_proba[:800], result.output.test_sample.proba)


@pytest.mark.unit
def test_min_rows_refuses_a_small_or_single_class_window(alerts: pd.DataFrame) -> None:
    with pytest.raises(JobFailed, match="only 4000 labelled alerts in dataframe"):
        run_training(FrameData(alerts), TrainingSettings(min_rows=5_000))
    normal = alerts[alerts["is_fraud"] == 0]
    with pytest.raises(JobFailed, match="are normal: training needs fraud and normal alerts"):
        run_training(FrameData(normal), TrainingSettings(min_rows=100))


@pytest.mark.unit
def test_the_quality_gate_says_which_checks_failed_and_why() -> None:
    metrics = ModelEvaluator(0.5).evaluate(np.array([0, 0, 1, 1]), np.array([0.1, 0.6, 0.4, 0.9]))
    gate = quality_gate(metrics, GateThresholds(min_auc=0.9, min_precision=0.5, min_recall=0.6))
    assert not gate.passed and [c.name for c in gate.failed] == ["AUC", "recall"]
    assert gate.failures == ["AUC 0.7500 < 0.9000", "recall 0.5000 < 0.6000"]
    assert gate.to_dict() == {
        "passed": False,
        "min_auc": 0.9,
        "min_precision": 0.5,
        "min_recall": 0.6,
        "failures": gate.failures,
    }
    assert metrics.gate_failures(0.9, 0.5, 0.6) == gate.failures  # the evaluator's API is the same gate
    assert quality_gate(metrics, GateThresholds(0.7, 0.5, 0.5)).passed


@pytest.mark.integration
def test_a_dask_run_is_the_same_recipe_with_dasks_data_step(tmp_path: Path, alerts_file: Path, spy: Spy) -> None:
    from distributed import LocalCluster

    from ml_pipeline.retraining.dask_train import DaskData

    config = MLPipelineConfig.from_env(SMALL_MODEL)
    settings = RetrainSettings(min_rows=500, runs_path=str(tmp_path / "runs"))
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        record = retrain(
            config,
            source=str(alerts_file),
            registry=tmp_path / "registry",
            settings=settings,
            dask_scheduler=cluster.scheduler_address,
        )
    assert record.status == "registered", record.reason
    assert [type(step) for step in spy.steps] == [DaskData]
    assert record.gate["passed"] and set(record.durations_s) >= {"extract", "train", "evaluate", "register"}
    meta = ModelRegistry(tmp_path / "registry").get_model(record.model_id)
    assert meta.drift_reference is not None and meta.split_sizes == {
        k: record.rows[k] for k in ("train", "val", "test")
    }
