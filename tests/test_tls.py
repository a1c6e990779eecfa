"""TLS and mutual TLS of the gRPC port: configuration errors, and real handshakes on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from tls_certs import Pem, Pki, make_pki

from ml_pipeline.errors import ConfigError
from ml_pipeline.inference_server.tls import ServerTLS, add_port


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A CA with server and client certificates, plus an unrelated CA and client."""
    return make_pki(tmp_path_factory.mktemp("pki"))


def tls_env(pki: Pki, mutual: bool = False) -> dict[str, str]:
    """The ML_TLS_* variables of a TLS (or mutual TLS) server."""
    env = {"ML_TLS_CERT_FILE": str(pki.server.cert_file), "ML_TLS_KEY_FILE": str(pki.server.key_file)}
    if mutual:
        env["ML_TLS_CLIENT_CA_FILE"] = str(pki.ca.cert_file)
    return env


@contextmanager
def health_server(tls: ServerTLS | None) -> Iterator[int]:
    """A real grpcio server with the standard health service on 127.0.0.1 (ephemeral port), bound by add_port."""
    server = grpc.server(ThreadPoolExecutor(2))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    port = add_port(server, "127.0.0.1:0", tls)
    server.start()
    try:
        yield port
    finally:
        server.stop(0)


def check_health(channel: grpc.Channel) -> int:
    """One Health/Check call (5 s deadline); the status, or grpc.RpcError when the connection is refused."""
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status


def tls_channel(port: int, trust: Pem, client: Pem | None = None) -> grpc.Channel:
    """A TLS channel to 127.0.0.1:port trusting `trust`'s certificate, presenting `client`'s when given."""
    credentials = grpc.ssl_channel_credentials(
        root_certificates=trust.cert,
        private_key=client.key if client else None,
        certificate_chain=client.cert if client else None,
    )
    return grpc.secure_channel(f"127.0.0.1:{port}", credentials)


SERVING = health_pb2.HealthCheckResponse.SERVING


@pytest.mark.unit
def test_plaintext_without_tls_variables() -> None:
    assert ServerTLS.from_env({}) is None


@pytest.mark.unit
def test_tls_and_mutual_tls_from_the_environment(pki: Pki) -> None:
    tls = ServerTLS.from_env(tls_env(pki))
    assert tls is not None and not tls.mutual and tls.certificate_chain == pki.server.cert
    mutual = ServerTLS.from_env(tls_env(pki, mutual=True))
    assert mutual is not None and mutual.mutual and mutual.client_ca == pki.ca.cert
    assert "PRIVATE" not in repr(mutual)


@pytest.mark.unit
@pytest.mark.parametrize(
    ("drop", "message"),
    [
        ("ML_TLS_KEY_FILE", "set ML_TLS_KEY_FILE too"),
        ("ML_TLS_CERT_FILE", "set ML_TLS_CERT_FILE too"),
    ],
)
def test_certificate_and_key_go_together(pki: Pki, drop: str, message: str) -> None:
    env = tls_env(pki)
    del env[drop]
    with pytest.raises(ConfigError, match=message):
        ServerTLS.from_env(env)


@pytest.mark.unit
def test_client_ca_alone_is_refused(pki: Pki) -> None:
    with pytest.raises(ConfigError, match="ML_TLS_CLIENT_CA_FILE .* also needs ML_TLS_CERT_FILE"):
        ServerTLS.from_env({"ML_TLS_CLIENT_CA_FILE": str(pki.ca.cert_file)})


@pytest.mark.unit
def test_unreadable_file_is_named(pki: Pki, tmp_path: Path) -> None:
    env = tls_env(pki) | {"ML_TLS_KEY_FILE": str(tmp_path / "missing.key")}
    with pytest.raises(ConfigError, match=r"ML_TLS_KEY_FILE=.*missing\.key cannot be read"):
        ServerTLS.from_env(env)


@pytest.mark.unit
def test_file_that_is_not_pem_is_named(pki: Pki, tmp_path: Path) -> None:
    garbage = tmp_path / "ca.txt"
    garbage.write_text("not a certificate\n")
    env = tls_env(pki) | {"ML_TLS_CLIENT_CA_FILE": str(garbage)}
    with pytest.raises(ConfigError, match=r"ML_TLS_CLIENT_CA_FILE=.*ca\.txt is not a PEM file with BEGIN CERTIFICATE"):
        ServerTLS.from_env(env)


@pytest.mark.unit
def test_key_of_another_certificate_is_refused(pki: Pki) -> None:
    env = tls_env(pki) | {"ML_TLS_KEY_FILE": str(pki.client.key_file)}
    with pytest.raises(ConfigError, match=r"ML_TLS_KEY_FILE=.*client\.key cannot be used with the certificate"):
        ServerTLS.from_env(env)


@pytest.mark.unit
def test_encrypted_key_is_refused(pki: Pki, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(pki.server.key, password=None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    env = tls_env(pki) | {"ML_TLS_KEY_FILE": str(encrypted)}
    with pytest.raises(ConfigError, match="encrypted"):
        ServerTLS.from_env(env)


@pytest.mark.e2e
def test_tls_end_to_end(pki: Pki) -> None:
    with health_server(ServerTLS.from_env(tls_env(pki))) as port:
        assert check_health(tls_channel(port, trust=pki.ca)) == SERVING
        with pytest.raises(grpc.RpcError) as plaintext:
            check_health(grpc.insecure_channel(f"127.0.0.1:{port}"))
        assert plaintext.value.code() == grpc.StatusCode.UNAVAILABLE
        with pytest.raises(grpc.RpcError) as untrusted:
            check_health(tls_channel(port, trust=pki.other_ca))
        assert untrusted.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.e2e
def test_mutual_tls_end_to_end(pki: Pki) -> None:
    with health_server(ServerTLS.from_env(tls_env(pki, mutual=True))) as port:
        assert check_health(tls_channel(port, trust=pki.ca, client=pki.client)) == SERVING
        for refused in (None, pki.stranger):
            with pytest.raises(grpc.RpcError) as error:
                check_health(tls_channel(port, trust=pki.ca, client=refused))
            assert error.value.code() == grpc.StatusCode.UNAVAILABLE
