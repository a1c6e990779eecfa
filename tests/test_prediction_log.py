"""The prediction log writer: JSON Lines with rotation, PostgreSQL COPY, and dropping (counted) instead of blocking."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
import urllib.request
from pathlib import Path

import asyncpg
import numpy as np
import pandas as pd
import pytest
from model_factory import BuiltModel, register_compiled, served_model
from server_harness import Client, running_server, wait_until

from ml_pipeline.ab_testing.traffic_splitter import TrafficSplitter
from ml_pipeline.cli import main
from ml_pipeline.errors import JobFailed, UsageError
from ml_pipeline.model_registry import ModelRegistry
from ml_pipeline.monitoring.ab_report import load_predictions
from ml_pipeline.monitoring.prediction_log import (
    JsonLinesSink,
    PostgresSink,
    PredictionLog,
    Record,
    open_sink,
)
from ml_pipeline.monitoring.serving import MonitoringSettings
from ml_pipeline.native.compiled_model import CompiledModel
from ml_pipeline.native.serving_core import ServingCore
from ml_pipeline.proto_gen import fraud_detection_pb2 as pb


def records(n: int, start: int = 0) -> list[Record]:
    """n distinct records, alternating champion and challenger."""
    now = time.time()
    return [
        (
            now + i,
            f"ALR-{i:06d}",
            "m-a" if i % 2 else "m-b",
            "champion" if i % 2 else "challenger",
            i / (n + start),
            i % 3 == 0,
            (("call_duration", 0.5), ("caller_reputation", -0.25)) if i % 3 == 0 else (),
            ("m-s", 1 - i / (n + start), i % 2 == 0) if i % 5 == 0 else None,
        )
        for i in range(start, start + n)
    ]


@pytest.mark.unit
def test_json_lines_round_trip_through_the_ab_reader(tmp_path: Path) -> None:
    path = tmp_path / "log" / "predictions.jsonl"
    plog = PredictionLog(JsonLinesSink(path), batch_size=50).start()
    assert plog.submit(records(120)) == 120
    plog.close()
    assert plog.counts["written"] == 120 and plog.counts["dropped_queue_full"] == 0
    frame = load_predictions(str(path))
    assert len(frame) == 120 and set(frame["slot"]) == {"champion", "challenger"}
    first = json.loads(path.read_text().splitlines()[0])
    assert first["request_id"] == "ALR-000000" and first["time"].endswith("+00:00") and first["decision"] is True
    assert first["reasons"] == {"call_duration": 0.5, "caller_reputation": -0.25}
    assert "reasons" not in json.loads(path.read_text().splitlines()[1])  # not explained: no reasons key
    assert (first["shadow_model_version"], first["shadow_score"], first["shadow_decision"]) == ("m-s", 1.0, True)
    assert "shadow_score" not in json.loads(path.read_text().splitlines()[1])  # not shadowed: no shadow keys
    assert frame["shadow_score"].notna().sum() == 24 and set(frame["shadow_model_version"].dropna()) == {"m-s"}


@pytest.mark.unit
def test_json_lines_rotate_by_size_and_keep_the_backups(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    sink = JsonLinesSink(path, max_bytes=2_000, backups=2)
    for start in range(0, 400, 20):
        sink.write(records(20, start))
    sink.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.jsonl", "p.jsonl.1", "p.jsonl.2"]
    assert all(p.stat().st_size < 2_000 + 20 * 200 for p in tmp_path.iterdir())
    ids = load_predictions(str(path))["request_id"].tolist()
    assert ids == sorted(ids) and ids[-1] == "ALR-000399"  # oldest rotated file first, newest rows last


@pytest.mark.unit
def test_a_full_queue_drops_and_counts_instead_of_blocking(tmp_path: Path) -> None:
    plog = PredictionLog(JsonLinesSink(tmp_path / "p.jsonl"), capacity=10)  # writer not started: nothing drains
    assert plog.submit(records(25)) == 10
    assert plog.counts["dropped_queue_full"] == 15


@pytest.mark.unit
def test_a_full_disk_drops_and_counts(tmp_path: Path) -> None:
    plog = PredictionLog(JsonLinesSink("/dev/full"), batch_size=10).start()  # every write fails with ENOSPC
    assert plog.submit(records(30)) == 30
    wait_until(lambda: plog.counts["dropped_write_failed"] == 30)
    plog.close()
    assert plog.counts["written"] == 0


@pytest.mark.unit
def test_open_sink_refuses_an_unknown_target() -> None:
    with pytest.raises(UsageError, match="file:PATH"):
        open_sink("s3://bucket/log")


async def _rows(dsn: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetch(
            "SELECT request_id, slot, decision, reasons, shadow_model_version, shadow_score FROM prediction_log "
            "ORDER BY request_id"
        )
    finally:
        await conn.close()


@pytest.mark.integration
def test_postgres_sink_copies_batches(pg_dsn: str) -> None:
    plog = PredictionLog(open_sink(pg_dsn), batch_size=40).start()
    plog.submit(records(100))
    plog.close()
    rows = asyncio.run(_rows(pg_dsn))
    assert len(rows) == 100 and rows[0]["request_id"] == "ALR-000000" and rows[0]["decision"] is True
    assert json.loads(rows[0]["reasons"]) == {"call_duration": 0.5, "caller_reputation": -0.25}
    assert rows[1]["reasons"] is None
    assert (rows[0]["shadow_model_version"], rows[0]["shadow_score"]) == ("m-s", 1.0)
    assert rows[1]["shadow_model_version"] is None and rows[1]["shadow_score"] is None
    frame = load_predictions(pg_dsn)
    assert len(frame) == 100 and frame["shadow_score"].notna().sum() == 20


@pytest.mark.integration
def test_an_unreachable_database_drops_and_counts() -> None:
    sink = PostgresSink("postgresql://postgres@127.0.0.1:1/none", connect_timeout=0.5, retry_seconds=0.2)
    plog = PredictionLog(sink, batch_size=10).start()
    plog.submit(records(50))
    wait_until(lambda: plog.counts["dropped_write_failed"] == 50)
    plog.close()


async def _lock_table(dsn: str, locked: asyncio.Event, release: asyncio.Event) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            await conn.execute("LOCK TABLE prediction_log IN ACCESS EXCLUSIVE MODE")
            locked.set()
            await release.wait()
    finally:
        await conn.close()


@pytest.mark.integration
def test_a_stalled_database_fills_the_queue_then_catches_up(pg_dsn: str) -> None:
    plog = PredictionLog(open_sink(pg_dsn), capacity=50, batch_size=10).start()
    plog.submit(records(10))
    wait_until(lambda: plog.counts["written"] == 10)  # the table exists now

    async def stall_and_submit() -> int:
        locked, release = asyncio.Event(), asyncio.Event()
        holder = asyncio.create_task(_lock_table(pg_dsn, locked, release))
        await locked.wait()
        accepted = 0
        for start in range(1000, 1300, 10):  # the writer is stuck in COPY: the queue fills, then drops
            accepted += plog.submit(records(10, start))
            await asyncio.sleep(0.005)
        release.set()
        await holder
        return accepted

    accepted = asyncio.run(stall_and_submit())
    assert plog.counts["dropped_queue_full"] == 300 - accepted > 0
    wait_until(lambda: plog.counts["written"] == 10 + accepted)
    plog.close()
    assert len(asyncio.run(_rows(pg_dsn))) == 10 + accepted


# ---- the native core's ring buffer and the running server ----


@pytest.fixture(scope="module")
def models() -> tuple[BuiltModel, BuiltModel]:
    """Two real compiled models (champion, challenger)."""
    return served_model("log-a", seed=1), served_model("log-b", seed=2)


def _core(models: tuple[BuiltModel, BuiltModel], challenger_share: float) -> tuple[ServingCore, list[CompiledModel]]:
    loaded = [CompiledModel(str(m.library), m.sha256, m.model_id) for m in models]
    core = ServingCore()
    core.set_champion(loaded[0], "log-a", 0.5)
    core.set_challenger(loaded[1], "log-b", 0.5, TrafficSplitter(1 - challenger_share, challenger_share).challenger_cut)
    return core, loaded


def _request(request_id: str, value: float = 0.5) -> bytes:
    return pb.PredictionRequest(features=[value] * 8, request_id=request_id).SerializeToString()


@pytest.mark.integration
def test_core_ring_records_each_prediction_and_drops_when_full(models: tuple[BuiltModel, BuiltModel]) -> None:
    core, _ = _core(models, 0.5)
    assert core.drain_log(10) == []  # off by default
    core.enable_log(16)
    long_id = "x" * 100
    answers = [pb.PredictionResponse.FromString(core.handle(_request(f"id-{i}"))) for i in range(10)]
    answers.append(pb.PredictionResponse.FromString(core.handle(_request(long_id))))
    before = time.time()
    records = core.drain_log(100)
    assert [r[1] for r in records] == [f"id-{i}" for i in range(10)] + ["x" * 64]  # ids truncated to 64 bytes
    for (t, _, model, slot, score, decision, reasons, shadow), answer in zip(records, answers, strict=True):
        assert reasons == () and shadow is None  # nothing asked for reasons, no shadow served
        assert before - 5 < t <= before and model == answer.model_version
        assert slot == ("champion" if model == "log-a" else "challenger")
        assert score == pytest.approx(answer.probability) and decision == answer.is_fraud
    assert {r[3] for r in records} == {"champion", "challenger"}
    for i in range(40):  # nobody drains: 16 fit, 24 are dropped and counted
        core.handle(_request(f"burst-{i}"))
    assert core.log_dropped() == 24
    assert [r[1] for r in core.drain_log(100)] == [f"burst-{i}" for i in range(16)]


@pytest.mark.integration
def test_core_ring_under_concurrent_writers(models: tuple[BuiltModel, BuiltModel]) -> None:
    core, _ = _core(models, 0.0)
    core.enable_log(1 << 12)
    ids = [[f"t{t}-{i}" for i in range(1000)] for t in range(4)]
    drained: list[Record] = []
    stop = threading.Event()

    def drain() -> None:
        while not stop.is_set():
            drained.extend(core.drain_log(256))
        drained.extend(core.drain_log(1 << 12))

    def send(batch: list[str]) -> None:
        for request_id in batch:
            core.handle_batch(
                pb.PredictionBatchRequest(
                    requests=[pb.PredictionRequest(features=[0.1] * 8, request_id=request_id)]
                ).SerializeToString()
            )

    drainer = threading.Thread(target=drain)
    drainer.start()
    senders = [threading.Thread(target=send, args=(batch,)) for batch in ids]
    for thread in senders:
        thread.start()
    for thread in senders:
        thread.join()
    stop.set()
    drainer.join()
    logged = [r[1] for r in drained]
    assert len(logged) + core.log_dropped() == 4000
    assert len(set(logged)) == len(logged)  # no record written twice or torn
    for batch in ids:  # each writer's records keep their order
        mine = [x for x in logged if x.split("-")[0] == batch[0].split("-")[0]]
        assert mine == sorted(mine, key=lambda x: int(x.split("-")[1]))


@pytest.mark.e2e
def test_server_logs_predictions_to_a_file_and_ab_report_reads_them(
    models: tuple[BuiltModel, BuiltModel], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    registry = ModelRegistry(tmp_path / "registry")
    for model in models:
        register_compiled(registry, model)
    registry.promote_to_champion("log-a", actor="test")
    registry.set_challenger("log-b", 0.5, actor="test")
    path = tmp_path / "log" / "predictions.jsonl"
    rng = np.random.default_rng(3)
    rows = rng.normal(size=(300, 8)).astype(np.float32)
    with running_server(registry.root, monitoring=MonitoringSettings(f"file:{path}")) as server:
        client = Client(server.port)
        answers = [
            client.predict(pb.PredictionRequest(features=row.tolist(), request_id=f"ALR-{i:05d}"))
            for i, row in enumerate(rows)
        ]
        client.close()
        url = f"http://127.0.0.1:{server.metrics_port}/metrics"
        wait_until(lambda: "ml_prediction_log_written_total 300.0" in urllib.request.urlopen(url).read().decode())
    logged = load_predictions(str(path))
    assert logged["request_id"].tolist() == [f"ALR-{i:05d}" for i in range(300)]
    assert logged["model_version"].tolist() == [a.model_version for a in answers]
    assert logged["decision"].tolist() == [a.is_fraud for a in answers]
    labels = pd.DataFrame(
        {"alert_id": [f"ALR-{i:05d}" for i in range(300)], "is_fraud": (rows[:, 0] > 0.8).astype(int)}
    )
    labels.to_csv(tmp_path / "labels.csv", index=False)
    with pytest.raises(SystemExit) as exited:
        main(["ab-report", "--log", str(path), "--labels", str(tmp_path / "labels.csv"), "--bootstrap", "200"])
    assert exited.value.code == 0
    verdict = capsys.readouterr().out.strip().splitlines()[-1]
    assert verdict.startswith(("challenger better", "challenger worse", "not yet significant — needs about"))


@pytest.mark.e2e
def test_an_unreachable_log_database_never_fails_predict(models: tuple[BuiltModel, BuiltModel], tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path / "registry")
    register_compiled(registry, models[0])
    registry.promote_to_champion("log-a", actor="test")
    settings = MonitoringSettings("postgresql://postgres@127.0.0.1:1/none")
    with running_server(registry.root, monitoring=settings) as server:
        client = Client(server.port)
        for i in range(200):
            assert client.predict(pb.PredictionRequest(features=[0.2] * 8, request_id=f"r{i}")).model_version == "log-a"
        client.close()
        url = f"http://127.0.0.1:{server.metrics_port}/metrics"

        def dropped() -> float:
            page = urllib.request.urlopen(url).read().decode()
            found = re.search(r'ml_prediction_log_dropped_total\{reason="write_failed"\} (\S+)', page)
            return float(found.group(1)) if found else 0.0

        wait_until(lambda: dropped() == 200)


@pytest.mark.e2e
def test_a_log_file_that_cannot_be_opened_is_one_clear_error(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path / "registry")
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    settings = MonitoringSettings(f"file:{blocker}/log.jsonl")
    with pytest.raises(JobFailed, match="ML_PREDICTION_LOG"), running_server(registry.root, monitoring=settings):
        pass
