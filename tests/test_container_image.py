"""The container images built and run on a real Docker engine (tests/docker_support.py: our own dockerd, a
base image made from Debian packages). The Dockerfile's runtime and trainer targets are built with that base
as PYTHON_IMAGE; the trainer registers and compiles a model into a volume, and the runtime image serves it
from the volume mounted read-only, as its non-root user, on 127.0.0.1 (host network): gRPC health SERVING, a
Predict answered by the champion with the booster's probability, /metrics scraped, the image's HEALTHCHECK
healthy, and `docker stop` drains and exits 0. The images' sizes are reported; the runtime's is budgeted.
Where Docker cannot run the test skips, in CI (CI=true) it fails."""

from __future__ import annotations

import os
import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import xgboost as xgb
from docker_support import Engine, base_image, docker_engine
from grpc_health.v1 import health_pb2, health_pb2_grpc
from model_factory import training_output

from ml_pipeline.proto_gen import fraud_detection_pb2 as pb

# A cold run (no base, no build cache) builds for minutes; a warm one in seconds.
pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(1500)]

ROOT = Path(__file__).resolve().parent.parent
RUNTIME, TRAINER = "voxguard-ml-pipeline:test", "voxguard-ml-pipeline-trainer:test"
RUNTIME_BUDGET_BYTES = 700 * 1000 * 1000  # the server image: base, gRPC C++ runtime libraries, the venv
UID = 10001  # the images' user (Dockerfile)
MODEL_ID = "xgboost_v2026.12.02.000000"
ROW = [120.0, 8.5, 0.9, 0.6, 0.8, 0.4, 0.3, 2.0]


def report(request: pytest.FixtureRequest, line: str) -> None:
    """A line in the test run's output even when output is captured (sizes and build times are for people)."""
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line(f"[container image] {line}")
    else:
        print(line)


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    with docker_engine() as running:
        yield running


@pytest.fixture(scope="module")
def images(engine: Engine, request: pytest.FixtureRequest) -> dict[str, int]:
    """The runtime and trainer images built from the repository (the build cache makes a rebuild quick);
    their sizes in bytes."""
    start = time.monotonic()
    base = base_image(engine)
    report(request, f"base image {base} ready in {time.monotonic() - start:.0f} s")
    sizes = {}
    for target, tag in (("runtime", RUNTIME), ("trainer", TRAINER)):
        start = time.monotonic()
        engine.run(
            "build", "--network", "host", "--build-arg", f"PYTHON_IMAGE={base}", "--target", target, "-t", tag,
            str(ROOT), timeout=1800,
        )  # fmt: skip
        sizes[tag] = engine.image_size(tag)
        report(request, f"{tag}: built in {time.monotonic() - start:.0f} s, {sizes[tag] / 1e6:.0f} MB")
    # The images these tags named before are left untagged by the rebuild: drop them (the build cache stays).
    engine.run("image", "prune", "--force")
    return sizes


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_runtime_image_within_its_size_budget(images: dict[str, int]) -> None:
    assert images[RUNTIME] <= RUNTIME_BUDGET_BYTES, f"runtime image {images[RUNTIME] / 1e6:.0f} MB > 700 MB"
    assert images[TRAINER] > images[RUNTIME], "the trainer adds the compilers"


def test_images_run_as_the_non_root_user(engine: Engine, images: dict[str, int]) -> None:
    for tag in images:
        assert engine.run("image", "inspect", "--format", "{{.Config.User}}", tag).stdout.strip() == f"{UID}:{UID}"
    result = engine.run(
        "run", "--rm", "--network", "none", "--entrypoint", "sh", RUNTIME, "-c", "id -u; command -v gcc cc || true"
    )
    assert result.stdout.split() == [str(UID)], "non-root, and no compiler in the runtime image"


@pytest.fixture
def volume(tmp_path: Path, engine: Engine, images: dict[str, int]) -> Path:
    """The volume of the Deployment (/var/lib/voxguard), its champion registered, approved, compiled and
    promoted by the trainer image, as the runbook's toolbox does it."""
    volume = tmp_path / "voxguard"
    training_output(volume / "run", MODEL_ID, seed=7)
    os.chown(volume, UID, UID)
    for path in volume.rglob("*"):
        os.chown(path, UID, UID)
    steps = (
        "ml-pipeline registry register /var/lib/voxguard/run --actor test --reason 'image test' && "
        f"ml-pipeline registry approve {MODEL_ID} --actor test --reason 'image test' && "
        f"ml-pipeline compile {MODEL_ID} --out /var/lib/voxguard/compiled_models && "
        f"ml-pipeline registry promote {MODEL_ID} --actor test --reason 'image test'"
    )
    engine.run(
        "run", "--rm", "--network", "none", "--read-only", "--tmpfs", "/tmp", "--cap-drop", "ALL",
        "-v", f"{volume}:/var/lib/voxguard", "--entrypoint", "sh", TRAINER, "-c", steps, timeout=600,
    )  # fmt: skip
    assert (volume / "compiled_models" / f"{MODEL_ID}.so").is_file()
    return volume


def health(port: int) -> int:
    """The gRPC health status of the server on `port` (UNKNOWN while it does not answer)."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            return int(health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2).status)
        except grpc.RpcError:
            return int(health_pb2.HealthCheckResponse.UNKNOWN)


def test_runtime_image_serves_the_trainers_model_and_drains(engine: Engine, volume: Path) -> None:
    port, metrics_port = free_port(), free_port()
    name = f"voxguard-test-{os.getpid()}-{port}"
    engine.run(
        "run", "-d", "--name", name, "--network", "host", "--read-only", "--tmpfs", "/tmp", "--cap-drop", "ALL",
        "--security-opt", "no-new-privileges", "-v", f"{volume}:/var/lib/voxguard:ro",
        "-e", "ML_INFERENCE_HOST=127.0.0.1", "-e", f"ML_INFERENCE_PORT={port}",
        "-e", "ML_METRICS_HOST=127.0.0.1", "-e", f"ML_METRICS_PORT={metrics_port}",
        "-e", "ML_SHUTDOWN_GRACE_SECONDS=3", RUNTIME,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while health(port) != health_pb2.HealthCheckResponse.SERVING:
            running = engine.run("inspect", "--format", "{{.State.Running}}", name).stdout.strip()
            assert running == "true", "the server exited:\n" + engine.run("logs", name, check=False).stderr[-3000:]
            assert time.monotonic() < deadline, "not SERVING in 90 s:\n" + engine.run("logs", name).stderr[-3000:]
            time.sleep(0.5)

        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            predict = channel.unary_unary(
                "/FraudDetection/Predict",
                request_serializer=pb.PredictionRequest.SerializeToString,
                response_deserializer=pb.PredictionResponse.FromString,
            )
            reply = predict(pb.PredictionRequest(features=ROW, request_id="image-test"), timeout=10)
        assert reply.model_version == MODEL_ID
        booster = xgb.Booster(model_file=str(volume / "run" / "model.json"))
        rows = xgb.DMatrix(np.array([ROW], dtype=np.float32), feature_names=booster.feature_names)
        expected = float(booster.predict(rows)[0])
        assert abs(reply.probability - expected) < 1e-5

        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as response:
            metrics = response.read().decode()
        assert f'ml_predictions_total{{model_version="{MODEL_ID}"}} 1.0' in metrics

        uid = engine.run("exec", name, "python", "-c", "import os; print(os.getuid())").stdout.strip()
        assert uid == str(UID)
        write = engine.run("exec", name, "sh", "-c", "touch /var/lib/voxguard/registry/x", check=False)
        assert write.returncode != 0, "the registry volume is mounted read-only"

        # The image's own HEALTHCHECK (python -m ml_pipeline.inference_server.healthcheck) turns healthy.
        deadline = time.monotonic() + 60
        while engine.run("inspect", "--format", "{{.State.Health.Status}}", name).stdout.strip() != "healthy":
            assert time.monotonic() < deadline, "the image's HEALTHCHECK never passed"
            time.sleep(1)

        start = time.monotonic()
        engine.run("stop", "--time", "30", name, timeout=60)
        stopped_in = time.monotonic() - start
        code = engine.run("inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip()
        assert code == "0", "SIGTERM drains and exits 0:\n" + engine.run("logs", name).stderr[-3000:]
        assert stopped_in < 20, f"the drain took {stopped_in:.1f} s with a 3 s grace"
    finally:
        engine.run("rm", "--force", name, check=False)
