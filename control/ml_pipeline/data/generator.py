"""Deterministic synthetic labelled alerts that imitate telecom fraud patterns against normal subscribers.

Each row is one alert about a subscriber (caller) with the eight FEATURE_NAMES measured over its
observation window, an `is_fraud` label and the time the analyst labelled it. Fraud rows come from four
patterns (SIM-box bypass, Wangiri short calls, IRSF international bursts, CLI spoofing); normal rows come
from ordinary subscribers plus legitimate look-alikes (call centres, diaspora callers, enterprise PBXs).
Stealthy fraud, look-alikes and label noise make the classes overlap, so a good model reaches an AUC of
about 0.9-0.97, never 1.0. Same seed and same `end` give the same frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pandas as pd

from ml_pipeline.data.features import FEATURE_NAMES, LABEL


@dataclass(frozen=True)
class Pattern:
    """How one kind of subscriber behaves: a lognormal or beta distribution per feature.

    `rate`, `duration` and `sim_age` are (median, sigma) of lognormals; the ratios are (a, b) of betas,
    in FEATURE_NAMES order: unique destinations, international, short calls, night calls, CLI mismatch.
    """

    name: str
    fraud: bool
    share: float
    rate: tuple[float, float]
    duration: tuple[float, float]
    ratios: tuple[tuple[float, float], ...]
    sim_age: tuple[float, float]


# Shares are relative within the fraud patterns and within the normal patterns.
FRAUD_PATTERNS: tuple[Pattern, ...] = (
    # SIM-box: international calls re-originated as local ones from banks of young SIMs.
    Pattern("sim_box", True, 0.35, (25, 0.6), (95, 0.5), ((9, 2), (1, 25), (2, 8), (2, 5), (2, 9)), (25, 0.9)),
    # Wangiri: one-ring calls to many numbers, hoping for expensive call-backs.
    Pattern("wangiri", True, 0.25, (40, 0.7), (6, 0.6), ((15, 1.5), (6, 3), (12, 2), (4, 4), (1, 20)), (20, 1.0)),
    # IRSF: bursts of long calls to a few premium international numbers, often from hijacked accounts.
    Pattern("irsf", True, 0.25, (12, 0.6), (600, 0.5), ((2, 7), (14, 1.5), (1, 10), (5, 3), (1, 25)), (180, 1.3)),
    # CLI spoofing: the presented caller id differs from the network's.
    Pattern("cli_spoofing", True, 0.15, (8, 0.8), (70, 0.6), ((5, 3), (3, 5), (3, 6), (2, 6), (9, 2)), (90, 1.2)),
)

NORMAL_PATTERNS: tuple[Pattern, ...] = (
    Pattern(
        "subscriber", False, 0.82, (1.5, 0.8), (95, 0.7), ((2, 3), (1, 18), (2, 10), (1.5, 12), (0.5, 80)), (650, 1.0)
    ),
    Pattern("call_centre", False, 0.07, (8, 0.7), (150, 0.6), ((7, 2), (1, 12), (2, 7), (1, 12), (2, 14)), (900, 0.8)),
    Pattern("diaspora", False, 0.07, (2.5, 0.8), (240, 0.7), ((2, 5), (4, 5), (1, 10), (3, 7), (0.5, 60)), (500, 1.0)),
    Pattern("enterprise_pbx", False, 0.04, (6, 0.7), (80, 0.6), ((4, 3), (2, 8), (2, 8), (1, 12), (3, 9)), (400, 1.0)),
)


@dataclass(frozen=True)
class GeneratorSettings:
    """Knobs of the generator; the defaults give 3.5 % fraud and an imperfect but useful signal."""

    fraud_rate: float = 0.035
    stealth_rate: float = 0.07
    stealth_blend: tuple[float, float] = (0.6, 1.0)
    fraud_label_noise: float = 0.03
    normal_label_noise: float = 0.0025
    missing_rate: float = 0.02
    sim_age_missing_rate: float = 0.05


def generate_alerts(
    rows: int,
    days: int = 14,
    seed: int = 42,
    end: datetime | None = None,
    settings: GeneratorSettings | None = None,
) -> pd.DataFrame:
    """Generate `rows` labelled alerts spread over `days` days ending at `end` (default: now, UTC).

    Columns: alert_id, caller, the eight FEATURE_NAMES (float64, NaN = missing), is_fraud (int8, 0/1),
    labelled_at (UTC timestamps, ascending). Deterministic for a given seed and end.
    """
    if rows < 1:
        raise ValueError(f"rows must be at least 1, got {rows}")
    if days < 1:
        raise ValueError(f"days must be at least 1, got {days}")
    cfg = settings or GeneratorSettings()
    rng = np.random.default_rng(seed)

    is_fraud = rng.random(rows) < cfg.fraud_rate
    features = np.empty((rows, len(FEATURE_NAMES)), dtype=np.float64)
    normal_rows = np.flatnonzero(~is_fraud)
    fraud_rows = np.flatnonzero(is_fraud)
    _fill(features, normal_rows, NORMAL_PATTERNS, rng)
    _fill(features, fraud_rows, FRAUD_PATTERNS, rng)
    _blend_stealthy_fraud(features, fraud_rows, cfg, rng)

    labels = is_fraud.copy()
    labels[fraud_rows[rng.random(fraud_rows.size) < cfg.fraud_label_noise]] = False
    labels[normal_rows[rng.random(normal_rows.size) < cfg.normal_label_noise]] = True

    _blank_missing(features, cfg, rng)
    frame = pd.DataFrame(features, columns=FEATURE_NAMES)
    frame[LABEL] = labels.astype(np.int8)
    frame.insert(0, "caller", _callers(rows, rng))
    frame.insert(0, "alert_id", [f"ALR-{seed}-{i:08d}" for i in range(rows)])
    frame["labelled_at"] = _timestamps(rows, days, end, rng)
    return frame


def _fill(out: np.ndarray, rows: np.ndarray, patterns: tuple[Pattern, ...], rng: np.random.Generator) -> None:
    shares = np.array([p.share for p in patterns])
    kind = rng.choice(len(patterns), size=rows.size, p=shares / shares.sum())
    for k, pattern in enumerate(patterns):
        idx = rows[kind == k]
        out[idx] = _sample(pattern, idx.size, rng)


def _sample(pattern: Pattern, n: int, rng: np.random.Generator) -> np.ndarray:
    def lognormal(median_sigma: tuple[float, float]) -> np.ndarray:
        median, sigma = median_sigma
        return rng.lognormal(np.log(median), sigma, n)

    columns = [lognormal(pattern.rate), lognormal(pattern.duration)]
    columns += [rng.beta(a, b, n) for a, b in pattern.ratios]
    columns.append(lognormal(pattern.sim_age))
    return np.column_stack(columns)


def _blend_stealthy_fraud(
    features: np.ndarray, fraud_rows: np.ndarray, cfg: GeneratorSettings, rng: np.random.Generator
) -> None:
    """Move some fraud part of the way towards an ordinary subscriber (careful fraudsters)."""
    stealthy = fraud_rows[rng.random(fraud_rows.size) < cfg.stealth_rate]
    disguise = _sample(NORMAL_PATTERNS[0], stealthy.size, rng)
    weight = rng.uniform(*cfg.stealth_blend, size=(stealthy.size, 1))
    # Blend rate, duration and SIM age in log space so a disguise stays a plausible subscriber.
    logs = [0, 1, len(FEATURE_NAMES) - 1]
    mixed = features[stealthy]
    mixed[:, logs] = np.log(mixed[:, logs])
    disguise[:, logs] = np.log(disguise[:, logs])
    mixed = (1 - weight) * mixed + weight * disguise
    mixed[:, logs] = np.exp(mixed[:, logs])
    features[stealthy] = mixed


def _blank_missing(features: np.ndarray, cfg: GeneratorSettings, rng: np.random.Generator) -> None:
    rates = np.full(features.shape[1], cfg.missing_rate)
    rates[-1] = cfg.sim_age_missing_rate
    features[rng.random(features.shape) < rates] = np.nan


def _callers(rows: int, rng: np.random.Generator) -> list[str]:
    numbers = rng.integers(700_000_000, 999_999_999, size=rows)
    return [f"+234{n}" for n in numbers.tolist()]


def _timestamps(rows: int, days: int, end: datetime | None, rng: np.random.Generator) -> pd.DatetimeIndex:
    end_ts = pd.Timestamp(end if end is not None else datetime.now(UTC))
    end_ts = (end_ts.tz_localize("UTC") if end_ts.tzinfo is None else end_ts.tz_convert("UTC")).floor("us")
    ages_us = np.sort(rng.integers(0, days * 86_400_000_000, size=rows))[::-1]
    return pd.DatetimeIndex(end_ts - pd.to_timedelta(ages_us, unit="us"))
