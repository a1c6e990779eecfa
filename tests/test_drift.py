"""Drift measures (binning, PSI, KS, Wasserstein), the training-time reference, and `ml-pipeline drift-report`."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import xgboost as xgb
from model_factory import served_model
from scipy import stats

from ml_pipeline.cli import main
from ml_pipeline.data.features import FEATURE_NAMES
from ml_pipeline.data.generator import generate_alerts
from ml_pipeline.model_registry import ModelMetadata, ModelRegistry
from ml_pipeline.monitoring.drift import (
    MAX_EDGES,
    PSI_ACT,
    PSI_EPSILON,
    BinnedReference,
    DriftReference,
    bin_counts,
    drift_level,
    ks_statistic,
    psi,
    quantile_edges,
    wasserstein,
)
from ml_pipeline.monitoring.live_drift import DriftSnapshot, DriftWindow
from ml_pipeline.native.compiled_model import CompiledModel
from ml_pipeline.native.serving_core import ServingCore
from ml_pipeline.proto_gen import fraud_detection_pb2 as pb
from ml_pipeline.training.evaluator import ModelEvaluator
from ml_pipeline.training.trainer import ModelTrainer, write_training_output

SHIFTED = "international_ratio"


@pytest.mark.unit
def test_bins_count_edges_at_or_below_and_missing_last() -> None:
    edges = [1.0, 2.0, 3.0]
    values = np.array([0.5, 1.0, 1.5, 2.0, 2.99, 3.0, 10.0, np.nan, np.nan])
    assert bin_counts(values, edges).tolist() == [1, 2, 2, 2, 2]


@pytest.mark.unit
def test_quantile_edges_are_unique_ascending_and_skip_the_minimum() -> None:
    rng = np.random.default_rng(0)
    mostly_zero = np.r_[np.zeros(800), rng.random(200)]
    edges = quantile_edges(mostly_zero, 10)
    assert edges == sorted(set(edges)) and edges[0] > 0.0
    assert bin_counts(mostly_zero, edges)[0] == 800
    assert len(quantile_edges(rng.normal(size=5000), MAX_EDGES + 1)) == MAX_EDGES
    with pytest.raises(ValueError):
        quantile_edges(mostly_zero, MAX_EDGES + 2)


@pytest.mark.unit
def test_quantile_bins_hold_equal_shares() -> None:
    values = np.random.default_rng(1).normal(size=20_000)
    ref = BinnedReference.fit(values, 10)
    assert len(ref.edges) == 9 and len(ref.proportions) == 11
    assert np.allclose(ref.proportions[:10], 0.1, atol=0.002) and ref.proportions[10] == 0.0


@pytest.mark.unit
def test_psi_matches_the_formula_and_floors_empty_bins() -> None:
    reference = [0.5, 0.5, 0.0]
    live = [30, 70, 0]
    expected = (0.3 - 0.5) * math.log(0.3 / 0.5) + (0.7 - 0.5) * math.log(0.7 / 0.5)
    assert psi(reference, live) == pytest.approx(expected)
    assert psi(reference, reference) == 0.0
    empty_bin = psi([0.5, 0.5, 0.0], [50, 0, 50])
    floor = PSI_EPSILON
    assert empty_bin == pytest.approx((floor - 0.5) * math.log(floor / 0.5) + (0.5 - floor) * math.log(0.5 / floor))
    assert math.isnan(psi(reference, [0, 0, 0]))
    with pytest.raises(ValueError):
        psi(reference, [1, 2])


@pytest.mark.unit
def test_levels_follow_the_documented_thresholds() -> None:
    assert [drift_level(v) for v in (0.0, 0.099, 0.1, 0.249, 0.25, 3.0, float("nan"))] == [
        "ok",
        "ok",
        "watch",
        "watch",
        "act",
        "act",
        "n/a",
    ]


@pytest.mark.unit
def test_shift_raises_psi_ks_and_wasserstein() -> None:
    rng = np.random.default_rng(2)
    ref_values = rng.normal(size=5000)
    ref = BinnedReference.fit(ref_values)
    same, shifted = rng.normal(size=5000), rng.normal(loc=1.0, size=5000)
    assert ref.psi(same) < 0.1 < 0.25 < ref.psi(shifted)
    assert ks_statistic(ref_values, shifted) == pytest.approx(stats.ks_2samp(ref_values, shifted).statistic)
    assert ks_statistic(ref_values, same) < 0.05 < ks_statistic(ref_values, shifted)
    assert wasserstein(ref_values, shifted) == pytest.approx(1.0, abs=0.1)
    assert math.isnan(wasserstein(ref_values, np.array([np.nan])))


@pytest.mark.unit
def test_reference_round_trips_through_json() -> None:
    rng = np.random.default_rng(3)
    reference = DriftReference.fit(rng.normal(size=(500, 3)), ["a", "b", "c"], rng.random(200))
    again = DriftReference.from_dict(json.loads(json.dumps(reference.to_dict())))
    assert again == reference
    broken = reference.to_dict()
    broken["score"]["proportions"] = broken["score"]["proportions"][:-1]
    with pytest.raises(ValueError):
        DriftReference.from_dict(broken)


@pytest.fixture(scope="module")
def registry_with_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[ModelRegistry, str, Path]:
    """A model trained by ModelTrainer, written as a training output and registered (with its drift reference)."""
    root = tmp_path_factory.mktemp("drift")
    frame = generate_alerts(6000, seed=11)
    trainer = ModelTrainer(n_estimators=15, max_depth=4, nthread=1)
    trainer.train(*trainer.prepare_data(frame)[:2])
    test = trainer.splits["test"]
    metrics = ModelEvaluator(0.7).evaluate(test.y, trainer.predict_from_dmatrix(_dmatrix(test.X)))
    out = root / "training"
    write_training_output(out, trainer, metrics.to_dict(), {"source": "file:test", "rows": len(frame)})
    registry = ModelRegistry(root / "registry")
    meta = ModelMetadata.from_training_output(out)
    registry.register_model(out / "model.json", meta, attachments={"test_sample.npz": out / "test_sample.npz"})
    return registry, meta.model_id, out


def _dmatrix(X: np.ndarray) -> xgb.DMatrix:
    return xgb.DMatrix(X, feature_names=FEATURE_NAMES)


@pytest.mark.integration
def test_training_output_carries_the_reference_into_the_registry(
    registry_with_model: tuple[ModelRegistry, str, Path],
) -> None:
    registry, model_id, out = registry_with_model
    written = json.loads((out / "training.json").read_text())["drift_reference"]
    stored = registry.get_model(model_id).drift_reference
    assert stored == written
    reference = DriftReference.from_dict(stored)
    assert list(reference.features) == FEATURE_NAMES
    with np.load(out / "test_sample.npz") as sample:
        assert reference.score.count == len(sample["proba"])
        assert reference.score.psi(sample["proba"]) == pytest.approx(0.0, abs=1e-9)


def _live_csv(path: Path, shift: bool) -> Path:
    frame = generate_alerts(4000, seed=12)
    if shift:
        frame[SHIFTED] = np.clip(frame[SHIFTED] + 0.4, 0, 1)
    frame.to_csv(path, index=False)
    return path


def _run(*args: str) -> int:
    with pytest.raises(SystemExit) as exited:
        main(list(args))
    return exited.value.code


@pytest.mark.integration
def test_drift_report_flags_exactly_the_shifted_feature(
    registry_with_model: tuple[ModelRegistry, str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    registry, model_id, _ = registry_with_model
    live = _live_csv(tmp_path / "live.csv", shift=True)
    out = tmp_path / "report"
    common = ("--model", model_id, "--data", str(live), "--registry", str(registry.root), "--out", str(out))
    assert _run("drift-report", *common, "--json") == 0
    report = json.loads(capsys.readouterr().out)
    levels = {f["name"]: f["level"] for f in report["features"]}
    assert levels[SHIFTED] == "act"
    assert all(level in {"ok", "watch"} for name, level in levels.items() if name != SHIFTED)
    shifted = next(f for f in report["features"] if f["name"] == SHIFTED)
    others = [f for f in report["features"] if f["name"] != SHIFTED]
    assert shifted["ks"] > max(f["ks"] for f in others)
    assert shifted["wasserstein"] == pytest.approx(0.4, abs=0.1)
    assert {p.name for p in out.glob("*.png")} == {f"{n}.png" for n in [*FEATURE_NAMES, "score"]}
    page = (out / "index.html").read_text()
    assert all(f'src="{n}.png"' in page for n in FEATURE_NAMES) and "0.25" in page
    assert json.loads((out / "drift.json").read_text())["thresholds"] == {"watch": 0.1, "act": 0.25}
    assert _run("drift-report", *common, "--fail-on-drift") == 1
    assert SHIFTED in capsys.readouterr().err


@pytest.mark.integration
def test_drift_report_on_unshifted_data_passes_the_gate(
    registry_with_model: tuple[ModelRegistry, str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    registry, model_id, _ = registry_with_model
    live = _live_csv(tmp_path / "live.csv", shift=False)
    args = ("--data", str(live), "--registry", str(registry.root), "--out", str(tmp_path / "r"), "--window", "30d")
    assert _run("drift-report", "--model", model_id, *args, "--fail-on-drift") == 0
    assert "score" in capsys.readouterr().out


@pytest.mark.integration
def test_drift_report_usage_errors(
    registry_with_model: tuple[ModelRegistry, str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    registry, model_id, _ = registry_with_model
    live = _live_csv(tmp_path / "live.csv", shift=False)
    base = ("--data", str(live), "--registry", str(registry.root), "--out", str(tmp_path / "r"))
    assert _run("drift-report", "--model", "xgboost_vnope", *base) == 2
    assert "unknown model" in capsys.readouterr().err
    assert _run("drift-report", "--model", model_id, *base, "--window", "soon") == 2
    assert "--window" in capsys.readouterr().err


# ---- live drift: the native core's bins and the sliding window ----


@pytest.fixture(scope="module")
def core_with_model() -> Iterator[ServingCore]:
    """A ServingCore serving a real compiled model as the champion."""
    model = served_model("live", seed=1)
    compiled = CompiledModel(str(model.library), model.sha256, "live")
    core = ServingCore()
    core.set_champion(compiled, "live", 0.5)
    yield core


def _predict(core: ServingCore, rows: np.ndarray) -> np.ndarray:
    scores = [
        pb.PredictionResponse.FromString(
            core.handle(pb.PredictionRequest(features=row.tolist(), request_id=f"r{i}").SerializeToString())
        ).probability
        for i, row in enumerate(rows)
    ]
    return np.asarray(scores, dtype=np.float32)


@pytest.mark.integration
def test_core_bins_agree_with_python_binning(core_with_model: ServingCore) -> None:
    core = core_with_model
    rng = np.random.default_rng(4)
    X = rng.normal(size=(2000, 8)).astype(np.float32)
    X[::7, 2] = np.nan
    X[:50, 0], X[50:100, 1] = 0.0, 1.0  # values exactly on an edge go to the bin above
    edges = [quantile_edges(X[:, i], n) for i, n in enumerate([2, 5, 10, 16, 16, 3, 1, 8])]
    edges[0], edges[1] = [0.0], [-1.0, 0.0, 1.0]
    score_edges = quantile_edges(rng.random(500), 16)
    core.set_drift(edges, score_edges)
    first = core.drift_counts()
    assert first["rows"] == 0 and all(sum(f) == 0 for f in first["features"])
    scores = _predict(core, X)
    counts = core.drift_counts()
    assert counts["rows"] == len(X) and counts["generation"] == first["generation"]
    for i in range(8):
        assert counts["features"][i] == bin_counts(X[:, i], edges[i]).tolist(), i
    assert counts["score"] == bin_counts(scores, score_edges).tolist()
    core.set_drift(edges, score_edges)
    assert core.drift_counts()["generation"] > counts["generation"] and core.drift_counts()["rows"] == 0
    core.set_drift(None, None)
    assert core.drift_counts() is None
    _predict(core, X[:5])  # tracking off: still serves


@pytest.mark.integration
def test_core_refuses_bad_edges(core_with_model: ServingCore) -> None:
    with pytest.raises(ValueError, match="ascending"):
        core_with_model.set_drift([[1.0, 0.5]], [])
    with pytest.raises(ValueError, match="at most 15"):
        core_with_model.set_drift([list(range(16))], [])


def _snapshot(generation: int, rows: int, features: list[list[int]], score: list[int]) -> DriftSnapshot:
    return DriftSnapshot(generation, rows, np.array(features), np.array(score))


@pytest.mark.unit
def test_window_diffs_the_oldest_and_newest_snapshot() -> None:
    reference = DriftReference(
        {"a": BinnedReference([0.0], [0.5, 0.5, 0.0], 100)}, BinnedReference([0.5], [0.5, 0.5, 0.0], 100)
    )
    window = DriftWindow(reference, ["a"], size=2, min_rows=100)
    window.add(_snapshot(1, 60, [[30, 30, 0]], [30, 30, 0]))
    assert window.values().features == {} and window.values().rows == 60  # too few rows
    window.add(_snapshot(1, 260, [[130, 130, 0]], [130, 130, 0]))
    assert window.values().features["a"] == pytest.approx(0.0) and window.values().rows == 260
    window.add(_snapshot(1, 460, [[330, 130, 0]], [230, 230, 0]))  # the last 200 rows all fell in bin 0
    window.add(_snapshot(1, 660, [[530, 130, 0]], [330, 330, 0]))  # window: 660 - 260 = 400 rows, all in bin 0
    values = window.values()
    assert values.rows == 400 and values.features["a"] == pytest.approx(psi([0.5, 0.5, 0.0], [400, 0, 0]))
    assert values.features["a"] > PSI_ACT and values.score == pytest.approx(0.0)
    window.add(_snapshot(2, 10, [[5, 5, 0]], [5, 5, 0]))  # new edges: the window starts again
    assert window.values().rows == 10 and window.values().features == {}
