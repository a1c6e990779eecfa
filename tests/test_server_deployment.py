"""What the deployment relies on, against real servers on 127.0.0.1: TLS and mutual TLS from the environment,
the metrics port on its own address, and the container's health check command."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest
from model_factory import NUM_FEATURES, BuiltModel, register_compiled, served_model
from native_support import require_native_transport
from server_harness import running_server, wait_until
from tls_certs import Pem, Pki, make_pki

from ml_pipeline.inference_server.healthcheck import check
from ml_pipeline.inference_server.settings import ServerSettings
from ml_pipeline.inference_server.tls import ServerTLS
from ml_pipeline.model_registry import ModelRegistry
from ml_pipeline.proto_gen import fraud_detection_pb2 as pb

pytestmark = pytest.mark.e2e


@pytest.fixture(params=["grpcio", "native"])
def transport(request: pytest.FixtureRequest) -> str:
    """TLS is a property of the transport, so each is tested; native fails where gRPC C++ is installed (or in CI)
    but the extension is not built, and skips only on a machine without gRPC C++ (tests/native_support.py)."""
    if request.param == "native":
        require_native_transport()
    return request.param


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A CA with server and client certificates, plus an unrelated CA and client."""
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def model() -> BuiltModel:
    """One small compiled model."""
    return served_model("tls_v1", seed=5)


@pytest.fixture
def registry(tmp_path: Path, model: BuiltModel) -> ModelRegistry:
    """A registry whose champion is the compiled model."""
    registry = ModelRegistry(tmp_path / "registry")
    register_compiled(registry, model)
    registry.promote_to_champion(model.model_id, actor="test")
    return registry


def tls_environment(pki: Pki, registry: ModelRegistry, mutual: bool) -> dict[str, str]:
    """ML_* variables of a server on 127.0.0.1 with TLS (and a client CA when `mutual`)."""
    env = {
        "ML_MODEL_REGISTRY_PATH": str(registry.root),
        "ML_INFERENCE_HOST": "127.0.0.1",
        "ML_TLS_CERT_FILE": str(pki.server.cert_file),
        "ML_TLS_KEY_FILE": str(pki.server.key_file),
    }
    if mutual:
        env["ML_TLS_CLIENT_CA_FILE"] = str(pki.ca.cert_file)
    return env


def predict(channel: grpc.Channel) -> pb.PredictionResponse:
    """One Predict call (5 s deadline)."""
    call = channel.unary_unary(
        "/FraudDetection/Predict",
        request_serializer=pb.PredictionRequest.SerializeToString,
        response_deserializer=pb.PredictionResponse.FromString,
    )
    return call(pb.PredictionRequest(features=[0.5] * NUM_FEATURES, request_id="tls"), timeout=5)


def tls_channel(port: int, pki: Pki, client: Pem | None) -> grpc.Channel:
    """A channel to 127.0.0.1:port trusting the test CA, presenting `client`'s certificate when given."""
    credentials = grpc.ssl_channel_credentials(
        root_certificates=pki.ca.cert,
        private_key=client.key if client else None,
        certificate_chain=client.cert if client else None,
    )
    return grpc.secure_channel(f"127.0.0.1:{port}", credentials)


def server_options(settings: ServerSettings, transport: str) -> dict[str, object]:
    """The InferenceServer options these tests take from ServerSettings (ports stay ephemeral)."""
    return {"tls": settings.tls, "metrics_host": settings.metrics_host, "transport": transport}


def test_settings_read_tls_and_the_metrics_address(pki: Pki, registry: ModelRegistry) -> None:
    env = tls_environment(pki, registry, mutual=True) | {"ML_METRICS_HOST": "127.0.0.2"}
    settings = ServerSettings.from_env(env)
    assert settings.tls == ServerTLS.from_env(env) and settings.tls is not None and settings.tls.mutual
    assert settings.metrics_host == "127.0.0.2"
    plain = ServerSettings.from_env({"ML_MODEL_REGISTRY_PATH": str(registry.root)})
    assert plain.tls is None and plain.metrics_host is None


def test_predict_over_tls(pki: Pki, registry: ModelRegistry, model: BuiltModel, transport: str) -> None:
    settings = ServerSettings.from_env(tls_environment(pki, registry, mutual=False))
    with running_server(registry.root, **server_options(settings, transport)) as server:
        with tls_channel(server.port, pki, client=None) as channel:
            assert predict(channel).model_version == model.model_id
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as plaintext, pytest.raises(grpc.RpcError) as error:
            predict(plaintext)
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_refuses_clients_without_a_certificate_of_the_ca(
    pki: Pki, registry: ModelRegistry, model: BuiltModel, transport: str
) -> None:
    settings = ServerSettings.from_env(tls_environment(pki, registry, mutual=True))
    with running_server(registry.root, **server_options(settings, transport)) as server:
        with tls_channel(server.port, pki, client=pki.client) as channel:
            assert predict(channel).model_version == model.model_id
        for refused in (None, pki.stranger):
            with tls_channel(server.port, pki, client=refused) as channel, pytest.raises(grpc.RpcError) as error:
                predict(channel)
            assert error.value.code() == grpc.StatusCode.UNAVAILABLE


def test_metrics_bind_their_own_address(registry: ModelRegistry) -> None:
    with running_server(registry.root, metrics_host="127.0.0.2") as server:
        body = urllib.request.urlopen(f"http://127.0.0.2:{server.metrics_port}/metrics", timeout=5).read()
        assert b"ml_predictions_total" in body
        with pytest.raises(urllib.error.URLError):
            urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5)


def test_healthcheck_passes_only_with_a_champion(tmp_path: Path, registry: ModelRegistry) -> None:
    with running_server(registry.root) as server:
        wait_until(lambda: check(server.port) is None)
    with running_server(tmp_path / "empty-registry") as server:
        assert "NOT_SERVING" in (check(server.port) or "")
    assert "UNAVAILABLE" in (check(server.port, timeout=1) or ""), "nobody listens any more"
