"""The registry CLI end to end: candidate → approve → champion, challenger at 10 %, step, rollback, full history."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from model_factory import training_output

from ml_pipeline.cli import main
from ml_pipeline.model_registry import ModelRegistry

pytestmark = pytest.mark.unit


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run `ml-pipeline argv...` in process; returns (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exited:
        main(list(argv))
    out, err = capsys.readouterr()
    return exited.value.code, out, err


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict | list:
    code, out, err = run(capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out)


@pytest.fixture
def trained(tmp_path: Path) -> tuple[Path, Path]:
    return (
        training_output(tmp_path / "out1", "xgboost_v2026.11.29.010000", seed=1),
        training_output(tmp_path / "out2", "xgboost_v2026.11.30.010000", seed=2),
    )


def test_candidate_to_champion_challenger_step_and_rollback(capsys, tmp_path, trained, monkeypatch):
    monkeypatch.setenv("ML_MODEL_REGISTRY_PATH", str(tmp_path / "registry"))
    monkeypatch.chdir(tmp_path)  # promotion compiles into ./compiled_models
    first, second = "xgboost_v2026.11.29.010000", "xgboost_v2026.11.30.010000"
    who = ("--actor", "alice")

    assert (
        run_json(capsys, "registry", "register", str(trained[0]), *who, "--reason", "nightly")["status"] == "candidate"
    )
    code, _, err = run(capsys, "registry", "promote", first)
    assert code == 2 and "never approved" in err and "Traceback" not in err
    assert run_json(capsys, "registry", "approve", first, *who, "--reason", "reviewed")["status"] == "approved"
    assert run_json(capsys, "registry", "promote", first, *who, "--reason", "first model")["champion"] == first

    run_json(capsys, "registry", "register", str(trained[1]), *who)
    run_json(capsys, "registry", "approve", second, *who)
    started = run_json(capsys, "rollout", "start", second, "--initial", "0.1", "--step", "0.1", *who, "--reason", "a/b")
    assert (started["challenger"], started["challenger_share"], started["champion_share"]) == (second, 0.1, 0.9)
    stepped = run_json(capsys, "rollout", "step", *who, "--reason", "metrics fine")
    assert (stepped["challenger_share"], stepped["champion_share"]) == (0.2, 0.8)
    assert stepped["generation"] == started["generation"] + 1
    status = run_json(capsys, "rollout", "status")
    assert status["challenger_share"] == 0.2 and status["rollout_complete"] is False

    promoted = run_json(capsys, "registry", "promote", second, *who, "--reason", "challenger won")
    assert (promoted["champion"], promoted["challenger"], promoted["champion_share"]) == (second, None, 1.0)
    rolled = run_json(capsys, "registry", "rollback", *who, "--reason", "fraud misses in production")
    assert rolled["champion"] == first

    models = {m["model_id"]: m["status"] for m in run_json(capsys, "registry", "list")}
    assert models == {first: "champion", second: "archived"}
    history = run_json(capsys, "registry", "history")
    # promote and rollout start compiled each model first (it had no library): every serving model can be loaded
    assert [h["model_id"] for h in history if h["action"] == "compile"] == [first, second]
    assert (tmp_path / "compiled_models" / f"{first}.so").is_file()
    history = [h for h in history if h["action"] not in ("compile", "publish-library")]
    assert [(h["action"], h["model_id"], h["to_status"]) for h in history] == [
        ("register", first, "candidate"),
        ("approve", first, "approved"),
        ("promote", first, "champion"),
        ("register", second, "candidate"),
        ("approve", second, "approved"),
        ("set-challenger", second, "challenger"),
        ("split", second, None),
        ("promote", first, "archived"),
        ("promote", second, "champion"),
        ("rollback", second, "archived"),
        ("rollback", first, "champion"),
    ]
    assert {h["actor"] for h in history} == {"alice"}
    assert history[-1]["reason"] == "fraud misses in production"

    code, out, _ = run(capsys, "registry", "history", first)  # the table for people
    assert code == 0 and "rollback" in out and "reviewed" in out


def test_rollout_abort_and_refusals(capsys, tmp_path, trained):
    reg = ("--registry", str(tmp_path / "registry"))
    first, second = "xgboost_v2026.11.29.010000", "xgboost_v2026.11.30.010000"
    for out in trained:
        run_json(capsys, "registry", "register", str(out), *reg)
    code, _, err = run(capsys, "rollout", "step", *reg)
    assert code == 2 and "no rollout in progress" in err
    run_json(capsys, "registry", "promote", first, "--force", *reg, "--reason", "bootstrap")
    code, _, err = run(capsys, "rollout", "start", second, *reg)
    assert code == 2 and "approve" in err
    run_json(capsys, "registry", "approve", second, *reg)
    run_json(capsys, "rollout", "start", second, "--initial", "0.4", "--step", "0.3", "--max", "0.7", *reg)
    code, _, err = run(capsys, "rollout", "start", second, *reg)
    assert code == 2 and "already the challenger" in err
    assert run_json(capsys, "rollout", "step", *reg)["challenger_share"] == 0.7
    code, _, err = run(capsys, "rollout", "step", *reg)
    assert code == 2 and "at its maximum" in err
    code, _, err = run(capsys, "registry", "delete", second, *reg)
    assert code == 2 and "challenger" in err
    aborted = run_json(capsys, "rollout", "abort", *reg, "--reason", "latency")
    assert (aborted["challenger"], aborted["champion_share"]) == (None, 1.0)
    code, _, err = run(capsys, "rollout", "abort", *reg)
    assert code == 2 and "no challenger" in err

    rows = {r["metric"]: r for r in run_json(capsys, "registry", "compare", first, second, *reg)}
    assert rows["auc_score"]["delta"] == pytest.approx(0.01)
    assert run_json(capsys, "registry", "show", second, *reg)["status"] == "approved"
    assert run_json(capsys, "registry", "archive", second, *reg)["status"] == "archived"
    assert run_json(capsys, "registry", "delete", second, *reg)["deleted"] is True
    code, _, err = run(capsys, "registry", "show", second, *reg)
    assert code == 2 and "unknown model" in err
    code, _, err = run(capsys, "registry", "register", str(trained[0]), *reg)
    assert code == 2 and "already registered" in err


def test_corrupt_metadata_exits_1_with_the_file_named(capsys, tmp_path, trained):
    registry = ModelRegistry(tmp_path / "registry")
    reg = ("--registry", str(registry.root))
    run_json(capsys, "registry", "register", str(trained[0]), *reg)
    (registry.model_dir("xgboost_v2026.11.29.010000") / "metadata.json").write_text("{")
    code, _, err = run(capsys, "registry", "list", *reg)
    assert code == 1 and "metadata.json" in err and "Traceback" not in err
