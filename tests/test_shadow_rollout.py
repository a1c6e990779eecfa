"""Shadow scoring and the guarded automatic rollout.

In the core: a shadow model scores every request (or a sample) beside the champion inside the same call, never
answers, and its score and decision reach the counters and the champion's log record. The paired report compares
both models on the same labelled requests. End to end, with real servers, their real /metrics pages and a real
Prometheus: a good challenger steps from shadow to its maximum share, an inverted one is aborted at the first
guardrail while every answer stays the champion's, a controller killed mid-plan resumes, and a second controller
is refused while one drives the rollout.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pandas as pd
import pytest
from model_factory import BuiltModel, inverted_model, register_compiled, served_model, synthetic_rows
from monitoring_support import PROMETHEUS_MISSING, require_tools
from native_support import require_native_transport
from server_harness import running_server, wait_until
from test_prometheus_e2e import Prometheus
from test_retrain_notify import Hook

from ml_pipeline.ab_testing.auto_rollout import AutoRollout, Guardrails, RolloutDriver, RolloutPlan
from ml_pipeline.ab_testing.evidence import PrometheusMetrics, ScrapedMetrics
from ml_pipeline.ab_testing.traffic_splitter import TrafficSplitter
from ml_pipeline.cli import main
from ml_pipeline.model_registry import ModelRegistry, RegistryError, open_registry
from ml_pipeline.monitoring.paired_report import PairedReport
from ml_pipeline.monitoring.prediction_log import JsonLinesSink
from ml_pipeline.native.compiled_model import CompiledModel
from ml_pipeline.native.serving_core import ServingCore
from ml_pipeline.proto_gen import fraud_detection_pb2 as pb
from ml_pipeline.retraining.notify import WebhookNotifier

ROWS, _ = synthetic_rows(400, seed=3)


@pytest.fixture(scope="module")
def models() -> dict[str, BuiltModel]:
    return {
        "champion": served_model("sh_v1", 21),
        "good": served_model("sh_v2", 22),
        "bad": inverted_model("sh_bad", 23),
    }


def _compiled(model: BuiltModel) -> CompiledModel:
    return CompiledModel(str(model.library), model.sha256, model.model_id)


def _predict(core: ServingCore, row: np.ndarray, key: str) -> pb.PredictionResponse:
    return pb.PredictionResponse.FromString(
        core.handle(pb.PredictionRequest(features=row.tolist(), request_id=key).SerializeToString())
    )


@pytest.mark.integration
def test_a_shadow_scores_every_request_beside_the_champion_and_answers_none(models: dict[str, BuiltModel]) -> None:
    champion, shadow = models["champion"], models["good"]
    core = ServingCore()
    core.enable_log(4096)
    core.set_champion(_compiled(champion), champion.model_id, 0.5)
    core.set_shadow(1.0)
    core.set_challenger(_compiled(shadow), shadow.model_id, 0.5, TrafficSplitter(0.5, 0.5).challenger_cut)
    answers = [_predict(core, row, f"r-{i}") for i, row in enumerate(ROWS)]
    assert {a.model_version for a in answers} == {champion.model_id}  # the cut is ignored: shadow answers none
    own = shadow.xgboost_proba(ROWS)
    records = core.drain_log(4096)
    assert len(records) == len(ROWS)
    agreements = 0
    for record, answer, expected in zip(records, answers, own, strict=True):
        assert record[2] == champion.model_id and record[4] == pytest.approx(answer.probability)
        shadow_version, shadow_score, shadow_decision = record[7]
        assert shadow_version == shadow.model_id and shadow_score == pytest.approx(expected, abs=1e-5)
        assert shadow_decision == (shadow_score >= 0.5)
        agreements += shadow_decision == answer.is_fraud
    counted = core.counters()["models"]
    assert counted[shadow.model_id]["requests"] == 0
    assert counted[shadow.model_id]["shadow_requests"] == len(ROWS)
    assert counted[shadow.model_id]["shadow_agreements"] == agreements
    assert counted[shadow.model_id]["shadow_fraud"] == sum(r[7][2] for r in records)
    assert counted[champion.model_id]["score_buckets"][-1][1] == len(ROWS)
    assert counted[shadow.model_id]["score_buckets"][-1][1] == len(ROWS)
    batch = pb.PredictionBatchRequest(requests=[pb.PredictionRequest(features=r.tolist()) for r in ROWS[:50]])
    items = pb.PredictionBatchResponse.FromString(core.handle_batch(batch.SerializeToString())).responses
    assert {p.model_version for p in items} == {champion.model_id}
    assert core.counters()["models"][shadow.model_id]["shadow_requests"] == len(ROWS) + 50
    core.set_shadow(0.5)  # a sample of the requests
    before = core.counters()["models"][shadow.model_id]["shadow_requests"]
    for i, row in enumerate(np.tile(ROWS, (5, 1))):
        _predict(core, row, f"s-{i}")
    sampled = core.counters()["models"][shadow.model_id]["shadow_requests"] - before
    assert 0.4 * 2000 < sampled < 0.6 * 2000
    core.set_shadow(None)  # A/B again: the cut routes
    assert {_predict(core, row, f"ab-{i}").model_version for i, row in enumerate(ROWS)} == {
        champion.model_id,
        shadow.model_id,
    }
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        core.set_shadow(0.0)


def _shadow_log(n: int, seed: int, shadow_noise: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A shadowed log: the champion's scores follow the labels with noise 1, the shadow's with `shadow_noise`."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.2).astype(np.int8)
    champion = 1 / (1 + np.exp(-(2 * y - 1 + rng.normal(scale=1.0, size=n))))
    shadow = 1 / (1 + np.exp(-(2 * y - 1 + rng.normal(scale=shadow_noise, size=n))))
    log = pd.DataFrame(
        {
            "time": ["2026-12-01T00:00:00+00:00"] * n,
            "request_id": [f"a-{i}" for i in range(n)],
            "model_version": "m1",
            "slot": "champion",
            "score": champion,
            "decision": champion >= 0.5,
            "shadow_model_version": "m2",
            "shadow_score": shadow,
            "shadow_decision": shadow >= 0.5,
        }
    )
    return log, pd.DataFrame({"alert_id": log["request_id"], "is_fraud": y})


@pytest.mark.unit
def test_the_paired_report_compares_both_models_on_the_same_requests() -> None:
    better = PairedReport.compute(*_shadow_log(3000, 1, shadow_noise=0.5), n_bootstrap=200)
    assert better.verdict.startswith("shadow better"), better.verdict
    assert better.differences["auc"].low > 0 and better.mcnemar.shadow_only_right > better.mcnemar.champion_only_right
    assert better.mcnemar.p_value < 0.001 and better.labelled == 3000
    worse = PairedReport.compute(*_shadow_log(3000, 2, shadow_noise=2.0), n_bootstrap=200)
    assert worse.verdict.startswith("shadow worse") and worse.significantly_worse()
    log, labels = _shadow_log(300, 3, shadow_noise=1.0)
    log["shadow_score"] = log["score"] + 1e-4 * np.random.default_rng(0).normal(size=300)
    log["shadow_decision"] = log["decision"]
    same = PairedReport.compute(log, labels, n_bootstrap=200)
    assert same.verdict.startswith("not yet significant") and same.decision_agreement == 1.0
    assert same.mcnemar.p_value == 1.0
    text = "\n".join(better.lines())
    assert "paired bootstrap" in text and "McNemar" in text and "m2" in text
    assert json.loads(json.dumps(better.to_dict()))["differences"]["auc"]["value"] > 0


@pytest.mark.integration
def test_ab_report_on_a_shadow_log_is_paired(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log, labels = _shadow_log(2000, 4, shadow_noise=0.5)
    sink = JsonLinesSink(tmp_path / "predictions.jsonl")  # as the server's prediction log writes it
    sink.write(
        [
            (
                1.78e9,
                r.request_id,
                r.model_version,
                r.slot,
                r.score,
                r.decision,
                (),
                (r.shadow_model_version, r.shadow_score, r.shadow_decision),
            )
            for r in log.itertuples()
        ]
    )
    sink.close()
    labels.to_csv(tmp_path / "labels.csv", index=False)
    args = ["ab-report", "--log", str(tmp_path / "predictions.jsonl"), "--labels", str(tmp_path / "labels.csv")]
    args += ["--bootstrap", "200"]
    with pytest.raises(SystemExit) as exited:
        main([*args, "--json"])
    assert exited.value.code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["paired"]["verdict"].startswith("shadow better")
    assert report["paired"]["shadow"]["model_version"] == "m2" and report["paired"]["labelled"] == 2000
    with pytest.raises(SystemExit):
        main(args)
    text = capsys.readouterr().out
    assert "shadow, paired on the same requests" in text and "McNemar" in text


# ---- end to end: real servers, their metrics, Prometheus ----


@pytest.fixture(params=["grpcio", "native"])
def transport(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "native":
        require_native_transport()
    monkeypatch.setenv("ML_INFERENCE_TRANSPORT", request.param)
    return request.param


def _registry(folder: Path, models: dict[str, BuiltModel]) -> ModelRegistry:
    registry = ModelRegistry(folder / "registry")
    for model in models.values():
        register_compiled(registry, model)
    registry.promote_to_champion(models["champion"].model_id, actor="test")
    return registry


class Traffic:
    """Predicts sent in a background thread (bounded: at most `limit` calls or `seconds`), answers recorded."""

    def __init__(self, port: int, limit: int = 200_000, seconds: float = 120.0) -> None:
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.call = self.channel.unary_unary(
            "/FraudDetection/Predict",
            request_serializer=pb.PredictionRequest.SerializeToString,
            response_deserializer=pb.PredictionResponse.FromString,
        )
        self.answers: list[tuple[float, str]] = []
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(limit, seconds), daemon=True)

    def _run(self, limit: int, seconds: float) -> None:
        end = time.monotonic() + seconds
        for i in range(limit):
            if self._stop.is_set() or time.monotonic() > end:
                return
            row = ROWS[i % len(ROWS)]
            try:
                answer = self.call(pb.PredictionRequest(features=row.tolist(), request_id=f"t-{i}"), timeout=5)
                self.answers.append((time.monotonic(), answer.model_version))
            except grpc.RpcError:
                self.failures += 1
            time.sleep(0.001)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)
        self.channel.close()


PLAN = RolloutPlan(shadow_seconds=1.0, initial_traffic=0.3, step=0.35, max_traffic=1.0, interval_seconds=0.8)
GUARDS = Guardrails(max_p99_ms=200.0, max_decision_rate_delta=0.15, min_requests=30)


def _drive(controller: AutoRollout, timeout: float = 60.0) -> list[str]:
    actions = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        outcome = controller.check()
        if outcome.action != "waiting":
            actions.append(outcome.action)
        if outcome.action in ("complete", "promoted", "aborted", "idle"):
            return actions
        time.sleep(0.1)
    raise AssertionError(f"the rollout did not finish in {timeout} s: {actions}")


@pytest.mark.e2e
def test_a_good_challenger_reaches_its_maximum_and_a_bad_one_is_aborted_in_shadow(
    transport: str, tmp_path: Path, models: dict[str, BuiltModel]
) -> None:
    registry = _registry(tmp_path, models)
    champion = models["champion"].model_id
    with running_server(registry.root) as server, Traffic(server.port) as traffic:
        evidence = ScrapedMetrics([f"http://127.0.0.1:{server.metrics_port}/metrics"])
        controller = AutoRollout(registry, evidence, GUARDS)
        controller.start(models["good"].model_id, PLAN)
        assert _drive(controller) == ["stepped", "stepped", "stepped", "complete"]
        state = registry.serving_state()
        assert (state.challenger_id, state.challenger_share) == (models["good"].model_id, 1.0)
        lines = [e for e in registry.history() if e.actor == "auto-rollout"]
        assert any("shadow period over, guardrails held" in (e.reason or "") for e in lines)
        registry.clear_challenger(actor="test")
        wait_until(lambda: server.convergence.challenger is None)
        started = time.monotonic()
        controller.start(models["bad"].model_id, PLAN)
        assert _drive(controller) == ["aborted"]
        aborted = registry.history()[-1]
        assert aborted.action == "clear-challenger" and "decision-rate delta" in (aborted.reason or "")
        shadow_answers = [version for at, version in traffic.answers if at > started]
        assert shadow_answers and set(shadow_answers) == {champion}  # shadow answers are always the champion's
        assert traffic.failures == 0
        assert registry.serving_state().challenger_id is None


def _auto_command(registry: ModelRegistry, metrics: str, *extra: str) -> list[str]:
    return [
        str(Path(sys.executable).parent / "ml-pipeline"), "rollout", "auto", *extra,
        "--registry", str(registry.root), "--metrics-url", metrics,
        "--shadow-seconds", "1", "--initial", "0.3", "--step", "0.35", "--max", "1.0", "--interval", "6",
        "--min-requests", "30", "--max-p99-ms", "200", "--max-decision-rate-delta", "0.15", "--poll", "0.1",
    ]  # fmt: skip


@pytest.mark.e2e
def test_a_controller_killed_mid_plan_resumes_and_a_second_one_is_refused(
    transport: str, tmp_path: Path, models: dict[str, BuiltModel]
) -> None:
    registry = _registry(tmp_path, models)
    with running_server(registry.root) as server, Traffic(server.port):
        metrics = f"http://127.0.0.1:{server.metrics_port}/metrics"
        first = subprocess.Popen(_auto_command(registry, metrics, models["good"].model_id), stderr=subprocess.DEVNULL)
        try:
            wait_until(lambda: (registry.serving_state().rollout or {}).get("mode") == "ab", timeout=30)
            second = subprocess.run(_auto_command(registry, metrics, "--resume"), capture_output=True, text=True)
            assert second.returncode != 0 and "another controller" in second.stderr, second.stderr
        finally:
            first.send_signal(signal.SIGKILL)
            first.wait(10)
        killed_at = registry.serving_state()  # killed mid-plan: after the first A/B step, before the last
        assert 0.3 <= killed_at.challenger_share < 1.0 and killed_at.rollout["auto"]["status"] == "running"
        resumed = subprocess.run(
            _auto_command(registry, metrics, "--resume"), capture_output=True, text=True, timeout=120
        )
        assert resumed.returncode == 0, resumed.stderr
        state = registry.serving_state()
        assert state.challenger_share == 1.0 and state.rollout["auto"]["status"] == "complete"
        starts = [e for e in registry.history() if (e.reason or "").startswith("auto-rollout started")]
        assert len(starts) == 1  # the plan resumed, it did not start over


@pytest.mark.e2e
def test_the_rollout_reads_its_evidence_from_a_real_prometheus(
    transport: str, tmp_path: Path, models: dict[str, BuiltModel]
) -> None:
    require_tools(("prometheus", PROMETHEUS_MISSING))
    registry = _registry(tmp_path, models)
    with running_server(registry.root) as server, Traffic(server.port):
        prometheus = Prometheus(tmp_path, f"127.0.0.1:{server.metrics_port}")
        try:
            prometheus.wait_for(lambda: prometheus.query("ml_predictions_total"), "first scrape")
            evidence = PrometheusMetrics(f"http://127.0.0.1:{prometheus.port}")
            plan = RolloutPlan(shadow_seconds=3.0, initial_traffic=0.5, step=0.5, max_traffic=1.0, interval_seconds=3.0)
            controller = AutoRollout(registry, evidence, GUARDS)
            controller.start(models["bad"].model_id, plan)
            assert _drive(controller) == ["aborted"]
            assert "decision-rate delta" in (registry.history()[-1].reason or "")
        finally:
            prometheus.stop()


@pytest.mark.integration
def test_one_controller_at_a_time_on_both_registries(tmp_path: Path, pg_dsn: str) -> None:
    for location in (str(tmp_path / "registry"), pg_dsn):
        first, second = open_registry(location), open_registry(location)
        try:
            with (
                first.controller_lock("rollout"),
                pytest.raises(RegistryError, match="another controller drives the rollout"),
                second.controller_lock("rollout"),
            ):
                pass
            with second.controller_lock("rollout"):  # released when the first one's block ended
                pass
        finally:
            first.close()
            second.close()


@pytest.mark.e2e
def test_the_scheduler_s_driver_steps_the_plan_and_posts_every_step_to_the_webhook(
    transport: str, tmp_path: Path, models: dict[str, BuiltModel]
) -> None:
    registry = _registry(tmp_path, models)
    with running_server(registry.root) as server, Traffic(server.port), Hook([]) as hook:
        evidence = ScrapedMetrics([f"http://127.0.0.1:{server.metrics_port}/metrics"])
        controller = AutoRollout(registry, evidence, GUARDS, notifier=WebhookNotifier(hook.url, attempts=1))
        controller.start(models["good"].model_id, PLAN)
        driver = RolloutDriver(AutoRollout(registry, evidence, notifier=controller.notifier), poll_seconds=0.1)
        driver.start()
        try:
            wait_until(lambda: not controller.active(), timeout=60)
        finally:
            driver.stop()
        state = registry.serving_state()
        assert state.challenger_share == 1.0 and state.rollout["auto"]["status"] == "complete"
        events = [body["event"] for body in hook.bodies]
        assert events == [
            "rollout-started",
            "rollout-stepped",
            "rollout-stepped",
            "rollout-stepped",
            "rollout-complete",
        ]
        assert all(body["model_id"] == models["good"].model_id for body in hook.bodies)
        assert "guardrails held" in hook.bodies[1]["detail"] and hook.bodies[1]["checks"]


@pytest.mark.e2e
def test_a_shadow_significantly_worse_on_labelled_requests_is_aborted(
    transport: str, tmp_path: Path, models: dict[str, BuiltModel]
) -> None:
    registry = _registry(tmp_path, models)
    log, labels = _shadow_log(2000, 5, shadow_noise=3.0)  # the shadow ranks far worse on these labelled requests
    log["model_version"], log["shadow_model_version"] = models["champion"].model_id, models["good"].model_id
    with running_server(registry.root) as server, Traffic(server.port):
        evidence = ScrapedMetrics([f"http://127.0.0.1:{server.metrics_port}/metrics"])
        controller = AutoRollout(registry, evidence, GUARDS, predictions=lambda: log, labels=lambda: labels)
        controller.start(models["good"].model_id, PLAN)
        assert _drive(controller) == ["aborted"]
        reason = registry.history()[-1].reason or ""
        assert "paired AUC difference (upper 95 %)" in reason and "decision-rate delta" not in reason
