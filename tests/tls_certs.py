"""Generate a throwaway PKI for TLS tests: a CA, a server certificate for 127.0.0.1/localhost, a client
certificate, and a second CA with its own client (a certificate the server must refuse)."""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Pem:
    """A certificate and its private key, written as PEM files."""

    cert_file: Path
    key_file: Path

    @property
    def cert(self) -> bytes:
        """The certificate, PEM bytes."""
        return self.cert_file.read_bytes()

    @property
    def key(self) -> bytes:
        """The unencrypted private key, PEM bytes."""
        return self.key_file.read_bytes()


@dataclass(frozen=True)
class Pki:
    """Everything a TLS test needs: `ca` signs `server` and `client`; `other_ca` signs `stranger`."""

    ca: Pem
    server: Pem
    client: Pem
    other_ca: Pem
    stranger: Pem


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write(folder: Path, stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> Pem:
    pem = Pem(folder / f"{stem}.crt", folder / f"{stem}.key")
    pem.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return pem


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
    *,
    is_ca: bool = False,
    server: bool = False,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    issuer_name, signing_key = (issuer[0].subject, issuer[1]) if issuer else (_name(subject), key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
    )
    if is_ca:
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
    else:
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if server:
        names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(signing_key, hashes.SHA256())


def make_pki(folder: Path) -> Pki:
    """Write a CA, a server and a client certificate it signs, and an unrelated CA and client, into `folder`."""
    keys = {name: ec.generate_private_key(ec.SECP256R1()) for name in ("ca", "server", "client", "other", "stranger")}
    ca = _certificate("VoxGuard test CA", keys["ca"], None, is_ca=True)
    other = _certificate("Unrelated CA", keys["other"], None, is_ca=True)
    return Pki(
        ca=_write(folder, "ca", ca, keys["ca"]),
        server=_write(
            folder, "server", _certificate("localhost", keys["server"], (ca, keys["ca"]), server=True), keys["server"]
        ),
        client=_write(
            folder, "client", _certificate("detection-engine", keys["client"], (ca, keys["ca"])), keys["client"]
        ),
        other_ca=_write(folder, "other-ca", other, keys["other"]),
        stranger=_write(
            folder, "stranger", _certificate("stranger", keys["stranger"], (other, keys["other"])), keys["stranger"]
        ),
    )
