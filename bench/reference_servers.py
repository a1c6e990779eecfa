"""The two reference servers of the latency budget, on the same grpcio transport settings as InferenceServer.

`python bench/reference_servers.py constant PORT` answers every Predict with one precomputed response (the
floor of the transport); `python bench/reference_servers.py plain PORT MODEL_JSON` is the straightforward
implementation: protobuf message objects and XGBoost `inplace_predict` per request.
"""

from __future__ import annotations

import asyncio
import sys
import time

import grpc
import numpy as np
import xgboost as xgb
from grpc import aio

from ml_pipeline.proto_gen import fraud_detection_pb2 as pb

# The transport options InferenceServer uses (see control/inference_server/server.py).
SERVER_OPTIONS = [("grpc.so_reuseport", 0), ("grpc.max_receive_message_length", 4 * 1024 * 1024 + 4096)]


def constant_handler() -> grpc.GenericRpcHandler:
    """Predict answers a fixed PredictionResponse (raw bytes, as the core's handler sends)."""
    answer = pb.PredictionResponse(is_fraud=False, probability=0.25, model_version="constant", latency_ms=0.001)
    raw = answer.SerializeToString()

    async def predict(request: bytes, context: aio.ServicerContext) -> bytes:
        return raw

    return grpc.method_handlers_generic_handler(
        "FraudDetection", {"Predict": grpc.unary_unary_rpc_method_handler(predict)}
    )


def plain_handler(model_json: str) -> grpc.GenericRpcHandler:
    """Predict with protobuf objects and XGBoost's inplace_predict, as a first implementation would."""
    booster = xgb.Booster(model_file=model_json)
    booster.set_param({"nthread": 1})

    async def predict(request: pb.PredictionRequest, context: aio.ServicerContext) -> pb.PredictionResponse:
        started = time.perf_counter()
        row = np.asarray(request.features, dtype=np.float32).reshape(1, -1)
        probability = float(booster.inplace_predict(row)[0])
        return pb.PredictionResponse(
            is_fraud=probability >= 0.5,
            probability=probability,
            model_version="plain",
            latency_ms=(time.perf_counter() - started) * 1e3,
        )

    return grpc.method_handlers_generic_handler(
        "FraudDetection",
        {
            "Predict": grpc.unary_unary_rpc_method_handler(
                predict,
                request_deserializer=pb.PredictionRequest.FromString,
                response_serializer=pb.PredictionResponse.SerializeToString,
            )
        },
    )


async def serve(handler: grpc.GenericRpcHandler, port: int) -> None:
    """Serve `handler` on 127.0.0.1:port until killed."""
    server = aio.server(options=SERVER_OPTIONS)
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


if __name__ == "__main__":
    kind, port = sys.argv[1], int(sys.argv[2])
    asyncio.run(serve(constant_handler() if kind == "constant" else plain_handler(sys.argv[3]), port))
