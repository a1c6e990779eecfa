"""Champion versus shadow on the same requests: a paired comparison of two models' answers to one traffic.

A shadow model scores every request (or a sample) beside the champion without answering, and the prediction log
keeps both answers in one record. Joined with labels that arrived later, both models are measured on exactly the
same labelled requests, so their difference is estimated far more tightly than between two A/B arms: a paired
bootstrap (one resample of requests, both models' precision, recall and AUC on it) gives 95 % intervals of each
difference (shadow - champion), and McNemar's exact test compares the decisions' correctness (the requests on
which exactly one model was right). The verdict reads the AUC difference; when its interval spans zero it says how
many labelled requests 80 % power at the observed difference needs (the interval shrinks as 1/sqrt(n)).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import binomtest

from ml_pipeline.errors import JobFailed, UsageError
from ml_pipeline.monitoring.ab_report import (
    Interval,
    auc_of,
    bootstrap_interval,
    labels_for_power,
    precision_of,
    recall_of,
)

METRICS = ("precision", "recall", "auc")
#: The columns a shadow record adds to the prediction log's.
SHADOW_COLUMNS = ("shadow_model_version", "shadow_score", "shadow_decision")


@dataclass(frozen=True)
class ModelScores:
    """One model's metrics on the labelled requests both models scored."""

    model_version: str
    flag_rate: float
    precision: float
    recall: float
    auc: float


@dataclass(frozen=True)
class McNemar:
    """Requests on which only the champion was right, only the shadow was right, and the exact two-sided p."""

    champion_only_right: int
    shadow_only_right: int
    p_value: float


@dataclass(frozen=True)
class PairedReport:
    """Champion and shadow on the same labelled requests, their paired differences, McNemar and the verdict."""

    shadowed: int
    labelled: int
    fraud: int
    decision_agreement: float
    champion: ModelScores
    shadow: ModelScores
    differences: dict[str, Interval]
    mcnemar: McNemar
    more_labels_needed: int | None
    verdict: str

    @classmethod
    def compute(
        cls, predictions: pd.DataFrame, labels: pd.DataFrame, n_bootstrap: int = 1000, seed: int = 7
    ) -> PairedReport:
        """Join the shadowed records on request_id = alert_id and compare (seeded: same inputs, same report)."""
        shadowed = shadow_records(predictions)
        if shadowed.empty:
            raise UsageError("no record of the log carries a shadow score: serve one with `ml-pipeline rollout shadow`")
        shadowed = shadowed.drop_duplicates("request_id", keep="last")
        joined = shadowed.merge(labels, left_on="request_id", right_on="alert_id", how="inner")
        if joined.empty:
            raise JobFailed(
                f"none of {len(shadowed):,} shadowed requests has a label yet (labels join on request_id = "
                f"alert_id, e.g. request_id {shadowed['request_id'].iloc[0]!r})"
            )
        y = joined["is_fraud"].to_numpy(dtype=np.int8)
        scores = (joined["score"].to_numpy(np.float64), joined["shadow_score"].to_numpy(np.float64))
        flags = (joined["decision"].to_numpy(bool), joined["shadow_decision"].to_numpy(bool))
        versions = (_single(joined["model_version"]), _single(joined["shadow_model_version"]))
        models = [
            ModelScores(v, float(f.mean()), *_metrics(y, f, s)) for v, f, s in zip(versions, flags, scores, strict=True)
        ]
        boot = _paired_bootstrap(y, flags, scores, n_bootstrap, np.random.default_rng(seed))
        differences = {
            name: bootstrap_interval(getattr(models[1], name) - getattr(models[0], name), boot[:, i])
            for i, name in enumerate(METRICS)
        }
        right = [f == (y == 1) for f in flags]
        only_champion, only_shadow = int((right[0] & ~right[1]).sum()), int((right[1] & ~right[0]).sum())
        discordant = only_champion + only_shadow
        p = binomtest(only_shadow, discordant, 0.5).pvalue if discordant else 1.0
        needed = labels_for_power(differences["auc"], len(y))
        report = cls(
            shadowed=len(shadowed),
            labelled=len(y),
            fraud=int(y.sum()),
            decision_agreement=float(np.mean(flags[0] == flags[1])),
            champion=models[0],
            shadow=models[1],
            differences=differences,
            mcnemar=McNemar(only_champion, only_shadow, float(p)),
            more_labels_needed=needed,
            verdict="",
        )
        return cls(**{**report.__dict__, "verdict": _verdict(report)})

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready report."""
        return asdict(self)

    def significantly_worse(self) -> bool:
        """Whether the shadow's AUC is worse than the champion's with 95 % confidence."""
        auc = self.differences["auc"]
        return not math.isnan(auc.high) and auc.high < 0

    def lines(self) -> list[str]:
        """The report as text lines."""
        c, s = self.champion, self.shadow
        out = [
            f"{self.shadowed:,} shadowed requests, {self.labelled:,} labelled ({self.fraud:,} fraud); "
            f"decisions agree on {self.decision_agreement:.1%}",
            f"{'':<10} {'model':<24} {'flag rate':>9} {'precision':>9} {'recall':>7} {'AUC':>6}",
        ]
        for role, m in (("champion", c), ("shadow", s)):
            out.append(
                f"{role:<10} {m.model_version:<24} {m.flag_rate:>9.1%} {_number(m.precision):>9} "
                f"{_number(m.recall):>7} {_number(m.auc):>6}"
            )
        out.append(
            "shadow - champion (paired bootstrap 95 %): "
            + ", ".join(f"{name} {self.differences[name].signed_text()}" for name in METRICS)
        )
        test = self.mcnemar
        out.append(
            f"McNemar (decisions right): champion only {test.champion_only_right}, "
            f"shadow only {test.shadow_only_right}, p = {test.p_value:.3g}"
        )
        out.append(f"verdict: {self.verdict}")
        return out


def shadow_records(predictions: pd.DataFrame) -> pd.DataFrame:
    """The records of the log that carry a shadow answer."""
    if "shadow_score" not in predictions:
        return predictions.iloc[0:0]
    return predictions[predictions["shadow_score"].notna()].copy()


def _single(column: pd.Series) -> str:
    versions = sorted(column.astype(str).unique().tolist())
    return versions[0] if len(versions) == 1 else ",".join(versions)


def _number(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.3f}"


def _metrics(y: np.ndarray, flagged: np.ndarray, score: np.ndarray) -> tuple[float, float, float]:
    return precision_of(y, flagged), recall_of(y, flagged), auc_of(y, score)


def _paired_bootstrap(
    y: np.ndarray,
    flags: tuple[np.ndarray, np.ndarray],
    scores: tuple[np.ndarray, np.ndarray],
    n: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """n resamples of the requests; each row: shadow - champion of precision, recall and AUC on that resample."""
    out = np.full((n, len(METRICS)), np.nan)
    for i in range(n):
        pick = rng.integers(0, len(y), len(y))
        champion = _metrics(y[pick], flags[0][pick], scores[0][pick])
        shadow = _metrics(y[pick], flags[1][pick], scores[1][pick])
        out[i] = np.subtract(shadow, champion)
    return out


def _verdict(report: PairedReport) -> str:
    auc = report.differences["auc"]
    if math.isnan(auc.value) or math.isnan(auc.low):
        return (
            f"not yet significant — the labelled requests need fraud and non-fraud alike "
            f"({report.labelled} labelled, {report.fraud} fraud)"
        )
    shown = f"AUC {report.shadow.auc:.3f} vs {report.champion.auc:.3f}, difference {auc.signed_text()}"
    if auc.low > 0:
        return f"shadow better ({shown})"
    if auc.high < 0:
        return f"shadow worse ({shown})"
    more = f"about {report.more_labels_needed:,}" if report.more_labels_needed is not None else "an unknown number of"
    return f"not yet significant — needs {more} more labelled requests ({shown})"
