"""The README's "Typical use" block runs as written, top to bottom, in a fresh folder: two models trained,
registered, approved, promoted (compiling on the way), served, called, rolled out, promoted and rolled back,
then the server stopped with SIGTERM. Only the ports come from the environment (free ones on 127.0.0.1)."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from ml_pipeline.model_registry import ModelRegistry

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

README = Path(__file__).resolve().parents[1] / "README.md"


def typical_use_block() -> str:
    match = re.search(r"Typical use[^\n]*:\n\n```sh\n(.*?)```", README.read_text(), re.S)
    assert match, "the README has no Typical use block"
    return match.group(1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_typical_use_block_runs_as_written(tmp_path: Path) -> None:
    script = "set -euo pipefail\n" + typical_use_block() + "wait\n"
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "ML_INFERENCE_HOST": "127.0.0.1",
        "ML_INFERENCE_PORT": str(_free_port()),
        "ML_METRICS_PORT": str(_free_port()),
        "ML_SHUTDOWN_GRACE_SECONDS": "2",
    }
    for name in ("ML_MODEL_REGISTRY_PATH", "ML_PREDICTION_LOG", "ML_INFERENCE_TRANSPORT"):
        env.pop(name, None)
    done = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert re.search(r"model_version\s+fraud_week1", done.stdout), done.stdout
    registry = ModelRegistry(tmp_path / "models" / "registry")
    state = registry.serving_state()
    assert (state.champion_id, state.challenger_id) == ("fraud_week1", None)
    assert {m.model_id: m.status for m in registry.list_models()} == {
        "fraud_week1": "champion",
        "fraud_week2": "archived",
    }
    assert (tmp_path / "report").is_dir() and (tmp_path / "compiled_models" / "fraud_week2.so").is_file()
    assert json.loads((tmp_path / "runs" / "week1" / "training.json").read_text())["model_id"] == "fraud_week1"
