"""Champion versus challenger on logged predictions joined with labels that arrived later.

Predictions come from the prediction log (JSON Lines files or the PostgreSQL table), labels from the
labelled_alerts table or a file (alert_id, is_fraud); a prediction's request_id is the alert's id. Per arm:
traffic, flag rate, precision, recall and AUC, each labelled metric with a seeded bootstrap 95 % interval.
The verdict compares AUC: the bootstrap interval of the difference (challenger - champion) excluding zero
decides "better" or "worse"; otherwise the labelled alerts needed for 80 % power at the observed difference
are estimated from the interval's width (which shrinks as 1/sqrt(n)).
"""

from __future__ import annotations

import asyncio
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from ml_pipeline.data import database
from ml_pipeline.data.database import is_dsn
from ml_pipeline.data.sources import file_path
from ml_pipeline.errors import JobFailed, UsageError
from ml_pipeline.monitoring.prediction_log import LOG_COLUMNS, LOG_TABLE, SHADOW_COLUMNS
from ml_pipeline.redaction import redact

ARMS = ("champion", "challenger")
Z_95 = 1.959964
Z_POWER_80 = 0.841621
LABEL_COLUMNS = ("alert_id", "is_fraud")


@dataclass(frozen=True)
class Interval:
    """A point estimate with its 95 % bootstrap interval (NaN when undefined)."""

    value: float
    low: float
    high: float

    def text(self) -> str:
        """`0.912 [0.88, 0.94]` or `n/a`."""
        if math.isnan(self.value):
            return "n/a"
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}]"

    def signed_text(self) -> str:
        """A difference: `+0.035 [+0.013, +0.057]`, `+0.035` without an interval, or `n/a`."""
        if math.isnan(self.value):
            return "n/a"
        if math.isnan(self.low):
            return f"{self.value:+.3f}"
        return f"{self.value:+.3f} [{self.low:+.3f}, {self.high:+.3f}]"


@dataclass(frozen=True)
class ArmResult:
    """One arm: model(s), logged traffic and flag rate, and the labelled metrics with intervals."""

    arm: str
    models: list[str]
    predictions: int
    traffic_share: float
    flag_rate: float
    labelled: int
    fraud: int
    precision: Interval
    recall: Interval
    auc: Interval

    def row(self) -> dict[str, Any]:
        """The table row people read."""
        return {
            "arm": self.arm,
            "model": ", ".join(self.models),
            "predictions": self.predictions,
            "traffic": f"{100 * self.traffic_share:.1f} %",
            "flag rate": f"{100 * self.flag_rate:.2f} %",
            "labelled (fraud)": f"{self.labelled} ({self.fraud})",
            "precision": self.precision.text(),
            "recall": self.recall.text(),
            "AUC": self.auc.text(),
        }


@dataclass(frozen=True)
class ABReport:
    """Both arms, the AUC difference (challenger - champion) with its interval, and the verdict line."""

    arms: list[ArmResult]
    joined: int
    auc_difference: Interval
    more_labels_needed: int | None
    verdict: str

    @classmethod
    def compute(
        cls, predictions: pd.DataFrame, labels: pd.DataFrame, n_bootstrap: int = 1000, seed: int = 7
    ) -> ABReport:
        """Join on request_id = alert_id and compare the arms (a seeded bootstrap: same inputs, same report)."""
        if predictions.empty:
            raise UsageError("the prediction log is empty: enable it with ML_PREDICTION_LOG and send traffic")
        predictions = predictions.drop_duplicates("request_id", keep="last")
        joined = predictions.merge(labels, left_on="request_id", right_on="alert_id", how="inner")
        if joined.empty:
            raise JobFailed(_no_match(predictions, labels))
        rng = np.random.default_rng(seed)
        total = len(predictions)
        arms, samples = [], {}
        for arm in ARMS:
            logged = predictions[predictions["slot"] == arm]
            labelled = joined[joined["slot"] == arm]
            y = labelled["is_fraud"].to_numpy(dtype=np.int8)
            flagged = labelled["decision"].to_numpy(dtype=bool)
            score = labelled["score"].to_numpy(dtype=np.float64)
            boot = _bootstrap(y, flagged, score, n_bootstrap, rng)
            samples[arm] = (boot, len(y))
            arms.append(
                ArmResult(
                    arm=arm,
                    models=sorted(logged["model_version"].unique().tolist()),
                    predictions=len(logged),
                    traffic_share=len(logged) / total,
                    flag_rate=float(logged["decision"].mean()) if len(logged) else float("nan"),
                    labelled=len(y),
                    fraud=int(y.sum()),
                    precision=bootstrap_interval(precision_of(y, flagged), boot[:, 0]),
                    recall=bootstrap_interval(recall_of(y, flagged), boot[:, 1]),
                    auc=bootstrap_interval(auc_of(y, score), boot[:, 2]),
                )
            )
        difference = arms[1].auc.value - arms[0].auc.value
        diffs = samples["challenger"][0][:, 2] - samples["champion"][0][:, 2]
        diff = bootstrap_interval(difference, diffs)
        needed = labels_for_power(diff, sum(n for _, n in samples.values()))
        return cls(arms, len(joined), diff, needed, _verdict(arms, diff, needed))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready report."""
        return {
            "joined": self.joined,
            "arms": [
                {
                    **{k: v for k, v in arm.__dict__.items() if not isinstance(v, Interval)},
                    **{k: v.__dict__ for k, v in arm.__dict__.items() if isinstance(v, Interval)},
                }
                for arm in self.arms
            ],
            "auc_difference": self.auc_difference.__dict__,
            "more_labels_needed": self.more_labels_needed,
            "verdict": self.verdict,
        }


def _no_match(predictions: pd.DataFrame, labels: pd.DataFrame) -> str:
    """Why nothing joined: the join rule, the counts and one id of each side to compare."""
    example = f"e.g. request_id {predictions['request_id'].iloc[0]!r}"
    if len(labels):
        example += f", alert_id {labels['alert_id'].iloc[0]!r}"
    return (
        f"no logged prediction has a label: predictions join labels on request_id = alert_id, and none of "
        f"{len(predictions):,} request ids matches one of {len(labels):,} alert ids ({example}); "
        "send the alert id as the Predict request_id, or check --labels"
    )


def precision_of(y: np.ndarray, flagged: np.ndarray) -> float:
    return float(y[flagged].mean()) if flagged.any() else float("nan")


def recall_of(y: np.ndarray, flagged: np.ndarray) -> float:
    return float(flagged[y == 1].mean()) if (y == 1).any() else float("nan")


def auc_of(y: np.ndarray, score: np.ndarray) -> float:
    return float(roc_auc_score(y, score)) if 0 < y.sum() < len(y) else float("nan")


def _bootstrap(y: np.ndarray, flagged: np.ndarray, score: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """n resamples (with replacement) of precision, recall and AUC: an (n, 3) array, NaN where undefined."""
    out = np.full((n, 3), np.nan)
    if len(y) == 0:
        return out
    for i in range(n):
        pick = rng.integers(0, len(y), len(y))
        yy, ff = y[pick], flagged[pick]
        out[i] = (precision_of(yy, ff), recall_of(yy, ff), auc_of(yy, score[pick]))
    return out


def bootstrap_interval(value: float, resamples: np.ndarray) -> Interval:
    finite = resamples[np.isfinite(resamples)]
    if math.isnan(value) or finite.size < 0.5 * resamples.size:
        return Interval(value, float("nan"), float("nan"))
    low, high = np.quantile(finite, [0.025, 0.975])
    return Interval(value, float(low), float(high))


def labels_for_power(diff: Interval, labelled: int) -> int | None:
    """Further labelled alerts for 80 % power at the observed AUC difference (None when not estimable)."""
    if math.isnan(diff.low) or diff.value == 0 or labelled == 0:
        return None
    se = (diff.high - diff.low) / (2 * Z_95)
    required = labelled * ((Z_95 + Z_POWER_80) * se / abs(diff.value)) ** 2
    return max(0, math.ceil(required - labelled))


def _verdict(arms: list[ArmResult], diff: Interval, needed: int | None) -> str:
    champion, challenger = arms
    if challenger.predictions == 0:
        return "no challenger traffic in the log: nothing to compare"
    if math.isnan(diff.value) or math.isnan(diff.low):
        return (
            "not yet significant — both arms need labelled fraud and non-fraud alerts "
            f"(champion {champion.labelled} labelled, {champion.fraud} fraud; "
            f"challenger {challenger.labelled}, {challenger.fraud} fraud)"
        )
    shown = f"AUC {challenger.auc.value:.3f} vs {champion.auc.value:.3f}, difference {diff.text()}"
    if diff.low > 0:
        return f"challenger better ({shown})"
    if diff.high < 0:
        return f"challenger worse ({shown})"
    more = f"about {needed:,}" if needed is not None else "an unknown number of"
    return f"not yet significant — needs {more} more labelled alerts ({shown})"


# ---- reading the log and the labels ----


def load_predictions(source: str, password: str | None = None) -> pd.DataFrame:
    """Logged predictions from a JSON Lines file (FILE or file:FILE, with its rotated siblings FILE.1, FILE.2,
    ...) or a DSN."""
    database.check_scheme(source, "--log", alternatives="a JSON Lines file (FILE or file:FILE)")
    if is_dsn(source):
        columns = (*LOG_COLUMNS, *SHADOW_COLUMNS)
        sql = f"SELECT {', '.join(columns)} FROM {LOG_TABLE}"
        frame = asyncio.run(_fetch(source, sql, columns, password))
    else:
        frame = _read_jsonl(Path(file_path(source)))
    missing = [c for c in LOG_COLUMNS if c not in frame]
    if missing:
        raise UsageError(f"{redact(source)}: prediction log records lack {', '.join(missing)}")
    frame["request_id"] = frame["request_id"].astype(str)
    frame["shadow_score"] = pd.to_numeric(frame["shadow_score"], errors="coerce")
    return frame


def load_labels(source: str, password: str | None = None) -> pd.DataFrame:
    """Labels (alert_id, is_fraud) from a .csv/.parquet file or the labelled_alerts table of a DSN."""
    database.check_scheme(source, "--labels")
    if is_dsn(source):
        sql = "SELECT alert_id, is_fraud FROM labelled_alerts"
        frame = asyncio.run(_fetch(source, sql, LABEL_COLUMNS, password))
    else:
        path = Path(file_path(source))
        if not path.is_file():
            raise UsageError(f"{path}: no such labels file")
        try:
            frame = pd.read_parquet(path) if path.suffix.lower() in {".parquet", ".pq"} else pd.read_csv(path)
        except (ValueError, OSError, pd.errors.ParserError) as exc:
            raise UsageError(f"{path}: cannot be read: {exc}") from None
    missing = [c for c in LABEL_COLUMNS if c not in frame]
    if missing:
        raise UsageError(f"{redact(source)}: labels lack columns {', '.join(missing)}")
    frame = frame[list(LABEL_COLUMNS)].copy()
    frame["alert_id"] = frame["alert_id"].astype(str)
    frame["is_fraud"] = frame["is_fraud"].astype(np.int8)
    return frame


def _read_jsonl(path: Path) -> pd.DataFrame:
    files = sorted(path.parent.glob(f"{path.name}.*"), key=_rotation_index, reverse=True)
    files = [f for f in files if _rotation_index(f) > 0] + ([path] if path.is_file() else [])
    if not files:
        raise UsageError(f"{path}: no prediction log there (set ML_PREDICTION_LOG=file:{path} on the server)")
    records = []
    for file in files:
        with file.open() as handle:
            for number, line in enumerate(handle, 1):
                if line.strip():
                    try:
                        records.append(json.loads(line))
                    except json.JSONDecodeError:
                        raise UsageError(f"{file}:{number}: not a JSON record") from None
    return pd.DataFrame.from_records(records, columns=[*LOG_COLUMNS, *SHADOW_COLUMNS])


def _rotation_index(path: Path) -> int:
    suffix = path.suffix.lstrip(".")
    return int(suffix) if suffix.isdigit() else 0


async def _fetch(dsn: str, sql: str, columns: tuple[str, ...], password: str | None) -> pd.DataFrame:
    shown = redact(dsn)
    conn = await database.connect(dsn, password, what="the database")
    try:
        rows = await conn.fetch(sql)
    except asyncpg.UndefinedTableError as exc:
        raise UsageError(f"{shown}: {exc}") from None
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise JobFailed(f"reading {shown} failed: {redact(exc)}") from None
    finally:
        await conn.close()
    return pd.DataFrame([tuple(r) for r in rows], columns=list(columns))
