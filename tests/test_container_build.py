"""The container image without a Docker engine: the Dockerfile lints clean (hadolint), its stages say what the
image promises (slim non-root runtime, gRPC + metrics ports, a gRPC health check, no data in the context), and
its build steps (deploy/docker/build.sh, the very script the Dockerfile runs) are replayed in a fresh virtual
environment; the installed server then serves a model it compiled from a registry mounted read-only."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from dockerfile_support import DockerIgnore, Stage, stages
from model_factory import training_output

from ml_pipeline.model_registry import ModelMetadata, ModelRegistry
from ml_pipeline.proto_gen import fraud_detection_pb2 as pb

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
BUILD_SCRIPT = ROOT / "deploy" / "docker" / "build.sh"


@pytest.fixture(scope="module")
def dockerfile() -> dict[str, Stage]:
    """The Dockerfile's stages by name."""
    return stages(DOCKERFILE)


@pytest.mark.integration
def test_dockerfile_lints_clean() -> None:
    hadolint = Path(sys.executable).with_name("hadolint")
    result = subprocess.run(
        [str(hadolint), "--failure-threshold", "style", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def apt_packages(stage: Stage) -> list[str]:
    """The packages a stage installs with apt-get install."""
    packages: list[str] = []
    for run in stage.arguments("RUN"):
        for command in run.split("&&"):
            words = command.split()
            if words[:2] == ["apt-get", "install"]:
                packages += [w for w in words[2:] if not w.startswith("-")]
    return packages


@pytest.mark.unit
def test_build_stage_has_the_compilers_and_the_native_transport_packages(dockerfile: dict[str, Stage]) -> None:
    script = (ROOT / "scripts" / "install_native_deps.sh").read_text()
    native = re.search(r"^PACKAGES=\((.*)\)$", script, re.MULTILINE)
    assert native is not None
    assert {"gcc", "g++", *native.group(1).split()} <= set(apt_packages(dockerfile["build"]))


@pytest.mark.unit
def test_build_stage_runs_the_build_script(dockerfile: dict[str, Stage]) -> None:
    build = dockerfile["build"]
    assert "deploy/docker/build.sh /build/build.sh" in build.arguments("COPY")
    assert any(run.endswith("sh /build/build.sh package /build/src /opt/venv") for run in build.arguments("RUN"))
    model = dockerfile["model"]
    assert model.base == "build" and 'COMPILE_MODEL=""' in model.arguments("ARG")
    assert any('build.sh model "$COMPILE_MODEL"' in run for run in model.arguments("RUN"))


@pytest.mark.unit
def test_runtime_stage_is_slim_non_root_and_serves(dockerfile: dict[str, Stage]) -> None:
    runtime = list(dockerfile.values())[-1]
    assert runtime.name == "runtime", "the runtime stage must be the last (default) target"
    assert runtime.base == dockerfile["build"].base, "same Python base image, so the copied venv runs"
    runtime_packages = apt_packages(runtime)
    assert "libgrpc++1.51" in runtime_packages, "the native transport's shared libraries"
    assert not [p for p in runtime_packages if p.endswith("-dev") or p in {"gcc", "g++", "cpp", "make", "pkg-config"}]
    assert not any("pip install" in run for run in runtime.arguments("RUN"))
    copies = runtime.arguments("COPY")
    assert copies == ["--from=build /opt/venv /opt/venv", "--from=model /var/lib/voxguard /var/lib/voxguard"]
    (user,) = runtime.arguments("USER")
    assert not user.startswith(("0", "root"))
    assert runtime.arguments("EXPOSE") == ["50051 9091"]
    assert json.loads(runtime.arguments("CMD")[0]) == ["python", "-m", "ml_pipeline.inference_server"]
    (healthcheck,) = runtime.arguments("HEALTHCHECK")
    assert healthcheck_command(runtime) == ["python", "-m", "ml_pipeline.inference_server.healthcheck"]
    assert "--interval=" in healthcheck
    assert dockerfile["trainer"].base == "build" and "USER" in dict(dockerfile["trainer"].instructions)


def healthcheck_command(runtime: Stage) -> list[str]:
    """The exec-form command of the runtime stage's HEALTHCHECK."""
    (healthcheck,) = runtime.arguments("HEALTHCHECK")
    return json.loads(healthcheck.split(" CMD ", 1)[1])


@pytest.mark.unit
def test_build_context_holds_sources_only() -> None:
    files = DockerIgnore(ROOT / ".dockerignore").context_files(ROOT)
    assert {"setup.py", "pyproject.toml", "README.md", "deploy/docker/build.sh"} <= set(files)
    assert any(f.startswith("native/src/") and f.endswith(".c") for f in files)
    assert any(f.startswith("control/ml_pipeline/native/") and f.endswith(".pyx") for f in files)
    assert "control/ml_pipeline/inference_server/__main__.py" in files
    forbidden = re.compile(
        r"(^|/)(\.venv|models|demo_output|compiled_models|tests|build|__pycache__)/"
        r"|\.(csv|parquet|npz|so|o|pem|key|crt|env)$|(^|/)(\.env|id_rsa)"
    )
    assert [f for f in files if forbidden.search(f)] == []


# ---- the build steps, replayed ----


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def register_champion(registry_path: Path, work: Path) -> str:
    """A small model's training output (tests/model_factory.py), registered with its labelled test sample,
    approved and promoted to champion (compiled later, by the build script in the fresh environment)."""
    model_id = "xgboost_v2026.11.29.000000"
    output = training_output(work / "training", model_id, seed=7)
    registry = ModelRegistry(registry_path)
    meta = ModelMetadata.from_training_output(output)
    registry.register_model(
        output / "model.json", meta, attachments={"test_sample.npz": output / "test_sample.npz"}, actor="test"
    )
    registry.approve_model(model_id, actor="test")
    registry.promote_to_champion(model_id, actor="test")
    return model_id


def read_only(command: list[str], folders: list[Path]) -> list[str]:
    """`command` run in a private mount namespace where each folder is bind-mounted read-only."""
    mounts = " && ".join(
        f"mount --bind {shlex.quote(str(f))} {shlex.quote(str(f))} && mount -o remount,bind,ro {shlex.quote(str(f))}"
        for f in folders
    )
    return ["unshare", "--map-root-user", "--mount", "sh", "-c", f"{mounts} && exec {shlex.join(command)}"]


@pytest.mark.e2e
@pytest.mark.slow
def test_build_steps_in_a_fresh_virtual_environment(tmp_path: Path, dockerfile: dict[str, Stage]) -> None:
    context = tmp_path / "src"
    for name in DockerIgnore(ROOT / ".dockerignore").context_files(ROOT):
        (context / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, context / name)
    venv = tmp_path / "venv"
    script = context / "deploy" / "docker" / "build.sh"
    subprocess.run(["sh", str(script), "package", str(context), str(venv)], check=True, timeout=600)
    wheels = list((tmp_path / "wheels").glob("voxguard_ml_pipeline-*.whl"))
    assert len(wheels) == 1 and "linux" in wheels[0].name, "a platform wheel: the native extensions are inside"
    installed = venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    assert (installed / "ml_pipeline" / "proto_gen" / "fraud_detection.proto").is_file()

    registry, compiled = tmp_path / "registry", tmp_path / "compiled_models"
    model_id = register_champion(registry, tmp_path)
    env = {**os.environ, "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    subprocess.run(["sh", str(script), "model", model_id, str(registry), str(compiled)], check=True, env=env)
    assert (compiled / f"{model_id}.so").is_file()
    assert ModelRegistry(registry).get_model(model_id).compiled["path"] == str(compiled / f"{model_id}.so")
    assert list(registry.rglob("*.npz")) == [], "labelled test rows stay out of the image"

    port, metrics_port = free_port(), free_port()
    server_env = {
        **env,
        "PYTHONDONTWRITEBYTECODE": "1",
        "ML_MODEL_REGISTRY_PATH": str(registry),
        "ML_INFERENCE_HOST": "127.0.0.1",
        "ML_INFERENCE_PORT": str(port),
        "ML_METRICS_PORT": str(metrics_port),
        "ML_SHUTDOWN_GRACE_SECONDS": "2",
    }
    command = json.loads(dockerfile["runtime"].arguments("CMD")[0])
    server = subprocess.Popen(read_only(command, [registry, compiled, venv]), env=server_env)
    try:
        probe = healthcheck_command(dockerfile["runtime"])
        deadline = time.monotonic() + 60
        while subprocess.run(probe, env=server_env, capture_output=True, timeout=30).returncode != 0:
            assert server.poll() is None, "the server exited"
            assert time.monotonic() < deadline, "the server did not become SERVING"
            time.sleep(0.3)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            predict = channel.unary_unary(
                "/FraudDetection/Predict",
                request_serializer=pb.PredictionRequest.SerializeToString,
                response_deserializer=pb.PredictionResponse.FromString,
            )
            reply = predict(pb.PredictionRequest(features=[0.5] * 8, request_id="container-test"), timeout=10)
        assert reply.model_version == model_id and 0.0 <= reply.probability <= 1.0
    finally:
        server.send_signal(signal.SIGTERM)
        code = server.wait(timeout=30)
    assert code == 0
