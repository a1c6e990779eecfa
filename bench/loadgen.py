"""Load generator for the server benchmark; runs as its own process so client and server do not share a GIL.

`python bench/loadgen.py NAME=HOST:PORT ... [--rounds R] [--calls N] [--seconds S] [--batch-target NAME]`
measures the targets interleaved (a noisy neighbour slows all alike) and prints one JSON object:
per target the sequential Predict latencies (p50/p99/p99.9 in µs) and the throughput with 8 calls in
flight (median, and each round's figure); for the batch target also PredictBatch and PredictStream rows per second.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import grpc
import numpy as np
from grpc import aio
from timing import turns

from ml_pipeline.proto_gen import fraud_detection_pb2 as pb

IN_FLIGHT = 8
BATCH_ROWS = 256
STREAM_MESSAGES = 4000


def _rows(n: int) -> list[list[float]]:
    return np.random.default_rng(7).normal(size=(n, 8)).astype(np.float32).tolist()


REQUESTS = [
    pb.PredictionRequest(features=row, request_id=f"bench-{i}").SerializeToString() for i, row in enumerate(_rows(512))
]


def sequential(targets: dict[str, str], calls: int, block: int = 20) -> dict[str, list[float]]:
    """Latencies (µs) of `calls` back-to-back Predict calls per target, one channel each, alternating between
    targets every `block` calls (in `turns`) so that a burst of load from elsewhere hits every target alike."""
    channels = {name: grpc.insecure_channel(target) for name, target in targets.items()}
    try:
        stubs = {name: channel.unary_unary("/FraudDetection/Predict") for name, channel in channels.items()}
        out: dict[str, list[float]] = {name: [] for name in targets}
        for block_index, first in enumerate(range(0, calls, block)):
            for name in turns(stubs, block_index):
                predict = stubs[name]
                for i in range(first, min(first + block, calls)):
                    raw = REQUESTS[i % len(REQUESTS)]
                    started = time.perf_counter_ns()
                    predict(raw, timeout=10)
                    out[name].append((time.perf_counter_ns() - started) / 1e3)
        return out
    finally:
        for channel in channels.values():
            channel.close()


async def _in_flight(target: str, seconds: float) -> float:
    async with aio.insecure_channel(target) as channel:
        predict = channel.unary_unary("/FraudDetection/Predict")
        await predict(REQUESTS[0], timeout=10)
        done = 0
        deadline = time.perf_counter() + seconds

        async def worker(offset: int) -> None:
            nonlocal done
            i = offset
            while time.perf_counter() < deadline:
                await predict(REQUESTS[i % len(REQUESTS)], timeout=10)
                done += 1
                i += IN_FLIGHT

        started = time.perf_counter()
        await asyncio.gather(*(worker(k) for k in range(IN_FLIGHT)))
        return done / (time.perf_counter() - started)


def in_flight(target: str, seconds: float) -> float:
    """Predict calls per second with IN_FLIGHT calls outstanding."""
    return asyncio.run(_in_flight(target, seconds))


def batch_rows_per_second(target: str, seconds: float) -> float:
    """Rows per second through PredictBatch with BATCH_ROWS rows per call."""
    batch = pb.PredictionBatchRequest(
        requests=[pb.PredictionRequest.FromString(REQUESTS[i % len(REQUESTS)]) for i in range(BATCH_ROWS)]
    ).SerializeToString()
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary("/FraudDetection/PredictBatch")
        call(batch, timeout=10)
        rows, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            call(batch, timeout=10)
            rows += BATCH_ROWS
        return rows / (time.perf_counter() - started)


async def _stream(target: str) -> float:
    async with aio.insecure_channel(target) as channel:
        call = channel.stream_stream("/FraudDetection/PredictStream")()

        async def write() -> None:
            for i in range(STREAM_MESSAGES):
                await call.write(REQUESTS[i % len(REQUESTS)])
            await call.done_writing()

        started = time.perf_counter()
        writer = asyncio.create_task(write())
        received = 0
        async for _ in call:
            received += 1
        await writer
        assert received == STREAM_MESSAGES
        return received / (time.perf_counter() - started)


def stream_rows_per_second(target: str) -> float:
    """Messages per second through one PredictStream, the client writing without waiting for replies."""
    return asyncio.run(_stream(target))


def summary(latencies: list[float]) -> dict[str, float]:
    """p50, p99 and p99.9 in µs."""
    p50, p99, p999 = np.percentile(np.asarray(latencies), [50, 99, 99.9])
    return {"p50_us": float(p50), "p99_us": float(p99), "p999_us": float(p999), "samples": len(latencies)}


def main() -> None:
    """Measure every target, interleaved, and print the JSON report."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("targets", nargs="+", help="NAME=HOST:PORT")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--calls", type=int, default=600, help="sequential calls per target per round")
    parser.add_argument("--seconds", type=float, default=0.7, help="in-flight run per target per round")
    parser.add_argument("--batch-target", default=None, help="target also measured with PredictBatch/Stream")
    args = parser.parse_args()
    targets = dict(t.split("=", 1) for t in args.targets)
    sequential(targets, 300)  # warm-up: connections, caches, lazy initialisation
    latencies = sequential(targets, args.calls * args.rounds)
    throughput: dict[str, list[float]] = {name: [] for name in targets}
    for round_index in range(args.rounds):
        for name in turns(targets, round_index):
            throughput[name].append(in_flight(targets[name], args.seconds))
    report: dict[str, dict[str, float]] = {
        name: {
            **summary(latencies[name]),
            "rps_8_in_flight": float(np.median(throughput[name])),
            "rps_8_in_flight_rounds": throughput[name],
        }
        for name in targets
    }
    if args.batch_target:
        target = targets[args.batch_target]
        report[args.batch_target]["batch_rows_per_s"] = batch_rows_per_second(target, args.seconds * 2)
        report[args.batch_target]["stream_rows_per_s"] = max(stream_rows_per_second(target) for _ in range(3))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
