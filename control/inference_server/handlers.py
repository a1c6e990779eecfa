"""grpcio handlers of the FraudDetection service over raw bytes: one call into the serving core per request.

No request deserializer and no response serializer are registered, so grpcio hands the handler the message
bytes and sends back the bytes the core encoded; no protobuf object is built on the request path.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
from grpc import aio

from ml_pipeline.native.serving_core import ServingCore, ServingError

SERVICE_NAME = "FraudDetection"
_STATUS = {status.value[0]: status for status in grpc.StatusCode}


def fraud_detection_handler(core: ServingCore) -> grpc.GenericRpcHandler:
    """The generic handler serving /FraudDetection/{Predict,PredictBatch,PredictStream} from `core`."""
    handle, handle_batch, handle_stream = core.handle, core.handle_batch, core.handle_stream

    async def predict(request: bytes, context: aio.ServicerContext) -> bytes:
        try:
            return handle(request)
        except ServingError as exc:
            await context.abort(_STATUS[exc.code], exc.message)

    async def predict_batch(request: bytes, context: aio.ServicerContext) -> bytes:
        try:
            return handle_batch(request)
        except ServingError as exc:
            await context.abort(_STATUS[exc.code], exc.message)

    async def predict_stream(requests: AsyncIterator[bytes], context: aio.ServicerContext) -> AsyncIterator[bytes]:
        async for request in requests:
            try:
                reply = handle_stream(request)
            except ServingError as exc:
                await context.abort(_STATUS[exc.code], exc.message)
            yield reply

    return grpc.method_handlers_generic_handler(
        SERVICE_NAME,
        {
            "Predict": grpc.unary_unary_rpc_method_handler(predict),
            "PredictBatch": grpc.unary_unary_rpc_method_handler(predict_batch),
            "PredictStream": grpc.stream_stream_rpc_method_handler(predict_stream),
        },
    )
