"""The synthetic alert generator: deterministic, well-formed, realistic fraud rate, missing values, signal."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from ml_pipeline.data.features import FEATURE_NAMES, LABEL
from ml_pipeline.data.generator import GeneratorSettings, generate_alerts

pytestmark = pytest.mark.unit

END = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
RATIOS = [
    "unique_destinations_ratio",
    "international_ratio",
    "short_call_ratio",
    "night_call_ratio",
    "cli_mismatch_ratio",
]


@pytest.fixture(scope="module")
def alerts() -> pd.DataFrame:
    return generate_alerts(100_000, days=14, seed=7, end=END)


def test_same_seed_gives_the_same_frame() -> None:
    pd.testing.assert_frame_equal(generate_alerts(2_000, seed=3, end=END), generate_alerts(2_000, seed=3, end=END))


def test_another_seed_gives_other_alerts() -> None:
    a = generate_alerts(2_000, seed=3, end=END)[FEATURE_NAMES].to_numpy()
    b = generate_alerts(2_000, seed=4, end=END)[FEATURE_NAMES].to_numpy()
    assert not np.allclose(a, b, equal_nan=True)


def test_columns_and_types(alerts: pd.DataFrame) -> None:
    assert list(alerts.columns) == ["alert_id", "caller", *FEATURE_NAMES, LABEL, "labelled_at"]
    assert all(alerts[name].dtype == np.float64 for name in FEATURE_NAMES)
    assert alerts[LABEL].dtype == np.int8
    assert set(alerts[LABEL].unique()) == {0, 1}
    assert alerts["alert_id"].is_unique
    assert alerts["caller"].str.match(r"^\+234\d{9}$").all()


def test_labels_span_the_requested_days_ending_at_end(alerts: pd.DataFrame) -> None:
    stamps = alerts["labelled_at"]
    assert str(stamps.dt.tz) == "UTC"
    assert stamps.is_monotonic_increasing
    assert stamps.min() >= pd.Timestamp(END - timedelta(days=14))
    assert stamps.max() <= pd.Timestamp(END)
    assert stamps.max() - stamps.min() > pd.Timedelta(days=13)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fraud_rate_is_between_two_and_five_percent(seed: int) -> None:
    rate = generate_alerts(50_000, seed=seed, end=END)[LABEL].mean()
    assert 0.02 <= rate <= 0.05


def test_every_feature_has_some_missing_values(alerts: pd.DataFrame) -> None:
    missing = alerts[FEATURE_NAMES].isna().mean()
    assert ((missing > 0.01) & (missing < 0.08)).all(), missing.to_dict()


def test_values_lie_in_their_units(alerts: pd.DataFrame) -> None:
    ratios = alerts[RATIOS].to_numpy()
    assert np.nanmin(ratios) >= 0.0 and np.nanmax(ratios) <= 1.0
    positive = alerts[["call_rate_per_hour", "avg_call_duration_s", "sim_age_days"]].to_numpy()
    assert np.nanmin(positive) > 0.0


def test_fraud_patterns_differ_from_normal_subscribers(alerts: pd.DataFrame) -> None:
    medians = alerts.groupby(LABEL)[FEATURE_NAMES].median()
    assert medians.loc[1, "call_rate_per_hour"] > 3 * medians.loc[0, "call_rate_per_hour"]
    assert medians.loc[1, "sim_age_days"] < medians.loc[0, "sim_age_days"] / 3


def test_label_noise_and_stealth_blur_the_fraud_class() -> None:
    clean = GeneratorSettings(stealth_rate=0.0, fraud_label_noise=0.0, normal_label_noise=0.0)
    noisy = generate_alerts(20_000, seed=5, end=END)
    tidy = generate_alerts(20_000, seed=5, end=END, settings=clean)
    young = "sim_age_days"
    # Label noise turns some ordinary subscribers (old SIMs) into "fraud": the fraud median SIM age rises.
    assert noisy.loc[noisy[LABEL] == 1, young].median() > tidy.loc[tidy[LABEL] == 1, young].median()


@pytest.mark.parametrize(("rows", "days"), [(0, 14), (10, 0)])
def test_bad_size_is_refused(rows: int, days: int) -> None:
    with pytest.raises(ValueError):
        generate_alerts(rows, days=days)
