"""`ml-pipeline ab-report`: logged predictions joined with labels, per-arm metrics with intervals, the verdict."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ml_pipeline.cli import main
from ml_pipeline.data.generator import generate_alerts
from ml_pipeline.data.sources import write_alerts_to_postgres
from ml_pipeline.monitoring.ab_report import ABReport
from ml_pipeline.monitoring.prediction_log import JsonLinesSink


def traffic(
    n: int, champion_signal: float, challenger_signal: float, seed: int = 0
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """n logged predictions (80 % champion) and their labels; `signal` sets how well each arm's score separates."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.2).astype(np.int8)
    challenger = rng.random(n) < 0.2
    signal = np.where(challenger, challenger_signal, champion_signal)
    score = 1 / (1 + np.exp(-(signal * (2 * y - 1) + rng.normal(size=n))))
    ids = [f"ALR-{i:07d}" for i in range(n)]
    log = pd.DataFrame(
        {
            "time": time.time(),
            "request_id": ids,
            "model_version": np.where(challenger, "model-b", "model-a"),
            "slot": np.where(challenger, "challenger", "champion"),
            "score": score,
            "decision": score >= 0.5,
        }
    )
    labels = pd.DataFrame({"alert_id": ids, "is_fraud": y})
    return log, labels


@pytest.mark.unit
def test_a_clearly_better_challenger_is_called_better() -> None:
    log, labels = traffic(4000, champion_signal=0.6, challenger_signal=2.0)
    report = ABReport.compute(log, labels, n_bootstrap=200, seed=1)
    champion, challenger = report.arms
    assert challenger.auc.value > champion.auc.value and report.auc_difference.low > 0
    assert report.verdict.startswith("challenger better")
    assert champion.predictions + challenger.predictions == 4000 and report.joined == 4000
    assert challenger.traffic_share == pytest.approx(0.2, abs=0.03)
    assert champion.auc.low < champion.auc.value < champion.auc.high
    assert champion.models == ["model-a"] and challenger.models == ["model-b"]


@pytest.mark.unit
def test_a_clearly_worse_challenger_is_called_worse() -> None:
    log, labels = traffic(4000, champion_signal=2.0, challenger_signal=0.6, seed=2)
    assert ABReport.compute(log, labels, n_bootstrap=200).verdict.startswith("challenger worse")


@pytest.mark.unit
def test_too_few_labels_give_an_estimate_of_how_many_more() -> None:
    log, labels = traffic(600, champion_signal=1.0, challenger_signal=1.15, seed=3)
    report = ABReport.compute(log, labels, n_bootstrap=200, seed=4)
    assert report.verdict.startswith("not yet significant — needs about")
    assert report.more_labels_needed is not None and report.more_labels_needed > 600
    again = ABReport.compute(log, labels, n_bootstrap=200, seed=4)
    assert again.to_dict() == report.to_dict()  # seeded: same inputs, same report


@pytest.mark.unit
def test_only_labelled_predictions_enter_the_metrics() -> None:
    log, labels = traffic(1000, 1.0, 1.0, seed=5)
    report = ABReport.compute(log, labels.iloc[:300], n_bootstrap=100)
    assert report.joined == 300
    assert sum(a.labelled for a in report.arms) == 300 and sum(a.predictions for a in report.arms) == 1000


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run `ml-pipeline args...` in this process; returns (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exited:
        main(list(args))
    out = capsys.readouterr()
    return exited.value.code, out.out, out.err


def write_log(path: Path, log: pd.DataFrame) -> Path:
    """Write the predictions as the server's prediction log does (JSON Lines sink)."""
    sink = JsonLinesSink(path)
    sink.write([(*row, (), None) for row in log.itertuples(index=False, name=None)])  # no reasons, no shadow
    sink.close()
    return path


@pytest.mark.integration
def test_cli_with_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log, labels = traffic(3000, champion_signal=0.6, challenger_signal=2.0, seed=6)
    log_path = write_log(tmp_path / "predictions.jsonl", log)
    labels.to_csv(tmp_path / "labels.csv", index=False)
    code, out, _ = run_cli(
        capsys, "ab-report", "--log", str(log_path), "--labels", str(tmp_path / "labels.csv"), "--bootstrap", "300"
    )
    assert code == 0
    assert "champion" in out and "challenger" in out and "challenger better" in out
    code, out, _ = run_cli(
        capsys,
        "ab-report",
        "--log",
        str(log_path),
        "--labels",
        str(tmp_path / "labels.csv"),
        "--json",
        "--bootstrap",
        "200",
    )
    assert code == 0 and json.loads(out)["arms"][1]["auc"]["value"] > 0.8


@pytest.mark.integration
def test_cli_labels_from_the_labelled_alerts_table(
    tmp_path: Path, pg_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    alerts = generate_alerts(800, seed=8)
    write_alerts_to_postgres(pg_dsn, alerts)
    rng = np.random.default_rng(9)
    challenger = rng.random(len(alerts)) < 0.5
    score = np.clip(alerts["is_fraud"] * 0.6 + rng.random(len(alerts)) * 0.5, 0, 1)
    log = pd.DataFrame(
        {
            "time": time.time(),
            "request_id": alerts["alert_id"],
            "model_version": np.where(challenger, "b", "a"),
            "slot": np.where(challenger, "challenger", "champion"),
            "score": score,
            "decision": score >= 0.5,
        }
    )
    log_path = write_log(tmp_path / "p.jsonl", log)
    code, out, _ = run_cli(
        capsys, "ab-report", "--log", str(log_path), "--labels", pg_dsn, "--json", "--bootstrap", "100"
    )
    assert code == 0
    report = json.loads(out)
    assert report["joined"] == 800 and report["verdict"].startswith("not yet significant")


@pytest.mark.unit
def test_cli_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    labels = tmp_path / "labels.csv"
    pd.DataFrame({"alert_id": ["a"], "is_fraud": [1]}).to_csv(labels, index=False)
    code, _, err = run_cli(capsys, "ab-report", "--log", str(tmp_path / "none.jsonl"), "--labels", str(labels))
    assert code == 2 and "ML_PREDICTION_LOG" in err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"request_id": "a"}\nnot json\n')
    code, _, err = run_cli(capsys, "ab-report", "--log", str(bad), "--labels", str(labels))
    assert code == 2 and "bad.jsonl:2" in err
