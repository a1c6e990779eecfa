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
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import click
import grpc
import numpy as np
import pandas as pd
import xgboost as xgb

from ml_pipeline.compiler.registered import DEFAULT_OUT_DIR, compile_registered
from ml_pipeline.config import MLPipelineConfig
from ml_pipeline.data.generator import generate_alerts
from ml_pipeline.data.sources import data_window, load_training_data
from ml_pipeline.errors import JobFailed, PipelineError
from ml_pipeline.inference_server.healthcheck import check as health_check
from ml_pipeline.model_registry import ModelMetadata, ModelRegistry
from ml_pipeline.proto_gen import fraud_detection_pb2 as pb
from ml_pipeline.records import TrainingOutput
from ml_pipeline.training.evaluator import EvaluationMetrics
from ml_pipeline.training.gate import GateThresholds, quality_gate
from ml_pipeline.training.pipeline import FrameData, TrainingResult, TrainingSettings, run_training

DEMO_DIR = Path("demo_output")
DEMO_ROWS = 100_000
DEMO_DAYS = 14
DEMO_SEED = 42
SERVER_START_TIMEOUT_S = 60
ACTOR = "make-demo"
REASONS_SHOWN = 3  # the fraud call asks for its strongest reasons

T = TypeVar("T")


@dataclass
class DemoRun:
    """State handed from step to step (each step fills in what the next ones need)."""

    out: Path
    config: MLPipelineConfig
    compiled_dir: Path = DEFAULT_OUT_DIR
    data_file: Path | None = None
    frame: pd.DataFrame | None = None
    result: TrainingResult | None = None
    metrics: EvaluationMetrics | None = None
    training_dir: Path | None = None
    training_output: TrainingOutput | None = None
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


def _needed(value: T | None, what: str) -> T:
    """`value`, which an earlier step fills in; RuntimeError naming it when no step did (STEPS out of order)."""
    if value is None:
        raise RuntimeError(f"{what} is not set yet: the step that makes it must come earlier in STEPS")
    return value


def generate_data(run: DemoRun) -> str:
    """Generate labelled alerts ending now and save them as Parquet."""
    frame = generate_alerts(DEMO_ROWS, days=DEMO_DAYS, seed=DEMO_SEED)
    run.data_file = run.out / "alerts.parquet"
    frame.to_parquet(run.data_file, index=False)
    fraud = int(frame["is_fraud"].sum())
    return f"{len(frame):,} alerts over {DEMO_DAYS} days, {fraud:,} fraud ({fraud / len(frame):.1%}) → {run.data_file}"


def load_data(run: DemoRun) -> str:
    """Read the alerts back through the training-data source (the same path as `ml-pipeline train`)."""
    run.frame = load_training_data(str(_needed(run.data_file, "the data file")))
    missing = int(run.frame.isna().to_numpy().sum())
    return f"{len(run.frame):,} rows, {missing:,} missing feature values (kept as NaN)"


def train_model(run: DemoRun) -> str:
    """The training pipeline on the loaded alerts: split 70/10/20, train XGBoost with early stopping (configured
    hyperparameters), evaluate on the held-out test split at the configured threshold, apply the quality gate."""
    frame = _needed(run.frame, "the training data")
    window = data_window(str(_needed(run.data_file, "the data file")), None, frame)
    result = run.result = run_training(FrameData(frame, window), TrainingSettings.from_config(run.config.model))
    run.frame = None  # the splits hold the rows now
    m = run.metrics = result.metrics
    best = _needed(result.trainer.best_iteration, "the best iteration")
    rows = result.rows
    return (
        f"{rows['train']:,} train / {rows['val']:,} validation / {rows['test']:,} test rows; "
        f"best iteration {best} (model trimmed to {best + 1} trees)\n"
        f"      test split: AUC {m.auc_score:.4f}, precision {m.precision:.4f}, recall {m.recall:.4f}, "
        f"F1 {m.f1_score:.4f} at threshold {m.threshold}"
    )


def save_training_output(run: DemoRun) -> str:
    """Write the training output folder (what the registry registers)."""
    run.training_dir = run.out / "model"
    output = run.training_output = _needed(run.result, "the training result").write(run.training_dir)
    return f"{output.model_id} → {run.training_dir}/"


def write_evaluation_report(run: DemoRun) -> str:
    """Draw the ROC, precision-recall, confusion-matrix, threshold, importance and contribution charts into one
    page."""
    from ml_pipeline.training.report import write_report  # matplotlib loads only here

    result = _needed(run.result, "the training result")
    test, importance = result.trainer.splits["test"], result.trainer.get_feature_importance()
    contribution = result.trainer.get_mean_contribution(test.X)
    run.report_index = write_report(
        run.out / "report", result.metrics, test.y, result.test_proba, importance, contribution
    )
    return f"open {run.report_index}"


def check_quality_gate(run: DemoRun) -> str:
    """Refuse to go further with a model below the configured AUC, precision and recall minimums."""
    limits = GateThresholds.from_config(run.config.model)
    gate = quality_gate(_needed(run.metrics, "the metrics"), limits)
    if not gate.passed:
        raise JobFailed(f"quality gate failed: {'; '.join(gate.failures)}")
    return f"passed (AUC ≥ {limits.min_auc}, precision ≥ {limits.min_precision}, recall ≥ {limits.min_recall})"


def register_model(run: DemoRun) -> str:
    """Register the trained model (artifact + test sample, with sha256s) as a candidate in the demo registry."""
    registry = run.registry = ModelRegistry(run.out / "registry")
    training_dir = _needed(run.training_dir, "the training output")
    metadata = ModelMetadata.from_training_output(training_dir)
    model_file = TrainingOutput.model_file(training_dir)  # its test sample and drift reference are found beside it
    registry.register_model(model_file, metadata, actor=ACTOR, reason="trained by make demo")
    run.model_id = metadata.model_id
    return f"{run.model_id} registered as candidate in {registry.root}/"


def approve(run: DemoRun) -> str:
    """Approve the candidate: the manual sign-off before production."""
    registry, model_id = _needed(run.registry, "the registry"), _needed(run.model_id, "the model id")
    registry.approve_model(model_id, actor=ACTOR, reason="passed the quality gate in make demo")
    return f"{model_id} approved by {ACTOR}"


def promote(run: DemoRun) -> str:
    """Promote the approved, compiled model to champion: what the servers load."""
    registry, model_id = _needed(run.registry, "the registry"), _needed(run.model_id, "the model id")
    registry.promote_to_champion(model_id, actor=ACTOR, reason="make demo")
    state = registry.serving_state()
    return f"champion {state.champion_id} (serving generation {state.generation})"


def compile_approved(run: DemoRun) -> str:
    """Compile the approved model to a shared library, verified against XGBoost, and record it in the registry."""
    registry, model_id = _needed(run.registry, "the registry"), _needed(run.model_id, "the model id")
    result = compile_registered(registry, model_id, run.compiled_dir, progress=lambda line: None)
    return (
        f"{result.path} ({result.num_trees} trees, sha256 {result.sha256[:12]}…), "
        f"verified on {result.verification.rows:,} rows, max |Δ| vs XGBoost {result.verification.max_abs_diff:.1e}"
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_server(run: DemoRun) -> str:
    """Start the inference server in its own process on 127.0.0.1 and wait until health says SERVING."""
    run.port = _free_port()
    env = {
        **os.environ,
        "ML_MODEL_REGISTRY_PATH": str(_needed(run.registry, "the registry").root),
        "ML_INFERENCE_HOST": "127.0.0.1",
        "ML_INFERENCE_PORT": str(run.port),
        "ML_METRICS_PORT": str(_free_port()),
    }
    log = (run.out / "server.log").open("wb")
    server = run.server = subprocess.Popen(
        [sys.executable, "-m", "ml_pipeline.inference_server"], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    reason: str | None = "not started"
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise JobFailed(f"the server exited with code {server.returncode}; see {run.out / 'server.log'}")
        reason = health_check(run.port, timeout=1.0)
        if reason is None:
            return f"pid {server.pid} serving on 127.0.0.1:{run.port} (log: {run.out / 'server.log'})"
        time.sleep(0.2)
    stop_server(run)
    raise JobFailed(f"the server did not become SERVING within {SERVER_START_TIMEOUT_S} s: {reason}")


def predict_over_grpc(run: DemoRun) -> str:
    """Send two real Predict calls (a fraud and a normal test row) and print the answers; the fraud call asks for
    its reasons, printed beside XGBoost's own contributions for the same row."""
    output = _needed(run.training_output, "the training output")
    sample = output.test_sample
    rows = {"fraud": int(np.argmax(sample.proba)), "normal": int(np.argmin(sample.proba))}
    lines = []
    with grpc.insecure_channel(f"127.0.0.1:{run.port}") as channel:
        predict = channel.unary_unary(
            "/FraudDetection/Predict",
            request_serializer=pb.PredictionRequest.SerializeToString,
            response_deserializer=pb.PredictionResponse.FromString,
        )
        for label, index in rows.items():
            top_k = REASONS_SHOWN if label == "fraud" else 0
            request = pb.PredictionRequest(
                features=sample.X[index].tolist(), request_id=f"demo-{label}", explain_top_k=top_k
            )
            answer = predict(request, timeout=5)
            lines.append(
                f"{label} call → is_fraud={answer.is_fraud} probability={answer.probability:.4f} "
                f"model_version={answer.model_version} latency_ms={answer.latency_ms:.3f} "
                f"(labelled {'fraud' if sample.y[index] else 'normal'})"
            )
            if top_k:
                lines += _reasons_beside_xgboost(output, answer, sample.X[index])
    return "\n      ".join(lines)


def _reasons_beside_xgboost(output: TrainingOutput, answer: pb.PredictionResponse, row: np.ndarray) -> list[str]:
    """The answer's reasons, each next to XGBoost's own contribution (pred_contribs) for the same feature."""
    booster = xgb.Booster(model_file=bytearray(output.model))
    matrix = xgb.DMatrix(row.reshape(1, -1).astype(np.float32), feature_names=list(output.features), missing=np.nan)
    own = booster.predict(matrix, pred_contribs=True)[0]
    column = {name: i for i, name in enumerate(output.features)}
    lines = [f"  reasons (bias {answer.bias:+.4f}; XGBoost's {own[-1]:+.4f}):"]
    for reason in answer.reasons:
        lines.append(
            f"    {reason.feature:<26} value {reason.value:>10.3f}  contribution {reason.contribution:+.4f}  "
            f"XGBoost pred_contribs {own[column[reason.feature]]:+.4f}"
        )
    return lines


def stop_server(run: DemoRun) -> str:
    """SIGTERM the server: it drains in-flight calls and exits 0."""
    server = _needed(run.server, "the server process")
    server.send_signal(signal.SIGTERM)
    try:
        code = server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
        raise JobFailed("the server did not stop within 30 s of SIGTERM; killed it") from None
    if code != 0:
        raise JobFailed(f"the server exited with code {code} after SIGTERM; see {run.out / 'server.log'}")
    return "stopped after SIGTERM, exit code 0"


STEPS: list[Step] = [
    Step("Generate sample call data", generate_data),
    Step("Load training data", load_data),
    Step("Train and evaluate XGBoost model (training pipeline)", train_model),
    Step("Save training output", save_training_output),
    Step("Write evaluation report", write_evaluation_report),
    Step("Quality gate", check_quality_gate),
    Step("Register in the model registry", register_model),
    Step("Approve", approve),
    Step("Compile to native code (make compile-model)", compile_approved),
    Step("Promote to champion", promote),
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
