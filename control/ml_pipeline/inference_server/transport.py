"""Which gRPC transport serves FraudDetection: the native C++ gRPC server when it is built, else grpcio.

Both serve the same ServingCore, so models, split, thresholds, counters and convergence do not depend on the
choice. The native transport (native/transport/grpc_transport.cc) runs no Python per request; it exists only where the
gRPC C++ packages were installed at build time (scripts/install_native_deps.sh, run by `make install`).
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING

from ml_pipeline.errors import UsageError
from ml_pipeline.inference_server.admission import AdmissionSettings

if TYPE_CHECKING:
    from ml_pipeline.inference_server.tls import ServerTLS
    from ml_pipeline.native.native_transport import NativeTransport
    from ml_pipeline.native.serving_core import ServingCore

log = logging.getLogger(__name__)

TRANSPORTS = ("native", "grpcio")
AUTO = "auto"
INSTALL_HINT = (
    "install libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev pkg-config (make install does it as root), "
    "then make build"
)


def native_unavailable_reason() -> str | None:
    """None when the native transport extension can be imported, else one line saying why not."""
    try:
        importlib.import_module("ml_pipeline.native.native_transport")
    except ImportError as exc:
        return f"the native transport is not built ({exc}); {INSTALL_HINT}"
    return None


def transport_name(requested: str) -> str:
    """`requested` normalised ("native", "grpcio" or "auto"); UsageError for anything else."""
    choice = requested.strip().lower()
    if choice not in (*TRANSPORTS, AUTO):
        raise UsageError(f"unknown transport {requested!r}: use native, grpcio or auto (ML_INFERENCE_TRANSPORT)")
    return choice


def resolve_transport(requested: str = AUTO) -> str:
    """The transport to serve with: `requested`, or for "auto" native when built, else grpcio (logged, with why).

    Raises UsageError for an unknown name, or for "native" when the extension is not built."""
    choice = transport_name(requested)
    if choice == "grpcio":
        return choice
    reason = native_unavailable_reason()
    if reason is None:
        return "native"
    if choice == "native":
        raise UsageError(f"transport native requested but {reason}; or use --transport grpcio")
    log.info("serving with the grpcio transport: %s", reason)
    return "grpcio"


def start_native_transport(
    core: ServingCore,
    address: str,
    max_receive_bytes: int,
    reuse_port: bool,
    tls: ServerTLS | None = None,
    admission: AdmissionSettings | None = None,
) -> NativeTransport:
    """Start the C++ gRPC server on `address` over `core` (TLS when `tls` is given); health starts NOT_SERVING.

    OSError (TransportError) when the address cannot be bound."""
    from ml_pipeline.native.native_transport import NativeTransport

    limits = admission or AdmissionSettings()
    return NativeTransport(
        core,
        address,
        max_receive_bytes=max_receive_bytes,
        reuse_port=reuse_port,
        tls=tls,
        max_in_flight=limits.in_flight_limit,
        min_deadline_ms=limits.min_deadline_ms,
        accept_compressed=limits.accept_compressed,
        channel_args=limits.channel_args(),
    )
