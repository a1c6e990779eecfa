"""Run a real InferenceServer on 127.0.0.1 (ephemeral ports) in a background thread, and talk to it.

The server gets its own asyncio loop in a thread, so tests use the ordinary synchronous grpcio client;
`running_server` stops it (grace 0) when the test ends.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc

from ml_pipeline.inference_server import InferenceServer
from ml_pipeline.proto_gen import fraud_detection_pb2 as pb


@contextmanager
def running_server(registry_path: Path, **options: object) -> Iterator[InferenceServer]:
    """An InferenceServer serving `registry_path` on ephemeral ports, polled every 0.05 s, for a with-block."""
    transport = os.environ.get("ML_INFERENCE_TRANSPORT", "auto")  # set per test by test_server_e2e's `transport`
    kwargs = {
        "host": "127.0.0.1",
        "port": 0,
        "metrics_port": 0,
        "poll_seconds": 0.05,
        "transport": transport,
        **options,
    }
    server = InferenceServer(str(registry_path), **kwargs)  # type: ignore[arg-type]
    loop = asyncio.new_event_loop()
    started = threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(server.start())
        except BaseException as exc:  # reported to the test thread below
            failure.append(exc)
            return
        finally:
            started.set()
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    started.wait(30)
    if failure:
        raise failure[0]
    try:
        yield server
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(0), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll `condition` until it holds; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


class Client:
    """FraudDetection calls on one channel: typed (protobuf messages) and raw (bytes as sent on the wire)."""

    def __init__(self, port: int) -> None:
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.predict = self.channel.unary_unary(
            "/FraudDetection/Predict",
            request_serializer=pb.PredictionRequest.SerializeToString,
            response_deserializer=pb.PredictionResponse.FromString,
        )
        self.predict_raw = self.channel.unary_unary("/FraudDetection/Predict")
        self.predict_batch = self.channel.unary_unary(
            "/FraudDetection/PredictBatch",
            request_serializer=pb.PredictionBatchRequest.SerializeToString,
            response_deserializer=pb.PredictionBatchResponse.FromString,
        )
        self.predict_stream = self.channel.stream_stream(
            "/FraudDetection/PredictStream",
            request_serializer=pb.PredictionRequest.SerializeToString,
            response_deserializer=pb.ScoredPrediction.FromString,
        )

    def close(self) -> None:
        """Close the channel."""
        self.channel.close()
