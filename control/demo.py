"""The main job (`make demo`, `python -m ml_pipeline.demo`): the pipeline end to end on generated data.

A list of named steps run in order, each a function that takes the shared DemoRun, does one thing and
returns a one-line summary; the runner prints each step with its time. Append a Step to STEPS to extend
the demo. Everything lands in demo_output/ (data, training output, HTML report, registry); the compiled
library in compiled_models/. The last steps start the real server in its own process (as `ml-pipeline
serve` would), send it real gRPC Predict calls and stop it with SIGTERM, as an operator would.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import grpc
import numpy as np
import pandas as pd

from ml_pipeline.compiler.registered import DEFAULT_OUT_DIR, compile_registered
from ml_pipeline.config import MLPipelineConfig
from ml_pipeline.data.generator import generate_alerts
from ml_pipeline.data.sources import data_window, load_training_data
from ml_pipeline.errors import JobFailed, PipelineError
from ml_pipeline.inference_server.healthcheck import check as health_check
from ml_pipeline.model_registry import ModelMetadata, ModelRegistry
from ml_pipeline.proto_gen import fraud_detection_pb2 as pb
from ml_pipeline.training.evaluator import EvaluationMetrics, ModelEvaluator
from ml_pipeline.training.trainer import ModelTrainer, write_training_output

DEMO_DIR = Path("demo_output")
DEMO_ROWS = 100_000
DEMO_DAYS = 14
DEMO_SEED = 42
SERVER_START_TIMEOUT_S = 60
ACTOR = "make-demo"


@dataclass
class DemoRun:
    """State handed from step to step (each step fills in what the next ones need)."""

    out: Path
    config: MLPipelineConfig
    compiled_dir: Path = DEFAULT_OUT_DIR
    data_file: Path | None = None
    frame: pd.DataFrame | None = None
    trainer: ModelTrainer | None = None
    metrics: EvaluationMetrics | None = None
    test_proba: np.ndarray | None = None
    training_dir: Path | None = None
    training_record: dict[str, Any] = field(default_factory=dict)
    report_index: Path | None = None
    registry: ModelRegistry | None = None
    model_id: str | None = None
    server: subprocess.Popen[bytes] | None = None
    port: int | None = None


@dataclass(frozen=True)
class Step:
    """One named step of the demo: `run` does the work and returns a one-line summary."""

    title: str
    run: Callable[[DemoRun], str]


def generate_data(run: DemoRun) -> str:
    """Generate labelled alerts ending now and save them as Parquet."""
    frame = generate_alerts(DEMO_ROWS, days=DEMO_DAYS, seed=DEMO_SEED)
    run.data_file = run.out / "alerts.parquet"
    frame.to_parquet(run.data_file, index=False)
    fraud = int(frame["is_fraud"].sum())
    return f"{len(frame):,} alerts over {DEMO_DAYS} days, {fraud:,} fraud ({fraud / len(frame):.1%}) → {run.data_file}"


def load_data(run: DemoRun) -> str:
    """Read the alerts back through the training-data source (the same path as `ml-pipeline train`)."""
    run.frame = load_training_data(str(run.data_file))
    missing = int(run.frame.isna().to_numpy().sum())
    return f"{len(run.frame):,} rows, {missing:,} missing feature values (kept as NaN)"


def train_model(run: DemoRun) -> str:
    """Split 70/10/20 and train XGBoost with early stopping, using the configured hyperparameters."""
    model = run.config.model
    run.trainer = ModelTrainer(
        max_depth=model.max_depth, learning_rate=model.learning_rate, n_estimators=model.n_estimators
    )
    dtrain, dval, dtest = run.trainer.prepare_data(run.frame)
    run.trainer.train(dtrain, dval)
    run.test_proba = run.trainer.predict_from_dmatrix(dtest)
    return (
        f"{dtrain.num_row():,} train / {dval.num_row():,} validation / {dtest.num_row():,} test rows; "
        f"best iteration {run.trainer.best_iteration} (model trimmed to {run.trainer.best_iteration + 1} trees)"
    )


def evaluate_model(run: DemoRun) -> str:
    """Measure the model on the held-out test split at the configured decision threshold."""
    run.metrics = ModelEvaluator(run.config.model.threshold).evaluate(run.trainer.splits["test"].y, run.test_proba)
    m = run.metrics
    return (
        f"AUC {m.auc_score:.4f}, precision {m.precision:.4f}, recall {m.recall:.4f}, F1 {m.f1_score:.4f} "
        f"at threshold {m.threshold}"
    )


def save_training_output(run: DemoRun) -> str:
    """Write model.json, training.json and test_sample.npz (what the registry registers)."""
    run.training_dir = run.out / "model"
    window = data_window(str(run.data_file), None, run.frame)
    run.training_record = write_training_output(run.training_dir, run.trainer, run.metrics.to_dict(), window)
    return f"{run.training_record['model_id']} → {run.training_dir}/"


def write_evaluation_report(run: DemoRun) -> str:
    """Draw the ROC, precision-recall, confusion-matrix, threshold and importance charts into one page."""
    from ml_pipeline.training.report import write_report  # matplotlib loads only here

    test_y = run.trainer.splits["test"].y
    importance = run.trainer.get_feature_importance()
    run.report_index = write_report(run.out / "report", run.metrics, test_y, run.test_proba, importance)
    return f"open {run.report_index}"


def check_quality_gate(run: DemoRun) -> str:
    """Refuse to go further with a model below the configured AUC, precision and recall minimums."""
    model = run.config.model
    failures = run.metrics.gate_failures(model.min_auc_score, model.min_precision, model.min_recall)
    if failures:
        raise JobFailed(f"quality gate failed: {'; '.join(failures)}")
    return f"passed (AUC ≥ {model.min_auc_score}, precision ≥ {model.min_precision}, recall ≥ {model.min_recall})"


def register_model(run: DemoRun) -> str:
    """Register the trained model (artifact + test sample, with sha256s) as a candidate in the demo registry."""
    run.registry = ModelRegistry(run.out / "registry")
    metadata = ModelMetadata.from_training_output(run.training_dir)
    run.registry.register_model(
        run.training_dir / "model.json",
        metadata,
        attachments={"test_sample.npz": run.training_dir / "test_sample.npz"},
        actor=ACTOR,
        reason="trained by make demo",
    )
    run.model_id = metadata.model_id
    return f"{run.model_id} registered as candidate in {run.registry.root}/"


def approve_and_promote(run: DemoRun) -> str:
    """Approve the candidate (the manual sign-off before production) and promote it to champion."""
    run.registry.approve_model(run.model_id, actor=ACTOR, reason="passed the quality gate in make demo")
    run.registry.promote_to_champion(run.model_id, actor=ACTOR, reason="make demo")
    state = run.registry.serving_state()
    return f"champion {state.champion_id} (serving generation {state.generation})"


def compile_champion(run: DemoRun) -> str:
    """Compile the champion to a shared library, verified against XGBoost, and record it in the registry."""
    result = compile_registered(run.registry, run.model_id, run.compiled_dir, progress=lambda line: None)
    return (
        f"{result.path} ({result.num_trees} trees, sha256 {result.sha256[:12]}…), "
        f"verified on {result.verification.rows:,} rows, max |Δ| vs XGBoost {result.verification.max_abs_diff:.1e}"
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(run: DemoRun) -> str:
    """Start the inference server in its own process on 127.0.0.1 and wait until health says SERVING."""
    run.port = _free_port()
    env = {
        **os.environ,
        "ML_MODEL_REGISTRY_PATH": str(run.registry.root),
        "ML_INFERENCE_HOST": "127.0.0.1",
        "ML_INFERENCE_PORT": str(run.port),
        "ML_METRICS_PORT": str(_free_port()),
    }
    log = (run.out / "server.log").open("wb")
    run.server = subprocess.Popen(
        [sys.executable, "-m", "ml_pipeline.inference_server"], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    reason = "not started"
    while time.monotonic() < deadline:
        if run.server.poll() is not None:
            raise JobFailed(f"the server exited with code {run.server.returncode}; see {run.out / 'server.log'}")
        reason = health_check(run.port, timeout=1.0)
        if reason is None:
            return f"pid {run.server.pid} serving on 127.0.0.1:{run.port} (log: {run.out / 'server.log'})"
        time.sleep(0.2)
    stop_server(run)
    raise JobFailed(f"the server did not become SERVING within {SERVER_START_TIMEOUT_S} s: {reason}")


def predict_over_grpc(run: DemoRun) -> str:
    """Send two real Predict calls (a fraud and a normal test row) and print the answers."""
    sample = np.load(run.training_dir / "test_sample.npz")
    rows = {"fraud": int(np.argmax(sample["proba"])), "normal": int(np.argmin(sample["proba"]))}
    lines = []
    with grpc.insecure_channel(f"127.0.0.1:{run.port}") as channel:
        predict = channel.unary_unary(
            "/FraudDetection/Predict",
            request_serializer=pb.PredictionRequest.SerializeToString,
            response_deserializer=pb.PredictionResponse.FromString,
        )
        for label, index in rows.items():
            request = pb.PredictionRequest(features=sample["X"][index].tolist(), request_id=f"demo-{label}")
            answer = predict(request, timeout=5)
            lines.append(
                f"{label} call → is_fraud={answer.is_fraud} probability={answer.probability:.4f} "
                f"model_version={answer.model_version} latency_ms={answer.latency_ms:.3f} "
                f"(labelled {'fraud' if sample['y'][index] else 'normal'})"
            )
    return "\n      ".join(lines)


def stop_server(run: DemoRun) -> str:
    """SIGTERM the server: it drains in-flight calls and exits 0."""
    run.server.send_signal(signal.SIGTERM)
    try:
        code = run.server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        run.server.kill()
        raise JobFailed("the server did not stop within 30 s of SIGTERM; killed it") from None
    if code != 0:
        raise JobFailed(f"the server exited with code {code} after SIGTERM; see {run.out / 'server.log'}")
    return "stopped after SIGTERM, exit code 0"


STEPS: list[Step] = [
    Step("Generate sample call data", generate_data),
    Step("Load training data", load_data),
    Step("Train XGBoost model", train_model),
    Step("Evaluate on the test split", evaluate_model),
    Step("Save training output", save_training_output),
    Step("Write evaluation report", write_evaluation_report),
    Step("Quality gate", check_quality_gate),
    Step("Register in the model registry", register_model),
    Step("Approve and promote to champion", approve_and_promote),
    Step("Compile to native code (make compile-model)", compile_champion),
    Step("Serve over gRPC", start_server),
    Step("Predict over gRPC", predict_over_grpc),
    Step("Stop the server", stop_server),
]


def run_steps(run: DemoRun, steps: list[Step]) -> None:
    """Run each step in order, printing its number, title, summary and time; stop at the first failure."""
    started = time.perf_counter()
    try:
        for number, step in enumerate(steps, start=1):
            click.echo(click.style(f"[{number}/{len(steps)}] {step.title}", bold=True))
            t0 = time.perf_counter()
            summary = step.run(run)
            click.echo(f"      {summary}  ({time.perf_counter() - t0:.2f} s)")
    finally:
        if run.server is not None and run.server.poll() is None:
            run.server.kill()
    click.echo(click.style(f"Done in {time.perf_counter() - started:.1f} s; everything is in {run.out}/", fg="green"))


def main(out: Path = DEMO_DIR, compiled_dir: Path = DEFAULT_OUT_DIR) -> int:
    """Run the demo into `out` (the library into `compiled_dir`); the exit code: 0 ok, 1 a step failed, 2 bad config."""
    try:
        config = MLPipelineConfig.from_env()
        out.mkdir(parents=True, exist_ok=True)
        run_steps(DemoRun(out=out, config=config, compiled_dir=compiled_dir), STEPS)
    except PipelineError as exc:
        click.echo(click.style(f"error: {exc}", fg="red"), err=True)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
