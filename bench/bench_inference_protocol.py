"""The Open Inference Protocol's ModelInfer against FraudDetection's Predict, one row, as ratios in one run.

One server per transport on 127.0.0.1 serves the same production-size model (100 trees of depth 6, trained on
demo alerts). The C++ client (bench/native_client.cc) sends the same demo-like rows, one per call, sequentially,
as Predict (PredictionRequest) and as ModelInfer (ModelInferRequest, raw FP32 [1, 8] contents, what tritonclient
sends), in interleaved rounds. Budget: on the native transport, ModelInfer p50 <= 1.2x Predict p50; the grpcio
transport's ratio is reported beside it.
Run: `make bench` or `.venv/bin/pytest bench/bench_inference_protocol.py -s --benchmark-enable`.
"""

from __future__ import annotations

import signal
import statistics
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from bench_native_transport import _requests_file, _sequential, programs  # noqa: F401 (fixture)
from bench_reasons import _predict_requests, _registry
from bench_server import _free_port, _start_inference_server, _wait_ready
from timing import turns

from ml_pipeline.proto_gen import grpc_predict_v2_pb2 as ip

INFER_P50_VS_PREDICT = 1.2
ROUNDS = 3
CALLS = 2000
TRANSPORTS = ("native", "grpcio")
METHODS = {"Predict": "/FraudDetection/Predict", "ModelInfer": "/inference.GRPCInferenceService/ModelInfer"}


def _messages(rows: np.ndarray) -> dict[str, list[bytes]]:
    """Each row as a PredictionRequest and as a one-row ModelInferRequest, with the same request id."""
    infer = []
    for i, row in enumerate(rows):
        message = ip.ModelInferRequest(model_name="fraud-detector", id=f"call-{i}")
        message.inputs.add(name="features", datatype="FP32", shape=[1, len(row)])
        message.raw_input_contents.append(row.astype("<f4").tobytes())
        infer.append(message.SerializeToString())
    return {"Predict": _predict_requests(rows), "ModelInfer": infer}


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    """A server per transport, started and answering, and the two request files."""
    folder = tmp_path_factory.mktemp("oip_bench")
    registry, live, _ = _registry(folder)
    ports = {transport: _free_port() for transport in TRANSPORTS}
    processes: dict[str, subprocess.Popen[bytes]] = {}
    for transport in TRANSPORTS:
        processes[transport] = _start_inference_server(registry.root, ports[transport], transport)
    try:
        for transport in TRANSPORTS:
            _wait_ready(f"127.0.0.1:{ports[transport]}")
        messages = _messages(live)
        yield {
            "targets": {t: (f"127.0.0.1:{ports[t]}", processes[t].pid) for t in TRANSPORTS},
            "files": {name: _requests_file(folder / f"{name}.bin", data) for name, data in messages.items()},
        }
    finally:
        for process in processes.values():
            process.send_signal(signal.SIGTERM)
        for process in processes.values():
            process.wait(timeout=30)


def test_model_infer_latency_budget(
    programs: dict[str, Path],  # noqa: F811 (the fixture imported above)
    setup: dict[str, object],
    bench_report: Callable[[str, str], None],
) -> None:
    """Interleaved rounds of Predict and ModelInfer on each transport; the budget holds on the native one."""
    client = programs["client"]
    targets: dict[str, tuple[str, int]] = setup["targets"]  # type: ignore[assignment]
    files: dict[str, Path] = setup["files"]  # type: ignore[assignment]
    runs: dict[tuple[str, str], list[tuple[float, float]]] = {(t, m): [] for t in TRANSPORTS for m in METHODS}
    for round_index in range(ROUNDS):
        for transport in turns(TRANSPORTS, round_index):
            for name, method in METHODS.items():
                runs[transport, name].append(_sequential(client, *targets[transport], files[name], CALLS, method))
    p50 = {key: statistics.median(r[0] for r in rounds) for key, rounds in runs.items()}
    cpu = {key: statistics.median(r[1] for r in rounds) for key, rounds in runs.items()}
    section = f"Open Inference Protocol, one row (C++ client, medians of {ROUNDS} rounds)"
    for transport, name in runs:
        line = f"{transport:<7} {name:<10} p50 {p50[transport, name]:6.0f} µs, CPU {cpu[transport, name]:5.0f} µs/call"
        bench_report(section, line)
    ratios = {t: p50[t, "ModelInfer"] / p50[t, "Predict"] for t in TRANSPORTS}
    bench_report(section, f"grpcio ModelInfer/Predict p50: {ratios['grpcio']:.3f} (reported)")
    bench_report(section, f"native ModelInfer/Predict p50: {ratios['native']:.3f} (budget <= {INFER_P50_VS_PREDICT})")
    assert ratios["native"] <= INFER_P50_VS_PREDICT, f"native ModelInfer/Predict p50 = {ratios['native']:.3f}"
