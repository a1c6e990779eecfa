"""The database registry on the real PostgreSQL: the directory registry's semantics on both backends, writers from
four processes at once, writers SIGKILLed mid-transaction, a server converging from the database under load and
through killed connections, and a folder migrated into the database serving the same answers."""

from __future__ import annotations

import asyncio
import functools
import json
import multiprocessing
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import numpy as np
import pytest
import test_registry
from model_factory import BuiltModel, register_compiled, served_model, training_output
from server_harness import Client, running_server, wait_until

from ml_pipeline.cli import main
from ml_pipeline.compiler import compile_model
from ml_pipeline.config import MLPipelineConfig
from ml_pipeline.data.generator import GeneratorSettings, generate_alerts
from ml_pipeline.data.sources import write_alerts_to_postgres
from ml_pipeline.errors import UsageError
from ml_pipeline.model_registry import (
    IntegrityError,
    ModelMetadata,
    ModelRegistry,
    RegistryError,
    RegistryUnavailable,
    open_registry,
)
from ml_pipeline.model_registry.database import DatabaseRegistry
from ml_pipeline.model_registry.migrations import LATEST, migrate
from ml_pipeline.proto_gen import fraud_detection_pb2 as pb
from ml_pipeline.retraining import RetrainSettings, retrain
from ml_pipeline.retraining.records import RunStatus

ROW = [12.0, 45.0, 0.8, 0.9, 0.1, 0.3, 0.0, 20.0]
WORKERS, MODELS_EACH = 4, 5


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Four real training output folders (tiny XGBoost models), as test_registry's."""
    root = tmp_path_factory.mktemp("training")
    return {f"m{i}": training_output(root / f"m{i}", f"xgboost_v{i}", seed=i) for i in range(1, 5)}


@pytest.fixture(scope="module")
def library(outputs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One verified library recorded for every model of the writer tests, so promotion compiles nothing."""
    out = tmp_path_factory.mktemp("lib")
    return compile_model(outputs["m1"] / "model.json", out, "shared", profile_guided=False).registry_record().to_dict()


@pytest.fixture(params=["directory", "database"])
def registry(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """The same API on both backends: a folder, or a fresh PostgreSQL database."""
    if request.param == "directory":
        yield open_registry(tmp_path / "registry")
        return
    dsn = request.getfixturevalue("pg_dsn")
    reg = open_registry(dsn, cache_dir=tmp_path / "cache")
    yield reg
    reg.close()


def register(registry: ModelRegistry, out: Path, model_id: str | None = None) -> ModelMetadata:
    meta = ModelMetadata.from_training_output(out)
    if model_id is not None:
        meta = replace(meta, model_id=model_id)
    return registry.register_model(out / "model.json", meta, attachments={"test_sample.npz": out / "test_sample.npz"})


def approved(registry: ModelRegistry, out: Path, library: dict[str, Any], model_id: str | None = None) -> str:
    model_id = register(registry, out, model_id).model_id
    registry.record_compiled(model_id, library)
    registry.approve_model(model_id)
    return model_id


def _admin(dsn: str, sql: str, *args: Any) -> Any:
    async def run() -> Any:
        conn = await asyncpg.connect(dsn, timeout=5)
        try:
            return await conn.fetch(sql, *args)
        finally:
            await conn.close()

    return asyncio.run(run())


# ---- the registry's semantics, on both backends ----

#: Tests of test_registry (the directory registry's unit tests) that say nothing about its files (not
#: test_archive_and_delete_refusals: it checks the folders): run again here on both backends, through this
#: module's `registry` fixture.
SEMANTICS = [
    "test_unknown_model_is_refused_everywhere",
    "test_approve_only_candidates",
    "test_promote_needs_approval_or_force",
    "test_promote_archives_previous_champion_and_rollback_restores_it",
    "test_archived_unapproved_model_needs_force",
    "test_challenger_lifecycle",
    "test_promoting_the_challenger_clears_the_slot",
    "test_traffic_split_and_generation",
    "test_compare_models",
    "test_list_and_history_filters",
]


def _on_both_backends(name: str) -> Callable[..., None]:
    test = getattr(test_registry, name)

    @pytest.mark.integration
    @functools.wraps(test)  # the same fixtures (pytest follows __wrapped__ for the signature)
    def run(**fixtures: Any) -> None:
        test(**fixtures)

    return run


for _name in SEMANTICS:
    globals()[f"{_name}_on_both_backends"] = _on_both_backends(_name)


@pytest.mark.unit
def test_open_registry_picks_the_backend_by_location(tmp_path):
    assert type(open_registry(tmp_path / "registry")) is ModelRegistry
    database = open_registry("postgresql://vg:pw-never-shown@127.0.0.1:1/registry")  # nothing connects yet
    assert isinstance(database, DatabaseRegistry) and "pw-never-shown" not in database.location + repr(database)
    with pytest.raises(UsageError, match="unsupported scheme mysql://") as refused:
        open_registry("mysql://vg:pw-never-shown@127.0.0.1/registry")
    assert "pw-never-shown" not in str(refused.value)
    database.close()


@pytest.mark.integration
def test_lifecycle_semantics_match_on_both_backends(registry, outputs, library):
    first = approved(registry, outputs["m1"], library)
    second = approved(registry, outputs["m2"], library)
    assert registry.get_model(first).status == "approved"
    state = registry.promote_to_champion(first, actor="alice", reason="weekly")
    assert (state.champion_id, state.generation) == (first, 1)
    state = registry.set_challenger(second, 0.1)
    assert (state.challenger_id, state.challenger_share, state.generation) == (second, 0.1, 2)
    assert registry.get_model(second).status == "challenger"
    state = registry.set_traffic_split(0.7, 0.3, expected_generation=2)
    assert state.challenger_share == 0.3
    with pytest.raises(RegistryError, match="changed meanwhile"):
        registry.set_traffic_split(0.5, 0.5, expected_generation=2)
    state = registry.promote_to_champion(second)
    assert (state.champion_id, state.challenger_id, state.previous_champion_id) == (second, None, first)
    assert registry.get_model(first).status == "archived"
    assert registry.rollback().champion_id == first
    assert registry.generation() == registry.serving_state().generation == 5
    with pytest.raises(RegistryError, match="it is the champion"):
        registry.delete_model(first)
    with pytest.raises(RegistryError, match="already registered"):
        register(registry, outputs["m1"])
    with pytest.raises(RegistryError, match="unknown model"):
        registry.get_model("nope")
    third = register(registry, outputs["m3"]).model_id
    registry.archive_model(third)
    registry.delete_model(third)
    assert [m.model_id for m in registry.list_models()] == [first, second]
    actions = [(e.action, e.model_id, e.to_status) for e in registry.history()]
    assert actions[:3] == [("register", first, "candidate"), ("compile", first, None), ("approve", first, "approved")]
    assert actions[-2:] == [("archive", third, "archived"), ("delete", third, None)]
    assert [e.generation for e in registry.history() if e.to_status == "champion"] == [1, 4, 5]
    assert registry.history(first, limit=1)[0].action == "rollback"
    assert [r.metric for r in registry.compare_models(first, second)][:2] == ["auc_score", "precision"]
    assert registry.artifact_path(first).read_bytes() == (outputs["m1"] / "model.json").read_bytes()
    sample = registry.attachment_path(first, "test_sample.npz")
    assert sample is not None and sample.read_bytes() == (outputs["m1"] / "test_sample.npz").read_bytes()
    assert registry.verified_library(first) is not None


@pytest.mark.integration
def test_a_tampered_stored_file_is_an_integrity_error(pg_dsn, tmp_path, outputs, library):
    registry = open_registry(pg_dsn, cache_dir=tmp_path / "cache")
    model_id = approved(registry, outputs["m1"], library)
    sha = registry.get_model(model_id).artifact_sha256
    _admin(pg_dsn, "UPDATE registry_blobs SET data = $1 WHERE sha256 = $2", b"{}", sha)
    with pytest.raises(IntegrityError, match="does not match its recorded sha256"):
        registry.artifact_path(model_id)
    library_sha = library["sha256"]
    _admin(pg_dsn, "UPDATE registry_blobs SET data = $1 WHERE sha256 = $2", b"\x7fELF", library_sha)
    with pytest.raises(IntegrityError, match="does not match sha256"):
        registry.library_bytes(model_id, library_sha)
    registry.close()


@pytest.mark.integration
def test_schema_is_versioned_and_migrating_again_changes_nothing(pg_dsn):
    registry = open_registry(pg_dsn)
    assert isinstance(registry, DatabaseRegistry)
    assert registry.ensure_schema() == LATEST and registry.ensure_schema() == LATEST
    assert registry.generation() == 0
    rows = _admin(pg_dsn, "SELECT version FROM registry_schema_version ORDER BY version")
    assert [r["version"] for r in rows] == list(range(1, LATEST + 1))

    async def again() -> int:
        conn = await asyncpg.connect(pg_dsn)
        try:
            return await migrate(conn)
        finally:
            await conn.close()

    assert asyncio.run(again()) == LATEST
    registry.close()


@pytest.mark.integration
def test_an_unreachable_database_is_one_line_without_the_password(tmp_path):
    registry = open_registry("postgresql://vg:s3cret-word@127.0.0.1:1/none", connect_timeout=2)
    with pytest.raises(RegistryUnavailable) as failed:
        registry.serving_state()
    assert "s3cret-word" not in str(failed.value) and "\n" not in str(failed.value)
    registry.close()


@pytest.mark.integration
def test_a_connection_killed_mid_statement_is_not_reused(pg_dsn, pg_admin_dsn):
    from ml_pipeline.model_registry.db_session import DatabaseSession

    session = DatabaseSession(pg_dsn)
    pid = session.call(lambda conn: conn.fetchval("SELECT pg_backend_pid()"))
    killer = threading.Timer(0.5, _admin, (pg_admin_dsn, "SELECT pg_terminate_backend($1)", pid))
    killer.start()
    with pytest.raises(RegistryUnavailable):  # the administrator's termination, while the statement runs
        session.call(lambda conn: conn.fetchval("SELECT pg_sleep(5)"))
    assert session.call(lambda conn: conn.fetchval("SELECT pg_backend_pid()")) != pid  # at once: a new connection
    killer.join()
    session.close()


# ---- writers at once, writers killed ----


def _register_and_promote(dsn: str, output: str, worker: int, library: dict[str, Any], isolation: str) -> None:
    registry = open_registry(dsn, isolation=isolation)
    base = ModelMetadata.from_training_output(output)
    for j in range(MODELS_EACH):
        model_id = f"w{worker}_m{j}"
        registry.register_model(Path(output) / "model.json", replace(base, model_id=model_id), actor=f"worker{worker}")
        registry.record_compiled(model_id, library, actor=f"worker{worker}")
        registry.approve_model(model_id, actor=f"worker{worker}")
        registry.promote_to_champion(model_id, actor=f"worker{worker}")
    registry.close()


@pytest.mark.integration
@pytest.mark.parametrize("isolation", ["read_committed", "repeatable_read"])
def test_four_processes_registering_and_promoting_at_once_lose_nothing(pg_dsn, outputs, library, isolation):
    """Also under repeatable read, YSQL's default (snapshot) isolation: a writer that waited for the row lock
    restarts its transaction instead of failing."""
    context = multiprocessing.get_context("fork")
    args = (pg_dsn, str(outputs["m1"]), library, isolation)
    workers = [context.Process(target=_register_and_promote, args=(args[0], args[1], w, *args[2:])) for w in range(4)]
    for p in workers:
        p.start()
    for p in workers:
        p.join(timeout=180)
    assert [p.exitcode for p in workers] == [0] * WORKERS

    registry = open_registry(pg_dsn)
    expected = {f"w{w}_m{j}" for w in range(WORKERS) for j in range(MODELS_EACH)}
    models = {m.model_id: m.status for m in registry.list_models()}
    assert set(models) == expected
    state = registry.serving_state()
    assert state.generation == len(expected)
    assert [m for m, s in models.items() if s == "champion"] == [state.champion_id]
    assert all(s == "archived" for m, s in models.items() if m != state.champion_id)
    history = registry.history()
    for action in ("register", "approve", "compile"):
        assert sorted(e.model_id for e in history if e.action == action) == sorted(expected)
    crowned = [e for e in history if e.to_status == "champion"]
    assert [e.generation for e in crowned] == list(range(1, len(expected) + 1))  # serialised, in order
    demoted = [e.model_id for e in history if e.from_status == "champion"]
    assert demoted == [e.model_id for e in crowned[:-1]]
    registry.close()


WRITER = textwrap.dedent(
    """
    import json, sys
    from dataclasses import replace
    from pathlib import Path
    from ml_pipeline.model_registry import ModelMetadata, RegistryError, open_registry

    registry = open_registry(sys.argv[1])
    out, library = Path(sys.argv[2]), json.loads(sys.argv[3])
    base = ModelMetadata.from_training_output(out)
    n = 0
    while True:  # register, approve, promote, delete the replaced champion... until killed
        model_id = f"k{sys.argv[4]}_{n}"
        registry.register_model(out / "model.json", replace(base, model_id=model_id))
        registry.record_compiled(model_id, library)
        registry.approve_model(model_id)
        before = registry.serving_state().champion_id
        registry.promote_to_champion(model_id)
        if before is not None:
            try:
                registry.delete_model(before)
            except RegistryError:  # the other writer deleted it first
                pass
        n += 1
    """
)


def _check_consistent(dsn: str, registry: ModelRegistry) -> None:
    """Every stored model has all its files and blobs, the champion is one stored model, the history is whole."""
    state = registry.serving_state()
    models = {m.model_id: m for m in registry.list_models()}
    assert state.champion_id in models
    assert [m for m, meta in models.items() if meta.status == "champion"] == [state.champion_id]
    for model_id, meta in models.items():
        registry.artifact_path(model_id, verify=True)
        if meta.compiled is not None or meta.status == "champion":  # a compile record comes with its library
            assert registry.verified_library(model_id) is not None, model_id
        assert meta.status in {"champion", "approved", "candidate", "archived"}
    orphans = _admin(
        dsn,
        "SELECT count(*) AS n FROM registry_blobs b WHERE NOT EXISTS "
        "(SELECT 1 FROM registry_model_files f WHERE f.sha256 = b.sha256)",
    )
    assert orphans[0]["n"] == 0
    crowned = [e.generation for e in registry.history() if e.to_status == "champion"]
    assert crowned == list(range(1, state.generation + 1))  # no serving change without its history
    registered = {e.model_id for e in registry.history() if e.action == "register"}
    deleted = {e.model_id for e in registry.history() if e.action == "delete"}
    assert registered - deleted == set(models)


@pytest.mark.integration
def test_writers_killed_at_random_points_leave_a_consistent_registry(pg_dsn, outputs, library):
    registry = open_registry(pg_dsn)
    registry.ensure_schema()
    rng = random.Random(7)
    generations = [0]
    for round_ in range(8):
        writers = [
            subprocess.Popen(
                [sys.executable, "-c", WRITER, pg_dsn, str(outputs["m1"]), json.dumps(library), f"{round_}{w}"]
            )
            for w in range(2)
        ]
        wait_until(lambda: registry.generation() > generations[-1], timeout=60)  # both started writing
        time.sleep(rng.uniform(0.0, 0.5))  # ... then they are killed wherever they are
        for writer in writers:
            assert writer.poll() is None, "a writer stopped before it was killed"
            writer.send_signal(signal.SIGKILL)
            writer.wait(timeout=30)
        _check_consistent(pg_dsn, registry)
        generations.append(registry.generation())
    assert all(g0 < g1 for g0, g1 in zip(generations, generations[1:], strict=False))  # each round made progress
    locks = _admin(
        pg_dsn,
        "SELECT count(*) AS n FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
        "WHERE c.relname = 'registry_serving' AND l.mode = 'RowShareLock'",
    )
    assert locks[0]["n"] == 0  # no transaction of a killed writer is left holding the row
    registry.close()


# ---- servers converging from the database ----


@pytest.fixture(scope="module")
def models() -> dict[str, BuiltModel]:
    """Two models the product trained and compiled; their answers to ROW differ."""
    return {"db_a": served_model("db_a", seed=1), "db_b": served_model("db_b", seed=2)}


def request(key: str) -> pb.PredictionRequest:
    return pb.PredictionRequest(features=ROW, request_id=key)


class Load:
    """Client threads calling Predict without pause; every failure and wrong answer is recorded."""

    def __init__(self, port: int, expected: dict[str, float], threads: int = 2) -> None:
        self.expected = expected
        self.failures: list[str] = []
        self.answers = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(port, t), daemon=True) for t in range(threads)]
        for thread in self._threads:
            thread.start()

    def _run(self, port: int, t: int) -> None:
        client = Client(port)
        i = 0
        while not self._stop.is_set():
            try:
                response = client.predict(request(f"load-{t}-{i}"), timeout=5)
                if abs(response.probability - self.expected[response.model_version]) > 1e-6:
                    self.failures.append(f"{response.model_version} answered {response.probability}")
                self.answers += 1
            except grpc.RpcError as exc:
                self.failures.append(f"{exc.code()}: {exc.details()}")
            i += 1
        client.close()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)


def _served(port: int) -> str:
    client = Client(port)
    try:
        return str(client.predict(request("probe"), timeout=5).model_version)
    finally:
        client.close()


def _database_with(dsn: str, models: dict[str, BuiltModel], champion: str) -> ModelRegistry:
    registry = open_registry(dsn)
    for model in models.values():
        register_compiled(registry, model)
    registry.promote_to_champion(champion)
    return registry


@pytest.mark.e2e
def test_server_converges_from_the_database_under_load_with_no_failed_request(pg_dsn, models):
    expected = {name: float(m.xgboost_proba(np.array([ROW], dtype=np.float32))[0]) for name, m in models.items()}
    registry = _database_with(pg_dsn, models, "db_a")
    swaps: list[float] = []
    with running_server(pg_dsn) as server:  # type: ignore[arg-type]
        assert server.convergence.champion is not None and server.convergence.champion.model_id == "db_a"
        load = Load(server.port, expected)
        try:
            for i in range(20):
                target = "db_b" if i % 2 == 0 else "db_a"
                started = time.monotonic()
                registry.promote_to_champion(target)
                wait_until(lambda target=target: _served(server.port) == target)
                swaps.append(time.monotonic() - started)
        finally:
            load.stop()
    assert load.failures == [] and load.answers > 100
    assert registry.generation() == 21
    print(f"swap from promote to served: median {sorted(swaps)[10] * 1000:.0f} ms, max {max(swaps) * 1000:.0f} ms")
    registry.close()


@pytest.mark.e2e
def test_killed_registry_connections_leave_serving_on_and_it_catches_up(pg_dsn, pg_admin_dsn, models, caplog):
    expected = {name: float(m.xgboost_proba(np.array([ROW], dtype=np.float32))[0]) for name, m in models.items()}
    registry = _database_with(pg_dsn, models, "db_a")
    name = pg_dsn.rpartition("/")[2]
    kill = "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()"
    with running_server(pg_dsn) as server:  # type: ignore[arg-type]
        load = Load(server.port, expected)
        metrics = f"http://127.0.0.1:{server.metrics_port}/metrics"
        try:
            for _ in range(5):  # connections killed under the server: it reconnects at the next poll
                _admin(pg_admin_dsn, kill, name)
                time.sleep(0.2)
            _admin(pg_admin_dsn, f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            _admin(pg_admin_dsn, kill, name)
            wait_until(lambda: not server.registry_reachable)  # unreachable: said in the log and the metrics
            page = urllib.request.urlopen(metrics, timeout=5).read().decode()
            assert "ml_registry_reachable 0.0" in page
            time.sleep(1.0)  # serving goes on meanwhile
            assert _served(server.port) == "db_a"
            _admin(pg_admin_dsn, f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
            registry.promote_to_champion("db_b")  # a change made while the server was cut off... or just after
            wait_until(lambda: _served(server.port) == "db_b", timeout=20)
            assert server.registry_reachable
            page = urllib.request.urlopen(metrics, timeout=5).read().decode()
            assert "ml_registry_reachable 1.0" in page and "ml_registry_generation 2.0" in page
        finally:
            _admin(pg_admin_dsn, f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
            load.stop()
    assert load.failures == [] and load.answers > 100
    messages = [r.getMessage() for r in caplog.records]
    assert sum("cannot read the registry" in m for m in messages) >= 1
    assert any("reachable again" in m for m in messages)
    registry.close()


# ---- migration from a folder ----


@pytest.mark.e2e
def test_migrated_registry_serves_the_same_champion_with_the_same_answers(pg_dsn, tmp_path, models, capsys):
    folder = open_registry(tmp_path / "registry")
    for model in models.values():
        register_compiled(folder, model)
    folder.promote_to_champion("db_a")
    folder.set_challenger("db_b", 0.25)
    features = np.random.default_rng(3).normal(size=(200, 8)).tolist()
    rows = [pb.PredictionRequest(features=row, request_id=f"r{i}") for i, row in enumerate(features)]

    def answers(location: str) -> list[tuple[str, float]]:
        with running_server(location) as server:  # type: ignore[arg-type]
            client = Client(server.port)
            try:
                return [(r.model_version, r.probability) for r in (client.predict(q, timeout=5) for q in rows)]
            finally:
                client.close()

    def migrate_cli() -> dict[str, Any]:
        with pytest.raises(SystemExit) as exited:
            main(["registry", "migrate", "--from", str(tmp_path / "registry"), "--to", pg_dsn, "--json"])
        out, err = capsys.readouterr()
        assert exited.value.code == 0, err
        return dict(json.loads(out))

    report = migrate_cli()
    assert report["verified"] and report["models"] == 2 and report["libraries"] == 2
    assert (report["champion"], report["challenger"], report["generation"]) == ("db_a", "db_b", 2)
    assert report["history_added"] == len(folder.history())
    again = migrate_cli()  # safe to rerun: nothing added, still verified
    assert again["verified"] and again["history_added"] == 0

    database = open_registry(pg_dsn)
    assert database.serving_state() == folder.serving_state()
    assert [(e.action, e.model_id, e.generation) for e in database.history()] == [
        (e.action, e.model_id, e.generation) for e in folder.history()
    ]
    served = answers(pg_dsn)
    assert served == answers(str(tmp_path / "registry"))
    assert {version for version, _ in served} == {"db_a", "db_b"}

    database.promote_to_champion("db_b")  # the database moved on: a rerun does not overwrite it
    with pytest.raises(SystemExit) as exited:
        main(["registry", "migrate", "--from", str(tmp_path / "registry"), "--to", pg_dsn])
    assert exited.value.code == 1 and "changed since it was migrated" in capsys.readouterr().err
    database.close()


# ---- the CLI and retraining on a database registry ----


@pytest.mark.integration
def test_the_registry_commands_work_on_a_dsn(pg_dsn, tmp_path, outputs, library, capsys, monkeypatch):
    monkeypatch.setenv("ML_MODEL_REGISTRY_PATH", pg_dsn)

    def run(*argv: str) -> Any:
        with pytest.raises(SystemExit) as exited:
            main([*argv, "--json"])
        out, err = capsys.readouterr()
        assert exited.value.code == 0, err
        return json.loads(out)

    first = run("registry", "register", str(outputs["m1"]), "--reason", "weekly")["model_id"]
    second = run("registry", "register", str(outputs["m2"]), "--registry", pg_dsn)["model_id"]
    for model_id in (first, second):
        open_registry(pg_dsn).record_compiled(model_id, library)  # nothing to compile in this test
        run("registry", "approve", model_id)
    assert run("registry", "promote", first)["generation"] == 1
    assert run("rollout", "start", second, "--initial", "0.1")["challenger"] == second
    assert [row["status"] for row in run("registry", "list")] == ["champion", "challenger"]
    assert run("registry", "show", first)["path"].endswith(f"(model {first})")
    assert [e["action"] for e in run("registry", "history", first)][-1] == "promote"
    with pytest.raises(SystemExit) as exited:
        main(["registry", "delete", first])
    assert exited.value.code == 2 and "it is the champion" in capsys.readouterr().err


@pytest.mark.integration
def test_retraining_registers_its_candidate_in_the_database_registry(pg_dsn, tmp_path):
    clean = GeneratorSettings(fraud_rate=0.1, stealth_rate=0.0, fraud_label_noise=0.0, normal_label_noise=0.0)
    write_alerts_to_postgres(pg_dsn, generate_alerts(6_000, days=5, seed=5, settings=clean))
    config = MLPipelineConfig.from_env({"ML_MODEL_N_ESTIMATORS": "30", "ML_MODEL_MAX_DEPTH": "4"})
    settings = RetrainSettings(min_rows=500, runs_path=str(tmp_path / "runs"))
    record = retrain(config, source=pg_dsn, registry=pg_dsn, settings=settings)
    assert record.status == RunStatus.REGISTERED, record.reason
    registry = open_registry(pg_dsn)
    meta = registry.get_model(record.model_id)
    assert meta.status == "candidate" and meta.extra["retraining"]["run_id"] == record.run_id
    assert registry.attachment_path(record.model_id, "test_sample.npz") is not None
    assert f"--registry {registry.location}" in record.approval_command
    registry.close()
