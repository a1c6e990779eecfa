"""What the servers counted, summed over every replica: the evidence a guarded rollout steps or aborts on.

Two sources give the same cumulative totals: the Prometheus HTTP API (`ML_PROMETHEUS_URL`, instant queries of
the servers' own counters) or, on one machine, the servers' `/metrics` pages scraped directly (parsed with
prometheus_client's parser). A rollout keeps the totals it last checked at and judges the difference: the
traffic of one step alone. A server restart resets its counters; a difference that goes negative is taken as a
restart and the step's check is made on the totals since (never on a negative count).
"""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from prometheus_client.parser import text_string_to_metric_families

from ml_pipeline.errors import JobFailed
from ml_pipeline.redaction import redact

#: gRPC status names counted as the server's own failures (bad input and refusals under load are not).
SERVER_ERROR_CODES = ("INTERNAL", "UNAVAILABLE", "UNKNOWN", "DATA_LOSS")
PER_MODEL = {
    "requests": "ml_predictions_total",
    "fraud": "ml_fraud_detected_total",
    "shadow_requests": "ml_shadow_predictions_total",
    "shadow_fraud": "ml_shadow_fraud_detected_total",
    "shadow_agreements": "ml_shadow_agreements_total",
}
LATENCY = "ml_prediction_latency_seconds_bucket"
ERRORS = "ml_prediction_errors_total"


@dataclass(frozen=True)
class Totals:
    """Cumulative counts by model version: answers, fraud flags, shadow scores, latency buckets; server errors."""

    counts: dict[str, dict[str, float]] = field(default_factory=dict)  # counter -> model_version -> count
    latency: dict[str, dict[str, float]] = field(default_factory=dict)  # model_version -> le -> cumulative count
    server_errors: float = 0.0

    def count(self, counter: str, model: str) -> float:
        return self.counts.get(counter, {}).get(model, 0.0)

    def since(self, earlier: Totals | None) -> Totals:
        """The counts added after `earlier` (all of them when None, or when a counter went back: a restart)."""
        if earlier is None:
            return self

        def minus(now: float, then: float) -> float:
            return now - then if now >= then else now

        counts = {
            name: {m: minus(v, earlier.count(name, m)) for m, v in models.items()}
            for name, models in self.counts.items()
        }
        latency = {
            m: {le: minus(v, earlier.latency.get(m, {}).get(le, 0.0)) for le, v in buckets.items()}
            for m, buckets in self.latency.items()
        }
        return Totals(counts, latency, minus(self.server_errors, earlier.server_errors))

    def p99_ms(self, model: str) -> float | None:
        """The 99th percentile latency of `model` (the upper bound of the bucket that holds it), in ms."""
        buckets = sorted(((float(le), n) for le, n in self.latency.get(model, {}).items()), key=lambda b: b[0])
        if not buckets or buckets[-1][1] <= 0:
            return None
        target = 0.99 * buckets[-1][1]
        for bound, cumulative in buckets:
            if cumulative >= target:
                return bound * 1000.0
        return buckets[-1][0] * 1000.0

    def to_dict(self) -> dict[str, Any]:
        return {"counts": self.counts, "latency": self.latency, "server_errors": self.server_errors}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Totals:
        return cls(dict(data.get("counts", {})), dict(data.get("latency", {})), float(data.get("server_errors", 0)))


class Evidence(Protocol):
    """Where the servers' counters are read from."""

    def totals(self) -> Totals: ...

    def describe(self) -> str: ...


def _get(url: str, timeout: float) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return bytes(response.read())
    except (OSError, ValueError) as exc:
        raise JobFailed(f"cannot read {redact(url)}: {exc}") from None


class ScrapedMetrics:
    """The servers' /metrics pages, read directly and summed (one machine, or a known list of replicas)."""

    def __init__(self, urls: Iterable[str], timeout: float = 5.0) -> None:
        self.urls = list(urls)
        self.timeout = timeout

    def describe(self) -> str:
        return "metrics pages " + ", ".join(redact(u) for u in self.urls)

    def totals(self) -> Totals:
        counts: dict[str, dict[str, float]] = {name: {} for name in PER_MODEL}
        latency: dict[str, dict[str, float]] = {}
        errors = 0.0
        by_sample = {sample: name for name, sample in PER_MODEL.items()}
        for url in self.urls:
            text = _get(url, self.timeout).decode("utf-8", "replace")
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    model = sample.labels.get("model_version", "")
                    if sample.name in by_sample:
                        bucket = counts[by_sample[sample.name]]
                        bucket[model] = bucket.get(model, 0.0) + sample.value
                    elif sample.name == LATENCY:
                        le = sample.labels["le"]
                        latency.setdefault(model, {})[le] = latency.get(model, {}).get(le, 0.0) + sample.value
                    elif sample.name == ERRORS and sample.labels.get("code") in SERVER_ERROR_CODES:
                        errors += sample.value
        return Totals(counts, latency, errors)


class PrometheusMetrics:
    """The Prometheus HTTP API: instant queries summing the counters every replica exports."""

    def __init__(self, url: str, timeout: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout

    def describe(self) -> str:
        return f"Prometheus {redact(self.url)}"

    def _query(self, promql: str) -> list[dict[str, Any]]:
        body = _get(f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}", self.timeout)
        try:
            answer = json.loads(body)
        except json.JSONDecodeError:
            raise JobFailed(f"{self.describe()} answered something that is not JSON") from None
        if answer.get("status") != "success":
            raise JobFailed(f"{self.describe()}: {answer.get('error', 'query failed')} ({promql})")
        return list(answer["data"]["result"])

    def totals(self) -> Totals:
        counts = {
            name: {
                r["metric"].get("model_version", ""): float(r["value"][1])
                for r in self._query(f"sum by (model_version) ({metric})")
            }
            for name, metric in PER_MODEL.items()
        }
        latency: dict[str, dict[str, float]] = {}
        for r in self._query(f"sum by (model_version, le) ({LATENCY})"):
            latency.setdefault(r["metric"].get("model_version", ""), {})[r["metric"]["le"]] = float(r["value"][1])
        codes = "|".join(SERVER_ERROR_CODES)
        errors = sum(float(r["value"][1]) for r in self._query(f'sum({ERRORS}{{code=~"{codes}"}})'))
        return Totals(counts, latency, errors)
