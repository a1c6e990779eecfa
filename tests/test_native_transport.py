"""The native C++ gRPC transport on its own: health set from Python, streams with many messages in
flight, TLS and mutual TLS, drain; and the grpcio fallback where the extension is absent.

The server end-to-end suite (test_server_e2e.py) runs against both transports; these tests cover what is
specific to the native one: its Python driver, its stream flow control and its credentials.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from model_factory import BuiltModel, register_compiled, served_model
from native_support import require_native_transport
from tls_certs import Pki, make_pki

from ml_pipeline.cli import main
from ml_pipeline.errors import UsageError
from ml_pipeline.inference_server.tls import ServerTLS
from ml_pipeline.inference_server.transport import resolve_transport, transport_name
from ml_pipeline.model_registry import ModelRegistry
from ml_pipeline.native.compiled_model import CompiledModel
from ml_pipeline.native.serving_core import ServingCore
from ml_pipeline.proto_gen import fraud_detection_pb2 as pb

pytestmark = pytest.mark.e2e

ROW = [0.3, -1.2, 0.8, 0.1, float("nan"), 2.0, -0.4, 1.1]
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def NativeTransport() -> type:
    """The extension's NativeTransport class: a test needing it fails where gRPC C++ is installed (or in CI) and the
    extension is not built, and skips only on a machine without gRPC C++ (tests/native_support.py)."""
    return require_native_transport().NativeTransport


@pytest.fixture(scope="module")
def model() -> BuiltModel:
    """A small compiled model (built once per test session)."""
    return served_model("m_native", 7)


@pytest.fixture
def core(model: BuiltModel) -> ServingCore:
    """A serving core with `model` as champion (threshold 0.5)."""
    core = ServingCore()
    core.set_champion(CompiledModel(str(model.library), sha256=model.sha256), model.model_id, 0.5)
    return core


def health_of(channel: grpc.Channel, service: str = "") -> int:
    """grpc.health.v1 Check of `service` on `channel`: the serving status."""
    stub = health_pb2_grpc.HealthStub(channel)
    return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


def predict_stub(channel: grpc.Channel) -> grpc.UnaryUnaryMultiCallable:
    """Typed FraudDetection/Predict on `channel`."""
    return channel.unary_unary(
        "/FraudDetection/Predict",
        request_serializer=pb.PredictionRequest.SerializeToString,
        response_deserializer=pb.PredictionResponse.FromString,
    )


def test_health_follows_set_serving_and_shutdown_is_final(NativeTransport: type, model: BuiltModel) -> None:
    core = ServingCore()
    transport = NativeTransport(core, "127.0.0.1:0")
    with grpc.insecure_channel(f"127.0.0.1:{transport.port}") as channel:
        assert health_of(channel) == NOT_SERVING
        with pytest.raises(grpc.RpcError) as info:
            predict_stub(channel)(pb.PredictionRequest(features=ROW, request_id="k"), timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE

        core.set_champion(CompiledModel(str(model.library), sha256=model.sha256), model.model_id, 0.5)
        transport.set_serving(True)
        assert [health_of(channel, s) for s in ("", "FraudDetection")] == [SERVING, SERVING]
        assert predict_stub(channel)(pb.PredictionRequest(features=ROW), timeout=5).model_version == "m_native"

        transport.shutdown(1.0)
        transport.shutdown(1.0)  # idempotent
        transport.set_serving(True)  # ignored after shutdown
        with pytest.raises(grpc.RpcError) as info:
            health_of(channel)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_a_port_in_use_is_a_clear_error(NativeTransport: type, core: ServingCore) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(OSError, match=r"cannot listen on 127\.0\.0\.1:\d+"):
            NativeTransport(core, f"127.0.0.1:{taken.getsockname()[1]}")


def test_stream_with_many_messages_in_flight_answers_each_in_order(NativeTransport: type, core: ServingCore) -> None:
    """The client writes 3,000 messages without waiting; with a reply window of 4 the server pauses reading
    while replies queue, and every reply still comes back once, in order, with its request_id."""
    transport = NativeTransport(core, "127.0.0.1:0", stream_window=4)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{transport.port}") as channel:
            stream = channel.stream_stream(
                "/FraudDetection/PredictStream",
                request_serializer=pb.PredictionRequest.SerializeToString,
                response_deserializer=pb.ScoredPrediction.FromString,
            )
            requests = (pb.PredictionRequest(features=ROW, request_id=f"s{i}") for i in range(3000))
            replies = list(stream(requests, timeout=30))
        assert [r.request_id for r in replies] == [f"s{i}" for i in range(3000)]
        assert {r.model_version for r in replies} == {"m_native"}
    finally:
        transport.shutdown(0)


def test_shutdown_lets_an_in_flight_stream_finish(NativeTransport: type, core: ServingCore) -> None:
    transport = NativeTransport(core, "127.0.0.1:0")
    started = threading.Event()

    def slow() -> Iterator[pb.PredictionRequest]:
        for i in range(10):
            if i == 2:
                started.set()
            yield pb.PredictionRequest(features=ROW, request_id=f"d{i}")
            time.sleep(0.05)

    with grpc.insecure_channel(f"127.0.0.1:{transport.port}") as channel:
        stream = channel.stream_stream(
            "/FraudDetection/PredictStream", response_deserializer=pb.ScoredPrediction.FromString
        )
        replies = stream((r.SerializeToString() for r in slow()), timeout=30)
        first = next(replies)
        started.wait(10)
        shutdown = threading.Thread(target=transport.shutdown, args=(10.0,))
        shutdown.start()
        rest = list(replies)
        shutdown.join(30)
    assert [r.request_id for r in [first, *rest]] == [f"d{i}" for i in range(10)]
    assert not shutdown.is_alive()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A throwaway CA with server, client and stranger certificates."""
    return make_pki(tmp_path_factory.mktemp("native_pki"))


def tls_predict(port: int, trust: bytes, client: tuple[bytes, bytes] | None = None) -> str:
    """One Predict over TLS (trusting `trust`, presenting `client` (key, cert) when given): the model_version."""
    key, cert = client if client else (None, None)
    credentials = grpc.ssl_channel_credentials(root_certificates=trust, private_key=key, certificate_chain=cert)
    with grpc.secure_channel(f"127.0.0.1:{port}", credentials) as channel:
        return predict_stub(channel)(pb.PredictionRequest(features=ROW), timeout=5).model_version


def test_tls_and_mutual_tls(NativeTransport: type, core: ServingCore, pki: Pki) -> None:
    tls = ServerTLS.from_files(str(pki.server.cert_file), str(pki.server.key_file))
    transport = NativeTransport(core, "127.0.0.1:0", tls=tls)
    try:
        assert tls_predict(transport.port, pki.ca.cert) == "m_native"
        with grpc.insecure_channel(f"127.0.0.1:{transport.port}") as plaintext, pytest.raises(grpc.RpcError) as info:
            predict_stub(plaintext)(pb.PredictionRequest(features=ROW), timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        transport.shutdown(0)

    mutual = ServerTLS.from_files(str(pki.server.cert_file), str(pki.server.key_file), str(pki.ca.cert_file))
    transport = NativeTransport(core, "127.0.0.1:0", tls=mutual)
    try:
        assert tls_predict(transport.port, pki.ca.cert, (pki.client.key, pki.client.cert)) == "m_native"
        for refused in (None, (pki.stranger.key, pki.stranger.cert)):
            with pytest.raises(grpc.RpcError) as info:
                tls_predict(transport.port, pki.ca.cert, refused)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        transport.shutdown(0)


def test_transport_names(NativeTransport: type) -> None:
    assert resolve_transport("auto") == "native"  # built here (the NativeTransport fixture)
    assert resolve_transport("NATIVE") == "native"
    assert resolve_transport("grpcio") == "grpcio"
    with pytest.raises(UsageError, match="unknown transport 'quic': use native, grpcio or auto"):
        transport_name("quic")


FALLBACK = """
import json, logging, sys
sys.modules["ml_pipeline.native.native_transport"] = None  # as where gRPC C++ was absent at build time
sys.path.insert(0, sys.argv[2])
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s: %(message)s")
from server_harness import Client, running_server
from ml_pipeline.errors import UsageError
from ml_pipeline.inference_server.transport import resolve_transport
from ml_pipeline.proto_gen import fraud_detection_pb2 as pb
try:
    resolve_transport("native")
    refused = None
except UsageError as exc:
    refused = str(exc)
from ml_pipeline.cli import main
try:
    main(["serve", "--registry", sys.argv[1], "--port", "0", "--transport", "native"])
except SystemExit as exc:
    cli_exit = exc.code
with running_server(sys.argv[1], transport="auto") as server:
    client = Client(server.port)
    reply = client.predict(pb.PredictionRequest(features=[0.5] * 8, request_id="fallback"), timeout=5)
    client.close()
print(json.dumps({"transport": server.transport, "model": reply.model_version, "refused": refused, "cli": cli_exit}))
"""


def test_grpcio_serves_where_the_native_extension_is_absent(tmp_path: Path, model: BuiltModel) -> None:
    registry = ModelRegistry(tmp_path / "registry")
    register_compiled(registry, model)
    registry.promote_to_champion(model.model_id, actor="test")
    result = subprocess.run(
        [sys.executable, "-c", FALLBACK, str(registry.root), str(TESTS)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout)
    assert outcome["transport"] == "grpcio"
    assert outcome["model"] == "m_native"
    assert "transport native requested but the native transport is not built" in outcome["refused"]
    assert "libgrpc++-dev" in outcome["refused"]
    assert outcome["cli"] == 2  # `ml-pipeline serve --transport native`: refused before serving, one line
    assert "error: transport native requested but the native transport is not built" in result.stderr
    fallback_lines = [line for line in result.stderr.splitlines() if "serving with the grpcio transport" in line]
    assert len(fallback_lines) == 1 and "not built" in fallback_lines[0]


def test_serve_refuses_an_unknown_transport_variable(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("ML_INFERENCE_TRANSPORT", "quic")
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--registry", str(tmp_path), "--port", "0"])
    assert exited.value.code == 2
    assert "unknown transport 'quic': use native, grpcio or auto" in capsys.readouterr().err
