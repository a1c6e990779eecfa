"""Evaluation report people look at: ROC, precision-recall, confusion matrix, threshold sweep, importance, and
each feature's mean |contribution| (exact TreeSHAP: what the reasons of served answers are made of).

`write_report` draws six PNG charts with matplotlib (Agg canvas, no display needed) and one index.html
that shows them next to the metric table.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import precision_recall_curve, roc_curve

from ml_pipeline.training.evaluator import EvaluationMetrics

CHARTS = {
    "roc.png": "ROC curve",
    "precision_recall.png": "Precision-recall curve",
    "confusion_matrix.png": "Confusion matrix",
    "threshold_sweep.png": "Threshold sweep",
    "feature_importance.png": "Feature importance (gain)",
    "mean_contribution.png": "Mean |contribution| per feature (TreeSHAP)",
}


def write_report(
    out_dir: str | Path,
    metrics: EvaluationMetrics,
    y_true: np.ndarray,
    y_proba: np.ndarray,
    feature_importance: Mapping[str, float],
    mean_contribution: Mapping[str, float],
) -> Path:
    """Write the charts and index.html into `out_dir`; returns the path of index.html. `mean_contribution` is each
    feature's mean |contribution| to the margin over the evaluated rows (trainer.mean_abs_contribution)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _save(_roc(metrics, y_true, y_proba), out / "roc.png")
    _save(_precision_recall(metrics, y_true, y_proba), out / "precision_recall.png")
    _save(_confusion(metrics), out / "confusion_matrix.png")
    _save(_sweep(metrics), out / "threshold_sweep.png")
    _save(_importance(feature_importance), out / "feature_importance.png")
    _save(_contribution(mean_contribution), out / "mean_contribution.png")
    index = out / "index.html"
    index.write_text(_page(metrics, mean_contribution))
    return index


def _figure() -> tuple[Figure, Axes]:
    fig = Figure(figsize=(6, 4.5), dpi=100, layout="tight")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _save(fig: Figure, path: Path) -> None:
    fig.savefig(path)


def _roc(metrics: EvaluationMetrics, y_true: np.ndarray, y_proba: np.ndarray) -> Figure:
    fig, ax = _figure()
    fpr, tpr, _ = roc_curve(y_true, y_proba)
    ax.plot(fpr, tpr, label=f"model (AUC {metrics.auc_score:.3f})")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="chance")
    ax.scatter([metrics.fpr], [metrics.recall], color="red", zorder=3, label=f"threshold {metrics.threshold}")
    ax.set(xlabel="false positive rate", ylabel="true positive rate (recall)", title="ROC curve")
    ax.legend(loc="lower right")
    return fig


def _precision_recall(metrics: EvaluationMetrics, y_true: np.ndarray, y_proba: np.ndarray) -> Figure:
    fig, ax = _figure()
    precision, recall, _ = precision_recall_curve(y_true, y_proba)
    ax.plot(recall, precision, label="model")
    ax.axhline(metrics.positives / metrics.samples, linestyle="--", color="grey", label="fraud rate")
    ax.scatter([metrics.recall], [metrics.precision], color="red", zorder=3, label=f"threshold {metrics.threshold}")
    ax.set(xlabel="recall", ylabel="precision", title="Precision-recall curve", ylim=(0, 1.02))
    ax.legend(loc="lower left")
    return fig


def _confusion(metrics: EvaluationMetrics) -> Figure:
    fig, ax = _figure()
    matrix = np.array(metrics.confusion_matrix)
    ax.imshow(matrix, cmap="Blues")
    for (row, col), count in np.ndenumerate(matrix):
        colour = "white" if count > matrix.max() / 2 else "black"
        ax.text(col, row, f"{count:,}", ha="center", va="center", color=colour, fontsize=14)
    ax.set_xticks([0, 1], ["normal", "fraud"])
    ax.set_yticks([0, 1], ["normal", "fraud"])
    ax.set(xlabel="predicted", ylabel="actual", title=f"Confusion matrix at threshold {metrics.threshold}")
    return fig


def _sweep(metrics: EvaluationMetrics) -> Figure:
    fig, ax = _figure()
    points = metrics.threshold_sweep
    thresholds = [p.threshold for p in points]
    for name in ("precision", "recall", "f1_score", "fpr"):
        ax.plot(thresholds, [getattr(p, name) for p in points], marker=".", label=name)
    ax.axvline(metrics.threshold, linestyle="--", color="red", label="decision threshold")
    ax.set(xlabel="threshold", ylabel="value", title="Metrics by decision threshold", ylim=(0, 1.02))
    ax.legend(loc="best")
    return fig


def _importance(feature_importance: Mapping[str, float]) -> Figure:
    fig, ax = _figure()
    ranked = sorted(feature_importance.items(), key=lambda item: item[1])
    ax.barh([name for name, _ in ranked], [value for _, value in ranked])
    ax.set(xlabel="average gain per split", title="Feature importance")
    return fig


def _contribution(mean_contribution: Mapping[str, float]) -> Figure:
    fig, ax = _figure()
    ranked = sorted(mean_contribution.items(), key=lambda item: item[1])
    ax.barh([name for name, _ in ranked], [value for _, value in ranked])
    ax.set(xlabel="mean |contribution| to the margin (log-odds)", title="What the reasons are made of")
    return fig


def _page(metrics: EvaluationMetrics, mean_contribution: Mapping[str, float]) -> str:
    (tn, fp), (fn, tp) = metrics.confusion_matrix
    rows = [
        ("samples", f"{metrics.samples:,} ({metrics.positives:,} fraud)"),
        ("AUC", f"{metrics.auc_score:.4f}"),
        ("decision threshold", f"{metrics.threshold}"),
        ("precision", f"{metrics.precision:.4f}"),
        ("recall", f"{metrics.recall:.4f}"),
        ("F1", f"{metrics.f1_score:.4f}"),
        ("accuracy", f"{metrics.accuracy:.4f}"),
        ("specificity", f"{metrics.specificity:.4f}"),
        ("false positive rate", f"{metrics.fpr:.4f}"),
        ("false negative rate", f"{metrics.fnr:.4f}"),
        ("confusion [[tn, fp], [fn, tp]]", f"[[{tn:,}, {fp:,}], [{fn:,}, {tp:,}]]"),
    ]
    table = "\n".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    sweep = "\n".join(
        f"<tr><td>{p.threshold:.2f}</td><td>{p.precision:.4f}</td><td>{p.recall:.4f}</td>"
        f"<td>{p.f1_score:.4f}</td><td>{p.fpr:.5f}</td><td>{p.flagged:,}</td></tr>"
        for p in metrics.threshold_sweep
    )
    contributions = "\n".join(
        f"<tr><th>{html.escape(name)}</th><td>{value:.4f}</td></tr>"
        for name, value in sorted(mean_contribution.items(), key=lambda item: -item[1])
    )
    charts = "\n".join(
        f'<figure><img src="{name}" alt="{html.escape(title)}"><figcaption>{html.escape(title)}</figcaption></figure>'
        for name, title in CHARTS.items()
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Fraud model evaluation</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin-bottom: 1.5em; }}
th, td {{ border: 1px solid #ccc; padding: 4px 10px; text-align: left; }}
figure {{ display: inline-block; margin: 0 1em 1em 0; }}
</style></head>
<body>
<h1>Fraud model evaluation</h1>
<h2>Metrics</h2>
<table>
{table}
</table>
<h2>Mean |contribution| per feature</h2>
<table>
{contributions}
</table>
<h2>Charts</h2>
{charts}
<h2>Threshold sweep</h2>
<table>
<tr><th>threshold</th><th>precision</th><th>recall</th><th>F1</th><th>FPR</th><th>flagged</th></tr>
{sweep}
</table>
</body></html>
"""
