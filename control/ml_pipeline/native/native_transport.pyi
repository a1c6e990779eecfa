"""Types of the native_transport extension (native_transport.pyx)."""

from collections.abc import Sequence

from typing_extensions import disjoint_base

from ml_pipeline.inference_server.tls import ServerTLS
from ml_pipeline.native.serving_core import ServingCore

class TransportError(OSError): ...

@disjoint_base
class NativeTransport:
    def __init__(
        self,
        core: ServingCore,
        address: str,
        max_receive_bytes: int = 0,
        reuse_port: bool = False,
        stream_window: int = 64,
        tls: ServerTLS | None = None,
        max_in_flight: int = 0,
        min_deadline_ms: int = 0,
        accept_compressed: bool = False,
        channel_args: Sequence[tuple[str, int]] = (),
    ) -> None: ...
    @property
    def port(self) -> int: ...
    def set_serving(self, serving: bool) -> None: ...
    def describe(
        self,
        model_name: str,
        versions: Sequence[str],
        feature_names: Sequence[str],
        platform: str,
        server_name: str,
        server_version: str,
    ) -> None: ...
    def shutdown(self, grace: float) -> None: ...
