"""`ml-pipeline serve`: run the gRPC inference server until SIGTERM (options override the ML_* variables);
`ml-pipeline predict`: send one Predict to a running server and print the answer."""

from __future__ import annotations

import logging
import math
import re

import click
import grpc

from ml_pipeline.cli.checks import existing_registry
from ml_pipeline.cli.output import emit, json_option
from ml_pipeline.cli.registry_cmds import registry_option
from ml_pipeline.config import env_value
from ml_pipeline.data.features import FEATURE_NAMES
from ml_pipeline.errors import JobFailed, UsageError
from ml_pipeline.inference_server.settings import ServerSettings
from ml_pipeline.inference_server.workers import run
from ml_pipeline.logs import configure_logging
from ml_pipeline.monitoring.serving import MonitoringSettings
from ml_pipeline.proto_gen import fraud_detection_pb2 as pb

FEATURE_ORDER = ", ".join(FEATURE_NAMES)


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
@click.option(
    "--http-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Also serve the Open Inference Protocol over HTTP/REST on this port [default: $ML_HTTP_PORT or off].",
)
def serve(
    registry_path: str | None,
    host: str | None,
    port: int | None,
    metrics_port: int | None,
    workers: int | None,
    transport: str | None,
    http_port: int | None,
) -> None:
    """Serve FraudDetection (Predict, PredictBatch, PredictStream) and the Open Inference Protocol
    (inference.GRPCInferenceService, model $ML_MODEL_NAME) with the registry's champion/challenger.

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
        http_port=http_port,
    )
    existing_registry(registry_path)  # a mistyped path would serve nothing, forever: refuse to start
    monitoring = MonitoringSettings.from_env()  # ML_PREDICTION_LOG checked here, before any port is bound
    configure_logging(logging.getLogger().getEffectiveLevel(), environment=monitoring.environment)
    if run(settings) != 0:
        raise JobFailed("a server process exited with an error; see the log above")


def _feature(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise UsageError(f"feature {text!r} is not a number (write nan for a missing value)") from None


def parse_features(text: str) -> list[float]:
    """The --features values (comma-separated, nan = missing); UsageError for a non-number or an infinity."""
    values = [_feature(f.strip()) for f in text.split(",")]
    if any(math.isinf(v) for v in values):
        raise UsageError("features must be finite (nan means missing)")
    return values


def _order_hint(details: str | None) -> str:
    """The feature order to use when the server says the count is wrong."""
    expected = re.search(r"expected (\d+) features", details or "")
    if expected is None:
        return ""
    if int(expected.group(1)) == len(FEATURE_NAMES):
        return f"; give --features in this order: {FEATURE_ORDER}"
    return "; `ml-pipeline registry show MODEL_ID` lists the serving model's features in order"


@click.command("predict")
@click.option(
    "--features",
    required=True,
    help=f"Comma-separated values in the model's feature order (nan = missing): {FEATURE_ORDER} for a model "
    "trained by `ml-pipeline train`; `ml-pipeline registry show MODEL_ID` lists a model's features.",
)
@click.option("--target", help="HOST:PORT of the server  [default: 127.0.0.1:$ML_INFERENCE_PORT (50051)]")
@click.option(
    "--request-id",
    default="",
    help="Routes champion/challenger (the same id, the same model); the alert id, for `ml-pipeline ab-report`.",
)
@click.option("--timeout", type=float, default=5.0, show_default=True, help="Deadline in seconds (more than 0).")
@click.option("--wait", is_flag=True, help="Wait (within --timeout) for a server that is still starting up.")
@json_option
def predict(features: str, target: str | None, request_id: str, timeout: float, wait: bool, as_json: bool) -> None:
    """Score one call on a running server and print is_fraud, probability, model_version and latency_ms."""
    target = target or f"127.0.0.1:{env_value('ML_INFERENCE_PORT')}"
    if not (math.isfinite(timeout) and timeout > 0):
        raise UsageError(f"--timeout {timeout:g} is not a deadline: give a number of seconds greater than 0")
    values = parse_features(features)
    request = pb.PredictionRequest(features=values, request_id=request_id)
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary(
            "/FraudDetection/Predict",
            request_serializer=pb.PredictionRequest.SerializeToString,
            response_deserializer=pb.PredictionResponse.FromString,
        )
        try:
            response = call(request, timeout=timeout, wait_for_ready=wait or None)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                raise UsageError(
                    f"the server refused the request: {exc.details()}{_order_hint(exc.details())}"
                ) from None
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
