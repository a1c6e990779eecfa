"""`ml-pipeline explain`: the reasons of one answer, from the model's compiled explainer (exact TreeSHAP)."""

from __future__ import annotations

import math

import click

from ml_pipeline.cli.output import emit, json_option
from ml_pipeline.cli.registry_cmds import open_registry, registry_option
from ml_pipeline.cli.serve_cmds import FEATURE_ORDER, parse_features
from ml_pipeline.errors import UsageError
from ml_pipeline.explain import top_reasons
from ml_pipeline.explain.artifact import load_explainer


@click.command("explain")
@click.option(
    "--features",
    required=True,
    help=f"Comma-separated values in the model's feature order (nan = missing): {FEATURE_ORDER} for a model "
    "trained by `ml-pipeline train`.",
)
@click.option("--model", "model_id", help="Registered model id  [default: the champion]")
@click.option("--top-k", type=click.IntRange(min=1), help="Show the k strongest reasons  [default: all features]")
@registry_option
@json_option
def explain(features: str, model_id: str | None, top_k: int | None, registry_path: str | None, as_json: bool) -> None:
    """The features that made a model's answer: each one's exact contribution to the log-odds of fraud
    (positive: towards fraud), strongest first, with the bias; they sum to the model's margin."""
    registry = open_registry(registry_path)
    model_id = model_id or registry.serving_state().champion_id
    if model_id is None:
        raise UsageError("there is no champion: give --model MODEL_ID")
    meta = registry.get_model(model_id)
    compiled = registry.verified_library(model_id)
    if compiled is None:
        raise UsageError(f"{model_id} has no verified compiled library: `ml-pipeline compile {model_id}`")
    explainer = load_explainer(dict(compiled.get("explainer") or {}))
    values = parse_features(features)
    if len(values) != explainer.num_features:
        raise UsageError(f"{model_id} takes {explainer.num_features} features, got {len(values)}")
    names = list(meta.features) or [f"f{i}" for i in range(explainer.num_features)]
    phi = explainer.contributions([values])[0]
    reasons = top_reasons(names, values, phi, top_k)
    margin = float(phi.sum())
    probability = 1.0 / (1.0 + math.exp(-margin))
    threshold = meta.threshold
    summary = {
        "model_id": model_id,
        "probability": probability,
        "is_fraud": probability >= threshold,
        "margin": margin,
        "bias": float(phi[-1]),
    }
    if as_json:
        emit({**summary, "reasons": [r.to_dict() for r in reasons]}, as_json=True)
        return
    rows = [
        {
            "feature": r.feature,
            "value": r.value,
            "contribution": f"{r.contribution:+.4f}",
            "towards": _side(r.contribution),
        }
        for r in reasons
    ]
    emit(
        rows,
        as_json=False,
        title=f"Reasons of {model_id}: probability {probability:.4f}, margin {margin:+.4f} "
        f"= bias {summary['bias']:+.4f} + contributions",
    )


def _side(contribution: float) -> str:
    return "fraud" if contribution > 0 else "normal" if contribution < 0 else "-"


COMMANDS = [explain]
