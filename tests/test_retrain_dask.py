"""Retraining on a local Dask cluster (two in-process workers): partitions read in parallel from the real
PostgreSQL server, XGBoost's Dask training, then the same gate and registry."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from distributed import LocalCluster

from ml_pipeline.config import MLPipelineConfig
from ml_pipeline.data.generator import GeneratorSettings, generate_alerts
from ml_pipeline.data.sources import write_alerts_to_postgres
from ml_pipeline.model_registry import ModelRegistry
from ml_pipeline.retraining import RetrainSettings, dask_train, retrain
from ml_pipeline.retraining.dask_train import split_partition, time_partitions

CLEAN = GeneratorSettings(fraud_rate=0.1, stealth_rate=0.0, fraud_label_noise=0.0, normal_label_noise=0.0)


@pytest.fixture(scope="module")
def dask_scheduler() -> Iterator[str]:
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        yield cluster.scheduler_address


@pytest.mark.unit
def test_time_partitions_cover_the_window_without_overlap() -> None:
    start, end = datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 11, 8, tzinfo=UTC)
    parts = time_partitions(start, end, 7)
    assert parts[0][0] == start and parts[-1][1] is None
    assert all(a[1] == b[0] for a, b in zip(parts, parts[1:], strict=False))
    assert parts[3] == (datetime(2026, 11, 4, tzinfo=UTC), datetime(2026, 11, 5, tzinfo=UTC))


@pytest.mark.integration
@pytest.mark.postgres
def test_a_dask_run_reads_partitions_in_parallel_and_registers_a_candidate(
    pg_dsn: str, dask_scheduler: str, tmp_path: Path
) -> None:
    frame = generate_alerts(12_000, days=30, seed=5, settings=CLEAN)
    age = pd.Timestamp.now(tz="UTC") - frame["labelled_at"]
    frame = frame[(age - pd.Timedelta(days=7)).abs() >= pd.Timedelta(hours=1)]  # clear of the window boundary
    write_alerts_to_postgres(pg_dsn, frame)
    expected = frame[age[frame.index] < pd.Timedelta(days=7)]
    config = MLPipelineConfig.from_env({"ML_MODEL_N_ESTIMATORS": "40", "ML_MODEL_MAX_DEPTH": "4"})
    settings = RetrainSettings(min_rows=500, runs_path=str(tmp_path / "runs"))

    record = retrain(
        config, source=pg_dsn, registry=tmp_path / "registry", settings=settings, dask_scheduler=dask_scheduler
    )

    assert record.status == "registered", record.reason
    assert record.inputs["dask_scheduler"] == dask_scheduler
    # Every row of the window, once: the workers' partitions add up to the window, fraud count included.
    assert record.rows["total"] == record.data_window["rows"] == len(expected)
    assert record.rows["fraud"] == int(expected["is_fraud"].sum())
    assert record.rows["train"] + record.rows["val"] + record.rows["test"] == record.rows["total"]
    assert record.rows["test"] == pytest.approx(0.2 * record.rows["total"], abs=4)
    assert record.metrics["auc_score"] > 0.95 and record.gate["passed"]
    meta = ModelRegistry(tmp_path / "registry").get_model(record.model_id)
    assert meta.num_trees == meta.best_iteration + 1 <= 40
    sample = np.load(ModelRegistry(tmp_path / "registry").attachment_path(record.model_id, "test_sample.npz"))
    assert len(sample["y"]) == record.rows["test"]


@pytest.mark.integration
def test_a_dask_run_from_a_file(dask_scheduler: str, tmp_path: Path) -> None:
    data = tmp_path / "alerts.parquet"
    generate_alerts(4_000, days=5, seed=8, settings=CLEAN).to_parquet(data)
    config = MLPipelineConfig.from_env({"ML_MODEL_N_ESTIMATORS": "30", "ML_MODEL_MAX_DEPTH": "3"})
    settings = RetrainSettings(min_rows=500, runs_path=str(tmp_path / "runs"))
    record = retrain(
        config, source=str(data), registry=tmp_path / "registry", settings=settings, dask_scheduler=dask_scheduler
    )
    assert record.status == "registered", record.reason
    assert record.rows["total"] == 4_000 and record.rows["test"] == 800


@pytest.mark.integration
def test_an_unreachable_dask_scheduler_fails_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dask_train, "CONNECT_TIMEOUT_S", 2)
    data = tmp_path / "alerts.parquet"
    generate_alerts(2_000, days=5, seed=8, settings=CLEAN).to_parquet(data)
    settings = RetrainSettings(min_rows=500, runs_path=str(tmp_path / "runs"))
    record = retrain(
        MLPipelineConfig.from_env({}),
        source=str(data),
        registry=tmp_path / "registry",
        settings=settings,
        dask_scheduler="tcp://127.0.0.1:1",
    )
    assert record.status == "failed" and "cannot reach the Dask scheduler tcp://127.0.0.1:1" in record.reason


@pytest.mark.unit
def test_split_partition_keeps_label_times_with_their_rows() -> None:
    rng = np.random.default_rng(1)
    X = rng.random((500, 8), dtype=np.float32)
    X[:, 0] = np.arange(500)  # row number in the first feature
    y = (rng.random(500) < 0.2).astype(np.int8)
    stamps = np.datetime64("2026-11-01T00:00:00", "us") + np.arange(500).astype("timedelta64[s]")
    parts = split_partition(X, y, 7, stamps)
    assert [len(parts[name][1]) for name in ("train", "val", "test")] == [350, 50, 100]
    for part_X, part_y, part_stamps in parts.values():
        rows = part_X[:, 0].astype(int)
        assert (part_stamps == stamps[rows]).all() and (part_y == y[rows]).all()
    assert split_partition(X[:30], np.zeros(30, np.int8), 7)["train"][2] is None  # too small: all to train
