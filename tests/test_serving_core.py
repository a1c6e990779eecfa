"""ServingCore with real compiled models: slots, A/B routing identical to TrafficSplitter, thresholds, batch,
counters, and swaps while other threads score (a replaced model lives until its last request ends)."""

from __future__ import annotations

import gc
import threading
import time

import numpy as np
import pytest
from model_factory import NUM_FEATURES, BuiltModel, served_model

from ml_pipeline.ab_testing.traffic_splitter import TrafficSplitter
from ml_pipeline.native.compiled_model import CompiledModel
from ml_pipeline.native.serving_core import LATENCY_BUCKETS_S, ServingCore, ServingError
from ml_pipeline.proto_gen import fraud_detection_pb2 as pb

pytestmark = pytest.mark.integration

UNAVAILABLE = 14
INVALID_ARGUMENT = 3


@pytest.fixture(scope="module")
def models() -> tuple[BuiltModel, BuiltModel]:
    return served_model("champ_v1", seed=1), served_model("chall_v2", seed=2)


def load(model: BuiltModel) -> CompiledModel:
    return CompiledModel(str(model.library), model.sha256, model.model_id)


def rows(n: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, NUM_FEATURES)).astype(np.float32)
    x[::7, 3] = np.nan
    return x


def request(row: np.ndarray, key: str = "") -> bytes:
    return pb.PredictionRequest(features=row.tolist(), request_id=key).SerializeToString()


def predict(core: ServingCore, row: np.ndarray, key: str = "") -> pb.PredictionResponse:
    return pb.PredictionResponse.FromString(core.handle(request(row, key)))


def test_without_champion_every_call_is_unavailable(models: tuple[BuiltModel, BuiltModel]) -> None:
    core = ServingCore()
    for call in (core.handle, core.handle_stream, core.handle_batch):
        with pytest.raises(ServingError, match="no verified champion") as info:
            call(request(rows(1)[0]) if call is not core.handle_batch else b"")
        assert info.value.code == UNAVAILABLE
    assert core.counters()["errors"] == {UNAVAILABLE: 3}


def test_champion_scores_exactly_as_xgboost(models: tuple[BuiltModel, BuiltModel]) -> None:
    champion, _ = models
    core = ServingCore()
    core.set_champion(load(champion), champion.model_id, 0.5)
    x = rows(200)
    got = np.array([predict(core, row).probability for row in x], dtype=np.float32)
    np.testing.assert_allclose(got, champion.xgboost_proba(x), atol=1e-6)


def test_threshold_decides_is_fraud(models: tuple[BuiltModel, BuiltModel]) -> None:
    champion, _ = models
    core = ServingCore()
    x = rows(100)
    for threshold in (0.0, 0.3, 1.0):
        core.set_champion(load(champion), champion.model_id, threshold)
        for row in x:
            response = predict(core, row)
            assert response.is_fraud == (response.probability >= threshold)


def test_bad_configuration_is_refused(models: tuple[BuiltModel, BuiltModel]) -> None:
    champion, _ = models
    core = ServingCore()
    capsule = load(champion)
    with pytest.raises(ValueError, match="threshold"):
        core.set_champion(capsule, "m", 1.5)
    with pytest.raises(ValueError, match="model id"):
        core.set_champion(capsule, "x" * 200, 0.5)
    with pytest.raises(ValueError, match="cut"):
        core.set_split(2**32 + 1)
    with pytest.raises(ValueError, match="cut"):
        core.set_challenger(capsule, "c", 0.5, 2**32 + 1)
    with pytest.raises(ValueError, match="needs a model"):
        core.set_champion(None, "m", 0.5)


def test_ab_routing_matches_traffic_splitter_over_many_keys(models: tuple[BuiltModel, BuiltModel]) -> None:
    champion, challenger = models
    core = ServingCore()
    core.set_champion(load(champion), champion.model_id, 0.5)
    row = rows(1)[0]
    for share in (0.0, 0.1, 0.5, 1.0):
        splitter = TrafficSplitter(1.0 - share, share)
        core.set_challenger(load(challenger), challenger.model_id, 0.5, splitter.challenger_cut)
        keys = [f"req-{i}" for i in range(2000)] + ["", "é", "x" * 300]
        for key in keys[:-3] + keys[-2:]:
            expected = challenger.model_id if splitter.should_use_model_b(key=key) else champion.model_id
            assert predict(core, row, key).model_version == expected, key
    core.set_challenger(None)
    assert {predict(core, row, f"k{i}").model_version for i in range(200)} == {champion.model_id}


def test_keyless_requests_are_split_at_random_in_proportion(models: tuple[BuiltModel, BuiltModel]) -> None:
    champion, challenger = models
    core = ServingCore()
    core.set_champion(load(champion), champion.model_id, 0.5)
    core.set_challenger(load(challenger), challenger.model_id, 0.5, TrafficSplitter(0.7, 0.3).challenger_cut)
    row = rows(1)[0]
    share_b = np.mean([predict(core, row).model_version == challenger.model_id for _ in range(4000)])
    assert 0.25 < share_b < 0.35


def test_batch_scores_every_row_in_order_or_none(models: tuple[BuiltModel, BuiltModel]) -> None:
    champion, challenger = models
    core = ServingCore()
    core.set_champion(load(champion), champion.model_id, 0.5)
    core.set_challenger(load(challenger), challenger.model_id, 0.5, TrafficSplitter(0.5, 0.5).challenger_cut)
    x = rows(300)
    batch = pb.PredictionBatchRequest(
        requests=[pb.PredictionRequest(features=r.tolist(), request_id=f"b{i}") for i, r in enumerate(x)]
    )
    reply = pb.PredictionBatchResponse.FromString(core.handle_batch(batch.SerializeToString()))
    assert [r.request_id for r in reply.responses] == [f"b{i}" for i in range(300)]
    for i, r in enumerate(reply.responses):
        assert r.model_version == predict(core, x[i], f"b{i}").model_version
        assert r.probability == predict(core, x[i], f"b{i}").probability
    before = core.counters()
    batch.requests[117].features.append(1.0)
    with pytest.raises(ServingError, match=r"requests\[117\]: expected 8 features") as info:
        core.handle_batch(batch.SerializeToString())
    assert info.value.code == INVALID_ARGUMENT
    after = core.counters()
    assert after["models"] == before["models"], "a refused batch must not score or count any row"
    assert pb.PredictionBatchResponse.FromString(core.handle_batch(b"")).responses == []


def test_batch_limits(models: tuple[BuiltModel, BuiltModel]) -> None:
    champion, _ = models
    core = ServingCore(max_batch_bytes=10_000, max_batch_rows=5)
    core.set_champion(load(champion), champion.model_id, 0.5)
    one = pb.PredictionRequest(features=rows(1)[0].tolist())
    with pytest.raises(ServingError, match="more than 5 rows"):
        core.handle_batch(pb.PredictionBatchRequest(requests=[one] * 6).SerializeToString())
    with pytest.raises(ServingError, match="exceeds the limit of 10000 bytes"):
        core.handle_batch(pb.PredictionBatchRequest(requests=[one] * 400).SerializeToString())


def test_counters_per_model_and_slot(models: tuple[BuiltModel, BuiltModel]) -> None:
    champion, challenger = models
    core = ServingCore()
    core.set_champion(load(champion), champion.model_id, 0.0)
    core.set_challenger(load(challenger), challenger.model_id, 1.01 - 0.01, TrafficSplitter(0.5, 0.5).challenger_cut)
    splitter = TrafficSplitter(0.5, 0.5)
    keys = [f"c{i}" for i in range(500)]
    for key in keys:
        predict(core, rows(1)[0], key)
    with pytest.raises(ServingError):
        core.handle(b"\x80")
    counts = core.counters()
    n_b = sum(splitter.should_use_model_b(key=k) for k in keys)
    assert counts["challenger_requests"] == n_b
    assert counts["champion_requests"] == 500 - n_b
    assert counts["errors"] == {INVALID_ARGUMENT: 1}
    champ = counts["models"][champion.model_id]
    assert champ["requests"] == champ["fraud"] == 500 - n_b  # threshold 0: every answer is fraud
    assert counts["models"][challenger.model_id]["fraud"] == 0  # threshold 1: none is
    buckets = champ["latency_buckets"]
    assert [b for b, _ in buckets[:-1]] == list(LATENCY_BUCKETS_S) and buckets[-1][0] == float("inf")
    assert buckets[-1][1] == champ["requests"]
    assert all(a[1] <= b[1] for a, b in zip(buckets, buckets[1:], strict=False))
    assert champ["latency_sum_s"] > 0


def test_swapped_out_model_lives_while_referenced_and_swaps_under_threads(
    models: tuple[BuiltModel, BuiltModel],
) -> None:
    """Four threads score while the main thread swaps champions 200 times: every call answers, always from
    one of the two models, with that model's exact probability."""
    champion, challenger = models
    gc.collect()
    loaded_before = _loaded_libraries()
    core = ServingCore()
    core.set_champion(load(champion), champion.model_id, 0.5)
    gc.collect()  # the CompiledModel and its capsule are gone: the core's own reference keeps the model
    x = rows(50, seed=9)
    expected = {
        champion.model_id: champion.xgboost_proba(x),
        challenger.model_id: challenger.xgboost_proba(x),
    }
    raw = [request(row) for row in x]
    failures: list[str] = []
    stop = threading.Event()

    def score_loop() -> None:
        i = 0
        while not stop.is_set():
            try:
                r = pb.PredictionResponse.FromString(core.handle(raw[i % 50]))
                if abs(r.probability - expected[r.model_version][i % 50]) > 1e-6:
                    failures.append(f"{r.model_version} row {i % 50}: {r.probability}")
            except ServingError as exc:
                failures.append(str(exc))
            i += 1
            time.sleep(0)  # yield the GIL, so the swapping thread is not starved (the swaps still overlap scoring)

    threads = [threading.Thread(target=score_loop) for _ in range(4)]
    for t in threads:
        t.start()
    for i in range(200):
        model = challenger if i % 2 == 0 else champion
        core.set_champion(load(model), model.model_id, 0.5)
    stop.set()
    for t in threads:
        t.join()
    assert failures == []
    assert sum(m["requests"] for m in core.counters()["models"].values()) > 0
    gc.collect()
    assert _loaded_libraries() == loaded_before + 1, "every swapped-out library is unloaded once its last request ended"


def _loaded_libraries() -> int:
    """Distinct compiled-model libraries mapped into this process (CompiledModel loads them from a memfd)."""
    with open("/proc/self/maps") as maps:
        return len({line.split()[4] for line in maps if "memfd:vg_model" in line})


def test_huge_request_ids_fit_the_response(models: tuple[BuiltModel, BuiltModel]) -> None:
    """Request ids of hundreds of kilobytes (long length prefixes) are echoed intact in batch and stream."""
    champion, _ = models
    core = ServingCore(max_request_bytes=1 << 20)
    core.set_champion(load(champion), "m" * 127, 0.5)
    row = rows(1)[0].tolist()
    keys = ["k" * 300_000, "é" * 100_000, ""]
    batch = pb.PredictionBatchRequest(requests=[pb.PredictionRequest(features=row, request_id=k) for k in keys])
    reply = pb.PredictionBatchResponse.FromString(core.handle_batch(batch.SerializeToString()))
    assert [r.request_id for r in reply.responses] == keys
    assert {r.model_version for r in reply.responses} == {"m" * 127}
    streamed = pb.ScoredPrediction.FromString(core.handle_stream(request(rows(1)[0], keys[0])))
    assert streamed.request_id == keys[0]
