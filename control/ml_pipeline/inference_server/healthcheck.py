"""`python -m ml_pipeline.inference_server.healthcheck`: the container's health check (grpc.health.v1).

Asks the server on 127.0.0.1:ML_INFERENCE_PORT over plaintext gRPC; exit 0 when it answers SERVING (a verified
champion is loaded), 1 otherwise with the reason on stderr. With TLS on the gRPC port, use a TCP check instead
(docs/operations.md): this probe, like Kubernetes' grpc probes, speaks plaintext.
"""

from __future__ import annotations

import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ml_pipeline.config import MLPipelineConfig
from ml_pipeline.errors import PipelineError

SERVING = health_pb2.HealthCheckResponse.SERVING


def check(port: int, timeout: float = 3.0) -> str | None:
    """None when the server on 127.0.0.1:`port` is SERVING, else a one-line reason."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout).status
        except grpc.RpcError as exc:
            return f"health check failed: {exc.code().name}: {exc.details()}"
    if status != SERVING:
        return f"server is {health_pb2.HealthCheckResponse.ServingStatus.Name(status)} (no verified champion loaded?)"
    return None


def main() -> int:
    """Exit code of the health check: 0 healthy, 1 not serving, 2 bad configuration."""
    try:
        port = MLPipelineConfig.from_env().inference_port
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    reason = check(port)
    if reason is not None:
        print(reason, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
