"""`ml-pipeline serve`: run the gRPC inference server until SIGTERM (options override the ML_* variables)."""

from __future__ import annotations

from pathlib import Path

import click

from ml_pipeline.cli.registry_cmds import registry_option
from ml_pipeline.errors import JobFailed
from ml_pipeline.inference_server.settings import ServerSettings
from ml_pipeline.inference_server.workers import run


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
def serve(
    registry_path: Path | None, host: str | None, port: int | None, metrics_port: int | None, workers: int | None
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
    )
    if run(settings) != 0:
        raise JobFailed("a server process exited with an error; see the log above")


COMMANDS = [serve]
