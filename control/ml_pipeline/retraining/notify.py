"""Notification of a run: its JSON summary to the log and, when configured, POSTed to a webhook.

The webhook gets a bounded number of attempts with a timeout each and exponential backoff between them;
server errors (5xx), 429 and network failures are retried, other 4xx are not. The outcome is returned for
the run record: a failed notification is recorded, it never fails or loses the run.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlsplit

from ml_pipeline.errors import UsageError

log = logging.getLogger(__name__)

USER_AGENT = "voxguard-ml-pipeline-retrain/1"


@dataclass(frozen=True)
class NotificationResult:
    """Outcome of one notification: delivered or not, attempts made, last HTTP status and error."""

    target: str
    delivered: bool
    attempts: int
    status: int | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for the run record."""
        return asdict(self)


def shown_url(url: str) -> str:
    """The webhook as recorded: scheme and host only (paths and queries of webhooks often hold tokens)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}/..."


class WebhookNotifier:
    """POST a JSON summary to `url` with `attempts` tries, `timeout_s` each, backoff `backoff_s` × 2^n."""

    def __init__(
        self,
        url: str,
        timeout_s: float = 10.0,
        attempts: int = 3,
        backoff_s: float = 1.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if urlsplit(url).scheme not in {"http", "https"}:
            raise UsageError(f"webhook {shown_url(url)} is not an http:// or https:// URL (ML_RETRAIN_WEBHOOK_URL)")
        self.url = url
        self.timeout_s = timeout_s
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.sleep = sleep

    def notify(self, summary: dict[str, Any]) -> NotificationResult:
        """Deliver `summary`; never raises for a delivery problem, the result says what happened."""
        body = json.dumps(summary, default=str).encode()
        attempt = 0
        while True:
            attempt += 1
            status, error, retry = self._post(body)
            if error is None:
                return NotificationResult(shown_url(self.url), True, attempt, status)
            log.warning("webhook %s attempt %d/%d failed: %s", shown_url(self.url), attempt, self.attempts, error)
            if not retry or attempt >= self.attempts:
                return NotificationResult(shown_url(self.url), False, attempt, status, error)
            self.sleep(self.backoff_s * 2 ** (attempt - 1))

    def _post(self, body: bytes) -> tuple[int | None, str | None, bool]:
        """One POST: (HTTP status, error or None, whether a retry may help)."""
        request = urllib.request.Request(
            self.url,
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", "User-Agent": USER_AGENT},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return response.status, None, False
        except urllib.error.HTTPError as exc:
            return exc.code, f"HTTP {exc.code} {exc.reason}", exc.code >= 500 or exc.code == 429
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            return None, f"{type(reason).__name__}: {reason}" if str(reason) else type(reason).__name__, True


def announce(summary: dict[str, Any], notifier: WebhookNotifier | None) -> NotificationResult | None:
    """Log the summary (always) and send it to the webhook (when there is one)."""
    log.info("retraining run %s: %s", summary.get("run_id"), json.dumps(summary, default=str))
    return notifier.notify(summary) if notifier is not None else None
