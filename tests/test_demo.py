"""The main job (`make demo`): every step runs, prints its time, and leaves the model and report behind."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from ml_pipeline.config import MLPipelineConfig
from ml_pipeline.demo import REASONS_SHOWN, STEPS, DemoRun, check_quality_gate, main
from ml_pipeline.errors import JobFailed
from ml_pipeline.model_registry import ModelRegistry
from ml_pipeline.training.evaluator import ModelEvaluator


@pytest.mark.e2e
def test_demo_runs_every_step_and_writes_its_outputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo_output"
    assert main(out, compiled_dir=tmp_path / "compiled_models") == 0
    printed = capsys.readouterr().out
    for number, step in enumerate(STEPS, start=1):
        assert f"[{number}/{len(STEPS)}] {step.title}" in printed
    assert printed.count(" s)") == len(STEPS)
    # The generator's promise: default hyperparameters on demo-sized data are good but not perfect.
    record = json.loads((out / "model" / "training.json").read_text())
    assert 0.90 <= record["metrics"]["auc_score"] <= 0.97
    assert printed.count("passed (AUC ≥ 0.85, precision ≥ 0.8, recall ≥ 0.75)") == 1
    assert (out / "model" / "model.json").is_file() and (out / "model" / "test_sample.npz").is_file()
    assert (out / "report" / "index.html").is_file() and (out / "alerts.parquet").is_file()
    # The serving half: the champion was compiled, served, answered two real Predicts, and stopped cleanly.
    model_id = record["model_id"]
    assert (tmp_path / "compiled_models" / f"{model_id}.so").is_file()
    assert "fraud call → is_fraud=True" in printed and f"model_version={model_id}" in printed
    assert "normal call → is_fraud=False" in printed
    # The fraud call's reasons, each printed beside XGBoost's own contribution for the same row: they agree.
    reasons = re.findall(r"contribution ([+-]\d+\.\d+)  XGBoost pred_contribs ([+-]\d+\.\d+)", printed)
    assert len(reasons) == REASONS_SHOWN, printed
    assert all(abs(float(ours) - float(theirs)) <= 2e-4 for ours, theirs in reasons), reasons
    # Compiled once, before the promotion (which then finds the verified library and compiles nothing).
    history = ModelRegistry(out / "registry").history(model_id)
    assert [entry.action for entry in history].count("compile") == 1, history
    assert "stopped after SIGTERM, exit code 0" in printed


@pytest.mark.unit
def test_quality_gate_step_stops_the_demo_below_the_minimums(tmp_path: Path) -> None:
    strict = MLPipelineConfig.from_env({"ML_MIN_AUC_SCORE": "0.95"})
    run = DemoRun(out=tmp_path, config=strict)
    run.metrics = ModelEvaluator(0.5).evaluate(np.array([0, 0, 1, 1]), np.array([0.1, 0.6, 0.4, 0.9]))
    with pytest.raises(JobFailed, match="quality gate failed: AUC 0.7500 < 0.9500"):
        check_quality_gate(run)


@pytest.mark.unit
def test_demo_with_bad_configuration_exits_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ML_MODEL_N_ESTIMATORS", "many")
    assert main(tmp_path / "demo_output") == 2
