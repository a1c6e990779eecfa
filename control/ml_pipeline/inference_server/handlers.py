"""grpcio handlers of the FraudDetection service over raw bytes: one call into the serving core per request.

No request deserializer and no response serializer are registered, so grpcio hands the handler the message
bytes and sends back the bytes the core encoded; no protobuf object is built on the request path.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import grpc
from grpc import aio

from ml_pipeline.inference_server.admission import GrpcioAdmission
from ml_pipeline.native.serving_core import ServingCore, ServingError

SERVICE_NAME = "FraudDetection"
Context = aio.ServicerContext[bytes, bytes]
_STATUS = {status.value[0]: status for status in grpc.StatusCode}


async def admitted(
    admission: GrpcioAdmission | None,
    score: Callable[[bytes], bytes],
    request: bytes,
    context: Context,
    in_open_stream: bool = False,
) -> bytes:
    """`score(request)` when `admission` (None: no admission control) lets the call in, else the call aborted
    with the refusal; a request the core refuses aborts with the core's status and message."""
    refused = None if admission is None else admission.refusal(context, in_open_stream)
    if refused is None:
        try:
            return score(request)
        except ServingError as exc:
            refused = _STATUS[exc.code], exc.message
    await context.abort(*refused)


def fraud_detection_handler(
    core: ServingCore, admission: GrpcioAdmission | None = None
) -> grpc.GenericRpcHandler[bytes, bytes]:
    """The generic handler serving /FraudDetection/{Predict,PredictBatch,PredictStream} from `core`; with
    `admission`, a request is scored only when admitted (deadline, load, shutdown)."""
    handle, handle_batch, handle_stream = core.handle, core.handle_batch, core.handle_stream

    async def predict(request: bytes, context: Context) -> bytes:
        return await admitted(admission, handle, request, context)

    async def predict_batch(request: bytes, context: Context) -> bytes:
        return await admitted(admission, handle_batch, request, context)

    async def predict_stream(requests: AsyncIterator[bytes], context: Context) -> AsyncIterator[bytes]:
        if admission is not None and admission.closing:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the server is shutting down: call another replica")
        async for request in requests:
            yield await admitted(admission, handle_stream, request, context, in_open_stream=True)

    return grpc.method_handlers_generic_handler(
        SERVICE_NAME,
        {
            "Predict": grpc.unary_unary_rpc_method_handler(predict),
            "PredictBatch": grpc.unary_unary_rpc_method_handler(predict_batch),
            "PredictStream": grpc.stream_stream_rpc_method_handler(predict_stream),
        },
    )
