"""Hygiene of the server's ports: the metrics page answers /metrics (and / with a link) and 404 elsewhere, and a
PredictBatch row is held to the size limit of a single request."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest
from model_factory import SMALL, built
from prometheus_client import CollectorRegistry, Counter

from ml_pipeline.inference_server.metrics import start_metrics_server
from ml_pipeline.native import CompiledModel, ServingCore, ServingError
from ml_pipeline.proto_gen import fraud_detection_pb2 as pb


@pytest.mark.integration
def test_a_batch_row_obeys_the_single_request_limit() -> None:
    core = ServingCore(max_request_bytes=256)
    core.set_champion(CompiledModel(built(SMALL).library), "small", 0.5)
    ok = pb.PredictionRequest(features=[0.1] * 8, request_id="r")
    big = pb.PredictionRequest(features=[0.1] * 8, request_id="x" * 300)
    with pytest.raises(ServingError, match=r"requests\[1\]: request of \d+ bytes exceeds the limit of 256 bytes"):
        core.handle_batch(pb.PredictionBatchRequest(requests=[ok, big]).SerializeToString())
    with pytest.raises(ServingError, match="exceeds the limit of 256 bytes"):
        core.handle(big.SerializeToString())
    reply = core.handle_batch(pb.PredictionBatchRequest(requests=[ok]).SerializeToString())
    assert len(pb.PredictionBatchResponse.FromString(reply).responses) == 1


@pytest.mark.unit
def test_the_metrics_page_answers_metrics_and_index_only() -> None:
    registry = CollectorRegistry()
    Counter("probe", "a probe", registry=registry).inc()
    httpd = start_metrics_server(0, "127.0.0.1", registry)
    base = f"http://127.0.0.1:{httpd.server_port}"
    try:
        with urllib.request.urlopen(f"{base}/metrics", timeout=5) as response:
            assert "probe_total 1.0" in response.read().decode()
        with urllib.request.urlopen(f"{base}/", timeout=5) as response:
            assert 'href="/metrics"' in response.read().decode()
        for path in ("/favicon.ico", "/metricsx", "/admin"):
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(base + path, timeout=5)
            assert refused.value.code == 404
    finally:
        httpd.shutdown()
        httpd.server_close()
