"""Reason codes: the native TreeSHAP equals XGBoost's `pred_contribs` on the project's data and on three other real
tabular data sets (missing values included), the compiler records a checked explainer, bad input is refused,
and `ml-pipeline explain` prints the reasons of an answer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import xgboost as xgb
from model_factory import served_model
from sklearn.datasets import load_breast_cancer, load_diabetes, load_wine

from ml_pipeline.cli import main
from ml_pipeline.data.features import FEATURE_NAMES, LABEL
from ml_pipeline.data.generator import generate_alerts
from ml_pipeline.explain import UnexplainableModel, pack_trees, top_reasons
from ml_pipeline.explain.verify import CONTRIBUTION_TOLERANCE, check_contributions
from ml_pipeline.model_registry import ModelRegistry
from ml_pipeline.native.tree_explainer import ExplainerLoadError, TreeExplainer


def _with_missing(rows: np.ndarray, share: float, seed: int) -> np.ndarray:
    out = np.array(rows, dtype=np.float32)
    out[np.random.default_rng(seed).random(out.shape) < share] = np.nan
    return out


def _data_sets() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    alerts = generate_alerts(rows=4_000, seed=3)
    diabetes = load_diabetes()
    wine = load_wine()
    cancer = load_breast_cancer()
    return {
        "voxguard-alerts": (alerts[FEATURE_NAMES].to_numpy(np.float32), alerts[LABEL].to_numpy()),
        "breast-cancer": (cancer.data.astype(np.float32), cancer.target),
        "diabetes-above-median": (diabetes.data.astype(np.float32), diabetes.target > np.median(diabetes.target)),
        "wine-class-0": (wine.data.astype(np.float32), wine.target == 0),
    }


DATA_SETS = _data_sets()


@pytest.mark.integration
@pytest.mark.parametrize("name", sorted(DATA_SETS))
@pytest.mark.parametrize("depth, rounds, objective", [(3, 40, "binary:logistic"), (7, 25, "binary:logitraw")])
def test_contributions_equal_xgboost(name: str, depth: int, rounds: int, objective: str) -> None:
    features, labels = DATA_SETS[name]
    train = _with_missing(features, 0.15, seed=1)  # missing values in training: splits learn default directions
    params = {"objective": objective, "max_depth": depth, "eta": 0.3, "base_score": 0.3, "seed": 0}
    booster = xgb.train(params, xgb.DMatrix(train, label=labels.astype(np.float32), missing=np.nan), rounds)
    explainer = TreeExplainer(pack_trees(booster.save_raw("json")))
    rows = np.concatenate([features, _with_missing(features, 0.3, seed=2)])
    check = check_contributions(explainer, booster, rows)
    assert check.max_abs_diff <= CONTRIBUTION_TOLERANCE and check.rows == min(len(rows), 2_000)
    phi = explainer.contributions(rows)
    margins = booster.predict(xgb.DMatrix(rows, missing=np.nan), output_margin=True)
    assert np.abs(phi.sum(axis=1) - margins).max() <= CONTRIBUTION_TOLERANCE  # contributions + bias = margin
    assert np.abs(explainer.margins(rows) - margins).max() <= CONTRIBUTION_TOLERANCE


@pytest.mark.integration
def test_wide_trees_equal_xgboost_in_every_layout() -> None:
    """Trees over 40 informative features: some split on more than 16 features (sparse table rows), most have paths
    too rich to tabulate (the recursion); the real data sets above give dense rows."""
    rng = np.random.default_rng(7)
    features = rng.normal(size=(4_000, 40)).astype(np.float32)
    labels = features[:, :20].sum(axis=1) + rng.normal(size=len(features)) > 0
    train = _with_missing(features, 0.1, seed=3)
    params = {"objective": "binary:logistic", "max_depth": 7, "eta": 0.3, "seed": 0}
    booster = xgb.train(params, xgb.DMatrix(train, label=labels.astype(np.float32), missing=np.nan), 10)
    explainer = TreeExplainer(pack_trees(booster.save_raw("json")))
    check = check_contributions(explainer, booster, _with_missing(features[:1_000], 0.2, seed=4))
    assert check.max_abs_diff <= CONTRIBUTION_TOLERANCE


@pytest.mark.unit
def test_models_the_explainer_cannot_explain_exactly_are_refused_with_the_reason() -> None:
    features, labels = DATA_SETS["wine-class-0"]
    cases = {
        "several outputs": ({"objective": "multi:softprob", "num_class": 3}, load_wine().target),
        "gblinear": ({"booster": "gblinear", "objective": "binary:logistic"}, labels),
        "objective reg:squarederror": ({"objective": "reg:squarederror"}, labels),
    }
    for reason, (params, target) in cases.items():
        booster = xgb.train(params, xgb.DMatrix(features, label=target.astype(np.float32)), 2)
        with pytest.raises(UnexplainableModel, match=reason.split()[-1]):
            pack_trees(booster.save_raw("json"))


@pytest.mark.unit
def test_damaged_packed_trees_are_refused_on_load() -> None:
    features, labels = DATA_SETS["wine-class-0"]
    booster = xgb.train({"objective": "binary:logistic", "max_depth": 3}, xgb.DMatrix(features, label=labels), 3)
    packed = pack_trees(booster.save_raw("json"))
    header = 32 + 8  # 3 trees: 3 counts + 1 padding
    node = bytearray(packed)
    node[header : header + 4] = (-5).to_bytes(4, "little", signed=True)  # the root's left child out of range
    damaged = {
        "wrong magic": b"NOTTREES" + packed[8:],
        "truncated": packed[:-7],
        "half leaf": bytes(node),
    }
    for what, data in damaged.items():
        with pytest.raises(ExplainerLoadError, match="packed trees"):
            TreeExplainer(data)
        assert what
    with pytest.raises(ExplainerLoadError, match="not the recorded"):
        TreeExplainer(packed, sha256="0" * 64)
    with pytest.raises(ValueError, match=f"expected rows of {features.shape[1]} features"):
        TreeExplainer(packed).contributions(np.zeros((1, 3), dtype=np.float32))


@pytest.mark.unit
def test_top_reasons_are_the_strongest_first_and_k_is_clamped() -> None:
    phi = np.array([0.5, -2.0, 0.0, 1.0, -3.0])  # 4 features, then the bias
    reasons = top_reasons(["a", "b", "c", "d"], [1.0, 2.0, 3.0, 4.0], phi, k=10)
    assert [r.feature for r in reasons] == ["b", "d", "a", "c"]
    assert reasons[0].value == 2.0 and reasons[0].contribution == -2.0
    assert [r.feature for r in top_reasons(["a", "b", "c", "d"], [0] * 4, phi, k=1)] == ["b"]


@pytest.mark.integration
def test_the_compiler_records_a_checked_explainer_and_explain_prints_the_reasons(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = served_model("explained_v1", seed=4)
    record = model.compiled["explainer"]
    assert record["max_abs_diff"] <= CONTRIBUTION_TOLERANCE and record["rows"] > 100
    assert Path(record["path"]).stat().st_mode & 0o022 == 0
    registry = ModelRegistry(Path(model.result.path).parent.parent / "registry")
    row = [120.0, 15.0, 0.9, 0.8, float("nan"), 0.1, 0.2, 3.0]
    with pytest.raises(SystemExit) as exited:
        main(["explain", "--registry", str(registry.root), "--model", model.model_id, "--features",
              ",".join(map(str, row)), "--top-k", "3", "--json"])  # fmt: skip
    out = capsys.readouterr().out
    assert exited.value.code == 0, out
    shown = json.loads(out)
    unnamed = model.booster.copy()
    unnamed.feature_names = None
    reference = unnamed.predict(xgb.DMatrix(np.array([row], dtype=np.float32), missing=np.nan), pred_contribs=True)[0]
    strongest = np.argsort(-np.abs(reference[:-1]))[:3]
    assert [r["feature"] for r in shown["reasons"]] == [FEATURE_NAMES[i] for i in strongest]
    assert [r["contribution"] for r in shown["reasons"]] == pytest.approx(reference[strongest], abs=1e-4)
    assert shown["bias"] == pytest.approx(reference[-1], abs=1e-4)
    assert shown["margin"] == pytest.approx(reference.sum(), abs=1e-4)
    trees = Path(record["path"])
    packed = trees.read_bytes()
    trees.write_bytes(packed[:-1] + bytes([packed[-1] ^ 1]))  # altered after compile: refused
    try:
        with pytest.raises(SystemExit) as exited:
            main(["explain", "--registry", str(registry.root), "--model", model.model_id, "--features",
                  ",".join(map(str, row))])  # fmt: skip
        assert exited.value.code != 0 and "not the recorded" in capsys.readouterr().err
    finally:
        trees.write_bytes(packed)
