"""Offline drift report: a model's training-time reference against a window of live rows.

`DriftAnalysis.run` compares, per feature and for the model's scores, the reference bins (PSI) and the
registry's test sample (KS statistic, Wasserstein distance) with the live rows; `write_drift_report` writes
drift.json, one histogram per feature and for the score (reference versus live, as PNG) and index.html.
"""

from __future__ import annotations

import html
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xgboost as xgb
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ml_pipeline.errors import UsageError
from ml_pipeline.model_registry import ModelMetadata, ModelRegistry
from ml_pipeline.monitoring.drift import (
    PSI_ACT,
    PSI_WATCH,
    BinnedReference,
    DriftReference,
    bin_counts,
    drift_level,
    ks_statistic,
    proportions,
    wasserstein,
)
from ml_pipeline.records import TEST_SAMPLE_FILE

SCORE = "score"


@dataclass(frozen=True)
class DistributionDrift:
    """Drift of one distribution: PSI on the reference bins, KS and Wasserstein on raw samples."""

    name: str
    psi: float
    ks: float
    wasserstein: float
    level: str
    live_rows: int
    reference: BinnedReference
    live_counts: list[int]

    def row(self) -> dict[str, Any]:
        """The table row people read (and --json prints)."""
        return {
            "name": self.name,
            "psi": self.psi,
            "level": self.level,
            "ks": self.ks,
            "wasserstein": self.wasserstein,
            "live_rows": self.live_rows,
        }


@dataclass(frozen=True)
class DriftAnalysis:
    """Drift of every feature and of the scores of one model over one window of live rows."""

    model_id: str
    window: dict[str, Any]
    features: list[DistributionDrift]
    score: DistributionDrift
    reference_source: str

    @classmethod
    def run(cls, registry: ModelRegistry, model_id: str, live: np.ndarray, window: dict[str, Any]) -> DriftAnalysis:
        """Score `live` (rows × the model's features, NaN = missing) with the model and compare with its reference."""
        meta = registry.get_model(model_id)
        names = meta.features or _feature_names(live)
        if live.shape[1] != len(names):
            raise UsageError(f"live data has {live.shape[1]} features, model {model_id} has {len(names)}")
        sample_x, sample_scores = _test_sample(registry, model_id)
        reference, source = _reference(meta, sample_x, sample_scores)
        booster = xgb.Booster(model_file=str(registry.artifact_path(model_id)))
        scores = booster.inplace_predict(live.astype(np.float32))
        features = [
            _compare(name, reference.features[name], None if sample_x is None else sample_x[:, i], live[:, i])
            for i, name in enumerate(names)
        ]
        return cls(model_id, window, features, _compare(SCORE, reference.score, sample_scores, scores), source)

    @property
    def worst(self) -> DistributionDrift:
        """The distribution with the highest PSI."""
        return max([*self.features, self.score], key=lambda d: -1.0 if np.isnan(d.psi) else d.psi)

    def to_dict(self) -> dict[str, Any]:
        """drift.json: thresholds, window, and each distribution with its bins."""
        return {
            "model_id": self.model_id,
            "window": self.window,
            "reference_source": self.reference_source,
            "thresholds": {"watch": PSI_WATCH, "act": PSI_ACT},
            "features": [_full(d) for d in self.features],
            "score": _full(self.score),
        }


def write_drift_report(out_dir: str | Path, analysis: DriftAnalysis) -> Path:
    """Write drift.json, <name>.png per feature and score.png, and index.html into `out_dir`; returns index.html."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "drift.json").write_text(json.dumps(analysis.to_dict(), indent=2, allow_nan=True) + "\n")
    for drift in [*analysis.features, analysis.score]:
        _histogram(drift).savefig(out / f"{drift.name}.png")
    index = out / "index.html"
    index.write_text(_page(analysis))
    return index


def _feature_names(live: np.ndarray) -> list[str]:
    return [f"f{i}" for i in range(live.shape[1])]


def _test_sample(registry: ModelRegistry, model_id: str) -> tuple[np.ndarray | None, np.ndarray | None]:
    path = registry.attachment_path(model_id, TEST_SAMPLE_FILE)
    if path is None:
        return None, None
    with np.load(path) as sample:
        return sample["X"].astype(np.float32), sample["proba"].astype(np.float32)


def _reference(
    meta: ModelMetadata, sample_x: np.ndarray | None, sample_scores: np.ndarray | None
) -> tuple[DriftReference, str]:
    if meta.drift_reference:
        return DriftReference.from_dict(meta.drift_reference), "training split (features), test split (scores)"
    if sample_x is None or sample_scores is None:
        raise UsageError(
            f"model {meta.model_id} has neither a drift reference nor a test sample: register a model trained "
            "by this version of `ml-pipeline train`"
        )
    return DriftReference.fit(sample_x, meta.features, sample_scores), "test sample (no training reference stored)"


def _compare(name: str, reference: BinnedReference, sample: np.ndarray | None, live: np.ndarray) -> DistributionDrift:
    counts = bin_counts(live, reference.edges)
    value = float(reference.psi(live))
    no_sample = float("nan")
    return DistributionDrift(
        name=name,
        psi=value,
        ks=no_sample if sample is None else ks_statistic(sample, live),
        wasserstein=no_sample if sample is None else wasserstein(sample, live),
        level=drift_level(value),
        live_rows=int(live.size),
        reference=reference,
        live_counts=[int(c) for c in counts],
    )


def _full(drift: DistributionDrift) -> dict[str, Any]:
    data = asdict(drift)
    data["reference"] = drift.reference.to_dict()
    return data


def _bin_labels(edges: list[float]) -> list[str]:
    if not edges:
        return ["all", "missing"]
    labels = [f"< {edges[0]:.3g}"]
    labels += [f"[{a:.3g}, {b:.3g})" for a, b in zip(edges, edges[1:], strict=False)]
    return [*labels, f">= {edges[-1]:.3g}", "missing"]


def _histogram(drift: DistributionDrift) -> Figure:
    fig = Figure(figsize=(7, 4), dpi=100, layout="tight")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    labels = _bin_labels(drift.reference.edges)
    x = np.arange(len(labels))
    ax.bar(x - 0.2, drift.reference.proportions, width=0.4, label="reference")
    ax.bar(x + 0.2, proportions(np.asarray(drift.live_counts)), width=0.4, label="live")
    ax.set_xticks(x, labels, rotation=45, ha="right", fontsize=7)
    ax.set(ylabel="share of rows", title=f"{drift.name}: PSI {drift.psi:.3f} ({drift.level})")
    ax.legend()
    return fig


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "n/a" if np.isnan(value) else f"{value:.4f}"
    return html.escape(str(value))


def _page(analysis: DriftAnalysis) -> str:
    rows = "\n".join(
        "<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in d.row().values()) + "</tr>"
        for d in [*analysis.features, analysis.score]
    )
    head = "".join(f"<th>{html.escape(k)}</th>" for k in analysis.score.row())
    charts = "\n".join(
        f'<figure><img src="{html.escape(d.name)}.png" alt="{html.escape(d.name)} histogram"></figure>'
        for d in [*analysis.features, analysis.score]
    )
    window = html.escape(json.dumps(analysis.window))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Drift report: {html.escape(analysis.model_id)}</title>
<style>body{{font-family:sans-serif;margin:2em}} td,th{{padding:2px 10px;text-align:right}}
figure{{display:inline-block;margin:4px}}</style></head>
<body><h1>Drift report: {html.escape(analysis.model_id)}</h1>
<p>Live window: {window}. Reference: {html.escape(analysis.reference_source)}.</p>
<p>PSI below {PSI_WATCH}: no meaningful shift; {PSI_WATCH} to {PSI_ACT}: watch; {PSI_ACT} or more: act
(investigate the source, consider retraining). KS is the largest gap between the two cumulative distributions
(0 to 1); Wasserstein is the average distance values moved, in the feature's unit.</p>
<table><tr>{head}</tr>
{rows}
</table>
{charts}
</body></html>
"""
