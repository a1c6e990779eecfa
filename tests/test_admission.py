"""Admission, decompression bombs and shutdown, against real servers on both transports.

- a call without a deadline (or with less than ML_MIN_DEADLINE_MS left) is refused with DEADLINE_EXCEEDED and
  counted as such; a call with time to spare is answered;
- beyond ML_MAX_IN_FLIGHT requests at once, calls get RESOURCE_EXHAUSTED at once, the others are answered;
- a gzip request that expands to 256 MB is refused unread: the server's memory does not grow;
- SIGTERM under load (64 callers in flight): every call sent before the signal is answered OK, the server
  exits 0, and later calls are refused (UNAVAILABLE) rather than left hanging.
"""

from __future__ import annotations

import collections
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from model_factory import BuiltModel, register_compiled, served_model
from native_support import require_native_transport
from server_harness import running_server

from ml_pipeline.inference_server.admission import AdmissionSettings
from ml_pipeline.model_registry import ModelRegistry
from ml_pipeline.proto_gen import fraud_detection_pb2 as pb

pytestmark = pytest.mark.e2e

ROW = [0.3, -1.2, 0.8, 0.1, float("nan"), 2.0, -0.4, 1.1]
REQUEST = pb.PredictionRequest(features=ROW, request_id="call-1").SerializeToString()


@pytest.fixture(autouse=True, params=["grpcio", "native"])
def transport(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "native":
        require_native_transport()
    monkeypatch.setenv("ML_INFERENCE_TRANSPORT", request.param)
    return request.param


@pytest.fixture(scope="module")
def model() -> BuiltModel:
    return served_model("adm_v1", 1)


@pytest.fixture
def registry(tmp_path: Path, model: BuiltModel) -> ModelRegistry:
    registry = ModelRegistry(tmp_path / "registry")
    register_compiled(registry, model)
    registry.promote_to_champion(model.model_id, actor="test")
    return registry


def _code(call: grpc.UnaryUnaryMultiCallable, payload: bytes, **kwargs: object) -> tuple[grpc.StatusCode, str]:
    try:
        call(payload, **kwargs)
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


def test_calls_without_enough_deadline_are_refused_and_counted(registry: ModelRegistry) -> None:
    with running_server(registry.root, admission=AdmissionSettings(min_deadline_ms=50)) as server:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            predict = channel.unary_unary("/FraudDetection/Predict")
            code, message = _code(predict, REQUEST)
            assert code == grpc.StatusCode.DEADLINE_EXCEEDED and "at least 50 ms" in message
            assert _code(predict, REQUEST, timeout=5)[0] == grpc.StatusCode.OK
        assert server.core.counters()["errors"].get(grpc.StatusCode.DEADLINE_EXCEEDED.value[0]) == 1


def test_beyond_the_in_flight_bound_calls_are_refused_at_once(registry: ModelRegistry) -> None:
    rows = [pb.PredictionRequest(features=ROW, request_id=f"r{i}") for i in range(5_000)]
    batch = pb.PredictionBatchRequest(requests=rows).SerializeToString()
    with running_server(registry.root, admission=AdmissionSettings(max_in_flight=1)) as server:
        channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
        predict_batch = channel.unary_unary("/FraudDetection/PredictBatch")
        with ThreadPoolExecutor(16) as pool:
            codes = collections.Counter(
                code for code, _ in pool.map(lambda _: _code(predict_batch, batch, timeout=30), range(64))
            )
        channel.close()
    assert set(codes) == {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}, codes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.fixture
def server_process(registry: ModelRegistry) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """`python -m ml_pipeline.inference_server` on the registry, on 127.0.0.1:<port>, serving."""
    port = _free_port()
    env = {
        **os.environ,
        "ML_MODEL_REGISTRY_PATH": str(registry.root),
        "ML_INFERENCE_HOST": "127.0.0.1",
        "ML_INFERENCE_PORT": str(port),
        "ML_METRICS_PORT": str(_free_port()),
        "ML_SHUTDOWN_GRACE_SECONDS": "10",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "ml_pipeline.inference_server"], env=env, text=True, stderr=subprocess.DEVNULL
    )
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=30)
            predict = channel.unary_unary("/FraudDetection/Predict")
            deadline = time.monotonic() + 30
            while _code(predict, REQUEST, timeout=5)[0] != grpc.StatusCode.OK:
                assert time.monotonic() < deadline, "the server never served"
                time.sleep(0.05)
        yield process, port
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)


def test_a_decompression_bomb_is_refused_unread(server_process: tuple[subprocess.Popen[str], int]) -> None:
    process, port = server_process
    bomb = pb.PredictionRequest(features=ROW, request_id="x" * (256 << 20)).SerializeToString()
    before = _rss_kib(process.pid)
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", -1)]) as channel:
        predict = channel.unary_unary("/FraudDetection/Predict")
        code, _ = _code(predict, bomb, timeout=60, compression=grpc.Compression.Gzip)
        assert code != grpc.StatusCode.OK
        assert _code(predict, REQUEST, timeout=5)[0] == grpc.StatusCode.OK  # and the server still serves
    grown_mib = (_rss_kib(process.pid) - before) / 1024
    assert grown_mib < 20, f"the server's RSS grew by {grown_mib:.0f} MiB on a refused bomb"


def test_sigterm_under_load_loses_no_call_in_flight(server_process: tuple[subprocess.Popen[str], int]) -> None:
    process, port = server_process
    results: list[tuple[float, grpc.StatusCode]] = []
    lock = threading.Lock()
    stop = threading.Event()

    def caller() -> None:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            predict = channel.unary_unary("/FraudDetection/Predict")
            while not stop.is_set():
                sent = time.monotonic()
                code, _ = _code(predict, REQUEST, timeout=10)
                with lock:
                    results.append((sent, code))

    callers = [threading.Thread(target=caller) for _ in range(64)]
    for thread in callers:
        thread.start()
    time.sleep(1.5)
    signalled = time.monotonic()
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
    exited = time.monotonic()
    stop.set()
    for thread in callers:
        thread.join(timeout=30)
    before = collections.Counter(code for sent, code in results if sent < signalled)
    # while the server still runs (a call to a port nobody listens on any more is the client library's affair)
    after = collections.Counter(code for sent, code in results if signalled <= sent < exited)
    assert before[grpc.StatusCode.OK] > 64 and set(before) == {grpc.StatusCode.OK}, before
    assert grpc.StatusCode.DEADLINE_EXCEEDED not in after, after  # refused or answered, never left hanging


def _closed_by_server(sock: socket.socket, within_s: float) -> bool:
    """True when the server closes `sock` within `within_s` seconds (whatever it sent before closing)."""
    sock.settimeout(0.2)
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            if sock.recv(65536) == b"":
                return True
        except TimeoutError:
            continue
        except ConnectionResetError:
            return True
    return False


def test_silent_and_half_open_connections_are_closed_after_the_handshake_timeout(registry: ModelRegistry) -> None:
    with running_server(registry.root, admission=AdmissionSettings(handshake_timeout_s=1.0)) as server:
        with socket.create_connection(("127.0.0.1", server.port)) as silent:
            assert _closed_by_server(silent, within_s=8)
        with socket.create_connection(("127.0.0.1", server.port)) as partial:
            partial.sendall(b"PRI * HTTP/2.0\r\n")  # half of the HTTP/2 connection preface, then nothing
            assert _closed_by_server(partial, within_s=8)
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:  # and real callers are still served
            assert _code(channel.unary_unary("/FraudDetection/Predict"), REQUEST, timeout=5)[0] == grpc.StatusCode.OK


def test_an_idle_connection_is_closed_after_the_idle_limit(registry: ModelRegistry) -> None:
    states: list[grpc.ChannelConnectivity] = []
    settings = AdmissionSettings(max_connection_idle_s=1.0)
    with (
        running_server(registry.root, admission=settings) as server,
        grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        channel.subscribe(states.append)
        assert _code(channel.unary_unary("/FraudDetection/Predict"), REQUEST, timeout=5)[0] == grpc.StatusCode.OK
        deadline = time.monotonic() + 10  # callbacks come late: wait for one after READY
        while time.monotonic() < deadline and not _left_ready(states):
            time.sleep(0.1)
        channel.unsubscribe(states.append)
    assert _left_ready(states), states  # the server sent GOAWAY


def _left_ready(states: list[grpc.ChannelConnectivity]) -> bool:
    """True when the channel was READY and then went to another state."""
    ready = grpc.ChannelConnectivity.READY
    return ready in states and states[-1] != ready
