"""`ml-pipeline serve`: run the gRPC inference server until SIGTERM (options override the ML_* variables);
`ml-pipeline predict`: send one Predict to a running server and print the answer."""

from __future__ import annotations

import math
from pathlib import Path

import click
import grpc

from ml_pipeline.cli.output import emit, json_option
from ml_pipeline.cli.registry_cmds import registry_option
from ml_pipeline.errors import JobFailed, UsageError
from ml_pipeline.inference_server.settings import ServerSettings
from ml_pipeline.inference_server.workers import run
from ml_pipeline.proto_gen import fraud_detection_pb2 as pb


@click.command("serve")
@registry_option
@click.option("--host", default=None, help="Address to bind [default: $ML_INFERENCE_HOST or 0.0.0.0].")
@click.option(
    "--port", type=click.IntRange(0, 65535), default=None, help="gRPC port [default: $ML_INFERENCE_PORT or 50051]."
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Prometheus port; worker i uses port + i [default: $ML_METRICS_PORT or 9091].",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 256),
    default=None,
    help="Server processes sharing the port with SO_REUSEPORT [default: $ML_INFERENCE_WORKERS or 1].",
)
@click.option(
    "--transport",
    type=click.Choice(["native", "grpcio", "auto"], case_sensitive=False),
    default=None,
    help="native: C++ gRPC, no Python per request; grpcio: Python gRPC [default: $ML_INFERENCE_TRANSPORT or "
    "auto = native when built, else grpcio].",
)
def serve(
    registry_path: Path | None,
    host: str | None,
    port: int | None,
    metrics_port: int | None,
    workers: int | None,
    transport: str | None,
) -> None:
    """Serve FraudDetection (Predict, PredictBatch, PredictStream) with the registry's champion/challenger.

    The server follows the registry (polled every $ML_REGISTRY_POLL_SECONDS, at once on SIGHUP) and drains
    in-flight calls on SIGTERM for up to $ML_SHUTDOWN_GRACE_SECONDS before exiting 0.
    """
    settings = ServerSettings.from_env().with_overrides(
        registry_path=str(registry_path) if registry_path else None,
        host=host,
        port=port,
        metrics_port=metrics_port,
        workers=workers,
        transport=transport,
    )
    if run(settings) != 0:
        raise JobFailed("a server process exited with an error; see the log above")


def _feature(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise UsageError(f"feature {text!r} is not a number (write nan for a missing value)") from None


@click.command("predict")
@click.option("--features", required=True, help="Comma-separated values in the model's feature order (nan = missing).")
@click.option("--target", default="127.0.0.1:50051", show_default=True, help="HOST:PORT of the server.")
@click.option("--request-id", default="", help="Routes champion/challenger; the same id, the same model.")
@click.option("--timeout", type=float, default=5.0, show_default=True, help="Deadline in seconds.")
@json_option
def predict(features: str, target: str, request_id: str, timeout: float, as_json: bool) -> None:
    """Score one call on a running server and print is_fraud, probability, model_version and latency_ms."""
    values = [_feature(f.strip()) for f in features.split(",")]
    if any(math.isinf(v) for v in values):
        raise UsageError("features must be finite (nan means missing)")
    request = pb.PredictionRequest(features=values, request_id=request_id)
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary(
            "/FraudDetection/Predict",
            request_serializer=pb.PredictionRequest.SerializeToString,
            response_deserializer=pb.PredictionResponse.FromString,
        )
        try:
            response = call(request, timeout=timeout)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                raise UsageError(f"the server refused the request: {exc.details()}") from None
            raise JobFailed(f"Predict to {target} failed: {exc.code().name}: {exc.details()}") from None
    emit(
        {
            "is_fraud": response.is_fraud,
            "probability": response.probability,
            "model_version": response.model_version,
            "latency_ms": response.latency_ms,
        },
        as_json,
    )


COMMANDS = [serve, predict]
