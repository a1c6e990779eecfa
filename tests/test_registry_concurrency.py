"""Several writer processes at once, and writers killed (SIGKILL) mid-write: nothing lost, state always valid."""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from model_factory import training_output

from ml_pipeline.compiler import compile_model
from ml_pipeline.model_registry import ModelMetadata, ModelRegistry
from ml_pipeline.model_registry.storage import PAUSE_ENV

pytestmark = pytest.mark.integration

WORKERS, MODELS_EACH = 4, 5


@pytest.fixture(scope="module")
def output(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return training_output(tmp_path_factory.mktemp("training") / "out", "xgboost_v1", rounds=2)


@pytest.fixture(scope="module")
def library(output: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One verified library of the training output's model, recorded for every model id of these tests, so
    promotion (which compiles a model without a verified library) has nothing to compile: these tests are
    about the registry's writes, not the compiler."""
    compiled = compile_model(output / "model.json", tmp_path_factory.mktemp("lib"), "shared", profile_guided=False)
    return compiled.registry_record().to_dict()


def _register_and_promote(root: str, output: str, worker: int, library: dict[str, Any]) -> None:
    registry = ModelRegistry(root)
    base = ModelMetadata.from_training_output(output)
    for j in range(MODELS_EACH):
        model_id = f"w{worker}_m{j}"
        registry.register_model(Path(output) / "model.json", replace(base, model_id=model_id), actor=f"worker{worker}")
        registry.record_compiled(model_id, library, actor=f"worker{worker}")
        registry.approve_model(model_id, actor=f"worker{worker}")
        registry.promote_to_champion(model_id, actor=f"worker{worker}")


def test_concurrent_writers_lose_nothing(tmp_path, output, library):
    root = tmp_path / "registry"
    context = multiprocessing.get_context("fork")
    workers = [
        context.Process(target=_register_and_promote, args=(str(root), str(output), w, library)) for w in range(WORKERS)
    ]
    for p in workers:
        p.start()
    for p in workers:
        p.join(timeout=120)
    assert [p.exitcode for p in workers] == [0] * WORKERS

    registry = ModelRegistry(root)
    expected = {f"w{w}_m{j}" for w in range(WORKERS) for j in range(MODELS_EACH)}
    models = {m.model_id: m.status for m in registry.list_models()}
    assert set(models) == expected
    state = registry.serving_state()
    assert state.generation == len(expected)  # one serving change per promotion
    assert [m for m, s in models.items() if s == "champion"] == [state.champion_id]
    assert all(s == "archived" for m, s in models.items() if m != state.champion_id)

    history = registry.history()
    for action in ("register", "approve"):
        assert sorted(e.model_id for e in history if e.action == action) == sorted(expected)
    crowned = [e for e in history if e.to_status == "champion"]
    assert sorted(e.model_id for e in crowned) == sorted(expected)
    assert [e.generation for e in crowned] == list(range(1, len(expected) + 1))  # serialised, in order
    assert crowned[-1].model_id == state.champion_id
    demoted = [e.model_id for e in history if e.from_status == "champion"]
    assert demoted == [e.model_id for e in crowned[:-1]]  # each champion was replaced by the next one
    registry.artifact_path(state.champion_id, verify=True)


WRITER = textwrap.dedent(
    """
    import json
    import sys
    from dataclasses import replace
    from pathlib import Path
    from ml_pipeline.model_registry import ModelMetadata, ModelRegistry

    registry = ModelRegistry(sys.argv[1])
    action, model_id = sys.argv[2], sys.argv[3]
    if action == "register":
        out = Path(sys.argv[4])
        meta = replace(ModelMetadata.from_training_output(out), model_id=model_id)
        registry.register_model(out / "model.json", meta)
        registry.record_compiled(model_id, json.loads(sys.argv[5]))
    elif action == "approve":
        registry.approve_model(model_id)
    elif action == "promote":
        registry.promote_to_champion(model_id)
    elif action == "flip":  # promote two models back and forth until killed
        other = sys.argv[4]
        while True:
            registry.promote_to_champion(model_id if registry.serving_state().champion_id == other else other)
    """
)


def _writer(root: Path, *args: str, pause_at: str | None = None, marker: Path | None = None) -> subprocess.Popen:
    env = dict(os.environ)
    if pause_at:
        env[PAUSE_ENV] = f"{pause_at}:{marker}"
    return subprocess.Popen([sys.executable, "-c", WRITER, str(root), *args], env=env)


def _kill_when_paused(process: subprocess.Popen, marker: Path) -> None:
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert process.poll() is None, "the writer ended before reaching the pause point"
        assert time.monotonic() < deadline, "the writer never reached the pause point"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=30) == -signal.SIGKILL


def _registry_with_champion(root: Path, output: Path, library: dict[str, Any]) -> ModelRegistry:
    registry = ModelRegistry(root)
    base = ModelMetadata.from_training_output(output)
    for model_id in ("a", "b"):
        registry.register_model(output / "model.json", replace(base, model_id=model_id))
        registry.record_compiled(model_id, library)
        registry.approve_model(model_id)
    registry.promote_to_champion("a")
    return registry


def test_writer_killed_before_renaming_serving_json_leaves_previous_state(tmp_path, output, library):
    registry = _registry_with_champion(tmp_path / "registry", output, library)
    before, history_before = registry.serving_state(), registry.history()
    marker = tmp_path / "paused"
    _kill_when_paused(_writer(registry.root, "promote", "b", pause_at="serving.json", marker=marker), marker)

    assert list(registry.root.glob(".serving.json.*.tmp"))  # the new state was fully written, never renamed
    assert registry.serving_state() == before
    assert {m.model_id: m.status for m in registry.list_models()} == {"a": "champion", "b": "approved"}
    assert registry.history() == history_before
    assert registry.promote_to_champion("b").champion_id == "b"  # the lock died with the writer
    assert not list(registry.root.glob(".serving.json.*.tmp"))


def test_writer_killed_before_publishing_a_model_leaves_no_half_model(tmp_path, output, library):
    registry = _registry_with_champion(tmp_path / "registry", output, library)
    marker = tmp_path / "paused"
    _kill_when_paused(
        _writer(registry.root, "register", "c", str(output), json.dumps(library), pause_at="c", marker=marker), marker
    )

    assert [m.model_id for m in registry.list_models()] == ["a", "b"]
    assert list((registry.root / ".staging").iterdir())  # the complete copy was waiting to be renamed
    registry.register_model(output / "model.json", replace(ModelMetadata.from_training_output(output), model_id="c"))
    assert registry.get_model("c").status == "candidate"
    assert [p.name for p in (registry.root / ".staging").iterdir()] == []


def test_writer_killed_before_renaming_metadata_keeps_the_old_metadata(tmp_path, output, library):
    registry = _registry_with_champion(tmp_path / "registry", output, library)
    registry.register_model(output / "model.json", replace(ModelMetadata.from_training_output(output), model_id="c"))
    marker = tmp_path / "paused"
    _kill_when_paused(_writer(registry.root, "approve", "c", pause_at="metadata.json", marker=marker), marker)
    assert registry.get_model("c").status == "candidate"
    assert list(registry.model_dir("c").glob(".metadata.json.*.tmp"))
    assert registry.approve_model("c").status == "approved"
    assert not list(registry.model_dir("c").glob(".metadata.json.*.tmp"))


def test_writers_killed_at_random_points_always_leave_a_valid_registry(tmp_path, output, library):
    registry = _registry_with_champion(tmp_path / "registry", output, library)
    rng = random.Random(11)
    generations = [registry.serving_state().generation]
    for _ in range(6):
        writer = _writer(registry.root, "flip", "a", "b")
        time.sleep(rng.uniform(0.3, 0.8))  # the interpreter starts in ~0.1 s, then it flips continuously
        assert writer.poll() is None, "the writer stopped before it was killed"
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=30)

        state = registry.serving_state()
        statuses = {m.model_id: m.status for m in registry.list_models()}
        assert state.champion_id in {"a", "b"} and state.challenger_id is None
        assert sorted(statuses.values()) == ["archived", "champion"] and statuses[state.champion_id] == "champion"
        registry.history()
        registry.artifact_path(state.champion_id, verify=True)
        generations.append(state.generation)
    assert all(g0 < g1 for g0, g1 in zip(generations, generations[1:], strict=False))  # each writer made progress
