"""Optional TLS and mutual TLS for the gRPC port, configured by PEM file paths in the environment.

ML_TLS_CERT_FILE + ML_TLS_KEY_FILE: the server presents this certificate (TLS). ML_TLS_CLIENT_CA_FILE in
addition: every client must present a certificate signed by that CA (mutual TLS), others are refused in the
handshake. The files are read and checked once, at start (readable, PEM, key matching the certificate), so a
mistake is one ConfigError naming the variable and the file instead of failed handshakes later.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field

import grpc
from grpc import aio

from ml_pipeline.config import env_value
from ml_pipeline.errors import ConfigError

CERT_VAR, KEY_VAR, CLIENT_CA_VAR = "ML_TLS_CERT_FILE", "ML_TLS_KEY_FILE", "ML_TLS_CLIENT_CA_FILE"


@dataclass(frozen=True)
class ServerTLS:
    """The PEM bytes a TLS gRPC port needs; `client_ca` set means mutual TLS (client certificates required)."""

    certificate_chain: bytes
    private_key: bytes = field(repr=False)
    client_ca: bytes | None = None

    @property
    def mutual(self) -> bool:
        """True when clients must present a certificate signed by `client_ca`."""
        return self.client_ca is not None

    @classmethod
    def from_files(cls, cert_file: str, key_file: str, client_ca_file: str | None = None) -> ServerTLS:
        """Read and check the files; ConfigError says which one is unreadable, not PEM, or does not match."""
        chain = _read_pem(CERT_VAR, cert_file, b"-----BEGIN CERTIFICATE-----")
        key = _read_pem(KEY_VAR, key_file, b"PRIVATE KEY-----")
        client_ca = _read_pem(CLIENT_CA_VAR, client_ca_file, b"-----BEGIN CERTIFICATE-----") if client_ca_file else None
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            context.load_cert_chain(cert_file, key_file, password=_no_password)
        except (ssl.SSLError, TypeError) as exc:
            raise ConfigError(
                f"{KEY_VAR}={key_file} cannot be used with the certificate {CERT_VAR}={cert_file} "
                f"(a key of another certificate, or an encrypted key): {exc}"
            ) from None
        if client_ca_file:
            try:
                context.load_verify_locations(cafile=client_ca_file)
            except ssl.SSLError as exc:
                raise ConfigError(f"{CLIENT_CA_VAR}={client_ca_file} holds no usable CA certificate: {exc}") from None
        return cls(chain, key, client_ca)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ServerTLS | None:
        """TLS settings from ML_TLS_* (None when neither certificate nor key is set: plaintext gRPC)."""
        env = os.environ if environ is None else environ
        cert, key, client_ca = (env_value(name, env) for name in (CERT_VAR, KEY_VAR, CLIENT_CA_VAR))
        if cert is None and key is None:
            if client_ca is not None:
                raise ConfigError(f"{CLIENT_CA_VAR} (mutual TLS) also needs {CERT_VAR} and {KEY_VAR}: set both")
            return None
        if cert is None or key is None:
            missing = CERT_VAR if cert is None else KEY_VAR
            raise ConfigError(f"TLS needs both {CERT_VAR} and {KEY_VAR}: set {missing} too (or unset both)")
        return cls.from_files(cert, key, client_ca)

    def credentials(self) -> grpc.ServerCredentials:
        """grpcio server credentials; with a client CA, clients without a certificate it signed are refused."""
        return grpc.ssl_server_credentials(
            [(self.private_key, self.certificate_chain)],
            root_certificates=self.client_ca,
            require_client_auth=self.mutual,
        )


def add_port(server: aio.Server | grpc.Server, address: str, tls: ServerTLS | None) -> int:
    """Bind `address` on `server`, with TLS when `tls` is given, else plaintext; returns the bound port."""
    if tls is None:
        return server.add_insecure_port(address)
    return server.add_secure_port(address, tls.credentials())


def _read_pem(variable: str, path: str, marker: bytes) -> bytes:
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise ConfigError(f"{variable}={path} cannot be read: {exc.strerror or exc}") from None
    if marker not in data:
        raise ConfigError(f"{variable}={path} is not a PEM file with {marker.decode().strip('-')}")
    return data


def _no_password() -> bytes:
    raise TypeError("the private key is encrypted; give the server an unencrypted key (protect the file instead)")
