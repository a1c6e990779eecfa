"""The native protobuf codec, through ServingCore: packed and unpacked features, unknown fields of every wire
type, malformed input refused with a message, responses readable by protobuf, and a decoder fuzz test."""

from __future__ import annotations

import math
import re
import struct

import numpy as np
import pytest
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from model_factory import NUM_FEATURES, served_model
from wire_support import tag, varint

from ml_pipeline.native.compiled_model import CompiledModel
from ml_pipeline.native.serving_core import ServingCore, ServingError
from ml_pipeline.proto_gen import fraud_detection_pb2 as pb

pytestmark = pytest.mark.integration

INVALID_ARGUMENT = 3
ROW = [0.5, -1.0, 2.0, 0.25, float("nan"), 1.5, -0.5, 3.0]


@pytest.fixture(scope="module")
def compiled() -> CompiledModel:
    model = served_model("wire_model", seed=3)
    return CompiledModel(str(model.library), model.sha256, model.model_id)


@pytest.fixture(scope="module")
def core(compiled: CompiledModel) -> ServingCore:
    core = ServingCore(max_request_bytes=4096)
    core.set_champion(compiled, "wire_model", 0.5)
    return core


def packed(values: list[float]) -> bytes:
    body = struct.pack(f"<{len(values)}f", *values)
    return tag(1, 2) + varint(len(body)) + body


def unpacked(values: list[float]) -> bytes:
    return b"".join(tag(1, 5) + struct.pack("<f", v) for v in values)


def request_id(text: str) -> bytes:
    raw = text.encode()
    return tag(2, 2) + varint(len(raw)) + raw


def predict(core: ServingCore, raw: bytes) -> pb.PredictionResponse:
    return pb.PredictionResponse.FromString(core.handle(raw))


def test_packed_and_unpacked_features_give_the_same_score(core: ServingCore, compiled: CompiledModel) -> None:
    expected = compiled.score(np.array(ROW, dtype=np.float32))
    by_protobuf = pb.PredictionRequest(features=ROW, request_id="r1").SerializeToString()
    for raw in (by_protobuf, packed(ROW) + request_id("r1"), unpacked(ROW), packed(ROW[:3]) + unpacked(ROW[3:])):
        response = predict(core, raw)
        assert response.probability == pytest.approx(expected, abs=1e-7)
        assert response.model_version == "wire_model"
        assert response.is_fraud == (response.probability >= 0.5)
        assert response.latency_ms > 0


def test_unknown_fields_of_every_wire_type_are_skipped(core: ServingCore) -> None:
    baseline = predict(core, packed(ROW)).probability
    unknown = (
        tag(3, 0) + varint(2**63)  # varint
        + tag(4, 1) + b"\x01" * 8  # fixed64
        + tag(5, 2) + varint(3) + b"abc"  # length-delimited
        + tag(6, 3) + tag(7, 0) + varint(1) + tag(8, 3) + tag(8, 4) + tag(6, 4)  # nested groups
        + tag(9, 5) + b"\x02" * 4  # fixed32
        + tag(2, 0) + varint(5)  # a known field with another wire type is unknown too
        + tag(536870911, 0) + varint(1)  # the largest field number
    )  # fmt: skip
    assert predict(core, unknown + packed(ROW) + unknown).probability == baseline


def test_response_is_canonical_protobuf(core: ServingCore) -> None:
    raw = core.handle(packed(ROW))
    response = pb.PredictionResponse.FromString(raw)
    assert raw == response.SerializeToString()


def test_stream_response_carries_the_request_id(core: ServingCore) -> None:
    reply = pb.ScoredPrediction.FromString(core.handle_stream(packed(ROW) + request_id("call-ß-7")))
    assert reply.request_id == "call-ß-7"
    assert reply.model_version == "wire_model"


def test_last_request_id_wins_as_in_protobuf(core: ServingCore) -> None:
    raw = request_id("first") + packed(ROW) + request_id("second")
    assert pb.PredictionRequest.FromString(raw).request_id == "second"
    assert pb.ScoredPrediction.FromString(core.handle_stream(raw)).request_id == "second"


def test_nan_is_a_missing_feature(core: ServingCore, compiled: CompiledModel) -> None:
    row = [float("nan")] * NUM_FEATURES
    assert predict(core, packed(row)).probability == pytest.approx(compiled.score(np.array(row, np.float32)))


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (packed(ROW[:7]), "expected 8 features"),
        (packed(ROW + [1.0]), "expected 8 features"),
        (b"", "feature order), got 0"),
        (packed([math.inf] + ROW[1:]), "features[0] is +Inf"),
        (unpacked(ROW[:3] + [-math.inf] + ROW[4:]), "features[3] is -Inf"),
        (packed(ROW)[:-1], "packed features run past the end"),
        (tag(1, 2) + varint(3) + b"\x00\x00\x00", "not a multiple of 4"),
        (tag(1, 5) + b"\x00\x00", "truncated feature value"),
        (b"\x80", "truncated tag"),
        (tag(0, 0) + b"\x00", "invalid field number"),
        (tag(3, 0) + b"\xff" * 11, "truncated varint"),
        (tag(3, 6), "invalid wire type 6"),
        (tag(3, 7), "invalid wire type 7"),
        (tag(3, 4), "unexpected end-group"),
        (tag(3, 3) + tag(4, 0) + b"\x01", "group 3 is not closed"),
        (tag(3, 3) + tag(5, 4), "group 3 closed by end tag 5"),
        (tag(3, 3) * 40, "nested deeper"),
        (tag(3, 1) + b"\x00" * 7, "truncated 64-bit"),
        (tag(3, 5) + b"\x00", "truncated 32-bit"),
        (tag(3, 2) + varint(10) + b"x", "runs past the end"),
        (packed(ROW) + tag(2, 2) + varint(2) + b"\xc3\x28", "request_id is not valid UTF-8"),
        (packed(ROW) + tag(2, 2) + varint(3) + b"\xed\xa0\x80", "request_id is not valid UTF-8"),
        (packed([0.0] * 300), "more than 256 values"),
        (packed(ROW) + tag(5, 2) + varint(5000) + b"x" * 5000, "exceeds the limit of 4096 bytes"),
    ],
)
def test_bad_input_is_refused_with_a_message(core: ServingCore, raw: bytes, message: str) -> None:
    with pytest.raises(ServingError, match=re.escape(message)) as info:
        core.handle(raw)
    assert info.value.code == INVALID_ARGUMENT


def _protobuf_view(raw: bytes) -> pb.PredictionRequest | None:
    try:
        return pb.PredictionRequest.FromString(raw)
    except DecodeError:
        return None


_pieces = st.one_of(
    st.lists(st.floats(width=32), max_size=10).map(packed),
    st.lists(st.floats(width=32), max_size=10).map(unpacked),
    st.text(max_size=8).map(request_id),
    st.tuples(st.integers(1, 40), st.sampled_from([0, 1, 2, 3, 4, 5, 6, 7]), st.binary(max_size=12)).map(
        lambda t: tag(t[0], t[1]) + t[2]
    ),
    st.binary(max_size=12),
)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_pieces, max_size=8).map(b"".join))
def test_decoder_fuzz_agrees_with_protobuf_and_never_crashes(core: ServingCore, raw: bytes) -> None:
    """Any bytes: either a response, or INVALID_ARGUMENT exactly when protobuf itself rejects the message or
    its content (feature count, infinities)."""
    parsed = _protobuf_view(raw)
    try:
        response = predict(core, raw)
    except ServingError as exc:
        assert exc.code == INVALID_ARGUMENT, exc.message
        assert exc.message
        if parsed is not None:
            values = list(parsed.features)
            assert len(values) != NUM_FEATURES or any(math.isinf(v) for v in values), exc.message
        return
    assert parsed is not None, "the core accepted bytes that protobuf rejects"
    assert len(parsed.features) == NUM_FEATURES
    assert 0.0 <= response.probability <= 1.0


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(_pieces, _pieces.map(lambda b: tag(1, 2) + varint(len(b)) + b)), max_size=8).map(b"".join))
def test_batch_decoder_fuzz_never_crashes(core: ServingCore, raw: bytes) -> None:
    """Any bytes as a PredictBatch: a response protobuf can read, or INVALID_ARGUMENT with a message."""
    try:
        reply = pb.PredictionBatchResponse.FromString(core.handle_batch(raw))
    except ServingError as exc:
        assert exc.code == INVALID_ARGUMENT and exc.message
        return
    assert len(reply.responses) == len(pb.PredictionBatchRequest.FromString(raw).requests)
