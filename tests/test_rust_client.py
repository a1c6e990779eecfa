"""The Rust client of clients/rust (h2 + tokio + prost, no tonic), built offline from Debian's crates with
`make rust-client`, driven through its CLI `voxguard-score` against a real server on both transports: its
Predict, PredictBatch and PredictStream answers are the Python client's (same probabilities as float32, same
model_version), a refused first endpoint is retried on the second, the deadline reaches the server as
grpc-timeout, and TLS / mutual TLS work. Outside CI a machine without cargo or the crates skips; in CI it fails.
"""

from __future__ import annotations

import math
import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from model_factory import BuiltModel, register_compiled, served_model
from native_support import require_native_transport
from server_harness import Client, running_server
from tls_certs import Pki, make_pki

from ml_pipeline.inference_server.admission import AdmissionSettings
from ml_pipeline.inference_server.server import InferenceServer
from ml_pipeline.inference_server.tls import ServerTLS
from ml_pipeline.model_registry import ModelRegistry
from ml_pipeline.proto_gen import fraud_detection_pb2 as pb

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "voxguard"
TARGET = CACHE / "rust-target"  # cargo's output, kept between runs so a second build compiles nothing
DEBIAN_CRATES = Path("/usr/share/cargo/registry")
ROWS = [
    ("r-1", [0.3, -1.2, 0.8, 0.1, float("nan"), 2.0, -0.4, 1.1]),
    ("r-2", [120.0, 8.5, 0.9, 0.6, 0.8, 0.4, 0.3, 2.0]),
    ("r-3", [-3.0, 0.0, 0.25, 7.5, -0.1, 0.0, 1e-3, -2.0]),
    ("r-4", [0.0] * 8),
]


def require(reason: str) -> None:
    """Fail in CI (the client must be proven there), skip elsewhere."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (required in CI)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def binary() -> Path:
    """voxguard-score, built by `make rust-client` (offline, Debian's crates)."""
    if shutil.which("cargo") is None or not any(DEBIAN_CRATES.glob("h2-*")):
        require("no cargo or Debian's Rust crates (scripts/install_rust_deps.sh installs them)")
    result = subprocess.run(
        ["make", "-s", "rust-client", f"RUST_TARGET_DIR={TARGET}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    path = TARGET / "release" / "voxguard-score"
    assert path.is_file()
    return path


@pytest.fixture(autouse=True, params=["grpcio", "native"])
def transport(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The server's transport (the harness reads ML_INFERENCE_TRANSPORT); native must be built where required."""
    if request.param == "native":
        require_native_transport()
    monkeypatch.setenv("ML_INFERENCE_TRANSPORT", request.param)
    return request.param


@pytest.fixture(scope="module")
def model() -> BuiltModel:
    return served_model("rust_v1", 11)


@pytest.fixture
def registry(tmp_path: Path, model: BuiltModel) -> ModelRegistry:
    """A registry whose champion is rust_v1, compiled."""
    registry = ModelRegistry(tmp_path / "registry")
    register_compiled(registry, model)
    registry.promote_to_champion(model.model_id, actor="test")
    return registry


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def closed_port() -> int:
    """A port on 127.0.0.1 nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stdin_rows(rows: list[tuple[str, list[float]]]) -> str:
    return "".join(f"{key},{','.join(repr(v) for v in row)}\n" for key, row in rows)


def score(binary: Path, mode: str, endpoints: list[str], *extra: str, rows: list | None = None) -> tuple[int, list]:
    """Run voxguard-score; its exit status and its output lines split on tabs."""
    args = [str(binary), *[a for e in endpoints for a in ("--endpoint", e)], *extra, mode]
    result = subprocess.run(
        args, input=stdin_rows(ROWS if rows is None else rows), capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 2, result.stderr
    return result.returncode, [line.split("\t") for line in result.stdout.splitlines()]


def python_answers(port: int) -> dict[str, pb.PredictionResponse]:
    """The Python client's answers to ROWS."""
    client = Client(port)
    try:
        requests = {key: pb.PredictionRequest(features=row, request_id=key) for key, row in ROWS}
        return {key: client.predict(request, timeout=10) for key, request in requests.items()}
    finally:
        client.close()


def assert_same_answers(lines: list[list[str]], expected: dict[str, pb.PredictionResponse], model_id: str) -> None:
    assert [line[0] for line in lines] == [key for key, _ in ROWS], lines
    for key, probability, is_fraud, model_version in lines:
        want = expected[key]
        assert np.float32(float(probability)) == np.float32(want.probability), (key, probability, want.probability)
        assert not math.isnan(float(probability))
        assert is_fraud == str(want.is_fraud).lower() and model_version == want.model_version == model_id


@pytest.fixture
def server(registry: ModelRegistry) -> Iterator[InferenceServer]:
    with running_server(registry.root) as server:
        yield server


@pytest.mark.parametrize("mode", ["predict", "batch", "stream"])
def test_answers_are_the_python_clients(binary: Path, server: InferenceServer, model: BuiltModel, mode: str) -> None:
    expected = python_answers(server.port)
    code, lines = score(binary, mode, [f"127.0.0.1:{server.port}"], "--deadline-ms", "5000")
    assert code == 0, lines
    assert_same_answers(lines, expected, model.model_id)


def test_predict_retries_on_the_second_endpoint(binary: Path, server: InferenceServer, model: BuiltModel) -> None:
    expected = python_answers(server.port)
    refused = f"127.0.0.1:{closed_port()}"
    code, lines = score(binary, "predict", [refused, f"127.0.0.1:{server.port}"], "--deadline-ms", "5000")
    assert code == 0, lines
    assert_same_answers(lines, expected, model.model_id)

    code, lines = score(binary, "predict", [refused, f"127.0.0.1:{closed_port()}"], rows=ROWS[:1])
    assert code == 1 and lines[0][:3] == ["r-1", "error", "UNAVAILABLE"], lines


def test_invalid_request_is_not_retried(binary: Path, server: InferenceServer) -> None:
    short = [("short", [1.0, 2.0])]
    code, lines = score(binary, "predict", [f"127.0.0.1:{server.port}"] * 2, rows=short)
    assert code == 1 and lines[0][:3] == ["short", "error", "INVALID_ARGUMENT"], lines


def test_the_deadline_reaches_the_server(binary: Path, registry: ModelRegistry, model: BuiltModel) -> None:
    with running_server(registry.root, admission=AdmissionSettings(min_deadline_ms=200)) as server:
        endpoint = [f"127.0.0.1:{server.port}"]
        code, lines = score(binary, "predict", endpoint, "--deadline-ms", "100", rows=ROWS[:1])
        assert code == 1 and lines[0][2] == "DEADLINE_EXCEEDED", lines
        assert "ML_MIN_DEADLINE_MS" in lines[0][3], "the server's refusal: it read the grpc-timeout header"
        code, lines = score(binary, "predict", endpoint, "--deadline-ms", "3000", rows=ROWS[:1])
        assert code == 0 and lines[0][3] == model.model_id, lines


def tls_server_env(pki: Pki, mutual: bool) -> dict[str, str]:
    env = {"ML_TLS_CERT_FILE": str(pki.server.cert_file), "ML_TLS_KEY_FILE": str(pki.server.key_file)}
    if mutual:
        env["ML_TLS_CLIENT_CA_FILE"] = str(pki.ca.cert_file)
    return env


@pytest.mark.parametrize("mutual", [False, True], ids=["tls", "mutual-tls"])
def test_tls(binary: Path, registry: ModelRegistry, model: BuiltModel, pki: Pki, mutual: bool) -> None:
    tls = ServerTLS.from_env(tls_server_env(pki, mutual))
    with running_server(registry.root, tls=tls) as server:
        endpoint = [f"127.0.0.1:{server.port}"]
        trust = ["--ca", str(pki.ca.cert_file), "--server-name", "localhost", "--deadline-ms", "5000"]
        client = ["--cert", str(pki.client.cert_file), "--key", str(pki.client.key_file)] if mutual else []
        code, lines = score(binary, "batch", endpoint, *trust, *client)
        assert code == 0 and [line[3] for line in lines] == [model.model_id] * len(ROWS), lines
        code, lines = score(binary, "predict", endpoint, *trust, *client, rows=ROWS[:1])
        assert code == 0 and lines[0][3] == model.model_id, lines
        # A server certificate from another CA is refused by the client.
        other = ["--ca", str(pki.other_ca.cert_file), "--server-name", "localhost"]
        code, lines = score(binary, "predict", endpoint, *other, *client, rows=ROWS[:1])
        assert code == 1 and lines[0][2] == "UNAVAILABLE", lines
        if mutual:
            code, lines = score(binary, "predict", endpoint, *trust, rows=ROWS[:1])
            assert code == 1 and lines[0][1] == "error", "no client certificate, no answer"
