"""Native gRPC transport budget, as ratios measured in one run with a native (C++) client.

Three servers on 127.0.0.1, each its own process: the InferenceServer on the grpcio transport, the same server
on the native transport (both scoring a production-like compiled model through the serving core), and a
constant-answer server built from the same C++ transport with a stand-in core (bench/constant_server.cc). The
load generator is a C++ gRPC client (bench/native_client.cc) sending raw request bytes through the generic
stub; both C++ programs are compiled here with g++ and pkg-config against Debian's gRPC. In interleaved rounds
it measures sequential Predict latency, Predict throughput with 8 calls in flight, and PredictStream messages
per second with 32 in flight; server CPU per call is the server process's CPU clock (all its threads) over
the sequential calls. Budgets: native p50 <= 0.5x grpcio and <= 1.2x constant; native CPU per call <= 0.4x
grpcio; native throughput (8 in flight) >= 2.5x grpcio (p50 and throughput ratios: the median of the rounds'
ratios); the InferenceServer's p99 < 1 ms on either transport (the median of the rounds' p99).
Stream messages/s are reported for each.
Run: `make bench` or `.venv/bin/pytest bench/bench_native_transport.py -s --benchmark-enable`.
"""

from __future__ import annotations

import json
import operator
import os
import shutil
import signal
import statistics
import struct
import subprocess
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from bench_server import (
    _cpu_seconds,
    _free_port,
    _production_like_model,
    _registry_with_champion,
    _start_inference_server,
    _wait_ready,
)
from native_support import require, require_native_transport
from timing import median_ratio, turns

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
GENERATED = ROOT / "build" / "native_gen"
P50_VS_GRPCIO = 0.5
P50_VS_CONSTANT = 1.2
CPU_VS_GRPCIO = 0.4
THROUGHPUT_VS_GRPCIO = 2.5
P99_LIMIT_US = 1000.0
COMPARISONS = {"<=": operator.le, ">=": operator.ge, "<": operator.lt}
ROUNDS = 5
SEQUENTIAL_CALLS = 2000
IN_FLIGHT, IN_FLIGHT_CALLS = 8, 4000
STREAM_IN_FLIGHT, STREAM_MESSAGES = 32, 5000
SERVERS = ("grpcio", "native", "constant")


def _pkg_config(*packages: str) -> list[str]:
    return subprocess.run(
        ["pkg-config", "--cflags", "--libs", *packages], check=True, capture_output=True, text=True
    ).stdout.split()


@pytest.fixture(scope="module")
def programs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The C++ client and the constant server, compiled (in parallel) against Debian's gRPC; fails where gRPC C++
    is installed (or in CI) but the native transport or g++ is missing, skips only without gRPC C++."""
    require_native_transport()
    if shutil.which("g++") is None:
        require("g++ is needed to build the native client")
    out = tmp_path_factory.mktemp("native_bench")
    generated = [
        GENERATED / f"{proto}.{kind}.cc"
        for proto in ("fraud_detection", "grpc_predict_v2")
        for kind in ("pb", "grpc.pb")
    ]
    generated.append(GENERATED / "grpc" / "health" / "v1" / "health.pb.cc")
    builds = {
        "client": [str(BENCH_DIR / "native_client.cc"), *_pkg_config("grpc++")],
        "constant": [
            f"-I{ROOT / 'native' / 'include'}",
            f"-I{ROOT / 'native' / 'transport'}",
            f"-I{GENERATED}",
            str(BENCH_DIR / "constant_server.cc"),
            str(ROOT / "native" / "transport" / "grpc_transport.cc"),
            *map(str, generated),
            *_pkg_config("grpc++", "protobuf"),
            "-lgrpc++_reflection",
        ],
    }

    def build(name: str) -> Path:
        subprocess.run(["g++", "-O2", "-std=c++17", "-o", str(out / name), *builds[name]], check=True, timeout=600)
        return out / name

    with ThreadPoolExecutor(2) as pool:
        return dict(zip(builds, pool.map(build, builds), strict=True))


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory, programs: dict[str, Path]) -> Iterator[dict[str, tuple]]:
    """name -> (target, pid) of the three servers, started and answering."""
    folder = tmp_path_factory.mktemp("native_bench_servers")
    registry = _registry_with_champion(folder, _production_like_model(folder))
    ports = {name: _free_port() for name in SERVERS}
    processes: dict[str, subprocess.Popen] = {}
    for transport in ("grpcio", "native"):
        processes[transport] = _start_inference_server(registry.root, ports[transport], transport)
    command = [str(programs["constant"]), str(ports["constant"])]
    processes["constant"] = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    try:
        for name in SERVERS:
            _wait_ready(f"127.0.0.1:{ports[name]}")
        yield {name: (f"127.0.0.1:{ports[name]}", processes[name].pid) for name in SERVERS}
    finally:
        for process in processes.values():
            process.send_signal(signal.SIGTERM)
        for process in processes.values():
            process.wait(timeout=30)


def _client(client: Path, target: str, *args: object) -> dict:
    output = subprocess.run([str(client), target, *map(str, args)], check=True, capture_output=True, text=True)
    return json.loads(output.stdout)


PREDICT = "/FraudDetection/Predict"


def _requests_file(path: Path, messages: list[bytes]) -> Path:
    """Length-prefixed request bytes (VG_BENCH_REQUESTS of the C++ client)."""
    with path.open("wb") as out:
        for data in messages:
            out.write(struct.pack("<I", len(data)) + data)
    return path


def _sequential(
    client: Path, target: str, pid: int, requests: Path, calls: int, method: str = PREDICT
) -> tuple[float, float]:
    """p50 (µs) of `calls` sequential calls of `method` sending `requests` in turn, after a warm-up, and the
    server's CPU µs per call."""
    os.environ["VG_BENCH_REQUESTS"], os.environ["VG_BENCH_METHOD"] = str(requests), method
    try:
        _client(client, target, "seq", 200)  # warm up the connection and the server's threads
        cpu = _cpu_seconds(pid)
        result = _client(client, target, "seq", calls)
        return float(result["p50_us"]), (_cpu_seconds(pid) - cpu) / calls * 1e6
    finally:
        del os.environ["VG_BENCH_REQUESTS"], os.environ["VG_BENCH_METHOD"]


def _measure(client: Path, target: str, pid: int) -> dict[str, float]:
    """One round against one server: sequential latency with the server's CPU, 8 in flight, stream."""
    _client(client, target, "seq", 200)  # warm up the connection path and the server's threads
    cpu = _cpu_seconds(pid)
    sequential = _client(client, target, "seq", SEQUENTIAL_CALLS)
    cpu = _cpu_seconds(pid) - cpu
    in_flight = _client(client, target, "inflight", IN_FLIGHT, IN_FLIGHT_CALLS)
    stream = _client(client, target, "stream", STREAM_IN_FLIGHT, STREAM_MESSAGES)
    return {
        "p50_us": sequential["p50_us"],
        "p99_us": sequential["p99_us"],
        "cpu_s": cpu,
        "calls_per_s": in_flight["calls_per_s"],
        "stream_msgs_per_s": stream["messages_per_s"],
    }


def test_native_transport_budgets(
    programs: dict[str, Path], servers: dict[str, tuple], bench_report: Callable[[str, str], None]
) -> None:
    """Interleaved rounds over the three servers; fails when a budget ratio is exceeded."""
    rounds: dict[str, list[dict[str, float]]] = {name: [] for name in SERVERS}
    for round_index in range(ROUNDS):
        for name in turns(servers, round_index):
            rounds[name].append(_measure(programs["client"], *servers[name]))
    result = {
        name: {
            "p50_us": statistics.median(r["p50_us"] for r in runs),
            "p99_us": statistics.median(r["p99_us"] for r in runs),
            "cpu_us_per_call": sum(r["cpu_s"] for r in runs) / (SEQUENTIAL_CALLS * ROUNDS) * 1e6,
            "calls_per_s": statistics.median(r["calls_per_s"] for r in runs),
            "stream_msgs_per_s": statistics.median(r["stream_msgs_per_s"] for r in runs),
        }
        for name, runs in rounds.items()
    }
    section = f"native transport (C++ client; medians of {ROUNDS} rounds)"
    bench_report(
        section, f"{'server':<10}{'p50 µs':>9}{'p99 µs':>9}{'CPU µs/call':>13}{'8 in flight/s':>15}{'stream/s':>10}"
    )
    for name, row in result.items():
        bench_report(
            section,
            f"{name:<10}{row['p50_us']:>9.0f}{row['p99_us']:>9.0f}{row['cpu_us_per_call']:>13.0f}"
            f"{row['calls_per_s']:>15.0f}{row['stream_msgs_per_s']:>10.0f}",
        )
    native, grpcio = result["native"], result["grpcio"]
    checks = [
        ("p50 native/grpcio", median_ratio(rounds["native"], rounds["grpcio"], "p50_us"), "<=", P50_VS_GRPCIO),
        ("p50 native/constant", median_ratio(rounds["native"], rounds["constant"], "p50_us"), "<=", P50_VS_CONSTANT),
        ("CPU/call native/grpcio", native["cpu_us_per_call"] / grpcio["cpu_us_per_call"], "<=", CPU_VS_GRPCIO),
        (
            "8 in flight native/grpcio",
            median_ratio(rounds["native"], rounds["grpcio"], "calls_per_s"),
            ">=",
            THROUGHPUT_VS_GRPCIO,
        ),
        ("p99 µs grpcio", grpcio["p99_us"], "<", P99_LIMIT_US),
        ("p99 µs native", native["p99_us"], "<", P99_LIMIT_US),
    ]
    stream_ratio = native["stream_msgs_per_s"] / grpcio["stream_msgs_per_s"]
    bench_report(section, "p50 and 8-in-flight ratios below: the medians of the rounds' ratios")
    for name, ratio, op, budget in checks:
        bench_report(section, f"{name}: {ratio:.3g} (budget {op} {budget:g})")
    bench_report(section, f"stream msgs/s native/grpcio: {stream_ratio:.2f} (reported)")
    failures = [
        f"{name} = {ratio:.3g}, budget {op} {budget:g}"
        for name, ratio, op, budget in checks
        if not COMPARISONS[op](ratio, budget)
    ]
    assert not failures, "; ".join(failures)
