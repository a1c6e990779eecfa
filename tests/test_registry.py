"""ModelRegistry and ModelMetadata: every method, every refusal, integrity checks, status after a crash."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from model_factory import training_output

from ml_pipeline.errors import JobFailed, UsageError
from ml_pipeline.model_registry import (
    IntegrityError,
    ModelMetadata,
    ModelRegistry,
    RegistryError,
    ServingState,
)
from ml_pipeline.model_registry.registry import default_actor

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Four real training output folders (tiny XGBoost models), shared by the tests of this module."""
    root = tmp_path_factory.mktemp("training")
    return {f"m{i}": training_output(root / f"m{i}", f"xgboost_v{i}", seed=i) for i in range(1, 5)}


@pytest.fixture
def registry(tmp_path: Path) -> ModelRegistry:
    return ModelRegistry(tmp_path / "registry")


def register(registry: ModelRegistry, out: Path, **kwargs) -> ModelMetadata:
    meta = ModelMetadata.from_training_output(out)
    return registry.register_model(
        out / "model.json", meta, attachments={"test_sample.npz": out / "test_sample.npz"}, **kwargs
    )


def approved(registry: ModelRegistry, out: Path) -> str:
    model_id = register(registry, out).model_id
    registry.approve_model(model_id)
    return model_id


def with_champion(registry: ModelRegistry, outputs: dict[str, Path]) -> str:
    champion = approved(registry, outputs["m1"])
    registry.promote_to_champion(champion)
    return champion


# ---- metadata ----


def test_metadata_round_trips_through_json_keeping_unknown_keys(outputs):
    meta = ModelMetadata.from_training_output(outputs["m1"])
    data = meta.to_dict()
    data["field_from_a_newer_version"] = {"x": 1}
    again = ModelMetadata.from_json(json.dumps(data))
    assert again.extra["field_from_a_newer_version"] == {"x": 1}
    assert again.extra["trainer_note"] == meta.extra["trainer_note"]
    assert again.to_dict() == data
    assert again.auc_score == pytest.approx(0.91) and again.metrics["specificity"] == 0.95
    assert again.threshold == 0.7 and again.num_trees == 4 and again.data_window["rows"] == 300


def test_metadata_from_training_output_refuses_incomplete_folder(tmp_path, outputs):
    with pytest.raises(RegistryError, match=r"model\.json is missing"):
        ModelMetadata.from_training_output(tmp_path)
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("model.json", "test_sample.npz"):
        (broken / name).write_bytes((outputs["m1"] / name).read_bytes())
    (broken / "training.json").write_text("{not json")
    with pytest.raises(RegistryError, match="training.json is not valid JSON"):
        ModelMetadata.from_training_output(broken)
    (broken / "training.json").write_text('{"version": "1"}')
    with pytest.raises(RegistryError, match="model_id"):
        ModelMetadata.from_training_output(broken)


# ---- register ----


def test_register_copies_artifact_and_attachment_with_hashes(registry, outputs):
    meta = register(registry, outputs["m1"], actor="alice", reason="nightly")
    assert meta.status == "candidate"
    folder = registry.model_dir("xgboost_v1")
    assert (folder / "model.json").read_bytes() == (outputs["m1"] / "model.json").read_bytes()
    assert registry.artifact_path("xgboost_v1") == folder / "model.json"
    assert registry.attachment_path("xgboost_v1", "test_sample.npz") == folder / "test_sample.npz"
    assert registry.attachment_path("xgboost_v1", "absent.bin") is None
    assert set(meta.attachments) == {"test_sample.npz"}
    assert registry.get_model("xgboost_v1") == meta
    [entry] = registry.history()
    assert (entry.action, entry.actor, entry.reason, entry.to_status) == ("register", "alice", "nightly", "candidate")
    assert list((registry.root / ".staging").iterdir()) == []


def test_register_refusals(registry, outputs, tmp_path):
    register(registry, outputs["m1"])
    with pytest.raises(RegistryError, match="already registered"):
        register(registry, outputs["m1"])
    meta = ModelMetadata.from_training_output(outputs["m2"])
    with pytest.raises(RegistryError, match="missing or unreadable"):
        registry.register_model(tmp_path / "nope.json", meta)
    with pytest.raises(RegistryError, match="missing or unreadable"):
        registry.register_model(outputs["m2"] / "model.json", meta, attachments={"x.npz": tmp_path / "nope"})
    with pytest.raises(RegistryError, match="invalid attachment name"):
        registry.register_model(outputs["m2"] / "model.json", meta, attachments={"../x": outputs["m2"] / "model.json"})
    with pytest.raises(RegistryError, match="invalid model id"):
        registry.register_model(outputs["m2"] / "model.json", ModelMetadata("../evil", "1", "2026-01-01"))
    with pytest.raises(RegistryError, match="changed since its metadata was built"):
        registry.register_model(outputs["m3"] / "model.json", meta)
    assert [m.model_id for m in registry.list_models()] == ["xgboost_v1"]
    assert list((registry.root / ".staging").iterdir()) == []
    assert issubclass(RegistryError, UsageError) and issubclass(IntegrityError, JobFailed)


def test_unknown_model_is_refused_everywhere(registry):
    for call in (
        lambda: registry.get_model("nope"),
        lambda: registry.model_dir("nope"),
        lambda: registry.artifact_path("nope"),
        lambda: registry.approve_model("nope"),
        lambda: registry.promote_to_champion("nope"),
        lambda: registry.archive_model("nope"),
        lambda: registry.delete_model("nope"),
        lambda: registry.compare_models("nope", "nope"),
        lambda: registry.record_compiled("nope", {"path": "/x.so", "sha256": "0"}),
    ):
        with pytest.raises(RegistryError, match="unknown model 'nope'"):
            call()


# ---- lifecycle ----


def test_approve_only_candidates(registry, outputs):
    register(registry, outputs["m1"])
    meta = registry.approve_model("xgboost_v1", actor="bob", reason="reviewed")
    assert (meta.status, meta.approved_by) == ("approved", "bob") and meta.approved_at
    with pytest.raises(RegistryError, match="only a candidate can be approved"):
        registry.approve_model("xgboost_v1")
    assert registry.serving_state().generation == 0


def test_promote_needs_approval_or_force(registry, outputs):
    register(registry, outputs["m1"])
    with pytest.raises(RegistryError, match="never approved"):
        registry.promote_to_champion("xgboost_v1")
    state = registry.promote_to_champion("xgboost_v1", force=True, reason="incident")
    assert (state.champion_id, state.generation) == ("xgboost_v1", 1)
    assert registry.history()[-1].action == "force-promote"
    with pytest.raises(RegistryError, match="already the champion"):
        registry.promote_to_champion("xgboost_v1")
    assert registry.get_champion() == ("xgboost_v1", registry.model_dir("xgboost_v1") / "model.json")


def test_promote_archives_previous_champion_and_rollback_restores_it(registry, outputs):
    first = with_champion(registry, outputs)
    second = approved(registry, outputs["m2"])
    assert registry.former_champion() is None
    with pytest.raises(RegistryError, match="no archived former champion"):
        registry.rollback()
    state = registry.promote_to_champion(second, actor="carol", reason="better auc")
    assert state.champion_id == second and state.generation == 2
    assert registry.get_model(first).status == "archived"
    assert registry.list_models(status="champion")[0].model_id == second
    assert registry.former_champion() == first
    state = registry.rollback(reason="regression")
    assert (state.champion_id, state.generation) == (first, 3)
    assert registry.get_model(second).status == "archived"
    assert [(e.action, e.model_id, e.from_status, e.to_status) for e in registry.history()[-2:]] == [
        ("rollback", second, "champion", "archived"),
        ("rollback", first, "archived", "champion"),
    ]
    assert registry.rollback(second).champion_id == second  # a named former champion
    third = approved(registry, outputs["m3"])
    registry.archive_model(third)
    with pytest.raises(RegistryError, match="not a former champion"):
        registry.rollback(third)
    with pytest.raises(RegistryError, match="not a former champion"):
        registry.rollback(second)


def test_archived_unapproved_model_needs_force(registry, outputs):
    with_champion(registry, outputs)
    candidate = register(registry, outputs["m2"]).model_id
    registry.archive_model(candidate)
    with pytest.raises(RegistryError, match="never approved"):
        registry.promote_to_champion(candidate)
    with pytest.raises(RegistryError, match="approve"):
        registry.set_challenger(candidate, 0.1)


def test_challenger_lifecycle(registry, outputs):
    challenger = approved(registry, outputs["m2"])
    with pytest.raises(RegistryError, match="no champion yet"):
        registry.set_challenger(challenger, 0.1)
    champion = with_champion(registry, outputs)
    with pytest.raises(RegistryError, match="is the champion"):
        registry.set_challenger(champion, 0.1)
    candidate = register(registry, outputs["m3"]).model_id
    with pytest.raises(RegistryError, match="approve"):
        registry.set_challenger(candidate, 0.1)
    with pytest.raises(RegistryError, match="from 0 to 1"):
        registry.set_challenger(challenger, 1.5)
    state = registry.set_challenger(challenger, 0.1, actor="dan", reason="a/b")
    assert (state.challenger_id, state.champion_share, state.challenger_share) == (challenger, 0.9, 0.1)
    assert registry.get_challenger()[0] == challenger and registry.get_model(challenger).status == "challenger"
    registry.approve_model(candidate)
    state = registry.set_challenger(candidate, 0.2)
    assert state.challenger_id == candidate and registry.get_model(challenger).status == "approved"
    state = registry.clear_challenger(reason="done")
    assert (state.challenger_id, state.champion_share, state.rollout) == (None, 1.0, None)
    assert registry.get_model(candidate).status == "approved" and registry.get_challenger() is None
    with pytest.raises(RegistryError, match="no challenger to clear"):
        registry.clear_challenger()


def test_promoting_the_challenger_clears_the_slot(registry, outputs):
    champion = with_champion(registry, outputs)
    challenger = approved(registry, outputs["m2"])
    registry.set_challenger(challenger, 0.3, rollout={"current_traffic": 0.3})
    state = registry.promote_to_champion(challenger)
    assert (state.champion_id, state.challenger_id, state.champion_share, state.challenger_share) == (
        challenger,
        None,
        1.0,
        0.0,
    )
    assert state.rollout is None and registry.get_model(champion).status == "archived"
    # an archived, previously approved model can come back as a challenger
    assert registry.set_challenger(champion, 0.05).challenger_id == champion


def test_traffic_split_and_generation(registry, outputs):
    with pytest.raises(RegistryError, match="no challenger"):
        registry.set_traffic_split(0.9, 0.1)
    with_champion(registry, outputs)
    challenger = approved(registry, outputs["m2"])
    registry.set_challenger(challenger, 0.1)
    with pytest.raises(RegistryError, match="sum to 1"):
        registry.set_traffic_split(0.9, 0.2)
    with pytest.raises(RegistryError, match="from 0 to 1"):
        registry.set_traffic_split(-0.1, 1.1)
    before = registry.serving_state().generation
    state = registry.set_traffic_split(0.8, 0.2, rollout={"current_traffic": 0.2}, reason="step")
    assert (state.challenger_share, state.rollout, state.generation) == (0.2, {"current_traffic": 0.2}, before + 1)
    assert registry.serving_state() == state
    assert registry.history()[-1].detail == "challenger share 0.1 -> 0.2"


def test_archive_and_delete_refusals(registry, outputs):
    champion = with_champion(registry, outputs)
    challenger = approved(registry, outputs["m2"])
    registry.set_challenger(challenger, 0.1)
    for call in (registry.archive_model, registry.delete_model):
        with pytest.raises(RegistryError, match="it is the champion"):
            call(champion)
        with pytest.raises(RegistryError, match="it is the challenger"):
            call(challenger)
    other = register(registry, outputs["m3"]).model_id
    assert registry.archive_model(other, reason="stale").status == "archived"
    with pytest.raises(RegistryError, match="already archived"):
        registry.archive_model(other)
    registry.delete_model(other, actor="erin", reason="cleanup")
    assert not (registry.models_root / other).exists()
    assert [m.model_id for m in registry.list_models()] == [champion, challenger]
    assert registry.history(other)[-1].action == "delete"
    assert list((registry.root / ".staging").iterdir()) == []


def test_record_compiled_and_drift_reference(registry, outputs):
    register(registry, outputs["m1"])
    with pytest.raises(RegistryError, match="lacks"):
        registry.record_compiled("xgboost_v1", {"path": "/x.so"})
    info = {"path": "/abs/xgboost_v1.so", "sha256": "ab" * 32, "compiler": "gcc", "flags": ["-O3"]}
    assert registry.record_compiled("xgboost_v1", info, actor="ci").compiled == info
    assert registry.record_drift_reference("xgboost_v1", {"bins": [1, 2]}).drift_reference == {"bins": [1, 2]}
    assert registry.get_model("xgboost_v1").compiled == info
    assert [e.action for e in registry.history()] == ["register", "compile", "drift-reference"]


def test_compare_models(registry, outputs):
    register(registry, outputs["m1"])
    register(registry, outputs["m3"])
    rows = {r.metric: r for r in registry.compare_models("xgboost_v1", "xgboost_v3")}
    assert rows["auc_score"].a == pytest.approx(0.91) and rows["auc_score"].delta == pytest.approx(0.02)
    assert rows["precision"].delta == 0 and rows["fpr"].b == 0.05
    assert set(rows) >= {"auc_score", "precision", "recall", "f1_score", "accuracy", "specificity", "threshold"}


def test_list_and_history_filters(registry, outputs):
    for name in ("m1", "m2"):
        register(registry, outputs[name])
    registry.approve_model("xgboost_v2", actor="frank")
    assert [m.model_id for m in registry.list_models(status="approved")] == ["xgboost_v2"]
    assert [m.model_id for m in registry.list_models(status="candidate")] == ["xgboost_v1"]
    with pytest.raises(RegistryError, match="unknown status"):
        registry.list_models(status="shipped")
    assert [e.action for e in registry.history("xgboost_v2")] == ["register", "approve"]
    assert [e.actor for e in registry.history(limit=2)] == [default_actor(), "frank"]
    assert registry.history(limit=0) == []


def test_empty_registry_reads_without_creating_anything(tmp_path):
    registry = ModelRegistry(tmp_path / "absent")
    assert registry.serving_state() == ServingState()
    assert registry.list_models() == [] and registry.history() == [] and registry.get_champion() is None
    assert not (tmp_path / "absent").exists()


# ---- integrity ----


def test_tampered_artifact_is_reported_never_served(registry, outputs):
    champion = with_champion(registry, outputs)
    artifact = registry.model_dir(champion) / "model.json"
    artifact.write_bytes(artifact.read_bytes().replace(b'"', b"'", 1))
    with pytest.raises(IntegrityError, match=r"model\.json does not match its recorded sha256"):
        registry.artifact_path(champion, verify=True)
    with pytest.raises(IntegrityError, match="tampered"):
        registry.get_champion()
    assert registry.artifact_path(champion, verify=False) == artifact
    sample = registry.model_dir(champion) / "test_sample.npz"
    sample.write_bytes(b"junk")
    with pytest.raises(IntegrityError, match=r"test_sample\.npz does not match"):
        registry.attachment_path(champion, "test_sample.npz")
    artifact.unlink()
    with pytest.raises(IntegrityError, match="missing from the registry"):
        registry.artifact_path(champion, verify=False)


def test_a_tampered_model_is_never_promoted(registry, outputs):
    champion = with_champion(registry, outputs)
    other = approved(registry, outputs["m2"])
    (registry.model_dir(other) / "model.json").write_text("{}")
    before = registry.serving_state()
    with pytest.raises(IntegrityError, match="does not match"):
        registry.promote_to_champion(other)
    with pytest.raises(IntegrityError, match="does not match"):
        registry.set_challenger(other, 0.1)
    assert registry.serving_state() == before and registry.get_champion()[0] == champion


def test_corrupt_files_are_named(registry, outputs):
    with_champion(registry, outputs)
    metadata = registry.model_dir("xgboost_v1") / "metadata.json"
    metadata.write_text('{"model_id": "xgboost_v1", ')
    with pytest.raises(IntegrityError, match=str(metadata)):
        registry.get_model("xgboost_v1")
    metadata.write_text('{"model_id": "other", "version": "1", "created_at": "x"}')
    with pytest.raises(IntegrityError, match="!= folder"):
        registry.list_models()
    registry.serving_file.write_text("[")
    with pytest.raises(IntegrityError, match=str(registry.serving_file)):
        registry.serving_state()
    registry.serving_file.write_text('{"champion_id": "a", "champion_share": 0.5, "challenger_share": 0.2}')
    with pytest.raises(IntegrityError, match="do not sum to 1"):
        registry.serving_state()


def test_history_ignores_a_torn_last_line_but_names_a_corrupt_one(registry, outputs):
    register(registry, outputs["m1"])
    with registry.history_file.open("a") as f:
        f.write('{"time": "2026-01-01", "act')
    assert [e.action for e in registry.history()] == ["register"]
    registry.history_file.write_text('garbage\n{"time": "t", "actor": "a", "action": "x", "model_id": null}\n')
    with pytest.raises(IntegrityError, match=r"history\.jsonl, line 1"):
        registry.history()


def test_status_follows_serving_state_when_a_writer_died_between_files(registry, outputs):
    """serving.json is the commit point: stale champion/challenger statuses left by a crash are corrected."""
    first = with_champion(registry, outputs)
    second = approved(registry, outputs["m2"])
    registry.set_challenger(second, 0.1)
    # what a writer killed right after committing "second promoted, challenger cleared" leaves behind
    state = registry.serving_state()
    registry.serving_file.write_text(
        json.dumps({**state.to_dict(), "champion_id": second, "challenger_id": None, "champion_share": 1.0,
                    "challenger_share": 0.0, "generation": state.generation + 1})
    )  # fmt: skip
    assert registry.get_model(second).status == "champion"
    assert registry.get_model(first).status == "archived"
    assert registry.get_champion()[0] == second


def test_leftovers_of_killed_writers_are_removed_by_the_next_writer(registry, outputs):
    register(registry, outputs["m1"])
    (registry.root / ".staging" / "xgboost_v9.dead").mkdir()
    (registry.root / ".serving.json.dead.tmp").write_text("{")
    (registry.model_dir("xgboost_v1") / ".metadata.json.dead.tmp").write_text("{")
    registry.approve_model("xgboost_v1")
    assert list((registry.root / ".staging").iterdir()) == []
    assert not list(registry.root.glob("**/*.tmp"))


def test_list_skips_entries_that_are_not_model_folders(registry, outputs):
    register(registry, outputs["m1"])
    (registry.models_root / "notes.txt").write_text("not a model")
    assert [m.model_id for m in registry.list_models()] == ["xgboost_v1"]
