"""Hardening of the registry and the server against other local users and crashes.

- Modes: under umask 000, what register, compile and promote create is never group- or world-writable.
- Trust: the server refuses a library that another user could have written (group/world-writable, foreign
  owner), that is not a regular file, or that lies outside the configured compiled-models folder, and keeps
  serving the previous model.
- Audit trail: a writer killed at any pause point, including just after its commit point, leaves a history
  that holds its transition exactly once (after the next writer reconciles it), and rollback restores the
  right former champion.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from model_factory import NUM_FEATURES, training_output

from ml_pipeline.compiler import compile_model
from ml_pipeline.compiler.registered import compile_registered
from ml_pipeline.inference_server.convergence import RegistryConvergence, UntrustedLibrary, trusted_library
from ml_pipeline.model_registry import ModelMetadata, ModelRegistry, ServingState, storage
from ml_pipeline.model_registry.registry import PENDING_HISTORY
from ml_pipeline.native import CompiledModel, ModelLoadError, ServingCore
from ml_pipeline.proto_gen import fraud_detection_pb2 as pb

pytestmark = pytest.mark.integration

WRITE_BITS = stat.S_IWGRP | stat.S_IWOTH


@pytest.fixture(scope="module")
def output(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return training_output(tmp_path_factory.mktemp("training") / "out", "xgboost_v1", rounds=2)


@pytest.fixture(scope="module")
def library(output: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One verified library of the training output's model, recorded for the models of the crash and trust tests,
    so promotion (which compiles a model without a verified library) has nothing to compile."""
    compiled = compile_model(output / "model.json", tmp_path_factory.mktemp("lib"), "shared", profile_guided=False)
    return compiled.registry_record().to_dict()


@pytest.fixture
def umask_000() -> Iterator[None]:
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


def register(registry: ModelRegistry, output: Path, model_id: str, compiled: dict[str, Any] | None = None) -> None:
    registry.register_model(
        output / "model.json", replace(ModelMetadata.from_training_output(output), model_id=model_id)
    )
    if compiled is not None:
        registry.record_compiled(model_id, compiled)
    registry.approve_model(model_id)


def modes(root: Path) -> dict[str, int]:
    """Mode bits of `root` and of everything under it, by path relative to `root`."""
    found = {".": stat.S_IMODE(root.lstat().st_mode)}
    for path in root.rglob("*"):
        found[str(path.relative_to(root))] = stat.S_IMODE(path.lstat().st_mode)
    return found


# ---- modes ----


def test_nothing_created_is_group_or_world_writable_under_umask_000(
    tmp_path: Path, output: Path, umask_000: None
) -> None:
    registry = ModelRegistry(tmp_path / "registry", compiled_models_dir=tmp_path / "promoted")
    compiled_dir = tmp_path / "volume" / "compiled_models"  # its parent is created too
    register(registry, output, "m1")
    compile_registered(registry, "m1", compiled_dir, progress=lambda _line: None)
    registry.promote_to_champion("m1")
    register(registry, output, "m2")
    registry.promote_to_champion("m2")  # no library yet: promotion compiles it, into compiled_models_dir
    registry.rollback()
    assert registry.serving_state().champion_id == "m1"

    found = {
        **{f"registry/{p}": m for p, m in modes(registry.root).items()},
        **{f"volume/{p}": m for p, m in modes(tmp_path / "volume").items()},
        **{f"promoted/{p}": m for p, m in modes(tmp_path / "promoted").items()},
    }
    assert {"registry/.lock", "registry/serving.json", "registry/history.jsonl", "registry/models/m1/metadata.json",
            "registry/models/m1/model.json", "registry/models/m1/test_sample.npz", "registry/.staging",
            "volume/compiled_models/m1.so", "promoted/m2.so"} <= set(found)  # fmt: skip
    assert {path: oct(mode) for path, mode in found.items() if mode & WRITE_BITS} == {}
    for path, mode in found.items():
        full = tmp_path / path
        if full.is_dir():
            expected = storage.PRIVATE_DIR_MODE if full.name == ".staging" else storage.DIR_MODE
        else:
            expected = storage.LIBRARY_MODE if full.suffix == ".so" else storage.FILE_MODE
        assert (path, oct(mode)) == (path, oct(expected))


def test_storage_helpers_set_their_modes_whatever_the_umask(tmp_path: Path) -> None:
    previous = os.umask(0o077)  # a stricter umask must not make the registry unreadable to the servers either
    try:
        storage.make_dirs(tmp_path / "a" / "b")
        storage.write_atomic(tmp_path / "a" / "b" / "f", b"x")
        storage.append_lines(tmp_path / "a" / "h", ["1"])
        storage.copy_durable(tmp_path / "a" / "h", tmp_path / "a" / "c")
    finally:
        os.umask(previous)
    assert {p: oct(m) for p, m in modes(tmp_path / "a").items()} == {
        ".": "0o755", "b": "0o755", "b/f": "0o644", "h": "0o644", "c": "0o644"
    }  # fmt: skip


# ---- what the server refuses to load ----


def _predict(core: ServingCore) -> str:
    request = pb.PredictionRequest(features=[0.1] * NUM_FEATURES, request_id="probe").SerializeToString()
    return pb.PredictionResponse.FromString(core.handle(request)).model_version


@pytest.fixture
def serving(tmp_path: Path, output: Path, library: dict[str, Any]) -> tuple[ModelRegistry, Path]:
    """A registry whose champion `a` has its library in tmp_path/compiled, and an approved `b` to promote."""
    compiled_dir = tmp_path / "compiled"
    storage.make_dirs(compiled_dir)
    shutil.copy(library["path"], compiled_dir / "a.so")
    registry = ModelRegistry(tmp_path / "registry")
    register(registry, output, "a", {**library, "path": str(compiled_dir / "a.so")})
    register(registry, output, "b", library)
    registry.promote_to_champion("a")
    return registry, compiled_dir


def _refused(
    registry: ModelRegistry, compiled: dict[str, Any], caplog: pytest.LogCaptureFixture, **options: Any
) -> str:
    """Serve `a`, then promote `b` with `compiled` as its record: `b` must be refused while `a` keeps serving.
    Returns the logged reason."""
    core = ServingCore()
    convergence = RegistryConvergence(registry, core, **options)
    assert convergence.converge() and _predict(core) == "a"
    registry.record_compiled("b", compiled)
    registry.promote_to_champion("b")
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="ml_pipeline.inference_server.convergence"):
        assert convergence.converge()
    assert convergence.champion is not None and convergence.champion.model_id == "a"
    assert _predict(core) == "a"  # the previous model keeps serving
    assert convergence.events["load_failed", "champion"] == 1
    [record] = caplog.records
    assert "champion b not loaded, keeping a: refused to load" in record.getMessage()
    return record.getMessage()


def test_a_world_writable_library_is_refused_and_the_previous_model_keeps_serving(
    serving: tuple[ModelRegistry, Path], library: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    registry, compiled_dir = serving
    writable = compiled_dir / "b.so"
    shutil.copy(library["path"], writable)
    writable.chmod(0o777)
    message = _refused(registry, {**library, "path": str(writable)}, caplog, compiled_models_dir=compiled_dir)
    assert f"{writable}: it is group- and world-writable (mode 0777)" in message
    with pytest.raises(ModelLoadError, match=r"world-writable \(mode 0777\)"), trusted_library(writable):
        pass
    writable.chmod(0o775)
    with pytest.raises(UntrustedLibrary, match=r"it is group-writable \(mode 0775\)"), trusted_library(writable):
        pass

    writable.chmod(0o755)  # fixed: the next forced convergence loads it
    assert RegistryConvergence(registry, ServingCore()).converge(force=True)
    convergence = RegistryConvergence(registry, ServingCore(), compiled_models_dir=compiled_dir)
    assert convergence.converge() and convergence.champion is not None and convergence.champion.model_id == "b"


def test_a_library_owned_by_another_user_is_refused(
    serving: tuple[ModelRegistry, Path], library: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    if os.geteuid() != 0:
        pytest.skip("giving a file to another user needs root")
    registry, compiled_dir = serving
    foreign = compiled_dir / "b.so"
    shutil.copy(library["path"], foreign)
    os.chown(foreign, 54321, 54321)
    message = _refused(registry, {**library, "path": str(foreign)}, caplog)
    assert f"it is owned by uid 54321, neither root nor this server's user (uid {os.geteuid()})" in message


def test_a_library_outside_the_compiled_models_folder_is_refused(
    serving: tuple[ModelRegistry, Path], library: dict[str, Any], caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    registry, compiled_dir = serving
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    outside = elsewhere / "b.so"
    shutil.copy(library["path"], outside)
    message = _refused(registry, {**library, "path": str(outside)}, caplog, compiled_models_dir=compiled_dir)
    assert f"it is outside the compiled-models folder {compiled_dir}" in message

    # a folder inside that is a symbolic link to another place: the library resolves outside
    (compiled_dir / "sub").symlink_to(elsewhere, target_is_directory=True)
    with (
        pytest.raises(UntrustedLibrary, match=f"resolves to {outside}"),
        trusted_library(compiled_dir / "sub" / "b.so", compiled_dir),
    ):
        pass
    # the library itself a symbolic link, even to a trusted file inside: not a regular file
    (compiled_dir / "link.so").symlink_to(compiled_dir / "a.so")
    with (
        pytest.raises(UntrustedLibrary, match="symbolic link, not a regular file"),
        trusted_library(compiled_dir / "link.so"),
    ):
        pass
    # neither a FIFO (opening it would block) nor a folder
    os.mkfifo(compiled_dir / "fifo.so")
    (compiled_dir / "folder.so").mkdir()
    for odd in (compiled_dir / "fifo.so", compiled_dir / "folder.so"):
        with pytest.raises(UntrustedLibrary, match="not a regular file"), trusted_library(odd):
            pass
    # without a configured folder, a trusted library elsewhere loads (the default: no folder restriction)
    convergence = RegistryConvergence(registry, ServingCore())
    assert convergence.converge() and convergence.champion is not None and convergence.champion.model_id == "b"


def test_a_load_error_names_the_library_not_the_descriptor(serving: tuple[ModelRegistry, Path]) -> None:
    _, compiled_dir = serving
    expected = f"{compiled_dir / 'a.so'}: sha256 is"
    with pytest.raises(ModelLoadError, match=expected) as info, trusted_library(compiled_dir / "a.so") as path:
        CompiledModel(path, "0" * 64, "a")
    assert "/proc/self/fd" not in str(info.value)


# ---- the audit trail survives a writer killed at any point ----

WRITER = textwrap.dedent(
    """
    import sys
    from ml_pipeline.model_registry import ModelRegistry

    registry = ModelRegistry(sys.argv[1])
    if sys.argv[2] == "promote":
        registry.promote_to_champion(sys.argv[3])
    else:
        registry.rollback()
    """
)

PAUSE_POINTS = ["serving.json", storage.AFTER_COMMIT, "history.jsonl", "metadata.json"]


def _kill_paused_writer(root: Path, args: list[str], pause_at: str, marker: Path) -> None:
    env = {**os.environ, storage.PAUSE_ENV: f"{pause_at}:{marker}"}
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(root), *args], env=env)
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert writer.poll() is None, "the writer ended before reaching the pause point"
        assert time.monotonic() < deadline, "the writer never reached the pause point"
        time.sleep(0.02)
    writer.send_signal(signal.SIGKILL)
    assert writer.wait(timeout=30) == -signal.SIGKILL


def _file_entries(registry: ModelRegistry) -> list[dict[str, Any]]:
    return [json.loads(line) for line in registry.history_file.read_text().splitlines()]


@pytest.mark.parametrize("pause_at", PAUSE_POINTS)
@pytest.mark.parametrize("action", ["promote", "rollback"])
def test_a_writer_killed_at_any_point_loses_no_transition_and_rollback_picks_the_right_champion(
    tmp_path: Path, output: Path, library: dict[str, Any], action: str, pause_at: str
) -> None:
    registry = ModelRegistry(tmp_path / "registry")
    for model_id in ("a", "b", "c"):
        register(registry, output, model_id, library)
    registry.promote_to_champion("a")
    registry.promote_to_champion("b")
    if action == "promote":  # champion b (previous a); the writer promotes c
        old, new, former_before = "b", "c", "a"
    else:  # champion c (previous b); the writer rolls back to b
        registry.promote_to_champion("c")
        old, new, former_before = "c", "b", "b"
    before = registry.serving_state()
    history_before = registry.history()

    marker = tmp_path / "paused"
    _kill_paused_writer(registry.root, [action, "c"] if action == "promote" else [action], pause_at, marker)

    fresh = ModelRegistry(registry.root)  # a new process's view: nothing reconciled yet
    state = fresh.serving_state()
    committed = pause_at != "serving.json"
    generation = before.generation + 1
    if not committed:
        assert state == before and fresh.history() == history_before
        expected_former = former_before
    else:
        assert (state.champion_id, state.previous_champion_id, state.generation) == (new, old, generation)
        transition = [(e.action, e.model_id, e.from_status, e.to_status) for e in fresh.history()[-2:]]
        assert transition == [(action, old, "champion", "archived"), (action, new, "approved" if action ==
                              "promote" else "archived", "champion")]  # fmt: skip
        assert all(e.generation == generation for e in fresh.history()[-2:])
        in_file = [e for e in _file_entries(fresh) if e["generation"] == generation]
        assert len(in_file) == (2 if pause_at == "metadata.json" else 0)  # appended before the status cache
        expected_former = old
    assert fresh.former_champion() == expected_former
    assert state.champion_id is not None and fresh.get_model(state.champion_id).status == "champion"

    rolled = fresh.rollback(reason="after the crash")  # a writer: reconciles the history first
    assert (rolled.champion_id, rolled.previous_champion_id) == (expected_former, state.champion_id)
    entries = _file_entries(fresh)
    ids = [e["entry_id"] for e in entries if "entry_id" in e]
    assert len(ids) == len(set(ids))  # nothing appended twice
    if committed:
        assert [(e["model_id"], e["to_status"]) for e in entries if e["generation"] == generation] == [
            (old, "archived"),
            (new, "champion"),
        ]
    assert [(e["action"], e["generation"]) for e in entries[-2:]] == [("rollback", rolled.generation)] * 2
    assert [e.generation for e in fresh.history()] == [e["generation"] for e in entries]  # view == file
    assert json.loads(fresh.serving_file.read_text())[PENDING_HISTORY] == entries[-2:]


def test_reconciliation_is_idempotent_and_a_torn_last_line_is_cut_off(
    tmp_path: Path, output: Path, library: dict[str, Any]
) -> None:
    registry = ModelRegistry(tmp_path / "registry")
    for model_id in ("a", "b"):
        register(registry, output, model_id, library)
    registry.promote_to_champion("a")
    state = registry.promote_to_champion("b")
    committed = json.loads(registry.serving_file.read_text())[PENDING_HISTORY]
    # what a writer killed after its commit point and in the middle of its append leaves behind
    lines = registry.history_file.read_text().splitlines(keepends=True)
    registry.history_file.write_text("".join(lines[:-2]) + lines[-2][:25])
    assert [e.generation for e in registry.history()[-2:]] == [state.generation] * 2  # shown from serving.json
    for model_id in ("x1", "x2"):  # every writer reconciles (register, approve): only the first one appends
        register(registry, output, model_id)
    entries = _file_entries(registry)
    assert [e for e in entries if e["generation"] == state.generation] == committed
    ids = [e["entry_id"] for e in entries]
    assert len(ids) == len(set(ids))


def test_a_registry_written_before_previous_champion_and_pending_history_still_works(
    tmp_path: Path, output: Path, library: dict[str, Any]
) -> None:
    registry = ModelRegistry(tmp_path / "registry")
    for model_id in ("a", "b"):
        register(registry, output, model_id, library)
    registry.promote_to_champion("a")
    registry.promote_to_champion("b")
    old_state = json.loads(registry.serving_file.read_text())
    del old_state["previous_champion_id"], old_state[PENDING_HISTORY]
    registry.serving_file.write_text(json.dumps(old_state))
    registry.history_file.write_text(
        "".join(json.dumps({k: v for k, v in e.items() if k != "entry_id"}) + "\n" for e in _file_entries(registry))
    )
    assert registry.serving_state() == ServingState.from_dict(old_state)
    assert registry.serving_state().previous_champion_id is None
    assert registry.former_champion() == "a"  # from the history, as before
    state = registry.rollback()
    assert (state.champion_id, state.previous_champion_id) == ("a", "b")
    assert [(e.action, e.model_id) for e in registry.history()[-2:]] == [("rollback", "b"), ("rollback", "a")]


@pytest.mark.parametrize("block", [1, 2, 3, 7, 1 << 16])
def test_lines_from_end_reads_complete_lines_backwards(tmp_path: Path, block: int) -> None:
    path = tmp_path / "lines"
    path.write_bytes(b"one\ntwo\n\nthree\nfour-torn")
    assert list(storage.lines_from_end(path, block)) == [b"three", b"two", b"one"]
    path.write_bytes(b"only-torn")
    assert list(storage.lines_from_end(path, block)) == []
    path.write_bytes(b"a\nbb\n")
    assert list(storage.lines_from_end(path, block)) == [b"bb", b"a"]
    assert list(storage.lines_from_end(tmp_path / "missing", block)) == []
