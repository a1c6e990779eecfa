"""Reasons on the wire: an answer's top contributions equal XGBoost's `pred_contribs`, per the server's explain
policy (off, request, flagged, always), in Predict, PredictBatch and PredictStream, on both transports; a client
generated from the original proto sees no change; a model without an explainer says so; the prediction log keeps
the reasons of explained answers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import grpc
import numpy as np
import pytest
import xgboost as xgb
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from model_factory import BuiltModel, register_compiled, served_model
from native_support import require_native_transport
from server_harness import Client, running_server

from ml_pipeline.ab_testing.traffic_splitter import TrafficSplitter
from ml_pipeline.data.features import FEATURE_NAMES
from ml_pipeline.explain.artifact import load_explainer
from ml_pipeline.model_registry import ModelRegistry
from ml_pipeline.native.compiled_model import CompiledModel
from ml_pipeline.native.serving_core import ServingCore
from ml_pipeline.proto_gen import fraud_detection_pb2 as pb

ORIGINAL_PROTO = Path(__file__).parent / "data" / "fraud_detection_original.proto"
ROWS = np.array(
    [
        [12, 45, 0.8, 0.9, 0.1, 0.3, 0, 20],
        [2, 300, 0.1, 0.2, 0.9, 0.8, 1, 3],
        [40, 5, np.nan, 0.95, 0.05, np.nan, 0, 60],
        [0.5, 1, 0.5, 0.5, 0.5, 0.5, 1, 1],
    ],
    dtype=np.float32,
)


@pytest.fixture(scope="module")
def explained() -> BuiltModel:
    return served_model("reasons_v1", seed=5)


def _core(model: BuiltModel, explain: str = "request", top_k: int = 3, threshold: float = 0.5) -> ServingCore:
    core = ServingCore(explain=explain, explain_top_k=top_k)
    compiled = CompiledModel(str(model.library), model.sha256, model.model_id)
    explainer = load_explainer(dict(model.compiled["explainer"]), FEATURE_NAMES)
    core.set_champion(compiled, model.model_id, threshold, explainer)
    return core


def _xgboost_contributions(model: BuiltModel, row: np.ndarray) -> np.ndarray:
    matrix = xgb.DMatrix(row.reshape(1, -1), missing=np.nan, feature_names=model.booster.feature_names)
    return model.booster.predict(matrix, pred_contribs=True)[0]


def _check_reasons(model: BuiltModel, row: np.ndarray, reasons: list[pb.Reason], bias: float, k: int) -> None:
    """The reasons are the k largest |contributions| of XGBoost's own, in order, with the row's values."""
    phi = _xgboost_contributions(model, row)
    order = sorted(range(len(FEATURE_NAMES)), key=lambda i: -abs(phi[i]))[:k]
    assert [r.feature for r in reasons] == [FEATURE_NAMES[i] for i in order]
    assert [r.contribution for r in reasons] == pytest.approx([phi[i] for i in order], abs=1e-4)
    values = [r.value for r in reasons]
    np.testing.assert_array_equal(np.array(values, dtype=np.float32), row[order])
    assert bias == pytest.approx(phi[-1], abs=1e-4)


def _predict(core: ServingCore, row: np.ndarray, k: int = 0, request_id: str = "") -> pb.PredictionResponse:
    message = pb.PredictionRequest(features=row.tolist(), request_id=request_id, explain_top_k=k)
    return pb.PredictionResponse.FromString(core.handle(message.SerializeToString()))


@pytest.mark.integration
def test_reasons_asked_for_equal_xgboost_and_old_requests_get_none(explained: BuiltModel) -> None:
    core = _core(explained)
    for row in ROWS:
        answer = _predict(core, row, k=3)
        _check_reasons(explained, row, list(answer.reasons), answer.bias, 3)
        assert answer.explain_error == ""
        plain = _predict(core, row)
        assert not plain.reasons and plain.bias == 0 and plain.explain_error == ""
        assert plain.probability == answer.probability and plain.is_fraud == answer.is_fraud
    everything = _predict(core, ROWS[0], k=1000)  # clamped to the model's 8 features
    _check_reasons(explained, ROWS[0], list(everything.reasons), everything.bias, len(FEATURE_NAMES))
    margin = np.log(everything.probability / (1 - everything.probability))
    assert everything.bias + sum(r.contribution for r in everything.reasons) == pytest.approx(margin, abs=1e-3)


@pytest.mark.integration
def test_policies_decide_which_answers_carry_reasons(explained: BuiltModel) -> None:
    probabilities = [_predict(_core(explained), row).probability for row in ROWS]
    threshold = float(np.median(probabilities))  # half the rows are flagged
    flagged = _core(explained, "flagged", top_k=2, threshold=threshold)
    for row, p in zip(ROWS, probabilities, strict=True):
        answer = _predict(flagged, row)
        assert answer.is_fraud == (p >= threshold)
        assert len(answer.reasons) == (2 if answer.is_fraud else 0)
        if answer.is_fraud:
            _check_reasons(explained, row, list(answer.reasons), answer.bias, 2)
        assert len(_predict(flagged, row, k=4).reasons) == 4  # asking for more than the policy adds
    always = _core(explained, "always", top_k=1)
    assert all(len(_predict(always, row).reasons) == 1 for row in ROWS)
    off = _core(explained, "off")
    refused = _predict(off, ROWS[0], k=3)
    assert not refused.reasons and refused.explain_error == "reasons are turned off on this server"
    assert refused.probability == pytest.approx(probabilities[0])
    with pytest.raises(ValueError, match="explain must be one of"):
        ServingCore(explain="sometimes")
    with pytest.raises(ValueError, match="explain_top_k"):
        ServingCore(explain_top_k=0)


@pytest.mark.integration
def test_a_model_without_explainer_says_so_and_batch_and_stream_carry_reasons(explained: BuiltModel) -> None:
    other = served_model("reasons_v2", seed=6)
    core = _core(explained)
    core.set_challenger(
        CompiledModel(str(other.library), other.sha256, other.model_id), other.model_id, 0.5,
        TrafficSplitter(0.5, 0.5).challenger_cut,
    )  # fmt: skip
    ids = [f"call-{i}" for i in range(40)]
    batch = pb.PredictionBatchRequest(
        requests=[pb.PredictionRequest(features=ROWS[i % 4].tolist(), request_id=rid, explain_top_k=3)
                  for i, rid in enumerate(ids)]
    )  # fmt: skip
    answers = pb.PredictionBatchResponse.FromString(core.handle_batch(batch.SerializeToString())).responses
    assert {a.model_version for a in answers} == {explained.model_id, other.model_id}
    for i, answer in enumerate(answers):
        assert answer.request_id == ids[i]
        if answer.model_version == explained.model_id:
            _check_reasons(explained, ROWS[i % 4], list(answer.reasons), answer.bias, 3)
        else:
            assert not answer.reasons and "has no explainer" in answer.explain_error
    streamed = pb.ScoredPrediction.FromString(core.handle_stream(batch.requests[0].SerializeToString()))
    assert streamed.request_id == ids[0] and streamed.reasons == answers[0].reasons


@pytest.mark.integration
def test_the_prediction_log_keeps_the_reasons(explained: BuiltModel) -> None:
    core = _core(explained, "flagged", top_k=3, threshold=0.0)  # every answer flagged, so explained
    core.enable_log(64)
    answer = _predict(core, ROWS[1], request_id="logged")
    plain = _core(explained)
    plain.enable_log(64)
    _predict(plain, ROWS[1], request_id="plain")
    (record,) = core.drain_log(10)
    assert record[1] == "logged"
    assert record[6] == tuple((r.feature, r.contribution) for r in answer.reasons) and len(record[6]) == 3
    assert plain.drain_log(10)[0][6] == ()


@pytest.fixture(scope="module")
def original_pb(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """The messages of a client generated from the original proto (before reasons existed), in their own pool."""
    descriptors = tmp_path_factory.mktemp("original_proto") / "original.pb"
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{ORIGINAL_PROTO.parent}",
         f"--descriptor_set_out={descriptors}", ORIGINAL_PROTO.name],
        check=True,
    )  # fmt: skip
    pool = descriptor_pool.DescriptorPool()
    for file in descriptor_pb2.FileDescriptorSet.FromString(descriptors.read_bytes()).file:
        pool.Add(file)
    names = ("PredictionRequest", "PredictionResponse")
    return SimpleNamespace(**{n: message_factory.GetMessageClass(pool.FindMessageTypeByName(n)) for n in names})


@pytest.fixture(params=["grpcio", "native"])
def transport(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "native":
        require_native_transport()
    monkeypatch.setenv("ML_INFERENCE_TRANSPORT", request.param)
    return request.param


@pytest.mark.e2e
def test_reasons_over_grpc_and_an_original_client_sees_no_change(
    transport: str, tmp_path: Path, explained: BuiltModel, original_pb: SimpleNamespace
) -> None:
    registry = ModelRegistry(tmp_path / "registry")
    register_compiled(registry, explained)
    registry.promote_to_champion(explained.model_id, actor="test")
    with running_server(registry.root, explain="flagged", explain_top_k=2) as server:
        client = Client(server.port)
        row = ROWS[0]
        answer = client.predict(pb.PredictionRequest(features=row.tolist(), explain_top_k=3), timeout=5)
        _check_reasons(explained, row, list(answer.reasons), answer.bias, 3)
        batch = client.predict_batch(
            pb.PredictionBatchRequest(requests=[pb.PredictionRequest(features=r.tolist(), explain_top_k=3)
                                                for r in ROWS]),
            timeout=5,
        )  # fmt: skip
        for r, item in zip(ROWS, batch.responses, strict=True):
            _check_reasons(explained, r, list(item.reasons), item.bias, 3)
        streamed = list(client.predict_stream(iter([pb.PredictionRequest(features=row.tolist(), explain_top_k=3)]),
                                              timeout=5))  # fmt: skip
        assert streamed[0].reasons == answer.reasons

        channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
        old_predict = channel.unary_unary(
            "/FraudDetection/Predict",
            request_serializer=original_pb.PredictionRequest.SerializeToString,
            response_deserializer=original_pb.PredictionResponse.FromString,
        )
        old = old_predict(original_pb.PredictionRequest(features=row.tolist(), request_id="old"), timeout=5)
        assert old.model_version == explained.model_id and old.probability == answer.probability
        assert old.is_fraud == answer.is_fraud and old.latency_ms > 0  # reasons of a flagged answer: skipped
        channel.close()
        client.close()
