"""The lifecycle invariant against a real server, on both transports: whatever order an operator types
commands in, a model the registry says is serving is served within the poll interval, or the command that made
it serving failed with one line and changed nothing.

- promote a model that was never compiled (the README's own order: promote, then compile): promotion compiles
  it and the server answers with it;
- compile, then promote: the same;
- rollout start of a challenger that was never compiled: it is compiled and gets its share at once;
- a serving model recompiled into a different library: the new library is published and the server swaps;
- no C compiler: promotion fails with one clear error and the serving state is unchanged.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from model_factory import training_output
from native_support import require_native_transport
from server_harness import Client, running_server, wait_until

from ml_pipeline.compiler import compile_model
from ml_pipeline.compiler.registered import BUILD_KEY, build_key, compile_registered, up_to_date_library
from ml_pipeline.errors import JobFailed
from ml_pipeline.inference_server.convergence import LoadedModel
from ml_pipeline.model_registry import ModelMetadata, ModelRegistry
from ml_pipeline.proto_gen import fraud_detection_pb2 as pb

pytestmark = pytest.mark.e2e

POLL_SECONDS = 0.2
ROW = [0.3, -1.2, 0.8, 0.1, float("nan"), 2.0, -0.4, 1.1]
FIRST, SECOND = "life_v1", "life_v2"


@pytest.fixture(autouse=True, params=["grpcio", "native"])
def transport(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "native":
        require_native_transport()
    monkeypatch.setenv("ML_INFERENCE_TRANSPORT", request.param)
    return request.param


@pytest.fixture
def registry(tmp_path: Path) -> ModelRegistry:
    """Two approved models, neither compiled; promotion compiles into tmp_path/compiled."""
    registry = ModelRegistry(tmp_path / "registry", compiled_models_dir=tmp_path / "compiled")
    for seed, model_id in enumerate((FIRST, SECOND), start=1):
        folder = training_output(tmp_path / model_id, model_id, seed=seed)
        registry.register_model(folder / "model.json", ModelMetadata.from_training_output(folder), _attachments(folder))
        registry.approve_model(model_id, actor="test")
    return registry


def _attachments(folder: Path) -> dict[str, Path]:
    return {"test_sample.npz": folder / "test_sample.npz"}


def _served_by(client: Client) -> str:
    return client.predict(pb.PredictionRequest(features=ROW, request_id="call-1"), timeout=5).model_version


def _serves(client: Client, model_id: str) -> bool:
    try:
        return _served_by(client) == model_id
    except Exception:  # UNAVAILABLE until the first champion is loaded
        return False


def _loaded_sha(loaded: LoadedModel | None) -> str | None:
    return None if loaded is None else loaded.sha256


def _within_poll(client: Client, model_id: str) -> float:
    """Seconds until `client` is answered by `model_id`; the invariant allows the poll interval + 1 s."""
    start = time.monotonic()
    wait_until(lambda: _serves(client, model_id), timeout=POLL_SECONDS + 1.0)
    return time.monotonic() - start


def test_promote_then_compile_serves_within_the_poll_interval(registry: ModelRegistry) -> None:
    with running_server(registry.root, poll_seconds=POLL_SECONDS) as server:
        client = Client(server.port)
        assert not _serves(client, FIRST)  # nothing serves yet
        registry.promote_to_champion(FIRST, actor="test")  # never compiled: promotion compiles it
        _within_poll(client, FIRST)
        assert up_to_date_library(registry, FIRST) is not None
        compile_registered(registry, FIRST, registry.compiled_models_dir)  # the README's next step: harmless
        assert _served_by(client) == FIRST
        client.close()


def test_compile_then_promote_serves_within_the_poll_interval(registry: ModelRegistry) -> None:
    compile_registered(registry, FIRST, registry.compiled_models_dir)
    with running_server(registry.root, poll_seconds=POLL_SECONDS) as server:
        client = Client(server.port)
        registry.promote_to_champion(FIRST, actor="test")
        _within_poll(client, FIRST)
        client.close()


def test_an_uncompiled_challenger_is_compiled_and_served_at_rollout_start(registry: ModelRegistry) -> None:
    registry.promote_to_champion(FIRST, actor="test")
    with running_server(registry.root, poll_seconds=POLL_SECONDS) as server:
        client = Client(server.port)
        _within_poll(client, FIRST)
        registry.set_challenger(SECOND, 1.0, actor="test")  # all traffic: every answer is the challenger's
        _within_poll(client, SECOND)
        assert server.convergence.challenger is not None and server.convergence.challenger.model_id == SECOND
        client.close()


def test_a_recompiled_serving_model_is_published_and_swapped(registry: ModelRegistry, tmp_path: Path) -> None:
    registry.promote_to_champion(FIRST, actor="test")
    with running_server(registry.root, poll_seconds=POLL_SECONDS) as server:
        client = Client(server.port)
        _within_poll(client, FIRST)
        loaded = server.convergence.champion
        assert loaded is not None
        generation = registry.serving_state().generation
        # the same model built without profile guidance: other bytes, same scores
        other = compile_model(registry.artifact_path(FIRST), tmp_path / "other", FIRST, profile_guided=False)
        assert other.sha256 != loaded.sha256
        registry.record_compiled(FIRST, {**other.registry_record(), BUILD_KEY: build_key(registry, FIRST)})
        assert registry.serving_state().generation == generation + 1  # published
        wait_until(lambda: _loaded_sha(server.convergence.champion) == other.sha256, timeout=POLL_SECONDS + 1.0)
        assert _served_by(client) == FIRST
        client.close()


def test_without_a_compiler_promotion_fails_and_changes_nothing(
    registry: ModelRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = registry.serving_state()
    monkeypatch.setenv("CC", "/nonexistent/cc")
    with pytest.raises(JobFailed, match=f"{FIRST} cannot serve.*C compiler.*serving state is unchanged"):
        registry.promote_to_champion(FIRST, actor="test")
    assert registry.serving_state() == before
    assert registry.get_model(FIRST).status == "approved"
