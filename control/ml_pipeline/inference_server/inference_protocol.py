"""grpcio handlers of the Open Inference Protocol's inference.GRPCInferenceService over the serving core.

ModelInfer is served like Predict: raw bytes into one core call (no protobuf object per request); the metadata
calls answer from the ModelDirectory. The native transport serves the same service in C++ from the same core.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import Message

from ml_pipeline.inference_server.admission import GrpcioAdmission
from ml_pipeline.inference_server.handlers import Context, admitted
from ml_pipeline.inference_server.model_directory import ModelDirectory, ModelNotFound
from ml_pipeline.native.serving_core import ServingCore
from ml_pipeline.proto_gen import grpc_predict_v2_pb2 as pb

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()


def _unary(
    behaviour: Callable[..., Awaitable[Message]], request_type: type[Message]
) -> grpc.RpcMethodHandler[Any, Any]:
    """A unary handler of protobuf messages (the metadata calls, off the hot path)."""
    return grpc.unary_unary_rpc_method_handler(
        behaviour, request_deserializer=request_type.FromString, response_serializer=_serialize
    )


def inference_handler(
    core: ServingCore, directory: ModelDirectory, admission: GrpcioAdmission | None = None
) -> grpc.GenericRpcHandler[Any, Any]:
    """The generic handler serving /inference.GRPCInferenceService/* from `core` and `directory`."""
    infer = core.handle_infer

    async def model_infer(request: bytes, context: Context) -> bytes:
        return await admitted(admission, infer, request, context)

    def closing() -> bool:
        return admission is not None and admission.closing

    async def server_live(request: pb.ServerLiveRequest, context: object) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=not closing())

    async def server_ready(request: pb.ServerReadyRequest, context: object) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=not closing() and directory.description.serving)

    async def model_ready(request: pb.ModelReadyRequest, context: object) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=not closing() and directory.ready(request.name, request.version))

    async def server_metadata(request: pb.ServerMetadataRequest, context: object) -> pb.ServerMetadataResponse:
        meta = directory.server_metadata()
        return pb.ServerMetadataResponse(name=meta["name"], version=meta["version"], extensions=meta["extensions"])

    async def model_metadata(
        request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> pb.ModelMetadataResponse:
        try:
            meta = directory.metadata(request.name, request.version)
        except ModelNotFound as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        reply = pb.ModelMetadataResponse(name=meta["name"], versions=meta["versions"], platform=meta["platform"])
        for tensor in meta["inputs"]:
            entry = reply.inputs.add(name=tensor["name"], datatype=tensor["datatype"], shape=tensor["shape"])
            entry.parameters["feature_names"].string_param = ",".join(tensor["parameters"]["feature_names"])
        for tensor in meta["outputs"]:
            reply.outputs.add(name=tensor["name"], datatype=tensor["datatype"], shape=tensor["shape"])
        return reply

    return grpc.method_handlers_generic_handler(
        SERVICE_NAME,
        {
            "ModelInfer": grpc.unary_unary_rpc_method_handler(model_infer),
            "ServerLive": _unary(server_live, pb.ServerLiveRequest),
            "ServerReady": _unary(server_ready, pb.ServerReadyRequest),
            "ModelReady": _unary(model_ready, pb.ModelReadyRequest),
            "ServerMetadata": _unary(server_metadata, pb.ServerMetadataRequest),
            "ModelMetadata": _unary(model_metadata, pb.ModelMetadataRequest),
        },
    )
