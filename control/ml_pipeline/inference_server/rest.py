"""The Open Inference Protocol over HTTP/REST (aiohttp): health, metadata and infer with JSON tensors, for curl.

Off the gRPC hot path: a JSON request becomes one ModelInferRequest (its values as raw FP32 contents) handled by
the same serving core as gRPC's ModelInfer, so routing, checks, counters and the prediction log are the same.
Tensors travel as JSON "data" or, with the protocol's binary tensor extension (what tritonclient sends by
default), as bytes after the JSON header (`Inference-Header-Content-Length`).
"""

from __future__ import annotations

import json
import logging
import math
import socket
from typing import Any

import numpy as np
from aiohttp import web

from ml_pipeline.inference_server.model_directory import ModelDirectory, ModelNotFound
from ml_pipeline.native.serving_core import ServingCore, ServingError
from ml_pipeline.proto_gen import grpc_predict_v2_pb2 as pb

log = logging.getLogger(__name__)

HEADER_LENGTH = "Inference-Header-Content-Length"
#: gRPC status code -> HTTP status of a refused request.
HTTP_STATUS = {3: 400, 4: 504, 5: 404, 8: 429, 13: 500, 14: 503}
DTYPES = {"FP32": np.dtype("<f4"), "BOOL": np.dtype(np.bool_)}


class BadRequest(ValueError):
    """A request the REST layer cannot turn into a ModelInferRequest (HTTP 400, said in one line)."""


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _json_and_binary(body: bytes, header_length: str | None) -> tuple[dict[str, Any], bytes]:
    """The request's JSON object and the binary tensor data after it (b"" without the extension)."""
    try:
        split = len(body) if header_length is None else int(header_length)
    except ValueError:
        raise BadRequest(f"{HEADER_LENGTH} must be an integer, not {header_length!r}") from None
    if not 0 <= split <= len(body):
        raise BadRequest(f"{HEADER_LENGTH} {split} is outside the body of {len(body)} bytes")
    try:
        request = json.loads(body[:split])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(f"the request is not JSON: {exc}") from None
    if not isinstance(request, dict):
        raise BadRequest("the request must be a JSON object")
    return request, body[split:]


def _input_bytes(tensor: dict[str, Any], binary: bytes, offset: int) -> tuple[bytes, int]:
    """One input's raw little-endian FP32 values (from its JSON data or its binary part) and the next offset."""
    size = (tensor.get("parameters") or {}).get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or size < 0 or offset + size > len(binary):
            raise BadRequest(f"input {tensor.get('name')!r}: binary_data_size {size!r} runs past the binary data")
        return binary[offset : offset + size], offset + size
    if "data" not in tensor:
        raise BadRequest(f"input {tensor.get('name')!r} has neither data nor binary_data_size")
    if tensor.get("datatype") != "FP32":
        return b"", offset  # the core says which datatype is expected
    try:
        values = np.asarray(tensor["data"], dtype="<f4")
    except (TypeError, ValueError):
        raise BadRequest(f"input {tensor.get('name')!r}: data must be numbers (NaN for a missing value)") from None
    return values.tobytes(), offset


def infer_request(model: str, version: str, request: dict[str, Any], binary: bytes) -> tuple[bytes, set[str]]:
    """The ModelInferRequest bytes of a JSON request, and the outputs it wants as binary data."""
    message = pb.ModelInferRequest(model_name=model, model_version=version, id=str(request.get("id", "")))
    parameters = request.get("parameters") or {}
    route = parameters.get("request_id")
    if route is not None:
        message.parameters["request_id"].string_param = str(route)
    inputs = request.get("inputs")
    if not isinstance(inputs, list):
        raise BadRequest("the request needs an 'inputs' list")
    offset = 0
    for tensor in inputs:
        if not isinstance(tensor, dict):
            raise BadRequest("each input must be a JSON object")
        shape = tensor.get("shape")
        if not isinstance(shape, list) or not all(isinstance(d, int) for d in shape):
            raise BadRequest(f"input {tensor.get('name')!r}: shape must be a list of integers")
        raw, offset = _input_bytes(tensor, binary, offset)
        message.inputs.add(name=str(tensor.get("name", "")), datatype=str(tensor.get("datatype", "")), shape=shape)
        message.raw_input_contents.append(raw)
    every_binary = bool(parameters.get("binary_data_output", False))
    binary_outputs = set()
    for output in request.get("outputs") or []:
        if not isinstance(output, dict):
            raise BadRequest("each requested output must be a JSON object")
        name = str(output.get("name", ""))
        message.outputs.add(name=name)
        if (output.get("parameters") or {}).get("binary_data", every_binary):
            binary_outputs.add(name)
    if not request.get("outputs") and every_binary:
        binary_outputs = {"probability", "is_fraud"}
    return message.SerializeToString(), binary_outputs


def infer_response(answer: bytes, binary_outputs: set[str]) -> tuple[bytes, int | None]:
    """The JSON (+ binary) body of a ModelInferResponse, and the JSON header's length when binary data follows."""
    response = pb.ModelInferResponse.FromString(answer)
    body: dict[str, Any] = {"model_name": response.model_name, "model_version": response.model_version}
    if response.id:
        body["id"] = response.id
    outputs, blobs = [], []
    for tensor, raw in zip(response.outputs, response.raw_output_contents, strict=True):
        entry: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}
        if tensor.name in binary_outputs:
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            values = np.frombuffer(raw, dtype=DTYPES[tensor.datatype]).tolist()
            entry["data"] = [None if isinstance(v, float) and math.isnan(v) else v for v in values]
        outputs.append(entry)
    body["outputs"] = outputs
    header = json.dumps(body).encode()
    return header + b"".join(blobs), len(header) if blobs else None


class RestFrontend:
    """The aiohttp application of the protocol's REST endpoints over `core` and `directory`."""

    def __init__(self, core: ServingCore, directory: ModelDirectory, max_body_bytes: int) -> None:
        self.core = core
        self.directory = directory
        self.app = web.Application(client_max_size=max_body_bytes)
        self.app.add_routes(
            [
                web.get("/v2/health/live", self.live),
                web.get("/v2/health/ready", self.ready),
                web.get("/v2", self.server_metadata),
                web.get("/v2/models/{name}", self.model_metadata),
                web.get("/v2/models/{name}/versions/{version}", self.model_metadata),
                web.get("/v2/models/{name}/ready", self.model_ready),
                web.get("/v2/models/{name}/versions/{version}/ready", self.model_ready),
                web.post("/v2/models/{name}/infer", self.infer),
                web.post("/v2/models/{name}/versions/{version}/infer", self.infer),
            ]
        )
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    async def start(self, host: str, port: int, reuse_port: bool) -> None:
        """Listen on host:port (0: an ephemeral port, then in self.port); OSError when it cannot bind."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
        except OSError:
            sock.close()
            raise
        self.port = sock.getsockname()[1]
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()

    async def stop(self) -> None:
        """Stop listening and close the open connections."""
        if self._runner is not None:
            await self._runner.cleanup()

    async def live(self, request: web.Request) -> web.Response:
        return web.json_response({"live": True})

    async def ready(self, request: web.Request) -> web.Response:
        serving = self.directory.description.serving
        return web.json_response({"ready": serving}, status=200 if serving else 400)

    async def server_metadata(self, request: web.Request) -> web.Response:
        return web.json_response(self.directory.server_metadata())

    async def model_metadata(self, request: web.Request) -> web.Response:
        try:
            meta = self.directory.metadata(request.match_info["name"], request.match_info.get("version", ""))
        except ModelNotFound as exc:
            return _error(404, str(exc))
        return web.json_response(meta)

    async def model_ready(self, request: web.Request) -> web.Response:
        ready = self.directory.ready(request.match_info["name"], request.match_info.get("version", ""))
        return web.json_response({"name": request.match_info["name"], "ready": ready}, status=200 if ready else 400)

    async def infer(self, request: web.Request) -> web.Response:
        try:
            body, binary = _json_and_binary(await request.read(), request.headers.get(HEADER_LENGTH))
            message, binary_outputs = infer_request(
                request.match_info["name"], request.match_info.get("version", ""), body, binary
            )
        except BadRequest as exc:
            return _error(400, str(exc))
        try:
            answer = self.core.handle_infer(message)
        except ServingError as exc:
            return _error(HTTP_STATUS.get(exc.code, 500), exc.message)
        payload, header_length = infer_response(answer, binary_outputs)
        if header_length is None:
            return web.Response(body=payload, content_type="application/json")
        return web.Response(
            body=payload, content_type="application/octet-stream", headers={HEADER_LENGTH: str(header_length)}
        )
