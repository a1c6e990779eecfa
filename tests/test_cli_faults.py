"""Operator faults answered with one line (exit 2 for usage, 1 for a failed job), never a traceback.

The read-only cases run the CLI in a private mount namespace (`unshare`) where the folder is bind-mounted
read-only, so they hold for root too (root ignores permission bits but not a read-only mount).
"""

from __future__ import annotations

import csv
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from model_factory import training_output
from native_support import require_native_transport

from ml_pipeline.cli import main
from ml_pipeline.model_registry import ModelRegistry

CLI = str(Path(sys.executable).with_name("ml-pipeline"))
MODEL_ID = "faults_model"
READ_ONLY = 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && shift && exec "$@"'


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """The CLI in-process: (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exited:
        main(list(args))
    out, err = capsys.readouterr()
    return int(exited.value.code or 0), out, err


def run_read_only(folder: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The CLI in a process that sees `folder` mounted read-only."""
    command = ["unshare", "--map-root-user", "--mount", "sh", "-c", READ_ONLY, "sh", str(folder), CLI, *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=120)


def assert_one_line(stderr: str, *needles: str) -> None:
    """stderr is one `error:` line holding every needle."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    for needle in needles:
        assert needle in lines[0], (needle, stderr)


@pytest.fixture
def alerts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    """A labelled alerts CSV written by `ml-pipeline demo-data`."""
    path = tmp_path / "alerts.csv"
    assert run(capsys, "demo-data", "--out", str(path), "--rows", "2000")[0] == 0
    return path


@pytest.fixture
def registry(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> ModelRegistry:
    """A registry holding one approved model, registered by the CLI."""
    folder = training_output(tmp_path / "trained", MODEL_ID)
    root = tmp_path / "registry"
    assert run(capsys, "registry", "register", str(folder), "--registry", str(root))[0] == 0
    assert run(capsys, "registry", "approve", MODEL_ID, "--registry", str(root))[0] == 0
    return ModelRegistry(root)


@pytest.mark.integration
@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_an_infinite_feature_is_named_by_column_and_row(
    tmp_path: Path, alerts: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    rows = list(csv.reader(alerts.open()))
    column = rows[0].index("avg_call_duration_s")
    rows[5][column] = "inf"
    bad = tmp_path / "inf.csv"
    with bad.open("w", newline="") as out:
        csv.writer(out).writerows(rows)
    args = (
        ["--out", str(tmp_path / "out")]
        if command == "train"
        else ["--model", str(training_output(tmp_path / "m", MODEL_ID))]
    )
    code, _, stderr = run(capsys, command, "--data", str(bad), *args)
    assert code == 2
    assert_one_line(stderr, "column avg_call_duration_s holds inf in row 5")


@pytest.mark.integration
@pytest.mark.parametrize(
    "args",
    [
        ["registry", "register", "{trained}"],
        ["registry", "approve", MODEL_ID],
        ["registry", "promote", MODEL_ID],
        ["rollout", "abort"],
        ["compile", MODEL_ID],
    ],
    ids=["register", "approve", "promote", "rollout-abort", "compile"],
)
def test_a_read_only_registry_is_one_line_before_any_work(
    tmp_path: Path, registry: ModelRegistry, args: list[str]
) -> None:
    trained = str(tmp_path / "trained")
    done = run_read_only(
        registry.root, *[a.format(trained=trained) for a in args], "--registry", str(registry.root), cwd=tmp_path
    )
    assert done.returncode == 2, done
    assert_one_line(done.stderr, f"registry (--registry) {registry.root} is not writable")
    assert "compiling" not in done.stdout.lower()  # refused before the compiler ran


@pytest.mark.integration
@pytest.mark.parametrize(
    "args, option",
    [
        (["train", "--data", "{alerts}", "--out", "{ro}/out"], "--out"),
        (["evaluate", "--model", "{trained}", "--data", "{alerts}", "--report", "{ro}/report"], "--report"),
        (
            ["drift-report", "--model", MODEL_ID, "--data", "{alerts}", "--out", "{ro}/drift", "--registry", "{reg}"],
            "--out",
        ),
        (["demo-data", "--out", "{ro}/alerts.csv"], "--out"),
        (["retrain", "--data", "{alerts}", "--runs", "{ro}/runs", "--registry", "{reg}"], "--runs"),
    ],
    ids=["train", "evaluate", "drift-report", "demo-data", "retrain"],
)
def test_a_read_only_output_folder_is_one_line_before_any_work(
    tmp_path: Path, registry: ModelRegistry, alerts: Path, args: list[str], option: str
) -> None:
    read_only = tmp_path / "read-only"
    read_only.mkdir()
    names = {"alerts": alerts, "ro": read_only, "trained": tmp_path / "trained", "reg": registry.root}
    done = run_read_only(read_only, *[a.format(**names) for a in args], cwd=tmp_path)
    assert done.returncode == 2, done
    assert_one_line(done.stderr, option, str(read_only))
    assert not list(read_only.iterdir())


@pytest.mark.unit
@pytest.mark.parametrize(
    "args", [["registry", "list"], ["registry", "history"], ["compile", "--default"], ["rollout", "status"]]
)
def test_a_mistyped_registry_is_an_error_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str]
) -> None:
    typo = tmp_path / "regsitry"
    code, _, stderr = run(capsys, *args, "--registry", str(typo))
    assert code == 2
    assert_one_line(stderr, f"registry {typo} (--registry) does not exist")
    assert not typo.exists()


@pytest.mark.integration
def test_serve_refuses_a_registry_that_does_not_exist(tmp_path: Path) -> None:
    typo = tmp_path / "regsitry"
    done = subprocess.run(
        [CLI, "serve", "--registry", str(typo), "--port", "0"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert_one_line(done.stderr, f"registry {typo} (--registry) does not exist")


@pytest.mark.integration
@pytest.mark.parametrize("transport", ["native", "grpcio"])
def test_serve_on_a_port_in_use_is_one_line(tmp_path: Path, registry: ModelRegistry, transport: str) -> None:
    if transport == "native":
        require_native_transport()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [CLI, "serve", "--registry", str(registry.root), "--port", str(port), "--transport", transport],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr
    assert_one_line(done.stderr, f"cannot listen on 0.0.0.0:{port}: Address already in use; choose another --port")


@pytest.mark.unit
def test_predict_refuses_a_zero_timeout(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, stderr = run(capsys, "predict", "--timeout", "0", "--features", "1,2,3,4,5,6,7,8")
    assert code == 2
    assert_one_line(stderr, "--timeout 0 is not a deadline")


@pytest.mark.unit
def test_predict_help_lists_the_feature_order(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "predict", "--help")
    assert code == 0
    assert "call_rate_per_hour, avg_call_duration_s" in " ".join(out.split())


@pytest.mark.unit
def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from importlib.metadata import version

    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.strip() == f"ml-pipeline {version('voxguard-ml-pipeline')}"


@pytest.mark.unit
@pytest.mark.parametrize(
    "args, option",
    [
        (["train", "--data", "mysql://u:PASSWORD@h/db"], "--data mysql://u@h/db: unsupported scheme mysql://"),
        (["train", "--data", "postgresq://u:PASSWORD@h/db"], "unsupported scheme postgresq://"),
        (["train", "--data", "postgresql+asyncpg://u:PASSWORD@h/db"], "unsupported scheme postgresql+asyncpg://"),
        (["ab-report", "--log", "mysql://u:PASSWORD@h/db"], "--log mysql://u@h/db: unsupported scheme"),
    ],
    ids=["mysql", "typo", "driver-suffix", "ab-report"],
)
def test_an_unknown_scheme_is_named_without_its_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], option: str
) -> None:
    extra = ["--out", str(tmp_path / "out")] if args[0] == "train" else ["--labels", str(tmp_path / "labels.csv")]
    code, _, stderr = run(capsys, *args, *extra)
    assert code == 2
    assert_one_line(stderr, option)
    assert "PASSWORD" not in stderr


@pytest.mark.integration
def test_an_upper_case_scheme_is_a_database_whose_password_is_never_printed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, stderr = run(
        capsys, "train", "--data", "POSTGRESQL://u:PASSWORD@127.0.0.1:1/db", "--out", str(tmp_path / "o")
    )
    assert code == 1
    assert_one_line(stderr, "POSTGRESQL://u@127.0.0.1:1/db")
    assert "PASSWORD" not in stderr


@pytest.mark.integration
@pytest.mark.parametrize(
    "destination, message",
    [
        ("mysql://u:PASSWORD@h/db", "ML_PREDICTION_LOG=mysql://u@h/db is not valid"),
        (
            "postgresql://u:PASSWORD@127.0.0.1:notaport/db",
            "ML_PREDICTION_LOG=postgresql://u@127.0.0.1:notaport/db is not valid: the port is not a number",
        ),
    ],
    ids=["unknown-scheme", "bad-port"],
)
def test_serve_checks_the_prediction_log_before_it_starts(
    registry: ModelRegistry, destination: str, message: str
) -> None:
    done = subprocess.run(
        [CLI, "serve", "--registry", str(registry.root), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**_environ(), "ML_PREDICTION_LOG": destination},
    )
    assert done.returncode == 2
    assert_one_line(done.stderr, message)
    assert "PASSWORD" not in done.stderr


@pytest.mark.unit
def test_ab_report_reads_the_file_form_of_the_log_and_says_when_nothing_joins(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "predictions.jsonl"
    log.write_text(
        '{"request_id": "call-1", "model_version": "a", "probability": 0.9, "is_fraud": true, "arm": "champion"}\n'
    )
    labels = tmp_path / "labels.csv"
    labels.write_text("alert_id,is_fraud\nALR-1,1\n")
    code, _, stderr = run(capsys, "ab-report", "--log", f"file:{log}", "--labels", str(labels))
    assert code == 1
    assert_one_line(stderr, "request_id = alert_id", "send the alert id as the Predict request_id")
    code, _, stderr = run(capsys, "ab-report", "--log", f"file:{tmp_path / 'absent.jsonl'}", "--labels", str(labels))
    assert code != 0 and "file:file:" not in stderr and "Traceback" not in stderr


def _environ() -> dict[str, str]:
    """This process's environment without ML_* settings."""
    return {k: v for k, v in os.environ.items() if not k.startswith("ML_")}
