"""The run notification: a real HTTP server on 127.0.0.1 receives the summary; failures, retries, timeouts,
and a run whose webhook fails still has its record."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from ml_pipeline.config import MLPipelineConfig
from ml_pipeline.data.generator import GeneratorSettings, generate_alerts
from ml_pipeline.errors import UsageError
from ml_pipeline.model_registry import ModelRegistry
from ml_pipeline.retraining import RetrainSettings, RunStore, retrain
from ml_pipeline.retraining.notify import WebhookNotifier

pytestmark = pytest.mark.integration


class Hook:
    """A webhook on 127.0.0.1: answers with the queued statuses (then 200), optionally slowly; keeps bodies."""

    def __init__(self, statuses: list[int], delay_s: float = 0.0) -> None:
        self.statuses = list(statuses)
        self.delay_s = delay_s
        self.bodies: list[dict] = []
        self.headers: list[dict[str, str]] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                hook.bodies.append(json.loads(body))
                hook.headers.append(dict(self.headers))
                time.sleep(hook.delay_s)
                status = hook.statuses.pop(0) if hook.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/retrain?token=s3cret"

    def __enter__(self) -> Hook:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def no_sleep() -> list[float]:
    """Backoff delays are recorded instead of slept."""
    return []


def test_delivered_after_server_errors_with_backoff(no_sleep: list[float]) -> None:
    with Hook([503, 502]) as hook:
        result = WebhookNotifier(hook.url, timeout_s=5, attempts=3, backoff_s=0.5, sleep=no_sleep.append).notify(
            {"run_id": "run-1", "status": "registered"}
        )
    assert result.delivered and result.attempts == 3 and result.status == 200 and result.error is None
    assert no_sleep == [0.5, 1.0]
    assert hook.bodies == [{"run_id": "run-1", "status": "registered"}] * 3
    assert hook.headers[0]["Content-Type"] == "application/json"
    assert "s3cret" not in result.target and result.target.startswith("http://127.0.0.1:")


def test_gives_up_after_the_last_attempt(no_sleep: list[float]) -> None:
    with Hook([500, 500, 500, 500]) as hook:
        result = WebhookNotifier(hook.url, attempts=3, backoff_s=0.1, sleep=no_sleep.append).notify({"x": 1})
    assert not result.delivered and result.attempts == 3 and result.status == 500
    assert result.error == "HTTP 500 Internal Server Error" and len(hook.bodies) == 3


def test_a_client_error_is_not_retried(no_sleep: list[float]) -> None:
    with Hook([404]) as hook:
        result = WebhookNotifier(hook.url, attempts=3, sleep=no_sleep.append).notify({"x": 1})
    assert not result.delivered and result.attempts == 1 and result.status == 404 and no_sleep == []
    assert len(hook.bodies) == 1


def test_a_slow_webhook_times_out_and_is_retried(no_sleep: list[float]) -> None:
    with Hook([], delay_s=0.5) as hook:
        result = WebhookNotifier(hook.url, timeout_s=0.1, attempts=2, sleep=no_sleep.append).notify({"x": 1})
    assert not result.delivered and result.attempts == 2 and "timed out" in result.error


def test_a_failed_notification_never_loses_the_run(tmp_path: Path, no_sleep: list[float]) -> None:
    data = tmp_path / "alerts.parquet"
    easy = GeneratorSettings(fraud_rate=0.1, stealth_rate=0.0, fraud_label_noise=0.0, normal_label_noise=0.0)
    generate_alerts(4_000, days=5, seed=8, settings=easy).to_parquet(data)
    config = MLPipelineConfig.from_env({"ML_MODEL_N_ESTIMATORS": "30", "ML_MODEL_MAX_DEPTH": "3"})
    settings = RetrainSettings(min_rows=500, runs_path=str(tmp_path / "runs"))
    with Hook([500] * 3) as hook:
        notifier = WebhookNotifier(hook.url, attempts=3, sleep=no_sleep.append)
        record = retrain(config, source=str(data), registry=tmp_path / "registry", settings=settings, notifier=notifier)
    assert record.status == "registered" and record.exit_code == 0
    assert record.notification == {
        "target": record.notification["target"],
        "delivered": False,
        "attempts": 3,
        "status": 500,
        "error": "HTTP 500 Internal Server Error",
    }
    assert RunStore(settings.runs_path).get(record.run_id) == record
    assert ModelRegistry(tmp_path / "registry").get_model(record.model_id).status == "candidate"
    summary = hook.bodies[0]
    assert summary["run_id"] == record.run_id and summary["model_id"] == record.model_id
    assert summary["approval_command"].startswith(f"ml-pipeline registry approve {record.model_id}")
    assert summary["metrics"]["auc_score"] == record.metrics["auc_score"]


def test_a_webhook_that_is_not_http_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match=r"ftp://hooks\.example/\.\.\. is not an http:// or https:// URL"):
        WebhookNotifier("ftp://hooks.example/secret-token")
