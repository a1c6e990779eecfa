"""Training data sources: CSV/Parquet files and the real PostgreSQL server (asyncpg), with every error."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ml_pipeline.data.features import FEATURE_NAMES, LABEL
from ml_pipeline.data.generator import generate_alerts
from ml_pipeline.data.sources import (
    data_window,
    describe_source,
    load_training_data,
    redact_dsn,
    write_alerts_to_postgres,
)
from ml_pipeline.errors import JobFailed, UsageError

LOOKBACK = 7


def alerts_clear_of_the_boundary(rows: int, seed: int = 11) -> pd.DataFrame:
    """Alerts over 14 days ending now, minus those labelled within an hour of the 7-day boundary."""
    frame = generate_alerts(rows, days=14, seed=seed)
    age = pd.Timestamp.now(tz="UTC") - frame["labelled_at"]
    near = (age - pd.Timedelta(days=LOOKBACK)).abs() < pd.Timedelta(hours=1)
    return frame[~near].reset_index(drop=True)


def in_window(frame: pd.DataFrame) -> pd.DataFrame:
    recent = frame["labelled_at"] >= pd.Timestamp.now(tz="UTC") - pd.Timedelta(days=LOOKBACK)
    return frame[recent].reset_index(drop=True)


# ---- files ----


@pytest.mark.unit
@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_file_round_trip(tmp_path: Path, suffix: str) -> None:
    frame = generate_alerts(3_000, seed=2)
    path = tmp_path / f"alerts{suffix}"
    frame.to_csv(path, index=False) if suffix == ".csv" else frame.to_parquet(path, index=False)
    loaded = load_training_data(str(path))
    assert list(loaded.columns) == [*FEATURE_NAMES, LABEL, "labelled_at"]
    np.testing.assert_allclose(loaded[FEATURE_NAMES].to_numpy(), frame[FEATURE_NAMES].to_numpy(), rtol=1e-15)
    np.testing.assert_array_equal(loaded[LABEL].to_numpy(), frame[LABEL].to_numpy())
    assert loaded[LABEL].dtype == np.int8
    assert (loaded["labelled_at"] == frame["labelled_at"]).all()


@pytest.mark.unit
def test_file_lookback_keeps_only_recent_labels(tmp_path: Path) -> None:
    frame = alerts_clear_of_the_boundary(4_000)
    path = tmp_path / "alerts.parquet"
    frame.to_parquet(path)
    loaded = load_training_data(str(path), lookback_days=LOOKBACK)
    expected = in_window(frame)
    assert 0 < len(loaded) == len(expected) < len(frame)
    np.testing.assert_array_equal(loaded[FEATURE_NAMES].to_numpy(), expected[FEATURE_NAMES].to_numpy())


@pytest.mark.unit
def test_file_lookback_needs_label_times(tmp_path: Path) -> None:
    path = tmp_path / "alerts.csv"
    generate_alerts(200).drop(columns="labelled_at").to_csv(path, index=False)
    with pytest.raises(UsageError, match="labelled_at"):
        load_training_data(str(path), lookback_days=3)


@pytest.mark.unit
def test_file_without_label_times_loads_without_lookback(tmp_path: Path) -> None:
    path = tmp_path / "alerts.csv"
    generate_alerts(200)[[*FEATURE_NAMES, LABEL]].to_csv(path, index=False)
    assert list(load_training_data(str(path)).columns) == [*FEATURE_NAMES, LABEL]


@pytest.mark.unit
@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f: f.drop(columns=["sim_age_days", LABEL]), "columns missing: sim_age_days, is_fraud"),
        (lambda f: f.assign(is_fraud=np.where(f.index == 5, 2, f[LABEL])), "is_fraud must be 0 or 1"),
        (lambda f: f.assign(is_fraud=np.where(f.index == 5, np.nan, f[LABEL])), "is_fraud must be 0 or 1"),
        (lambda f: f.assign(night_call_ratio="high"), "night_call_ratio holds non-numeric values"),
        (lambda f: f.iloc[:0], "has no labelled alerts"),
    ],
)
def test_bad_file_content_gives_one_clear_error(tmp_path: Path, change, message: str) -> None:
    path = tmp_path / "alerts.csv"
    change(generate_alerts(100)).to_csv(path, index=False)
    with pytest.raises(UsageError, match=message):
        load_training_data(str(path))


@pytest.mark.unit
def test_unknown_file_type_and_missing_file(tmp_path: Path) -> None:
    (tmp_path / "alerts.json").write_text("{}")
    with pytest.raises(UsageError, match="unknown file type '.json'"):
        load_training_data(str(tmp_path / "alerts.json"))
    with pytest.raises(UsageError, match="no such file"):
        load_training_data(str(tmp_path / "absent.csv"))


@pytest.mark.unit
def test_redact_dsn_drops_every_password() -> None:
    assert redact_dsn("postgresql://u:secret@h:5433/db") == "postgresql://u@h:5433/db"
    assert redact_dsn("postgresql://u@h/db?password=secret&sslmode=require") == "postgresql://u@h/db?sslmode=require"
    assert redact_dsn("postgresql://h/db") == "postgresql://h/db"
    assert describe_source("postgresql://u:secret@h/db") == "postgresql://u@h/db"
    assert describe_source("a.csv") == f"file:{Path('a.csv').resolve()}"


@pytest.mark.unit
def test_data_window_from_label_times() -> None:
    frame = generate_alerts(100, end=datetime(2026, 1, 2, tzinfo=UTC))
    window = data_window("postgresql://u:pw@h/db", 3, frame)
    assert window["source"] == "postgresql://u@h/db"
    assert window["lookback_days"] == 3 and window["rows"] == 100
    assert window["end"] == frame["labelled_at"].max().isoformat()
    assert datetime.fromisoformat(window["start"]) < datetime.fromisoformat(window["end"])


# ---- PostgreSQL (real server) ----


@pytest.mark.integration
@pytest.mark.postgres
def test_postgres_round_trip_respects_the_lookback_exactly(pg_dsn: str) -> None:
    frame = alerts_clear_of_the_boundary(6_000)
    assert write_alerts_to_postgres(pg_dsn, frame) == len(frame)
    loaded = load_training_data(pg_dsn, lookback_days=LOOKBACK)
    expected = in_window(frame)
    assert 0 < len(loaded) == len(expected) < len(frame)
    np.testing.assert_array_equal(loaded[FEATURE_NAMES].to_numpy(), expected[FEATURE_NAMES].to_numpy())
    np.testing.assert_array_equal(loaded[LABEL].to_numpy(), expected[LABEL].to_numpy())
    assert loaded[FEATURE_NAMES].isna().to_numpy().sum() == expected[FEATURE_NAMES].isna().to_numpy().sum() > 0


@pytest.mark.integration
@pytest.mark.postgres
def test_postgres_streams_more_rows_than_one_chunk_with_a_custom_query(pg_dsn: str) -> None:
    frame = generate_alerts(45_000, days=5, seed=4)
    write_alerts_to_postgres(pg_dsn, frame)
    query = "SELECT * FROM labelled_alerts WHERE labelled_at >= now() - make_interval(days => $1) ORDER BY alert_id"
    loaded = load_training_data(pg_dsn, lookback_days=30, query=query)
    assert len(loaded) == len(frame)
    assert (loaded["labelled_at"].to_numpy() == frame["labelled_at"].to_numpy()).all()
    np.testing.assert_array_equal(loaded[FEATURE_NAMES].to_numpy(), frame[FEATURE_NAMES].to_numpy())


@pytest.mark.integration
@pytest.mark.postgres
def test_lookback_is_a_bound_parameter(pg_dsn: str) -> None:
    write_alerts_to_postgres(pg_dsn, generate_alerts(500, days=10))
    with pytest.raises(UsageError, match="is_fraud must be 0 or 1"):
        # A query echoing $1 as the label: the lookback (7) arrives as a bound value, hence "not 0 or 1".
        query = "SELECT call_rate_per_hour, avg_call_duration_s, unique_destinations_ratio, international_ratio, "
        query += "short_call_ratio, night_call_ratio, cli_mismatch_ratio, sim_age_days, $1::int AS is_fraud "
        query += "FROM labelled_alerts"
        load_training_data(pg_dsn, lookback_days=7, query=query)


@pytest.mark.integration
@pytest.mark.postgres
def test_empty_window_is_a_failed_job(pg_dsn: str) -> None:
    write_alerts_to_postgres(pg_dsn, generate_alerts(300, days=5, end=datetime.now(UTC) - timedelta(days=40)))
    with pytest.raises(JobFailed, match="no labelled alerts in .* \\(last 7 days\\)"):
        load_training_data(pg_dsn, lookback_days=7)


@pytest.mark.integration
@pytest.mark.postgres
def test_missing_table_says_how_to_create_it(pg_dsn: str) -> None:
    with pytest.raises(UsageError, match="labelled_alerts.*demo-data --to DSN"):
        load_training_data(pg_dsn, lookback_days=7)


@pytest.mark.integration
@pytest.mark.postgres
def test_query_without_a_feature_names_the_missing_column(pg_dsn: str) -> None:
    write_alerts_to_postgres(pg_dsn, generate_alerts(300))
    query = (
        "SELECT call_rate_per_hour, is_fraud FROM labelled_alerts WHERE labelled_at > now() - make_interval(days => $1)"
    )
    with pytest.raises(UsageError, match="columns missing: avg_call_duration_s"):
        load_training_data(pg_dsn, lookback_days=7, query=query)


@pytest.mark.integration
@pytest.mark.postgres
def test_broken_query_points_at_the_setting(pg_dsn: str) -> None:
    with pytest.raises(UsageError, match="ML_TRAINING_QUERY"):
        load_training_data(pg_dsn, lookback_days=7, query="SELEC nonsense WHERE $1")


@pytest.mark.integration
@pytest.mark.postgres
def test_loading_the_same_alerts_twice_is_refused(pg_dsn: str) -> None:
    frame = generate_alerts(100, seed=9)
    write_alerts_to_postgres(pg_dsn, frame)
    with pytest.raises(UsageError, match="another --seed"):
        write_alerts_to_postgres(pg_dsn, frame)


@pytest.mark.unit
def test_unreachable_database_is_a_failed_job_without_the_password() -> None:
    with pytest.raises(JobFailed) as caught:
        load_training_data("postgresql://trainer:hunter2@127.0.0.1:1/voxguard", lookback_days=7)
    assert "postgresql://trainer@127.0.0.1:1/voxguard" in str(caught.value)
    assert "hunter2" not in str(caught.value)


@pytest.mark.unit
def test_malformed_dsn_is_bad_usage() -> None:
    with pytest.raises(UsageError, match="invalid DSN for the training database"):
        load_training_data("postgresql://u@127.0.0.1:notaport/db", lookback_days=7)
