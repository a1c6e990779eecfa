"""The `demo-data`, `train` and `evaluate` commands through the real CLI entry point: output and exit codes."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest

from ml_pipeline.cli import main

# With this seed, 30,000 generated alerts train a model that passes the default gate (recall ~0.84).
SEED = 3
ROWS = 30_000


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run `ml-pipeline args...` in this process; returns (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exited:
        main(list(args))
    captured = capsys.readouterr()
    return exited.value.code, captured.out, captured.err


@pytest.fixture(scope="module")
def alerts_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "alerts.csv"
    with pytest.raises(SystemExit) as exited:
        main(["demo-data", "--rows", str(ROWS), "--seed", str(SEED), "--out", str(path)])
    assert exited.value.code == 0
    return path


@pytest.fixture(scope="module")
def trained(alerts_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A model trained by `ml-pipeline train` with default settings, and what the command printed."""
    out = tmp_path_factory.mktemp("run") / "model"
    printed = io.StringIO()
    with pytest.raises(SystemExit) as exited, contextlib.redirect_stdout(printed):
        main(["train", "--data", str(alerts_csv), "--out", str(out)])
    assert exited.value.code == 0
    return out, printed.getvalue()


@pytest.mark.unit
def test_help_lists_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "--help")
    assert code == 0
    assert all(name in out for name in ("demo-data", "train", "evaluate"))


@pytest.mark.unit
def test_demo_data_writes_parquet_and_reports_json(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "alerts.parquet"
    code, out, _ = run_cli(capsys, "demo-data", "--rows", "2000", "--days", "3", "--out", str(path), "--json")
    assert code == 0 and path.is_file()
    summary = json.loads(out)
    assert summary["rows"] == 2000 and 0.02 <= summary["fraud_rate"] <= 0.05


@pytest.mark.unit
@pytest.mark.parametrize(
    "args",
    [
        ["demo-data", "--rows", "10"],
        ["demo-data", "--out", "a.csv", "--to", "postgresql://x@h/db"],
        ["demo-data", "--out", "alerts.xlsx"],
        ["demo-data", "--to", "mysql://h/db"],
        ["demo-data", "--rows", "0", "--out", "a.csv"],
    ],
)
def test_demo_data_bad_usage_exits_2(capsys: pytest.CaptureFixture[str], args: list[str]) -> None:
    code, _, err = run_cli(capsys, *args)
    assert code == 2
    assert err.strip()


@pytest.mark.integration
def test_train_writes_the_training_output_and_prints_json(
    capsys: pytest.CaptureFixture[str], alerts_csv: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    code, stdout, _ = run_cli(
        capsys, "train", "--data", str(alerts_csv), "--out", str(out), "--n-estimators", "60", "--json"
    )
    assert code == 0
    result = json.loads(stdout)
    assert result["gate"]["passed"] and result["output_dir"] == str(out)
    assert result["data_window"] == json.loads((out / "training.json").read_text())["data_window"]
    assert result["data_window"]["source"] == f"file:{alerts_csv.resolve()}" and result["data_window"]["rows"] == ROWS
    assert result["hyperparameters"]["n_estimators"] == 60
    assert {p.name for p in out.iterdir()} == {"model.json", "training.json", "test_sample.npz"}


@pytest.mark.integration
def test_train_prints_a_table_for_people(trained: tuple[Path, str]) -> None:
    out_dir, printed = trained
    record = json.loads((out_dir / "training.json").read_text())
    assert printed.startswith("Training finished (test split)")
    rows = dict(line.split(None, 1) for line in printed.splitlines()[1:])
    assert rows["model_id"].strip() == record["model_id"]
    assert float(rows["AUC"]) == pytest.approx(record["metrics"]["auc_score"], abs=1e-4)
    assert "quality gate                 passed" in printed


@pytest.mark.integration
def test_failed_quality_gate_exits_1_and_keeps_the_output(
    capsys: pytest.CaptureFixture[str], alerts_csv: Path, tmp_path: Path
) -> None:
    out = tmp_path / "strict"
    code, stdout, err = run_cli(
        capsys, "train", "--data", str(alerts_csv), "--out", str(out), "--threshold", "0.999", "--n-estimators", "10"
    )
    assert code == 1
    assert err.startswith("error: quality gate failed") and err.count("\n") == 1
    assert "FAILED" in stdout
    assert (out / "model.json").is_file() and (out / "training.json").is_file()


@pytest.mark.unit
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--data", "alerts.txt"], "unknown file type"),
        (["train", "--data", "missing.csv"], "no such file"),
        (["train", "--data", "x.csv", "--max-depth", "0"], "--max-depth"),
        (["evaluate", "--model", "no/such/dir", "--data", "x.csv"], "no/such/dir"),
    ],
)
def test_bad_input_exits_2_with_one_line(capsys: pytest.CaptureFixture[str], args: list[str], message: str) -> None:
    code, _, err = run_cli(capsys, *args)
    assert code == 2
    assert message in err


@pytest.mark.unit
def test_bad_configuration_exits_2_naming_the_variable(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, alerts_csv: Path
) -> None:
    monkeypatch.setenv("ML_DECISION_THRESHOLD", "1.5")
    code, _, err = run_cli(capsys, "train", "--data", str(alerts_csv))
    assert code == 2
    assert err.startswith("error: ML_DECISION_THRESHOLD='1.5' is not valid") and err.count("\n") == 1


@pytest.mark.integration
def test_evaluate_prints_metrics_and_writes_the_report(
    capsys: pytest.CaptureFixture[str], trained: tuple[Path, str], alerts_csv: Path, tmp_path: Path
) -> None:
    report = tmp_path / "report"
    code, out, _ = run_cli(
        capsys, "evaluate", "--model", str(trained[0]), "--data", str(alerts_csv), "--report", str(report), "--json"
    )
    assert code == 0
    result = json.loads(out)
    assert result["metrics"]["threshold"] == 0.7 and result["metrics"]["samples"] == ROWS
    assert result["report"] == str(report / "index.html") and (report / "roc.png").is_file()


@pytest.mark.integration
def test_evaluate_table_with_an_explicit_threshold(
    capsys: pytest.CaptureFixture[str], trained: tuple[Path, str], alerts_csv: Path
) -> None:
    code, out, _ = run_cli(
        capsys, "evaluate", "--model", str(trained[0] / "model.json"), "--data", str(alerts_csv), "--threshold", "0.5"
    )
    assert code == 0
    lines = dict(line.split(None, 1) for line in out.splitlines()[1:] if line.startswith(("threshold", "AUC")))
    assert lines["threshold"].strip() == "0.5" and float(lines["AUC"]) > 0.9
    assert "quality gate" in out


@pytest.mark.integration
def test_evaluate_refuses_a_file_that_is_not_a_model(
    capsys: pytest.CaptureFixture[str], alerts_csv: Path, tmp_path: Path
) -> None:
    bogus = tmp_path / "model.json"
    bogus.write_text('{"not": "a model"}')
    code, _, err = run_cli(capsys, "evaluate", "--model", str(bogus), "--data", str(alerts_csv))
    assert code == 2
    assert "not an XGBoost model" in err and err.count("\n") == 1


@pytest.mark.integration
@pytest.mark.postgres
def test_demo_data_to_postgres_then_train_from_it(
    capsys: pytest.CaptureFixture[str], pg_dsn: str, tmp_path: Path
) -> None:
    code, out, _ = run_cli(capsys, "demo-data", "--rows", str(ROWS), "--seed", str(SEED), "--days", "5", "--to", pg_dsn)
    assert code == 0 and "labelled_alerts" in out
    out_dir = tmp_path / "db_run"
    code, stdout, _ = run_cli(
        capsys, "train", "--data", pg_dsn, "--lookback-days", "30", "--out", str(out_dir), "--json"
    )
    assert code == 0
    result = json.loads(stdout)
    assert result["data_window"]["source"] == pg_dsn and result["data_window"]["lookback_days"] == 30
    assert result["data_window"]["rows"] == ROWS and result["gate"]["passed"]
