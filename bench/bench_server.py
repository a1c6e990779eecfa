"""Server latency budget, as ratios measured in one run on this machine.

Three servers on 127.0.0.1, each its own process, same grpcio transport settings: the real InferenceServer
(compiled model through the native core), a constant-answer server (the transport's floor) and a plain
implementation (protobuf objects + XGBoost inplace_predict). A separate load-generator process measures them
in interleaved rounds. Budgets: core p50 <= 1.10x constant, p99 <= 1.25x constant; core p50 <= 0.75x plain;
with 8 calls in flight core throughput >= 0.9x constant, as the median of the rounds' ratios. PredictBatch/
PredictStream rows/s are reported beside unary. The absolute p99 < 1 ms is judged in bench_native_transport.py,
with a C++ client as the detection engine calls: this Python client's own time puts even the constant server's
p99 near 1 ms on this machine. Run: `make bench` or `.venv/bin/pytest bench/bench_server.py -s --benchmark-enable`.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import grpc
import numpy as np
import pytest
import xgboost as xgb

from ml_pipeline.compiler import compile_model
from ml_pipeline.model_registry import ModelMetadata, ModelRegistry

BENCH_DIR = Path(__file__).resolve().parent
P50_VS_CONSTANT = 1.10
P99_VS_CONSTANT = 1.25
P50_VS_PLAIN = 0.75
THROUGHPUT_VS_CONSTANT = 0.9


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_inference_server(
    registry_root: Path, port: int, transport: str, metrics_port: int | None = None, **env: str
) -> subprocess.Popen[bytes]:
    """`python -m ml_pipeline.inference_server` on 127.0.0.1:`port` over `registry_root` with `transport`, plus the
    ML_* variables `env` (its metrics on `metrics_port`, or a free port)."""
    variables = {
        **os.environ,
        "ML_MODEL_REGISTRY_PATH": str(registry_root),
        "ML_INFERENCE_HOST": "127.0.0.1",
        "ML_INFERENCE_PORT": str(port),
        "ML_METRICS_PORT": str(metrics_port or _free_port()),
        "ML_INFERENCE_TRANSPORT": transport,
        **env,
    }
    command = [sys.executable, "-m", "ml_pipeline.inference_server"]
    return subprocess.Popen(command, env=variables, stderr=subprocess.DEVNULL)


def _production_like_model(folder: Path) -> Path:
    """100 trees of depth 6 over 8 features, like the default training configuration."""
    rng = np.random.default_rng(11)
    x = rng.normal(size=(20_000, 8)).astype(np.float32)
    y = ((x[:, 0] * x[:, 1] + np.sin(x[:, 2]) + 0.5 * x[:, 3] + rng.normal(scale=0.7, size=len(x))) > 0.8).astype(int)
    booster = xgb.train(
        {"objective": "binary:logistic", "max_depth": 6, "eta": 0.1, "nthread": 2, "seed": 1},
        xgb.DMatrix(x, label=y),
        num_boost_round=100,
    )
    path = folder / "model.json"
    booster.save_model(path)
    return path


def _registry_with_champion(folder: Path, model_json: Path) -> ModelRegistry:
    registry = ModelRegistry(folder / "registry")
    now = datetime.now(UTC).isoformat()
    registry.register_model(model_json, ModelMetadata(model_id="bench_v1", version="1", created_at=now, threshold=0.5))
    registry.approve_model("bench_v1", actor="bench")
    result = compile_model(registry.artifact_path("bench_v1"), folder / "compiled", "bench_v1")
    registry.record_compiled("bench_v1", result.registry_record().to_dict(), actor="bench")
    registry.promote_to_champion("bench_v1", actor="bench")
    return registry


def _wait_ready(target: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(target) as channel:
        predict = channel.unary_unary("/FraudDetection/Predict")
        raw = b"\x0a\x20" + b"\x00" * 32  # 8 packed zero features
        while True:
            try:
                predict(raw, timeout=2)
                return
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    folder = tmp_path_factory.mktemp("bench_server")
    model_json = _production_like_model(folder)
    registry = _registry_with_champion(folder, model_json)
    ports = {name: _free_port() for name in ("core", "constant", "plain", "metrics")}
    env = {
        **os.environ,
        "ML_MODEL_REGISTRY_PATH": str(registry.root),
        "ML_INFERENCE_HOST": "127.0.0.1",
        "ML_INFERENCE_PORT": str(ports["core"]),
        "ML_METRICS_PORT": str(ports["metrics"]),
        "ML_INFERENCE_TRANSPORT": "grpcio",  # the reference servers are grpcio (native: bench_native_transport.py)
    }
    commands = {
        "core": [sys.executable, "-m", "ml_pipeline.inference_server"],
        "constant": [sys.executable, str(BENCH_DIR / "reference_servers.py"), "constant", str(ports["constant"])],
        "plain": [
            sys.executable,
            str(BENCH_DIR / "reference_servers.py"),
            "plain",
            str(ports["plain"]),
            str(model_json),
        ],
    }
    processes = {name: subprocess.Popen(cmd, env=env, stderr=subprocess.DEVNULL) for name, cmd in commands.items()}
    try:
        targets = {name: f"127.0.0.1:{ports[name]}" for name in commands}
        for target in targets.values():
            _wait_ready(target)
        pids = {f"pid:{name}": str(process.pid) for name, process in processes.items()}
        yield {**targets, **pids, "metrics": f"http://127.0.0.1:{ports['metrics']}/metrics"}
    finally:
        for process in processes.values():
            process.terminate()
        for process in processes.values():
            process.wait(timeout=30)


def _cpu_seconds(pid: int | str) -> float:
    """CPU time of a process (all its threads, those that ended included), in seconds, to the nanosecond.

    Linux's per-process CPU clock (clock_getcpuclockid(3)): /proc/PID/stat counts in 10-ms ticks, which is 1.5 %
    of a round of 6000 calls at 110 µs, as much as some of the differences the benchmarks judge."""
    return time.clock_gettime(_process_cpu_clock(int(pid)))


def _process_cpu_clock(pid: int) -> int:
    """The clock id of process `pid`'s CPU clock: Linux's MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED)."""
    return (~pid << 3) | 2


def _server_cpu_per_call_us(target: str, pid: str, calls: int = 3000) -> float:
    """Server CPU time per sequential Predict call: unlike wall-clock latency, not inflated by other load."""
    with grpc.insecure_channel(target) as channel:
        predict = channel.unary_unary("/FraudDetection/Predict")
        raw = b"\x0a\x20" + b"\x00" * 32
        before = _cpu_seconds(pid)
        for _ in range(calls):
            predict(raw, timeout=10)
        return (_cpu_seconds(pid) - before) / calls * 1e6


def _core_seconds_per_prediction(metrics_url: str) -> float:
    with urllib.request.urlopen(metrics_url, timeout=5) as response:
        text = response.read().decode()
    values = {}
    for line in text.splitlines():
        for key in ("ml_prediction_latency_seconds_sum", "ml_prediction_latency_seconds_count"):
            if line.startswith(key + "{"):
                values[key] = values.get(key, 0.0) + float(line.rsplit(" ", 1)[1])
    return values["ml_prediction_latency_seconds_sum"] / values["ml_prediction_latency_seconds_count"]


def test_server_latency_budgets(servers: dict[str, str], bench_report: Callable[[str, str], None]) -> None:
    """One interleaved measurement of the three servers; fails when a budget ratio is exceeded."""
    targets = [f"{name}={servers[name]}" for name in ("core", "constant", "plain")]
    output = subprocess.run(
        [sys.executable, str(BENCH_DIR / "loadgen.py"), *targets, "--batch-target", "core"],
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    ).stdout
    report = json.loads(output)
    core, constant, plain = report["core"], report["constant"], report["plain"]
    core_us = _core_seconds_per_prediction(servers["metrics"]) * 1e6
    section = "inference server on grpcio (sequential Predict; throughput with 8 in flight)"

    def say(line: str) -> None:
        print(line)
        bench_report(section, line)

    say(f"{'server':<10}{'p50 µs':>10}{'p99 µs':>10}{'p99.9 µs':>10}{'req/s':>10}")
    for name, row in report.items():
        say(
            f"{name:<10}{row['p50_us']:>10.0f}{row['p99_us']:>10.0f}{row['p999_us']:>10.0f}{row['rps_8_in_flight']:>10.0f}"
        )
    say(
        f"core rows/s: unary (8 in flight) {core['rps_8_in_flight']:.0f}, PredictBatch (256 rows/call) "
        f"{core['batch_rows_per_s']:.0f}, PredictStream {core['stream_rows_per_s']:.0f}"
    )
    cpu = {name: _server_cpu_per_call_us(servers[name], servers[f"pid:{name}"]) for name in ("core", "constant")}
    say(
        f"server CPU per Predict: core {cpu['core']:.0f} µs, constant {cpu['constant']:.0f} µs "
        f"(ratio {cpu['core'] / cpu['constant']:.2f}, reported, no budget)"
    )
    say(
        f"time in the serving core per prediction {core_us:.1f} µs vs a {core['p50_us']:.0f} µs p50 call: coalescing "
        f"could save at most {core_us / core['p50_us']:.1%} of a call and makes each call wait, so none is done"
    )
    ratios = {
        "p50 core/constant": (core["p50_us"] / constant["p50_us"], P50_VS_CONSTANT),
        "p99 core/constant": (core["p99_us"] / constant["p99_us"], P99_VS_CONSTANT),
        "p50 core/plain": (core["p50_us"] / plain["p50_us"], P50_VS_PLAIN),
    }
    for name, (ratio, budget) in ratios.items():
        say(f"{name}: {ratio:.3f} (budget <= {budget})")
    throughput = statistics.median(
        c / k for c, k in zip(core["rps_8_in_flight_rounds"], constant["rps_8_in_flight_rounds"], strict=True)
    )
    say(f"throughput core/constant (median of round ratios): {throughput:.3f} (budget >= {THROUGHPUT_VS_CONSTANT})")
    failures = [f"{name} = {ratio:.3f} > {budget}" for name, (ratio, budget) in ratios.items() if ratio > budget]
    if throughput < THROUGHPUT_VS_CONSTANT:
        failures.append(f"throughput core/constant = {throughput:.3f} < {THROUGHPUT_VS_CONSTANT}")
    assert not failures, "; ".join(failures)
