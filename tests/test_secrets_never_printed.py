"""No password is ever printed: every command that takes a database address, on every failure path, with the
password in every form an operator writes it (user-info, a `password` parameter, a libpq keyword string, an
unknown or mistyped scheme, a string that does not parse), and YUGABYTE_PASSWORD set to the same marker.

Each command runs as its own process (its log lines go through the product's formatter), verbose; its stdout,
stderr and every file it wrote (run records, reports) are searched for the marker.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from model_factory import training_output

from ml_pipeline.cli import main

CLI = str(Path(sys.executable).with_name("ml-pipeline"))
MARKER = "Zq7MarkerPw"
MODEL_ID = "secrets_model"

ADDRESSES = {
    "unreachable": f"postgresql://trainer:{MARKER}@127.0.0.1:1/voxguard",
    "no-such-database": f"postgresql://postgres:{MARKER}@127.0.0.1:5432/vg_no_such_database",
    "password-parameter": f"postgresql://trainer@127.0.0.1:1/voxguard?sslmode=disable&password={MARKER}",
    "upper-case-scheme": f"POSTGRESQL://trainer:{MARKER}@127.0.0.1:1/voxguard",
    "driver-suffix": f"postgresql+asyncpg://trainer:{MARKER}@127.0.0.1/voxguard",
    "mysql": f"mysql://trainer:{MARKER}@127.0.0.1/voxguard",
    "mistyped-scheme": f"postgresq://trainer:{MARKER}@127.0.0.1/voxguard",
    "bad-port": f"postgresql://trainer:{MARKER}@127.0.0.1:notaport/voxguard",
    "unparseable": f"postgresql://trainer:{MARKER}@[::1/voxguard",
    "keywords": f"host=127.0.0.1 port=1 user=trainer password={MARKER}",
}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry with one approved model, its training folder and a labels file."""
    root = tmp_path_factory.mktemp("secrets")
    folder = training_output(root / "trained", MODEL_ID)
    for args in (["registry", "register", str(folder)], ["registry", "approve", MODEL_ID]):
        with pytest.raises(SystemExit) as exited:
            main([*args, "--registry", str(root / "registry")])
        assert exited.value.code == 0
    (root / "labels.csv").write_text("alert_id,is_fraud\nALR-1,1\n")
    return root


def commands(address: str, root: Path, out: Path) -> list[list[str]]:
    """Every command that reads or writes a database address, given `address`."""
    registry = ["--registry", str(root / "registry")]
    return [
        ["train", "--data", address, "--out", str(out / "train")],
        ["evaluate", "--model", str(root / "trained"), "--data", address],
        ["drift-report", "--model", MODEL_ID, "--data", address, "--out", str(out / "drift"), *registry],
        ["demo-data", "--rows", "10", "--to", address],
        ["retrain", "--data", address, "--runs", str(out / "runs"), *registry],
        ["runs", "list", "--runs", str(out / "runs")],
        ["ab-report", "--log", address, "--labels", str(root / "labels.csv")],
        ["ab-report", "--log", str(out / "absent.jsonl"), "--labels", address],
    ]


def _environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ML_", "YUGABYTE_"))}
    return {**env, "YUGABYTE_PASSWORD": MARKER, "YUGABYTE_HOST": "127.0.0.1", "YUGABYTE_PORT": "1"}


def _run(args: list[str], cwd: Path) -> tuple[str, str]:
    """(the command, as the test names it, without the password; what it printed)."""
    done = subprocess.run([CLI, "-v", *args], cwd=cwd, env=_environment(), capture_output=True, text=True, timeout=120)
    return " ".join(args).replace(MARKER, "<marker>"), done.stdout + done.stderr


def _holds_marker(text: str) -> bool:
    return MARKER.lower() in text.lower()  # a message may have lower-cased it


def _files_holding(folder: Path, needle: str) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and needle.lower().encode() in p.read_bytes().lower()]


@pytest.mark.integration
@pytest.mark.parametrize("form", sorted(ADDRESSES))
def test_no_command_prints_the_password(workspace: Path, tmp_path: Path, form: str) -> None:
    runs = commands(ADDRESSES[form], workspace, tmp_path)
    with ThreadPoolExecutor(max_workers=4) as pool:
        outputs = list(pool.map(lambda args: _run(args, tmp_path), runs))
    leaked = [f"$ ml-pipeline {command}\n{output}" for command, output in outputs if _holds_marker(output)]
    assert not leaked, "\n\n".join(leaked)
    broken = [f"$ ml-pipeline {command}\n{output}" for command, output in outputs if "Traceback" in output]
    assert not broken, "\n\n".join(broken)
    assert not _files_holding(tmp_path, MARKER)
    assert not _files_holding(workspace, MARKER)


@pytest.mark.integration
@pytest.mark.parametrize("form", ["unreachable", "password-parameter", "bad-port", "mysql", "unparseable"])
def test_the_server_never_prints_the_prediction_log_password(workspace: Path, tmp_path: Path, form: str) -> None:
    env = {**_environment(), "ML_PREDICTION_LOG": ADDRESSES[form], "ML_METRICS_PORT": "0"}
    command = [CLI, "-v", "serve", "--registry", str(workspace / "registry"), "--host", "127.0.0.1", "--port", "0"]
    process = subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.monotonic() + 5
    while process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=60)
    assert not _holds_marker(output), output
    assert "Traceback" not in output, output
